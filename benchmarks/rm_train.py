"""Pairs/s and tokens/s of one reward-model training step (forward + backward + clip + AdamW) against the PyTorch
peer, TRL's ``RewardTrainer``, on the same weights and the same batches.

Model: GPT-2 4 layers x 256 wide (4 heads), vocab 50257, seq 256, fp32, dropout off; batch 8 pairs = 16 sequences
right-padded to ``--seq`` with 62.5-100 % real tokens (at least one full row per batch).
  ours           RewardLoss(RewardModel, "end" | "span") -> build_optimizer (AdamW) -> TrainStep (loss scale 1,
                 clip 1.0, overflow check), GRAPH_MODE, CPU.
  torch_eager    transformers GPT2ForSequenceClassification loaded from our exported weights (save_hf_checkpoint),
  torch_sdpa     attn_implementation eager / sdpa (sdpa is the default a TRL user gets); loss = TRL
                 ``RewardTrainer.compute_loss`` (called on a trainer instance when trl imports, else the same
                 formula ``-logsigmoid(r_chosen - r_rejected).mean()`` on the pooled logits); clip_grad_norm_ 1.0;
                 torch.optim.AdamW(fused=True) (``adamw_torch_fused``, the Trainer default for torch >= 2.8).
  trl_trainer    a real ``RewardTrainer.train()`` (sdpa, its default AdamW) on an in-memory pre-tokenised dataset
                 of the same pairs, padded to ``--seq``; step times are the gaps between ``on_step_end`` callbacks
                 after ``WARMUP_STEPS``, cut into ``--repeats`` chunks of ``--steps`` (same statistic as below).

Each timed figure is the median over ``--repeats`` runs of ``--steps`` steps, after ``WARMUP_STEPS`` untimed steps
(graph compilation, optimizer state, allocator). Every step syncs on the loss (``asnumpy`` / ``item``), as a
training loop that logs it does. Peak memory is the process RSS high-water mark (``VmHWM``; ``bench_common.rss_mb``) of
a separate subprocess per side that imports only its own framework, builds the model and runs warm-up + ``--steps``
steps; ``rss_after_import_mb`` is the same process right after its imports. Unless ``--no-breakdown``, forward
alone (no grad), the step without the optimizer update and the optimizer update alone are timed too. Prints one
JSON document; run on an otherwise idle machine.

    python benchmarks/rm_train.py [--repeats 3] [--steps 5] [--batch 8] [--seq 256] [--skip-trl] [--no-breakdown]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
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

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from bench_common import rss_mb, versions  # noqa: E402 - shared with the other benchmarks

logger = logging.getLogger("rm_train")

VOCAB, HIDDEN, LAYERS, HEADS = 50257, 256, 4, 4
PAD_ID = 50256  # GPT-2 eos, also the pad id; never drawn as a real token so HF pooling finds each row's end
NUM_BATCHES = 4  # distinct fixed batches, cycled
WARMUP_STEPS = 6  # ours reaches its steady step time only ~5 steps after compiling; torch after 2-4
TORCH_THREADS = 2
LEARNING_RATE = 1e-5
TOKENIZER = os.path.join(ROOT, "mindrlhf/assets/tokenizers/gpt2/tokenizer.json")


def model_config(seq: int):
    from mindrlhf.config import ModelConfig

    return ModelConfig(
        type="gpt2",
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        num_layers=LAYERS,
        num_heads=HEADS,
        seq_length=seq,
        hidden_dropout_rate=0.0,
        attention_dropout_rate=0.0,
    )


def make_pairs(rng, pairs: int, seq: int):
    """``pairs`` preference pairs as token lists: a shared prompt, then different responses; lengths 62.5-100 % of
    ``seq``, the first pair's chosen row full length (so dynamic padding always pads to ``seq``)."""
    out = []
    for i in range(pairs):
        lens = rng.integers(seq * 5 // 8, seq + 1, 2)
        if i == 0:
            lens[0] = seq
        prompt = int(rng.integers(seq // 8, seq // 2))
        shared = rng.integers(0, PAD_ID, prompt).tolist()
        rows = [shared + rng.integers(0, PAD_ID, int(n) - prompt).tolist() for n in lens]
        out.append((rows[0], rows[1], prompt))
    return out


def collate(pairs, seq: int) -> dict:
    """Our batch layout: ``input_ids (2B, S)`` chosen rows first, ``attention_mask (2B, S)``, ``loss_mask (B, S)``
    float32 on ``[divergence, longer end)``, ``end_ind (2B,)`` each row's own length."""
    b = len(pairs)
    ids = np.full((2 * b, seq), PAD_ID, np.int32)
    mask = np.zeros((2 * b, seq), np.int32)
    loss_mask = np.zeros((b, seq), np.float32)
    for i, (chosen, rejected, prompt) in enumerate(pairs):
        for row, tokens in ((i, chosen), (b + i, rejected)):
            ids[row, : len(tokens)], mask[row, : len(tokens)] = tokens, 1
        loss_mask[i, prompt : max(len(chosen), len(rejected))] = 1.0
    return {"input_ids": ids, "attention_mask": mask, "loss_mask": loss_mask, "end_ind": mask.sum(1).astype(np.int32)}


def make_data(batch: int, seq: int, seed: int = 0):
    """``NUM_BATCHES`` fixed batches: (list of pair lists, list of collated batches)."""
    rng = np.random.default_rng(seed)
    pair_sets = [make_pairs(rng, batch, seq) for _ in range(NUM_BATCHES)]
    return pair_sets, [collate(p, seq) for p in pair_sets]


def time_steps(step, n_batches: int, steps: int, repeats: int, warmup: int = WARMUP_STEPS) -> dict:
    """Median and all of ``repeats`` mean step times; ``step(i)`` runs and syncs step ``i`` on batch ``i % n``."""
    for i in range(warmup):
        step(i % n_batches)
    per_step = []
    for _ in range(repeats):
        start = time.perf_counter()
        for i in range(steps):
            step(i % n_batches)
        per_step.append((time.perf_counter() - start) / steps)
    return {"step_s": statistics.median(per_step), "step_s_all": per_step}


# ---------------------------------------------------------------------------------------------------------------
# ours (MindSpore)


def ours_model(seq: int):
    """A fresh reward model, seeded (the same weights every call)."""
    import mindspore as ms

    from mindrlhf.models import RewardModel

    ms.set_seed(0)
    return RewardModel(model_config(seq))


# our sides: (loss type, graph-kernel fusion); "ours_fused" is the "end" loss with context.enable_graph_kernel
OURS_SIDES = {"ours_end": ("end", False), "ours_span": ("span", False), "ours_fused": ("end", True)}


def ours_cells(seq: int, loss_type: str, steps_total: int, fused: bool = False):
    """(model, loss_net, optimizer, TrainStep) for a fresh seeded reward model, as the reward Trainer builds them
    (graph mode, graph-kernel fusion on or off as ``context.enable_graph_kernel`` sets it)."""
    from mindrlhf.config import ContextConfig, LossScaleConfig, LrScheduleConfig, OptimizerConfig
    from mindrlhf.context import init_context
    from mindrlhf.train.optim import build_optimizer
    from mindrlhf.train.reward import RewardLoss
    from mindrlhf.train.step import TrainStep

    init_context(ContextConfig(mode=0, enable_graph_kernel=fused))
    model = ours_model(seq)
    loss_net = RewardLoss(model, loss_type)
    optimizer = build_optimizer(
        loss_net.trainable_params(), OptimizerConfig(learning_rate=LEARNING_RATE), LrScheduleConfig(), steps_total
    )
    step = TrainStep(loss_net, optimizer, LossScaleConfig(loss_scale_value=1.0, use_clip_grad=True, max_grad_norm=1.0))
    step.set_train(True)
    return model, loss_net, optimizer, step


def ours_tensors(batches):
    from mindspore import Tensor

    names = ("input_ids", "attention_mask", "loss_mask", "end_ind")
    return [[Tensor(b[n]) for n in names] for b in batches]


def ours_train_timing(seq, side, batches, steps, repeats) -> dict:
    loss_type, fused = OURS_SIDES[side]
    _, _, _, train_step = ours_cells(seq, loss_type, 10_000, fused)
    inputs = ours_tensors(batches)
    return time_steps(lambda i: train_step(*inputs[i])[0].asnumpy(), len(inputs), steps, repeats)


def ours_breakdown(seq, batches, steps, repeats) -> dict:
    """Forward alone, the TrainStep minus the optimizer update, and the optimizer update alone (loss "end")."""
    import mindspore as ms
    from mindspore import nn, ops
    from mindspore.amp import all_finite

    class NoUpdateStep(nn.Cell):
        """TrainStep.construct without ``self.optimizer(grads)`` (loss scale 1, no data parallel)."""

        def __init__(self, loss_net, weights):
            super().__init__(auto_prefix=False)
            self.network, self.weights = loss_net, weights
            self.grad = ops.GradOperation(get_by_list=True, sens_param=True)

        def construct(self, *inputs):
            loss = self.network(*inputs)
            grads = self.grad(self.network, self.weights)(*inputs, ops.ones_like(loss))
            finite = all_finite(grads)
            grads = ops.clip_by_global_norm(grads, 1.0)
            return ops.depend(loss, grads), finite

    _, loss_net, optimizer, _ = ours_cells(seq, "end", 10_000)
    inputs = ours_tensors(batches)
    out = {"forward_s": time_steps(lambda i: loss_net(*inputs[i]).asnumpy(), len(inputs), steps, repeats)["step_s"]}
    loss_net.set_grad()
    no_update = NoUpdateStep(loss_net, optimizer.parameters)
    no_update.set_train(True)
    out["step_without_optimizer_s"] = time_steps(
        lambda i: no_update(*inputs[i])[0].asnumpy(), len(inputs), steps, repeats
    )["step_s"]
    grads = tuple(ms.Tensor(np.full(p.shape, 1e-4, np.float32)) for p in optimizer.parameters)
    out["optimizer_only_s"] = time_steps(
        lambda i: (optimizer(grads), optimizer.adam.global_step.asnumpy()), 1, steps, repeats
    )["step_s"]
    return out


# ---------------------------------------------------------------------------------------------------------------
# peer (PyTorch / transformers / TRL)


def torch_model(hf_dir: str, attn: str):
    import torch
    import transformers

    zero = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    model = transformers.GPT2ForSequenceClassification.from_pretrained(
        hf_dir, attn_implementation=attn, dtype=torch.float32, **zero
    )
    model.config.pad_token_id = PAD_ID
    model.config.use_cache = False  # gradient checkpointing stays off: from_pretrained does not enable it
    return model.train()


def trl_loss_fn(model):
    """TRL's own ``RewardTrainer.compute_loss`` bound to a minimal trainer instance when trl imports (its metric
    bookkeeping included), else the same formula. Returns (fn(model, inputs) -> loss, description)."""
    import torch

    try:
        import trl
        from accelerate import Accelerator
        from trl import RewardConfig, RewardTrainer
    except ImportError:

        def loss(m, inputs):
            chosen, rejected = torch.chunk(m(**inputs, use_cache=False).logits.squeeze(-1), chunks=2)
            return -torch.nn.functional.logsigmoid(chosen - rejected).mean()

        return loss, "replicated TRL compute_loss formula (trl not importable)"
    shell = RewardTrainer.__new__(RewardTrainer)  # compute_loss reads only these attributes
    shell.model, shell.accelerator = model, Accelerator(cpu=True)
    shell.args = RewardConfig(output_dir=tempfile.gettempdir(), use_cpu=True, report_to=[])
    shell._metrics = {"train": collections.defaultdict(list), "eval": collections.defaultdict(list)}
    shell._total_train_tokens = 0
    return (lambda m, inputs: shell.compute_loss(m, dict(inputs))), f"trl {trl.__version__} RewardTrainer.compute_loss"


def torch_setup(hf_dir, attn, batches):
    import torch

    torch.manual_seed(0)
    model = torch_model(hf_dir, attn)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=True
    )
    loss_fn, how = trl_loss_fn(model)
    inputs = [
        {
            "input_ids": torch.tensor(b["input_ids"], dtype=torch.long),
            "attention_mask": torch.tensor(b["attention_mask"], dtype=torch.long),
        }
        for b in batches
    ]
    return model, optimizer, loss_fn, how, inputs


def torch_train_step(model, optimizer, loss_fn, inputs):
    import torch

    def step(i):
        optimizer.zero_grad(set_to_none=True)
        loss = loss_fn(model, inputs[i])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    return step


def torch_timing(hf_dir, attn, batches, steps, repeats, breakdown: bool) -> dict:
    import torch

    model, optimizer, loss_fn, how, inputs = torch_setup(hf_dir, attn, batches)
    out = {"loss": how, **time_steps(torch_train_step(model, optimizer, loss_fn, inputs), len(inputs), steps, repeats)}
    if breakdown:

        def forward(i):
            with torch.no_grad():
                return loss_fn(model, inputs[i]).item()

        def no_update(i):
            model.zero_grad(set_to_none=True)
            loss = loss_fn(model, inputs[i])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            return loss.item()

        out["forward_s"] = time_steps(forward, len(inputs), steps, repeats)["step_s"]
        out["step_without_optimizer_s"] = time_steps(no_update, len(inputs), steps, repeats)["step_s"]
        for p in model.parameters():
            p.grad = torch.full_like(p, 1e-4)
        out["optimizer_only_s"] = time_steps(lambda i: optimizer.step(), 1, steps, repeats)["step_s"]
    return out


def trl_trainer_timing(hf_dir, pair_sets, seq, batch, steps, repeats) -> dict:
    """A real ``RewardTrainer.train()`` for WARMUP_STEPS + steps * repeats steps on the same pairs."""
    import trl
    from datasets import Dataset
    from transformers import PreTrainedTokenizerFast, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    class StepClock(TrainerCallback):
        """Wall time at the end of every optimizer step."""

        def __init__(self):
            self.stamps = []

        def on_step_end(self, args, state, control, **kwargs):
            self.stamps.append(time.perf_counter())

    rows = [p for pairs in pair_sets for p in pairs]
    dataset = Dataset.from_dict({"chosen_ids": [c for c, _, _ in rows], "rejected_ids": [r for _, r, _ in rows]})
    tokenizer = PreTrainedTokenizerFast(tokenizer_file=TOKENIZER, eos_token="<|endoftext|>", pad_token="<|endoftext|>")
    max_steps = WARMUP_STEPS + steps * repeats
    clock = StepClock()
    with tempfile.TemporaryDirectory(prefix="rm_train_trl_") as out_dir:
        cfg = RewardConfig(
            output_dir=out_dir,
            per_device_train_batch_size=batch,
            max_steps=max_steps,
            gradient_checkpointing=False,
            bf16=False,
            fp16=False,
            report_to=[],
            logging_steps=max_steps,
            dataloader_num_workers=0,
            use_cpu=True,
            max_length=seq,
            pad_to_multiple_of=seq,
            save_strategy="no",
            learning_rate=LEARNING_RATE,
            adam_beta2=0.95,
            max_grad_norm=1.0,
            disable_dropout=True,
            seed=0,
            disable_tqdm=True,
        )
        trainer = RewardTrainer(
            model=torch_model(hf_dir, "sdpa"),
            args=cfg,
            train_dataset=dataset,
            processing_class=tokenizer,
            callbacks=[clock],
        )
        start = time.perf_counter()  # setup (model, tokenizer, dataset, trainer) is excluded
        with contextlib.redirect_stdout(sys.stderr):  # the Trainer prints its log dicts; stdout is our JSON
            result = trainer.train()
        wall = time.perf_counter() - start
    gaps = np.diff(clock.stamps[WARMUP_STEPS - 1 :])
    chunks = [float(np.mean(gaps[i * steps : (i + 1) * steps])) for i in range(repeats)]
    return {
        "trl": trl.__version__,
        "optim": getattr(cfg.optim, "value", str(cfg.optim)),
        "attn_implementation": "sdpa",
        "max_steps": max_steps,
        "step_s": statistics.median(chunks),
        "step_s_all": chunks,
        "train_wall_s": wall,
        "train_wall_steps_per_s": max_steps / wall,
        "train_runtime_s": result.metrics.get("train_runtime"),
    }


# ---------------------------------------------------------------------------------------------------------------
# peak memory: one subprocess per side


def worker(side: str, hf_dir: str, batch: int, seq: int, steps: int) -> dict:
    """Runs in its own process: import one framework, build one side, WARMUP_STEPS + ``steps`` steps."""
    _, batches = make_data(batch, seq)
    if side.startswith("ours"):
        import mindspore as ms

        ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
        after_import = rss_mb()
        loss_type, fused = OURS_SIDES[side]
        _, _, _, train_step = ours_cells(seq, loss_type, 10_000, fused)
        inputs = ours_tensors(batches)
        timing = time_steps(lambda i: train_step(*inputs[i])[0].asnumpy(), len(inputs), steps, 1)
    else:
        import torch

        torch.set_num_threads(TORCH_THREADS)
        import transformers  # noqa: F401

        after_import = rss_mb()
        model, optimizer, loss_fn, _, inputs = torch_setup(hf_dir, side.split("_")[1], batches)
        timing = time_steps(torch_train_step(model, optimizer, loss_fn, inputs), len(inputs), steps, 1)
    return {"peak_rss_mb": rss_mb(), "rss_after_import_mb": after_import, "isolated_step_s": timing["step_s"]}


def measure_memory(side: str, hf_dir: str, args) -> dict:
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        side,
        "--hf-dir",
        hf_dir,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--steps",
        str(args.steps),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return {"error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else f"rc {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------------------------
# report


def throughput(entry: dict, batch: int, real_tokens: float, padded_tokens: int) -> dict:
    """Adds pairs/s, tokens/s and (with a breakdown) the derived backward+clip and update times."""
    step = entry["step_s"]
    if "step_without_optimizer_s" in entry:
        entry["derived_backward_and_clip_s"] = entry["step_without_optimizer_s"] - entry["forward_s"]
        entry["derived_update_s"] = step - entry["step_without_optimizer_s"]
    return {
        **entry,
        "pairs_per_s": batch / step,
        "real_tokens_per_s": real_tokens / step,
        "padded_tokens_per_s": padded_tokens / step,
    }


def run_all(args) -> dict:
    import mindspore as ms
    import torch

    from mindrlhf.models.convert import save_hf_checkpoint

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    torch.set_num_threads(TORCH_THREADS)
    pair_sets, batches = make_data(args.batch, args.seq)
    real = float(np.mean([b["attention_mask"].sum() for b in batches]))
    padded = 2 * args.batch * args.seq
    sides, skipped = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = save_hf_checkpoint(ours_model(args.seq), model_config(args.seq), os.path.join(tmp, "hf"))
        for side in OURS_SIDES:
            logger.info(side)
            sides[side] = ours_train_timing(args.seq, side, batches, args.steps, args.repeats)
        for attn in ("eager", "sdpa"):
            logger.info("torch %s", attn)
            sides[f"torch_{attn}"] = torch_timing(hf_dir, attn, batches, args.steps, args.repeats, args.breakdown)
        if args.breakdown:
            logger.info("ours breakdown")
            sides["ours_end"].update(ours_breakdown(args.seq, batches, args.steps, args.repeats))
        if args.skip_trl:
            skipped["trl_trainer"] = "--skip-trl"
        else:
            logger.info("trl RewardTrainer.train()")
            try:
                sides["trl_trainer"] = trl_trainer_timing(
                    hf_dir, pair_sets, args.seq, args.batch, args.steps, args.repeats
                )
            except Exception as err:  # report what did not work instead of failing the whole run
                skipped["trl_trainer"] = f"{type(err).__name__}: {err}"
        for side in ("ours_end", "ours_fused", "torch_eager", "torch_sdpa"):
            logger.info("memory %s", side)
            sides[side].update(measure_memory(side, hf_dir, args))
    sides = {name: throughput(entry, args.batch, real, padded) for name, entry in sides.items()}
    return {"sides": sides, "skipped": skipped, "real_tokens_per_step": real, "padded_tokens_per_step": padded}


def ratios(sides: dict) -> dict:
    """Ours / peer for throughput (> 1: ours faster) and peak RSS (< 1: ours smaller)."""
    out = {}
    for ours in OURS_SIDES:
        for peer in ("torch_eager", "torch_sdpa", "trl_trainer"):
            if peer in sides:
                out[f"{ours}/{peer}_speed"] = sides[peer]["step_s"] / sides[ours]["step_s"]
    for ours in ("ours_end", "ours_fused"):
        for peer in ("torch_eager", "torch_sdpa"):
            if "peak_rss_mb" in sides[ours] and "peak_rss_mb" in sides[peer]:
                out[f"{ours}/{peer}_peak_rss"] = sides[ours]["peak_rss_mb"] / sides[peer]["peak_rss_mb"]
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat")
    parser.add_argument("--batch", type=int, default=8, help="pairs per step (2x sequences)")
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--skip-trl", action="store_true", help="skip the real RewardTrainer.train() run")
    parser.add_argument(
        "--no-breakdown",
        dest="breakdown",
        action="store_false",
        help="skip the forward / no-optimizer / optimizer-only timings",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--hf-dir", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.hf_dir, args.batch, args.seq, args.steps)))
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    import mindspore as ms
    import torch

    results = run_all(args)
    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
            "mindspore_runtime_num_threads": ms.get_context("runtime_num_threads"),
            "load_avg_at_start": os.getloadavg(),
        },
        "versions": versions(),
        "setup": {
            "model": f"gpt2 {LAYERS}x{HIDDEN}, {HEADS} heads, vocab {VOCAB}",
            "dtype": "float32",
            "dropout": 0.0,
            "batch_pairs": args.batch,
            "sequences": 2 * args.batch,
            "seq": args.seq,
            "repeats": args.repeats,
            "steps_per_repeat": args.steps,
            "warmup_steps": WARMUP_STEPS,
            "statistic": "median over repeats of the mean step time; every step syncs on the loss",
            "real_tokens": "attention-mask ones per step",
            "padded_tokens": "2 * batch * seq per step",
            "peak_rss_mb": "process RSS high-water mark (/proc VmHWM) of a subprocess per side",
        },
        **results,
        "ratios": ratios(results["sides"]),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
