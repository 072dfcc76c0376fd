"""Does RL really align a real model? The gold-judge protocol (mindrlhf/alignment.py) on the bundled pretrained
TinyStories-656K, mindrlhf and TRL side by side in one run, same weights, same pairs, same rollout budget.

Protocol (both frameworks):
  1. story openings sampled from bos by the pretrained model (1 + 8 tokens), 256 train / 32 held-out;
  2. two samples per train opening (48 new tokens, temperature 1, full distribution), chosen = the higher VADER
     compound sentiment (the gold judge, never trained on); the same token pairs (prompt + response + eos) for both
     frameworks;
  3. a proxy reward model from the pretrained backbone with a new score head, trained on the pairs (mindrlhf:
     ``rm`` trainer; TRL: ``RewardTrainer`` on the same token ids, same epochs, batch and learning rate); its
     accuracy on the held-out pairs against the gold labels;
  4. PPO against each framework's proxy (mindrlhf: ``train_ppo``; TRL: ``trl.experimental.ppo.PPOTrainer``): the
     same number of iterations x rollouts, minibatch, PPO epochs, learning rate, clip ranges, GAE, separate value
     model started from the proxy, the same missing-eos penalty; mindrlhf steers its KL coefficient with the
     adaptive controller, TRL has a fixed one (its PPOTrainer has no controller);
  5. evaluation, identical for both (mindrlhf's sampler and scorer on the trained weights; TRL's policy and proxy
     are loaded from the folders TRL saved): 4 samples per held-out opening with the same seeds before and after,
     gold mean / std, proxy score, KL to the reference (sum over the sample's tokens of logp - ref_logp).

DPO (``--algorithms dpo``): no proxy and no rollouts. Both frameworks train the pretrained model on the same gold
pairs (prompt = the opening, responses = the two samples, eos included) with the same beta, learning rate
(constant), batch, epochs, Adam settings and clipping, reference log-probs precomputed, each in its own process
(peak RSS = that process's high-water mark; one compute thread each, :data:`DPO_THREADS`); TRL's ``DPOTrainer`` gets
the token ids as they are (its tokenization step is bypassed). The evaluation is the one above (gold mean before /
after, KL to the reference) plus the held-out implicit-reward accuracy on the held-out pairs and the win rate of the
trained policy's samples against the reference's (same prompt, same seed; a gold tie counts one half).

Prints a table and, last, one JSON document whose ``results`` list has one entry per (algorithm, framework) with
``algorithm``, ``framework``, ``gold_before``, ``gold_after``, ``gold_std_before``, ``kl``, ``samples``, ``wall_s``
(proxy training + RL, the data preparation shared by both is reported apart) and more.

    python benchmarks/alignment_quality.py [--iterations 20] [--algorithms ppo,grpo,dpo] [--ours-only | --peer-only]
        [--json out.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
import tempfile
import time

import numpy as np

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from bench_common import print_report  # noqa: E402 - shared with the other benchmarks
from mindrlhf.alignment import (  # noqa: E402
    HeldOutJudge,
    PolicyEvaluation,
    StoryProtocol,
    pair_seq_length,
    pairwise_accuracy,
    prepare_story_data,
    summary_row,
)

logger = logging.getLogger("alignment_quality")

RECIPES = os.path.join(ROOT, "model_configs", "llama2_config")
TORCH_THREADS = 2
# Both DPO sides compute on one thread: on the shared 2-core machine two torch threads oversubscribed the cores and
# slowed TRL's DPO steps 10-30x (2.3-5.9 s against 0.17 s with one thread), which measures the load, not the code.
DPO_THREADS = 1


def story_model_folder() -> str:
    from mindrlhf.models.convert import BUNDLED_MODELS

    return BUNDLED_MODELS["tinystories"]


def load_recipes(out_dir: str, iterations: int):
    """(reward-model RunConfig, PPO RunConfig) of the bundled story recipes, outputs under ``out_dir``."""
    from mindrlhf.config import load_config

    common = [
        "checkpoint.log_interval=1000000",
        "checkpoint.save_checkpoint_steps=1000000",
        "checkpoint.keep_checkpoint_max=1",
    ]
    rm = load_config(
        os.path.join(RECIPES, "run_tinystories_656k_rm.yaml"),
        common + [f"output_dir={out_dir}/rm", f"load_checkpoint={story_model_folder()}"],
    )
    ppo = load_config(
        os.path.join(RECIPES, "run_tinystories_656k_ppo.yaml"),
        common + [f"output_dir={out_dir}/ppo", f"ppo.epochs={iterations}", f"ppo.save_checkpoint_epochs={iterations}"],
    )
    return rm, ppo


# ---------------------------------------------------------------------------------------------------------------
# shared data


def prepare(protocol: StoryProtocol, folder: str):
    """The pretrained policy, its tokenizer and the story data (openings, gold pairs, MindRecords)."""
    import mindspore as ms

    from mindrlhf.data.tokenizer import load_tokenizer
    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import load_weights, model_config_from_hf_folder

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    model_folder = story_model_folder()
    cfg = model_config_from_hf_folder(model_folder)
    policy = CausalLM(cfg)
    load_weights(policy, model_folder, cfg)
    tokenizer = load_tokenizer(model_folder)
    data = prepare_story_data(policy, cfg, tokenizer, protocol, folder)
    return policy, cfg, tokenizer, data


# ---------------------------------------------------------------------------------------------------------------
# mindrlhf


def run_ours(protocol: StoryProtocol, data, tokenizer, out_dir: str, iterations: int) -> dict:
    """Proxy reward model + PPO with mindrlhf; evaluation before / after."""
    from mindrlhf.train.ppo import train_ppo, weights_file
    import mindspore as ms

    from mindrlhf.train.reward import train_reward_model

    rm_cfg, ppo_cfg = load_recipes(out_dir, iterations)
    ms.set_seed(rm_cfg.seed)  # the new score head's init: the same whatever ran before in this process
    start = time.perf_counter()
    reward_model, fit = train_reward_model(rm_cfg, data.files["pairs"])
    rm_s = time.perf_counter() - start
    reward_model.set_train(False)
    accuracy = pairwise_accuracy(
        reward_model, data.eval_pairs, pair_seq_length(protocol), rm_cfg.model.model_config.pad_token_id
    )
    logger.info("ours: proxy reward model %.1f s, held-out gold-pair accuracy %.3f", rm_s, accuracy)
    tick = time.perf_counter()
    trainer = train_ppo(
        ppo_cfg,
        data.files["prompts"],
        rm_cfg.model.model_config,
        sft_checkpoint=story_model_folder(),
        reward_checkpoint=weights_file(fit.last_checkpoint),
    )
    ppo_s = time.perf_counter() - tick
    models, cfg = trainer.models, ppo_cfg.model.model_config
    judge = HeldOutJudge(models.ref, models.reward, cfg, tokenizer, data.eval_prompts, protocol)
    before, after = judge(models.ref), judge(models.policy)
    with open(os.path.join(ppo_cfg.output_dir, "ppo_metrics.jsonl"), encoding="utf-8") as f:
        curve = [json.loads(line) for line in f]
    return {
        "framework": "mindrlhf",
        "before": before,
        "after": after,
        "rm_accuracy": accuracy,
        "rm_s": rm_s,
        "rl_s": ppo_s,
        "curve": [{k: m.get(k) for k in ("reward_mean", "kl", "kl_coef")} for m in curve],
    }


# ---------------------------------------------------------------------------------------------------------------
# TRL


def sequence_classifier(folder: str):
    """``LlamaForSequenceClassification`` with the pretrained backbone. ``from_pretrained`` alone would leave the
    token table random: the tied checkpoint stores it only as ``lm_head.weight``, which a classifier does not load."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(0)
    causal = AutoModelForCausalLM.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_config(AutoConfig.from_pretrained(folder, num_labels=1))
    model.model.load_state_dict(causal.model.state_dict())
    return model


def trl_reward_model(data, rm_cfg, out_dir: str):
    """TRL RewardTrainer on the same token pairs; returns the saved folder."""
    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    folder = story_model_folder()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = sequence_classifier(folder)
    model.config.pad_token_id = tokenizer.pad_token_id
    dataset = Dataset.from_dict({"chosen_ids": data.train_pairs.chosen, "rejected_ids": data.train_pairs.rejected})
    runner, lr = rm_cfg.runner_config, rm_cfg.lr_schedule
    steps = len(data.train_pairs.chosen) // runner.batch_size * runner.epochs
    args = RewardConfig(
        output_dir=os.path.join(out_dir, "trl_rm_run"),
        use_cpu=True,
        seed=0,
        bf16=False,
        fp16=False,
        per_device_train_batch_size=runner.batch_size,
        num_train_epochs=runner.epochs,
        learning_rate=lr.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=int(lr.warmup_ratio * steps),
        weight_decay=0.0,
        max_length=None,
        report_to="none",
        save_strategy="no",
        logging_steps=10,
        disable_tqdm=True,
        dataloader_num_workers=0,
        center_rewards_coefficient=None,
        gradient_checkpointing=False,
    )
    RewardTrainer(model=model, args=args, processing_class=tokenizer, train_dataset=dataset).train()
    saved = os.path.join(out_dir, "trl_rm")
    model.save_pretrained(saved)
    tokenizer.save_pretrained(saved)
    return saved


def trl_ppo(data, ppo_cfg, reward_folder: str, out_dir: str):
    """TRL's PPOTrainer with the same budget and hyper-parameters; returns the saved policy folder."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    folder, ppo = story_model_folder(), ppo_cfg.ppo
    tokenizer = AutoTokenizer.from_pretrained(folder)
    policy, ref = (AutoModelForCausalLM.from_pretrained(folder) for _ in range(2))
    value, reward = (AutoModelForSequenceClassification.from_pretrained(reward_folder, num_labels=1) for _ in range(2))
    dataset = Dataset.from_dict({"input_ids": data.train_prompts.tolist()})
    args = PPOConfig(
        output_dir=os.path.join(out_dir, "trl_ppo_run"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=0,
        gradient_checkpointing=False,
        per_device_train_batch_size=ppo.num_rollouts,
        gradient_accumulation_steps=1,
        num_mini_batches=ppo.num_rollouts // ppo.batch_size,
        num_ppo_epochs=ppo.ppo_epochs,
        total_episodes=ppo.epochs * ppo.num_rollouts,
        local_rollout_forward_batch_size=ppo.num_rollouts,
        response_length=ppo.generation.max_new_tokens,
        stop_token="eos",
        temperature=ppo.generation.temperature,
        missing_eos_penalty=ppo.missing_eos_penalty,
        kl_coef=ppo.kl_coef,
        cliprange=ppo.cliprange,
        vf_coef=ppo.vf_coef,
        cliprange_value=ppo.cliprange_value,
        gamma=ppo.gamma,
        lam=ppo.lam,
        whiten_rewards=False,
        learning_rate=ppo_cfg.optimizer.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=ppo_cfg.lr_schedule.warmup_steps,
        max_grad_norm=ppo_cfg.runner_wrapper.max_grad_norm,
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
        args=args,
        processing_class=tokenizer,
        model=policy,
        ref_model=ref,
        reward_model=reward,
        value_model=value,
        train_dataset=dataset,
    )
    trainer.train()
    saved = os.path.join(out_dir, "trl_policy")
    trainer.policy_model.save_pretrained(saved)
    return saved


def run_peer(protocol: StoryProtocol, data, tokenizer, out_dir: str, iterations: int) -> dict:
    """TRL: RewardTrainer + PPOTrainer; evaluation with the same sampler, seeds and judges as ours."""
    import torch

    from mindrlhf.models import CausalLM, RewardModel
    from mindrlhf.models.convert import load_weights, model_config_from_hf_folder

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    rm_cfg, ppo_cfg = load_recipes(out_dir, iterations)
    start = time.perf_counter()
    reward_folder = trl_reward_model(data, rm_cfg, out_dir)
    rm_s = time.perf_counter() - start
    tick = time.perf_counter()
    policy_folder = trl_ppo(data, ppo_cfg, reward_folder, out_dir)
    ppo_s = time.perf_counter() - tick
    cfg = model_config_from_hf_folder(story_model_folder())
    ref, policy, proxy = CausalLM(cfg), CausalLM(cfg), RewardModel(cfg)
    load_weights(ref, story_model_folder(), cfg)
    load_weights(policy, policy_folder, cfg)
    load_weights(proxy, reward_folder, cfg)
    proxy.set_train(False)
    accuracy = pairwise_accuracy(proxy, data.eval_pairs, pair_seq_length(protocol), cfg.pad_token_id)
    judge = HeldOutJudge(ref, proxy, cfg, tokenizer, data.eval_prompts, protocol)
    before, after = judge(ref), judge(policy)
    import trl

    return {
        "framework": "trl",
        "framework_version": f"trl {trl.__version__}",
        "before": before,
        "after": after,
        "rm_accuracy": accuracy,
        "rm_s": rm_s,
        "rl_s": ppo_s,
    }


# ---------------------------------------------------------------------------------------------------------------
# GRPO: the gold judge as the reward function itself (no proxy), same openings, same held-out evaluation


def grpo_recipe(out_dir: str, iterations: int):
    from mindrlhf.config import load_config

    return load_config(
        os.path.join(RECIPES, "run_tinystories_656k_grpo.yaml"),
        [
            f"output_dir={out_dir}/grpo",
            f"grpo.epochs={iterations}",
            f"grpo.save_checkpoint_epochs={iterations}",
            "checkpoint.log_interval=1000000",
        ],
    )


def run_ours_grpo(protocol: StoryProtocol, data, tokenizer, out_dir: str, iterations: int) -> dict:
    """mindrlhf GRPO with the VADER reward function; evaluation before / after."""
    from mindrlhf.rewards import CombinedReward, load_reward_funcs
    from mindrlhf.train.grpo import train_grpo
    from mindrlhf.train.rollout import RewardMix

    cfg = grpo_recipe(out_dir, iterations)
    model_cfg = cfg.model.model_config
    reward = RewardMix(CombinedReward(load_reward_funcs(cfg.grpo.reward_funcs), tokenizer))
    start = time.perf_counter()
    trainer = train_grpo(cfg, data.files["prompts"], reward, story_model_folder())
    rl_s = time.perf_counter() - start
    judge = HeldOutJudge(trainer.ref, None, model_cfg, tokenizer, data.eval_prompts, protocol)
    before, after = judge(trainer.ref), judge(trainer.policy)
    with open(os.path.join(cfg.output_dir, "grpo_metrics.jsonl"), encoding="utf-8") as f:
        curve = [json.loads(line) for line in f]
    phases = {k: float(np.median([m["seconds"][k] for m in curve[1:]])) for k in curve[-1]["seconds"]}
    return {
        "framework": "mindrlhf",
        "algorithm": "grpo",
        "before": before,
        "after": after,
        "rm_accuracy": None,
        "rm_s": 0.0,
        "rl_s": rl_s,
        "iteration_s": phases,
        "curve": [{k: m.get(k) for k in ("reward_mean", "kl")} for m in curve],
    }


def trl_grpo(data, cfg, tokenizer, out_dir: str):
    """TRL's GRPOTrainer with the same group size, budget, clip, KL, loss aggregation and learning rate."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from mindrlhf.rewards import vader_sentiment

    folder, grpo = story_model_folder(), cfg.grpo
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    hf_tokenizer.padding_side = "left"
    prompts = [tokenizer.decode(row.tolist(), skip_special_tokens=False) for row in data.train_prompts]

    def sentiment(completions, **_):
        return [float(x) for x in vader_sentiment(completions)]

    per_generation = grpo.num_prompts * grpo.num_generations
    steps = grpo.epochs * grpo.num_iterations * (per_generation // grpo.batch_size)
    args = GRPOConfig(
        output_dir=os.path.join(out_dir, "trl_grpo_run"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=0,
        gradient_checkpointing=False,
        per_device_train_batch_size=grpo.batch_size,
        gradient_accumulation_steps=1,
        num_generations=grpo.num_generations,
        steps_per_generation=per_generation // grpo.batch_size,
        num_iterations=grpo.num_iterations,
        max_completion_length=grpo.generation.max_new_tokens,
        temperature=grpo.generation.temperature,
        top_p=1.0,
        top_k=0,
        beta=grpo.beta,
        epsilon=grpo.epsilon_low,
        epsilon_high=grpo.epsilon_high,
        loss_type="dapo" if grpo.loss_type == "token" else grpo.loss_type,
        scale_rewards=grpo.scale_rewards,
        learning_rate=cfg.optimizer.learning_rate,
        lr_scheduler_type="cosine",
        warmup_steps=cfg.lr_schedule.warmup_steps,
        max_grad_norm=cfg.runner_wrapper.max_grad_norm,
        weight_decay=0.0,
        max_steps=steps,
        save_strategy="no",
        report_to="none",
        logging_steps=10,
        disable_tqdm=True,
        dataloader_num_workers=0,
        log_completions=False,
    )
    clock = TRLPhaseClock(grpo.num_iterations * (per_generation // grpo.batch_size))
    trainer = GRPOTrainer(
        model=AutoModelForCausalLM.from_pretrained(folder),
        reward_funcs=sentiment,
        args=args,
        train_dataset=Dataset.from_dict({"prompt": prompts}),
        processing_class=hf_tokenizer,
        callbacks=[clock.callback(TrainerCallback)],
    )
    clock.attach(trainer)
    trainer.train()
    saved = os.path.join(out_dir, "trl_grpo_policy")
    trainer.model.save_pretrained(saved)
    return saved, clock.median_phases()


class TRLPhaseClock:
    """Per-iteration phases of TRL's GRPOTrainer, the split our ``grpo_metrics.jsonl`` records: ``generation``
    (``_generate``), ``scoring`` (``_calculate_rewards``), ``logprobs`` (old-policy and reference log-probs computed
    while making the batch) and ``update`` (the rest of the iteration's optimizer steps), from wrappers around those
    methods and the step-end times of a callback."""

    def __init__(self, steps_per_iteration: int):
        self.steps_per_iteration = steps_per_iteration
        self.step_ends: list = []
        self.phases: list = []  # per iteration: {phase: seconds}
        self.making_batch = False

    def callback(self, base):
        clock = self

        class StepClock(base):
            def on_step_end(self, *_, **__):
                clock.step_ends.append(time.perf_counter())

        return StepClock()

    def _add(self, phase: str, seconds: float) -> None:
        iteration = len(self.step_ends) // self.steps_per_iteration
        while len(self.phases) <= iteration:
            self.phases.append({"generation": 0.0, "scoring": 0.0, "logprobs": 0.0})
        self.phases[iteration][phase] += seconds

    def _timed(self, method, phase: str, only_while_making_batch: bool = False):
        def wrapper(*args, **kwargs):
            if only_while_making_batch and not self.making_batch:
                return method(*args, **kwargs)
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._add(phase, time.perf_counter() - start)

        return wrapper

    def attach(self, trainer) -> None:
        make_batch = trainer._generate_and_score_completions

        def making(*args, **kwargs):
            self.making_batch = True
            try:
                return make_batch(*args, **kwargs)
            finally:
                self.making_batch = False

        trainer._generate_and_score_completions = making
        trainer._generate = self._timed(trainer._generate, "generation")
        trainer._calculate_rewards = self._timed(trainer._calculate_rewards, "scoring")
        trainer._get_per_token_logps_and_entropies = self._timed(
            trainer._get_per_token_logps_and_entropies, "logprobs", only_while_making_batch=True
        )

    def median_phases(self) -> dict:
        """Median over the iterations after the first (the first compiles nothing in torch, but warms caches):
        ``{generation, scoring, logprobs, update, total}`` seconds."""
        n = self.steps_per_iteration
        ends = self.step_ends[n - 1 :: n]
        rows = []
        for i in range(1, len(ends)):
            phases = dict(self.phases[i])
            phases["total"] = ends[i] - ends[i - 1]
            phases["update"] = phases["total"] - phases["generation"] - phases["scoring"] - phases["logprobs"]
            rows.append(phases)
        if not rows:
            return {"total": float("nan")}
        return {k: float(np.median([r[k] for r in rows])) for k in rows[0]}


def run_peer_grpo(protocol: StoryProtocol, data, tokenizer, out_dir: str, iterations: int) -> dict:
    import torch
    import trl

    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import load_weights, model_config_from_hf_folder

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    cfg = grpo_recipe(out_dir, iterations)
    start = time.perf_counter()
    policy_folder, iteration_s = trl_grpo(data, cfg, tokenizer, out_dir)
    rl_s = time.perf_counter() - start
    model_cfg = model_config_from_hf_folder(story_model_folder())
    ref, policy = CausalLM(model_cfg), CausalLM(model_cfg)
    load_weights(ref, story_model_folder(), model_cfg)
    load_weights(policy, policy_folder, model_cfg)
    judge = HeldOutJudge(ref, None, model_cfg, tokenizer, data.eval_prompts, protocol)
    return {
        "framework": "trl",
        "framework_version": f"trl {trl.__version__}",
        "algorithm": "grpo",
        "before": judge(ref),
        "after": judge(policy),
        "rm_accuracy": None,
        "rm_s": 0.0,
        "rl_s": rl_s,
        "iteration_s": iteration_s,
    }


# ---------------------------------------------------------------------------------------------------------------
# DPO: the gold pairs themselves, no proxy; each side trains in its own process (peak memory)


DPO_RECIPE = os.path.join(RECIPES, "run_tinystories_656k_dpo.yaml")


def dpo_overrides(out_dir: str) -> list:
    return [
        f"output_dir={out_dir}",
        "checkpoint.log_interval=1000000",
        "checkpoint.save_checkpoint_steps=1000000",
        "checkpoint.keep_checkpoint_max=1",
    ]


def run_dpo_side(side: str, data, out_dir: str) -> dict:
    """Train one side in its own process (``dpo_sides.py``), then judge its policy here with the shared evaluation."""
    from dpo_sides import run_side  # noqa: E402 - a sibling module

    from mindrlhf.config import load_config
    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import load_weights, model_config_from_hf_folder
    from mindrlhf.train.dpo import evaluate_preferences, reference_model

    width = int(data.train_prompts.shape[1])
    chosen, rejected = data.train_pairs.chosen, data.train_pairs.rejected
    job = {
        "recipe": DPO_RECIPE,
        "overrides": dpo_overrides(out_dir),
        "model": story_model_folder(),
        "out_dir": out_dir,
        "threads": DPO_THREADS,
        "pairs_file": data.files["pairs"],
        "pairs": [[c[:width] for c in chosen], [c[width:] for c in chosen], [r[width:] for r in rejected]],
    }
    result = run_side(side, job)
    cfg = model_config_from_hf_folder(story_model_folder())
    ref, policy = reference_model(cfg, story_model_folder(), 0), CausalLM(cfg)
    load_weights(policy, result["checkpoint"], cfg)
    dpo = load_config(DPO_RECIPE, dpo_overrides(out_dir)).dpo
    held_out = evaluate_preferences(policy, ref, data.files["eval_pairs"], dpo)
    return {**result, "held_out": held_out, "policy": policy, "ref": ref}


def run_dpo(protocol: StoryProtocol, data, tokenizer, out_dir: str, frameworks) -> list:
    """Both sides of the DPO row (see the module docstring)."""
    from mindrlhf.models.convert import model_config_from_hf_folder

    cfg = model_config_from_hf_folder(story_model_folder())
    sides = []
    for framework in frameworks:
        side = run_dpo_side(framework, data, os.path.join(out_dir, f"dpo_{framework}"))
        judge = HeldOutJudge(side["ref"], None, cfg, tokenizer, data.eval_prompts, protocol)
        before, after = judge(side.pop("ref")), judge(side.pop("policy"))
        wins = np.mean(
            (np.array(after.gold) > np.array(before.gold)) + 0.5 * (np.array(after.gold) == np.array(before.gold))
        )
        sides.append(
            {
                "framework": "mindrlhf" if framework == "ours" else "trl",
                "algorithm": "dpo",
                "before": before,
                "after": after,
                "rm_accuracy": None,
                "rm_s": 0.0,
                "rl_s": side["wall_s"],
                "rollouts": 0,
                "framework_version": side.get("framework_version"),
                "win_rate": float(wins),
                "held_out_accuracy": side["held_out"]["rewards/accuracies"],
                "held_out": side["held_out"],
                "steps": side["steps"],
                "step_s_median": side["step_s_median"],
                "peak_rss_mb": side["peak_rss_mb"],
                "rss_after_import_mb": side["rss_after_import_mb"],
                "first_loss": side["first_loss"],
                "last_loss": side["last_loss"],
            }
        )
    return sides


# ---------------------------------------------------------------------------------------------------------------
# report


def result_entry(side: dict, rollouts: int) -> dict:
    before: PolicyEvaluation = side["before"]
    after: PolicyEvaluation = side["after"]
    extra = {
        k: side[k]
        for k in (
            "curve",
            "iteration_s",
            "win_rate",
            "held_out_accuracy",
            "held_out",
            "steps",
            "step_s_median",
            "peak_rss_mb",
            "rss_after_import_mb",
            "first_loss",
            "last_loss",
            "framework_version",
        )
        if k in side
    }
    return summary_row(
        side.get("algorithm", "ppo"),
        before,
        after,
        side["rm_s"] + side["rl_s"],
        {
            "framework": side["framework"],
            "rm_accuracy": side["rm_accuracy"],
            "rm_s": side["rm_s"],
            "rl_s": side["rl_s"],
            "rollouts": side.get("rollouts", rollouts),
            "kl_before": before.kl,
            "response_length_after": after.response_length,
            **extra,
        },
    )


def markdown_table(entries: list) -> str:
    lines = [
        "| algorithm | framework | proxy RM acc | gold before | gold after | gain | KL | proxy before -> after "
        "| RM s | RL s | wall s |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for e in entries:
        accuracy = "-" if e["rm_accuracy"] is None else f"{e['rm_accuracy']:.3f}"
        lines.append(
            f"| {e['algorithm']} | {e['framework']} | {accuracy} | {e['gold_before']:.3f} | "
            f"{e['gold_after']:.3f} | {e['gold_gain']:+.3f} | {e['kl']:.2f} | {e['proxy_before']:.2f} -> "
            f"{e['proxy_after']:.2f} | {e['rm_s']:.0f} | {e['rl_s']:.0f} | {e['wall_s']:.0f} |"
        )
    return "\n".join(lines)


PHASES = ("generation", "scoring", "logprobs", "update", "total")


def phase_table(ours: dict, peer: dict) -> str:
    """Median seconds per iteration by phase, ours against TRL's, with the speed ratio (TRL / ours)."""
    lines = ["| phase | mindrlhf s | TRL s | TRL / ours |", "|---|---:|---:|---:|"]
    for phase in PHASES:
        a, b = ours.get(phase, float("nan")), peer.get(phase, float("nan"))
        ratio = b / a if a and np.isfinite(a) and np.isfinite(b) else float("nan")
        lines.append(f"| {phase} | {a:.3f} | {b:.3f} | {ratio:.2f}x |")
    return "\n".join(lines)


def samples_table(side: dict, rows: int = 4, stride: int = 4) -> str:
    lines = [f"| gold before | before ({side['framework']}) | gold after | after |", "|---:|---|---:|---|"]
    before, after = side["before"], side["after"]
    for i in range(0, min(len(before.texts), rows * stride), stride):
        cell = [" ".join(t.split()).replace("|", "/")[:110] for t in (before.texts[i], after.texts[i])]
        lines.append(f"| {before.gold[i]:+.2f} | {cell[0]} | {after.gold[i]:+.2f} | {cell[1]} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=20, help="RL iterations (64 rollouts each)")
    parser.add_argument("--algorithms", default="ppo,grpo", help="comma-separated: ppo, grpo, dpo")
    parser.add_argument("--train_prompts", type=int, default=256)
    parser.add_argument("--eval_prompts", type=int, default=32)
    side = parser.add_mutually_exclusive_group()
    side.add_argument("--ours-only", action="store_true")
    side.add_argument("--peer-only", action="store_true")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON document here")
    parser.add_argument("--output_dir", default="", help="keep checkpoints and data here (default: a temp folder)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    for name in ("accelerate", "mindrlhf.train.monitor"):
        logging.getLogger(name).setLevel(logging.WARNING)
    protocol = StoryProtocol(train_prompts=args.train_prompts, eval_prompts=args.eval_prompts)
    out_dir = args.output_dir or tempfile.mkdtemp(prefix="alignment_quality_")
    load_start = os.getloadavg()
    tick = time.perf_counter()
    _, _, tokenizer, data = prepare(protocol, os.path.join(out_dir, "data"))
    data_s = time.perf_counter() - tick
    runners = {
        ("ppo", "ours"): run_ours,
        ("ppo", "trl"): run_peer,
        ("grpo", "ours"): run_ours_grpo,
        ("grpo", "trl"): run_peer_grpo,
    }
    frameworks = [f for f, skip in (("ours", args.peer_only), ("trl", args.ours_only)) if not skip]
    sides = []
    for algorithm in args.algorithms.split(","):
        if algorithm == "dpo":
            sides += run_dpo(protocol, data, tokenizer, out_dir, frameworks)
            continue
        sides += [
            runners[(algorithm, framework)](
                protocol, data, tokenizer, os.path.join(out_dir, framework), args.iterations
            )
            for framework in frameworks
        ]
    rollouts = args.iterations * 64  # both RL recipes make 64 rollouts per iteration (DPO makes none)
    entries = [result_entry(s, rollouts) for s in sides]
    print(markdown_table(entries))
    for s in sides:
        print()
        print(samples_table(s))
    for algorithm in args.algorithms.split(","):
        pair = [e for e in entries if e["algorithm"] == algorithm]
        if len(pair) == 2:
            ours, peer = pair
            print(
                f"\n{algorithm}: gold gain ours / TRL: {ours['gold_gain']:.3f} / {peer['gold_gain']:.3f}; "
                f"speed (TRL wall / ours): {peer['wall_s'] / ours['wall_s']:.2f}x"
            )
            if "iteration_s" in ours and "iteration_s" in peer:
                print(f"\n{algorithm}: median seconds per iteration (iterations after the first)\n")
                print(phase_table(ours["iteration_s"], peer["iteration_s"]))
            if algorithm == "dpo":
                print(
                    f"dpo: per step (TRL / ours): {peer['step_s_median'] / ours['step_s_median']:.2f}x; peak RSS "
                    f"ours / TRL: {ours['peak_rss_mb']:.0f} / {peer['peak_rss_mb']:.0f} MiB; held-out "
                    f"implicit-reward accuracy ours / TRL: {ours['held_out_accuracy']:.3f} / "
                    f"{peer['held_out_accuracy']:.3f}; win rate vs reference ours / TRL: {ours['win_rate']:.3f} / "
                    f"{peer['win_rate']:.3f}"
                )
    from bench_common import versions  # noqa: E402 - shared with the other benchmarks

    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "load_avg_at_start": load_start,
            "load_avg_at_end": os.getloadavg(),
        },
        "versions": versions(),
        "protocol": dataclasses.asdict(protocol),
        "data_s": data_s,
        "pairs": {
            "train": len(data.train_pairs.chosen),
            "held_out": len(data.eval_pairs.chosen),
            "ties_dropped": data.train_pairs.ties,
        },
        "results": entries,
    }
    print_report(report, args.json)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    main()
