"""Seconds per phase of ONE PPO iteration (rollout + one PPO optimisation step) against the PyTorch peer, TRL's
``PPOTrainer`` (``trl.experimental.ppo``, trl 1.12.0: the last release that ships it).

Setup (module constants, shared by both sides): 8 prompts x 64 real tokens (the first 8 instructions of
mindrlhf/assets/data/oasst_rm_zh.json that tokenise to >= 64 GPT-2 tokens, cut to 64; no padding), 128 new tokens
sampled at temperature 1.0 with no stop token (every row generates all 128), GPT-2 4 layers x 256 wide (4 heads),
vocab 50257, 192 positions, fp32, dropout 0, gradient checkpointing off; four models: policy, frozen reference (same
random init as the policy), value model and reward model (both GPT-2 with a 1-output score head). PPO: batch 8, one
minibatch, one PPO epoch => one optimizer step per iteration; TRL's default hyper-parameters (kl_coef 0.05, k1 KL
estimator, cliprange 0.2, vf_coef 0.1, cliprange_value 0.2, gamma 1, lam 0.95, lr 3e-6), no reward whitening, no
missing-EOS penalty.

Phases (seconds per iteration):
  generation  sampling the 128 response tokens (KV-cache generate, every forward call it makes)
  scoring     the reward model's forward pass on prompt + response
  logprobs    the per-token log-probs/values the update needs: policy log-probs (TRL takes them from the sampling
              scores, no extra policy forward), reference-model forward + log-softmax, value-model forward
  update      the PPO optimisation step(s): policy + value forward on the rollouts, loss, backward, optimizer step
              (and, on the peer, the per-minibatch statistics computed right after it)
  total       wall time of the whole iteration; ``other`` = total - the four phases (advantages/GAE, whitening,
              KL reward, metrics/logging, gc)

Peer: a real ``PPOTrainer`` on CPU (torch threads 2, sdpa attention as a TRL user gets by default, fused AdamW as
the Trainer picks for torch >= 2.8, lr schedule "constant" so every timed iteration updates with the same lr) with
``total_episodes = 8``, so one ``trainer.train()`` call is exactly one PPO iteration over the 8 prompts. Its phases
are measured without copying TRL code: for the duration of the run the module-level helpers ``train()`` calls
(``batch_generation``, ``forward``, ``get_reward``, ``selective_log_softmax``, ``empty_cache`` in
``trl.experimental.ppo.ppo_trainer``) are replaced by timing wrappers around the originals. A phase clock lets the
outermost open phase own the time, so model forwards made inside generation count as generation and those inside
the update as update. ``batch_generation`` -> generation; ``get_reward(reward_model)`` -> scoring;
``get_reward(value_model)``, ``forward(ref_model)`` and ``selective_log_softmax`` outside the update -> logprobs;
``forward(policy+value wrapper)`` opens the update, which stays open through loss, ``accelerator.backward``,
``optimizer.step``/``zero_grad`` and the minibatch statistics and closes at the ``empty_cache()`` that ends each
minibatch. Forward pre-hooks on the four models count the forward calls per phase (reported as a check), optimizer
step hooks count and time the optimizer steps, and ``update_detail`` splits the update into forward / backward
(``accelerator.backward``) / optimizer step / the rest (loss arithmetic, zero_grad, minibatch statistics).

Timing: one untimed warm-up iteration (``--warmup``; first-call costs: AdamW state allocation, kernel selection,
allocator growth; a real PPO run is thousands of iterations, so the steady state is the fair figure, and the
MindSpore side needs its warm-up for graph compilation), then ``--repeats`` timed iterations, each a fresh
``trainer.train()`` call on the same trainer (the policy keeps training across calls, as in a real run). Every
reported figure is the median of its own per-iteration values (so the phase medians need not add up to the total
median); all values are in the JSON. CPU torch is synchronous, so no device syncs are needed.

Peak memory: each side runs in its own process (both sides: this script starts itself twice, ``--ours-only``
then ``--peer-only``); ``peak_rss_mb`` is that process's RSS high-water mark (``VmHWM``) after its iterations.

    python benchmarks/ppo_step.py [--repeats 3] [--warmup 1] [--peer-only | --ours-only] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import dataclasses
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")  # everything is local: tokenizer file, random-init models, in-memory dataset
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import rss_mb, versions  # noqa: E402 - shared with the other benchmarks

logger = logging.getLogger("ppo_step")

# ---------------------------------------------------------------------------------------------------------------
# setup shared by both sides

BATCH = 8  # prompts per iteration (= PPO batch, one minibatch)
PROMPT_LEN = 64  # real tokens per prompt, no padding
NEW_TOKENS = 128  # response tokens, all generated (no stop token)
SEQ_LENGTH = PROMPT_LEN + NEW_TOKENS  # 192 = model positions
VOCAB, HIDDEN, LAYERS, HEADS = 50257, 256, 4, 4
PAD_ID = EOS_ID = 50256  # GPT-2 <|endoftext|>: eos and pad
TEMPERATURE = 1.0
PPO_EPOCHS = 1
NUM_MINI_BATCHES = 1
LEARNING_RATE = 3e-6  # TRL PPOConfig default
KL_COEF = 0.05  # TRL PPOConfig defaults from here down
CLIPRANGE = 0.2
VF_COEF = 0.1
CLIPRANGE_VALUE = 0.2
GAMMA = 1.0
LAM = 0.95
SEED = 0
TORCH_THREADS = 2
PHASES = ("generation", "scoring", "logprobs", "update")
TOKENIZER = os.path.join(ROOT, "mindrlhf/assets/tokenizers/gpt2/tokenizer.json")
PROMPTS = os.path.join(ROOT, "mindrlhf/assets/data/oasst_rm_zh.json")


def load_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_file=TOKENIZER, eos_token="<|endoftext|>", pad_token="<|endoftext|>")


def prompt_ids(tokenizer=None) -> np.ndarray:
    """(BATCH, PROMPT_LEN) int64 prompt token ids, the same for both sides: the first BATCH instructions (+ input) of
    ``PROMPTS`` whose GPT-2 tokenisation has at least PROMPT_LEN tokens, each cut to its first PROMPT_LEN tokens."""
    tokenizer = tokenizer or load_tokenizer()
    with open(PROMPTS, encoding="utf-8") as f:
        records = json.load(f)
    rows = []
    for rec in records:
        text = rec["instruction"] + ("\n" + rec["input"] if rec.get("input") else "")
        ids = tokenizer(text)["input_ids"]
        if len(ids) >= PROMPT_LEN:
            rows.append(ids[:PROMPT_LEN])
            if len(rows) == BATCH:
                break
    out = np.asarray(rows, np.int64)
    if out.shape != (BATCH, PROMPT_LEN) or (out == PAD_ID).any():
        raise ValueError(f"could not build {BATCH} pad-free prompts of {PROMPT_LEN} tokens from {PROMPTS}")
    return out


def summarize(iterations: list[dict]) -> dict:
    """Median of each of PHASES, ``total`` and ``other`` over the timed iterations (each key on its own), plus the
    per-iteration values under ``<key>_all``. Both sides return this shape."""
    keys = (*PHASES, "total", "other")
    out = {k: statistics.median(it[k] for it in iterations) for k in keys}
    out.update({f"{k}_all": [it[k] for it in iterations] for k in keys})
    return out


# ---------------------------------------------------------------------------------------------------------------
# ours (MindSpore)


def run_ours(args) -> dict:
    """One PPO iteration of mindrlhf on the setup above; returns the same keys as :func:`run_peer` (medians of
    PHASES, ``total``, ``other``, ``tokens_generated``, ...)."""
    from mindrlhf.config import (
        ContextConfig,
        GenerationConfig,
        LossScaleConfig,
        LrScheduleConfig,
        ModelConfig,
        ModelSection,
        OptimizerConfig,
        PPOConfig,
        RunConfig,
    )
    from mindrlhf.context import init_context
    from mindrlhf.train.ppo import PPOTrainer, build_ppo_models

    init_context(ContextConfig(mode=0, enable_graph_kernel=args.graph_kernel), SEED)
    model = ModelConfig(
        type="gpt2",
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        num_heads=HEADS,
        seq_length=SEQ_LENGTH,
        pad_token_id=PAD_ID,
        bos_token_id=EOS_ID,
        eos_token_id=EOS_ID,
    )
    iterations = args.warmup + args.repeats
    ppo = PPOConfig(
        epochs=iterations + 1,
        num_rollouts=BATCH,
        chunk_size=BATCH,
        batch_size=BATCH // NUM_MINI_BATCHES,
        ppo_epochs=PPO_EPOCHS,
        kl_coef=KL_COEF,
        gamma=GAMMA,
        lam=LAM,
        cliprange=CLIPRANGE,
        cliprange_value=CLIPRANGE_VALUE,
        vf_coef=VF_COEF,
        whiten_advantages=True,
        is_shared_backbone=False,  # a separate value model, as TRL's PPOTrainer has
        generation=GenerationConfig(
            max_new_tokens=NEW_TOKENS, do_sample=True, temperature=TEMPERATURE, top_k=0, top_p=1.0, seed=SEED
        ),
        save_checkpoint_epochs=10**6,
    )
    out_dir = tempfile.mkdtemp(prefix="ppo_step_ours_")
    cfg = RunConfig(
        seed=SEED,
        output_dir=out_dir,
        model=ModelSection(model),
        ppo=ppo,
        optimizer=OptimizerConfig(learning_rate=LEARNING_RATE, weight_decay=0.0),
        lr_schedule=LrScheduleConfig(type="constant"),
        runner_wrapper=LossScaleConfig(loss_scale_value=1.0),
    )
    models = build_ppo_models(model, ppo, model, model, seed=SEED)
    ids = prompt_ids().astype(np.int32)
    prompts = {
        "prompt_ids": ids,
        "prompt_length": np.full(BATCH, PROMPT_LEN, np.int32),
        "pretrain_ids": np.full((BATCH, 2), PAD_ID, np.int32),
        "loss_mask": np.zeros((BATCH, 2), np.int32),
    }
    trainer = PPOTrainer(cfg, models, PROMPT_LEN, lambda iteration: prompts)
    timed = []
    for i in range(iterations):
        result = trainer.run_iteration(i)
        seconds = dict(result.timings)
        seconds["other"] = seconds["total"] - sum(seconds[k] for k in PHASES)
        logger.info(
            "ours iteration %d%s: %s",
            i,
            " (warm-up)" if i < args.warmup else "",
            ", ".join(f"{k} {v:.3f}" for k, v in seconds.items()),
        )
        if i >= args.warmup:
            timed.append(seconds)
            tokens = int(result.rollout.response_length * BATCH)
    trainer.monitor.close()
    out = summarize(timed)
    out["tokens_generated"] = tokens
    return out


# ---------------------------------------------------------------------------------------------------------------
# peer (PyTorch / transformers / TRL PPOTrainer)


class PhaseClock:
    """Accumulates seconds per phase. Only one phase runs at a time: a phase opened while another is open is part
    of the open one (its time is not counted twice), so forwards inside generation are generation, etc."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.seconds = dict.fromkeys(PHASES, 0.0)
        self.active, self.started = None, 0.0
        self.tokens_generated = 0
        self.forward_calls = collections.Counter()
        self.optimizer_steps = 0
        self.update_detail = collections.Counter()  # seconds inside the update: forward / backward / optimizer

    def start(self, name: str) -> bool:
        if self.active is not None:
            return False
        self.active, self.started = name, time.perf_counter()
        return True

    def stop(self) -> None:
        if self.active is not None:
            self.seconds[self.active] += time.perf_counter() - self.started
            self.active = None

    @contextlib.contextmanager
    def phase(self, name: str):
        owner = self.start(name)
        try:
            yield
        finally:
            if owner:
                self.stop()


def peer_models(init_dirs: dict | None = None):
    """(policy, ref, value, reward) in fp32 with dropout 0. Random init, seeded (policy and ref share one init), or,
    with ``init_dirs`` {"policy": dir, "value": dir, "reward": dir}, HF checkpoints (e.g. exported from ours)."""
    import torch
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    zero = {"resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "summary_first_dropout": 0.0}
    if init_dirs:

        def load(cls, name, **kw):
            model = cls.from_pretrained(init_dirs[name], dtype=torch.float32, **zero, **kw)
            model.config.pad_token_id = PAD_ID
            return model

        policy, ref = load(GPT2LMHeadModel, "policy"), load(GPT2LMHeadModel, "policy")
        value = load(GPT2ForSequenceClassification, "value", num_labels=1)
        reward = load(GPT2ForSequenceClassification, "reward", num_labels=1)
    else:
        cfg = dict(
            vocab_size=VOCAB,
            n_positions=SEQ_LENGTH,
            n_embd=HIDDEN,
            n_layer=LAYERS,
            n_head=HEADS,
            bos_token_id=EOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=PAD_ID,
            **zero,
        )
        models = []
        for cls, seed, extra in (
            (GPT2LMHeadModel, SEED, {}),
            (GPT2LMHeadModel, SEED, {}),
            (GPT2ForSequenceClassification, SEED + 1, {"num_labels": 1}),
            (GPT2ForSequenceClassification, SEED + 2, {"num_labels": 1}),
        ):
            torch.manual_seed(seed)
            models.append(cls(GPT2Config(**cfg, **extra)).float())
        policy, ref, value, reward = models
    return policy, ref, value, reward


def checkpointing(model) -> bool:
    """Whether activation (gradient) checkpointing is on (``is_gradient_checkpointing`` is deprecated in 5.x)."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(model.is_gradient_checkpointing)


def peer_trainer(out_dir: str, init_dirs: dict | None = None):
    from datasets import Dataset
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    tokenizer = load_tokenizer()
    dataset = Dataset.from_dict({"input_ids": prompt_ids(tokenizer).tolist()})  # the only column the trainer reads
    policy, ref, value, reward = peer_models(init_dirs)
    # TRL's configs default gradient checkpointing to True; transformers 5 renamed it activation_checkpointing
    names = {f.name for f in dataclasses.fields(PPOConfig)}
    no_checkpointing = {
        "activation_checkpointing" if "activation_checkpointing" in names else "gradient_checkpointing": False
    }
    cfg = PPOConfig(
        output_dir=out_dir,
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=SEED,
        **no_checkpointing,
        per_device_train_batch_size=BATCH,
        gradient_accumulation_steps=1,
        num_mini_batches=NUM_MINI_BATCHES,
        num_ppo_epochs=PPO_EPOCHS,
        total_episodes=BATCH,
        local_rollout_forward_batch_size=BATCH,
        response_length=NEW_TOKENS,
        stop_token=None,
        stop_token_id=None,
        temperature=TEMPERATURE,
        missing_eos_penalty=None,
        kl_coef=KL_COEF,
        cliprange=CLIPRANGE,
        vf_coef=VF_COEF,
        cliprange_value=CLIPRANGE_VALUE,
        gamma=GAMMA,
        lam=LAM,
        whiten_rewards=False,
        learning_rate=LEARNING_RATE,
        lr_scheduler_type="constant",
        num_sample_generations=0,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        push_to_hub=False,
    )
    trainer = PPOTrainer(
        args=cfg,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=dataset,
    )
    if cfg.gradient_checkpointing or any(checkpointing(m) for m in (policy, ref, value, reward)):
        raise RuntimeError("gradient checkpointing must be off")
    return trainer


def inner_optimizer(trainer):
    """The torch optimizer under accelerate's ``AcceleratedOptimizer`` wrapper."""
    return getattr(trainer.optimizer, "optimizer", trainer.optimizer)


@contextlib.contextmanager
def instrument(trainer, clock: PhaseClock):
    """Routes the helpers ``PPOTrainer.train()`` calls through ``clock`` (see the module docstring); restores
    everything on exit."""
    import trl.experimental.ppo.ppo_trainer as ppo

    orig = {
        name: getattr(ppo, name)
        for name in ("batch_generation", "forward", "get_reward", "selective_log_softmax", "empty_cache")
    }

    def is_update_model(model):
        return isinstance(trainer.accelerator.unwrap_model(model), ppo.PolicyAndValueWrapper)

    def batch_generation(model, queries, *a, **kw):
        with clock.phase("generation"):
            query_responses, logits = orig["batch_generation"](model, queries, *a, **kw)
        clock.tokens_generated += int(queries.shape[0]) * (query_responses.shape[1] - queries.shape[1])
        return query_responses, logits

    def forward(model, *a, **kw):
        if is_update_model(model):
            clock.start("update")  # stays open until the minibatch's closing empty_cache()
            with sub_timer("forward"):
                return orig["forward"](model, *a, **kw)
        with clock.phase("logprobs"):
            return orig["forward"](model, *a, **kw)

    def get_reward(model, *a, **kw):
        with clock.phase("scoring" if model is trainer.reward_model else "logprobs"):
            return orig["get_reward"](model, *a, **kw)

    def selective_log_softmax(*a, **kw):
        with clock.phase("logprobs"):
            return orig["selective_log_softmax"](*a, **kw)

    def empty_cache():
        if clock.active == "update":
            clock.stop()
        return orig["empty_cache"]()

    @contextlib.contextmanager
    def sub_timer(name):
        start = time.perf_counter()
        try:
            yield
        finally:
            clock.update_detail[name] += time.perf_counter() - start

    accelerator_backward = trainer.accelerator.backward

    def backward(*a, **kw):
        with sub_timer("backward"):
            return accelerator_backward(*a, **kw)

    def counter(name):
        def hook(module, inputs):
            clock.forward_calls[f"{clock.active or 'other'}/{name}"] += 1

        return hook

    step_started = []

    def step_pre_hook(optimizer, *a, **kw):
        step_started.append(time.perf_counter())

    def step_hook(optimizer, *a, **kw):
        clock.optimizer_steps += 1
        clock.update_detail["optimizer_step"] += time.perf_counter() - step_started.pop()

    value = trainer.accelerator.unwrap_model(trainer.model).value_model
    modules = {
        "policy": trainer.policy_model,
        "ref": trainer.ref_model,
        "value": getattr(value, value.base_model_prefix),
        "reward": getattr(trainer.reward_model, trainer.reward_model.base_model_prefix),
    }
    handles = [m.register_forward_pre_hook(counter(name)) for name, m in modules.items()]
    handles.append(inner_optimizer(trainer).register_step_pre_hook(step_pre_hook))
    handles.append(inner_optimizer(trainer).register_step_post_hook(step_hook))
    trainer.accelerator.backward = backward  # train() calls self.accelerator.backward(loss)
    for name, fn in (
        ("batch_generation", batch_generation),
        ("forward", forward),
        ("get_reward", get_reward),
        ("selective_log_softmax", selective_log_softmax),
        ("empty_cache", empty_cache),
    ):
        setattr(ppo, name, fn)
    try:
        yield
    finally:
        for name, fn in orig.items():
            setattr(ppo, name, fn)
        for handle in handles:
            handle.remove()
        del trainer.accelerator.backward  # back to the class method


def peer_iteration(trainer, clock: PhaseClock) -> dict:
    """One ``trainer.train()`` = one PPO iteration over the 8 prompts, timed per phase."""
    clock.reset()
    with contextlib.redirect_stdout(sys.stderr):  # TRL prints "===training policy===" and its log dicts
        start = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - start
    clock.stop()  # nothing should be open; safety
    out = {
        **clock.seconds,
        "total": total,
        "tokens_generated": clock.tokens_generated,
        "optimizer_steps": clock.optimizer_steps,
        "forward_calls": dict(sorted(clock.forward_calls.items())),
    }
    out["other"] = total - sum(clock.seconds[p] for p in PHASES)
    detail = {f"update_{k}": v for k, v in clock.update_detail.items()}
    detail["update_loss_stats_rest"] = clock.seconds["update"] - sum(detail.values())
    out["update_detail"] = detail
    return out


def run_peer(args) -> dict:
    """TRL PPOTrainer: ``args.warmup`` untimed + ``args.repeats`` timed iterations; medians (see the docstring).
    An optional ``args.peer_init_dirs`` ({"policy", "value", "reward"} -> HF checkpoint dir) loads the peer's models
    from checkpoints (e.g. ours exported) instead of the seeded random init."""
    import torch
    import trl

    torch.set_num_threads(TORCH_THREADS)
    clock = PhaseClock()
    with tempfile.TemporaryDirectory(prefix="ppo_step_trl_") as out_dir:
        start = time.perf_counter()
        trainer = peer_trainer(out_dir, getattr(args, "peer_init_dirs", None))
        setup_s = time.perf_counter() - start
        with instrument(trainer, clock):
            warmup = [peer_iteration(trainer, clock) for _ in range(args.warmup)]
            timed = [peer_iteration(trainer, clock) for _ in range(args.repeats)]
    last, cfg = timed[-1], trainer.args
    return {
        **summarize(timed),
        "tokens_generated": last["tokens_generated"],
        "tokens_generated_per_s": last["tokens_generated"] / statistics.median(t["generation"] for t in timed),
        "optimizer_steps_per_iteration": last["optimizer_steps"],
        "forward_calls_per_iteration": last["forward_calls"],
        "warmup_total_s": [w["total"] for w in warmup],
        "setup_s": setup_s,
        "framework": f"trl {trl.__version__} trl.experimental.ppo.PPOTrainer",
        "update_detail": {k: statistics.median(t["update_detail"][k] for t in timed) for k in last["update_detail"]},
        "gradient_checkpointing": checkpointing(trainer.policy_model),
        "attn_implementation": trainer.policy_model.config._attn_implementation,
        "optimizer": f"{type(inner_optimizer(trainer)).__name__} ({getattr(cfg.optim, 'value', cfg.optim)})",
        "torch_threads": torch.get_num_threads(),
    }


# ---------------------------------------------------------------------------------------------------------------
# report


def markdown_table(ours: dict | None, peer: dict | None) -> str:
    def cell(side, key):
        return f"{side[key]:.3f}" if side and key in side else "-"

    lines = ["| phase | ours s | peer s | peer/ours |", "|---|---:|---:|---:|"]
    for key in (*PHASES, "other", "total"):
        ratio = f"{peer[key] / ours[key]:.2f}" if ours and peer and key in ours and key in peer and ours[key] else "-"
        lines.append(f"| {key} | {cell(ours, key)} | {cell(peer, key)} | {ratio} |")
    if ours and peer and "peak_rss_mb" in ours and "peak_rss_mb" in peer:
        lines.append(
            f"| peak RSS MiB | {ours['peak_rss_mb']:.0f} | {peer['peak_rss_mb']:.0f} | "
            f"{peer['peak_rss_mb'] / ours['peak_rss_mb']:.2f} |"
        )
    return "\n".join(lines)


def run_sides(args) -> tuple:
    """``(results, skipped)`` of the side(s) ``args`` selects, run in this process; each side's entry gets this
    process's RSS high-water mark (``peak_rss_mb``), its own only when it is the one side run here."""
    results, skipped = {}, {}
    if not args.peer_only:
        logger.info("ours")
        try:
            results["ours"] = run_ours(args)
            results["ours"]["peak_rss_mb"] = rss_mb()
        except NotImplementedError as err:
            skipped["ours"] = f"NotImplementedError: {err}"
            logger.warning("ours skipped: %s", err)
    if not args.ours_only:
        logger.info("peer: TRL PPOTrainer")
        results["peer"] = run_peer(args)
        results["peer"]["peak_rss_mb"] = rss_mb()
    return results, skipped


def side_process(flag: str, args) -> tuple:
    """This script with ``flag`` (``--ours-only`` / ``--peer-only``) in a fresh process: ``(results, skipped)``."""
    with tempfile.TemporaryDirectory(prefix="ppo_step_side_") as tmp:
        out = os.path.join(tmp, "side.json")
        subprocess.run(
            [
                sys.executable,
                os.path.abspath(__file__),
                flag,
                "--repeats",
                str(args.repeats),
                "--warmup",
                str(args.warmup),
                "--side-json",
                out,
            ]
            + (["--graph-kernel"] if args.graph_kernel else []),
            check=True,
        )
        with open(out, encoding="utf-8") as f:
            results, skipped = json.load(f)
    return results, skipped


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="timed iterations per side (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--peer-only", action="store_true", help="only TRL PPOTrainer")
    side.add_argument("--ours-only", action="store_true", help="only mindrlhf")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument(
        "--graph-kernel", action="store_true", help="ours with graph-kernel fusion (context.enable_graph_kernel)"
    )
    parser.add_argument("--side-json", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    logging.getLogger("accelerate").setLevel(logging.WARNING)  # one "dataset had no length" line per metric

    load_start = os.getloadavg()
    if args.side_json:  # a side process: one side, its figures and peak RSS to the file
        with open(args.side_json, "w", encoding="utf-8") as f:
            json.dump(run_sides(args), f)
        return
    if args.ours_only or args.peer_only:
        results, skipped = run_sides(args)
    else:  # ours first, then the peer, each in its own process so that each peak RSS is its own
        results, skipped = {}, {}
        for flag in ("--ours-only", "--peer-only"):
            side_results, side_skipped = side_process(flag, args)
            results.update(side_results)
            skipped.update(side_skipped)
    ours, peer = results.get("ours"), results.get("peer")
    print(markdown_table(ours, peer))
    if args.json:
        import torch

        report = {
            "machine": {
                "cpu_count": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "platform": platform.platform(),
                "torch_threads": torch.get_num_threads(),
                "load_avg_at_start": load_start,
                "load_avg_at_end": os.getloadavg(),
            },
            "versions": versions(),
            "setup": {
                "model": f"gpt2 {LAYERS}x{HIDDEN}, {HEADS} heads, vocab {VOCAB}, {SEQ_LENGTH} positions",
                "models": "policy, frozen reference (same init), value, reward",
                "dtype": "float32",
                "dropout": 0.0,
                "batch": BATCH,
                "prompt_len": PROMPT_LEN,
                "new_tokens": NEW_TOKENS,
                "temperature": TEMPERATURE,
                "ppo_epochs": PPO_EPOCHS,
                "mini_batches": NUM_MINI_BATCHES,
                "learning_rate": LEARNING_RATE,
                "kl_coef": KL_COEF,
                "repeats": args.repeats,
                "warmup": args.warmup,
                "graph_kernel": args.graph_kernel,
                "prompts": os.path.relpath(PROMPTS, ROOT),
                "statistic": "median over timed iterations, each key on its own",
            },
            **results,
            "skipped": skipped,
            "ratios_peer_over_ours": (
                {k: peer[k] / ours[k] for k in (*PHASES, "total") if ours.get(k)} if ours and peer else {}
            ),
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        logger.info("wrote %s", args.json)


if __name__ == "__main__":
    main()
