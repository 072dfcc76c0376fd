"""Peak host memory (RSS) and seconds per iteration of PPO on GPT-2 124M, full fine-tuning against LoRA (not a test).

Setup: GPT-2 124M shape (12 layers x 768, vocab 50257; random weights: memory and time do not depend on the values),
fp32 on CPU, graph mode; shared-backbone policy + value head, an analytic reward (share of one token), 8 random
prompts of 32 tokens, 32 new tokens sampled, one PPO epoch of one minibatch of 8 rollouts per iteration, 2
iterations (the first compiles; the second is the step time reported). LoRA: r 16, alpha 32 on ``c_attn`` and
``c_proj`` of every block. Full: the reference is a second copy of the model and AdamW holds two moments of every
parameter; LoRA: the reference is the policy with its adapters off and AdamW holds the adapters' moments only.

Each side runs in its own process so its peak RSS (``ru_maxrss``) is its own:

    python benchmarks/lora_memory.py [--json out.json] [--profile]

``--profile`` adds where the memory goes: the resident set (``VmRSS``, sampled every 20 ms) at the start and end
and its peak inside each phase: building the models, each generation, each log-prob pass, each train step.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

LORA = dict(r=16, alpha=32.0, target_modules=["c_attn", "c_proj"])
WIDTH, NEW_TOKENS, PROMPTS = 32, 32, 8


def write_prompts(path: str, vocab: int) -> str:
    """Random prompts of ``WIDTH`` tokens in the prompt converter's schema."""
    import numpy as np

    from mindrlhf.data.convert_preference import atomic_mindrecord
    from mindrlhf.data.convert_prompts import PROMPT_SCHEMA

    rng = np.random.default_rng(0)
    records = [
        {
            "prompt_ids": rng.integers(3, vocab, WIDTH).astype(np.int64),
            "prompt_length": np.int64(WIDTH),
            "pretrain_ids": np.zeros(WIDTH, np.int64),
            "loss_mask": np.zeros(WIDTH, np.int64),
        }
        for _ in range(PROMPTS)
    ]
    with atomic_mindrecord(path, PROMPT_SCHEMA) as writer:
        writer.write_raw_data(records)
    return path


def share_of_token(prompts, responses):
    """Reward: share of response tokens equal to 7."""
    del prompts
    return [sum(t == 7 for t in r) / max(len(r), 1) for r in responses]


def rss_mib() -> float:
    """This process's resident set now (``VmRSS``), MiB."""
    with open("/proc/self/status", encoding="utf-8") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024.0


class RssPhases:
    """Resident set per phase: a thread samples ``VmRSS``; :meth:`wrap` makes a function a named phase, recorded
    as ``[name, RSS at entry, peak inside, RSS at exit]`` (MiB) for each call."""

    def __init__(self, interval: float = 0.02):
        self.phases, self.peak, self.interval = [], 0.0, interval
        self.running = True
        threading.Thread(target=self._sample, daemon=True).start()

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, rss_mib())
            time.sleep(self.interval)

    def wrap(self, owner, attr: str, name: str) -> None:
        inner = getattr(owner, attr)

        def phase(*args, **kwargs):
            start = self.peak = rss_mib()
            try:
                return inner(*args, **kwargs)
            finally:
                end = rss_mib()
                self.phases.append([name, round(start), round(max(self.peak, end)), round(end)])

        setattr(owner, attr, phase)


def profile_phases():
    """Wrap the phases of a PPO iteration (see :class:`RssPhases`)."""
    from mindrlhf.models.generation import Generator
    from mindrlhf.train import ppo
    from mindrlhf.train.rollout import RolloutScorer
    from mindrlhf.train.step import TrainStep

    phases = RssPhases()
    phases.wrap(ppo, "build_ppo_models", "build models")
    phases.wrap(Generator, "generate", "generate")
    phases.wrap(RolloutScorer, "__call__", "log-probs")
    phases.wrap(TrainStep, "__call__", "train step")
    return phases


def run_side(mode: str, profile: bool = False) -> dict:
    """One PPO run in this process; returns its figures."""
    from mindrlhf.config import LoRAConfig, LossScaleConfig, ModelConfig, ModelSection, PPOConfig, RunConfig
    from mindrlhf.context import init_context

    start_rss = rss_mib()
    phases = profile_phases() if profile else None
    from mindrlhf.train.ppo import train_ppo

    model = ModelConfig(seq_length=WIDTH + NEW_TOKENS)
    ppo = PPOConfig(epochs=2, num_rollouts=PROMPTS, chunk_size=PROMPTS, batch_size=PROMPTS, ppo_epochs=1)
    ppo.generation = dataclasses.replace(ppo.generation, max_new_tokens=NEW_TOKENS, top_k=0)
    with tempfile.TemporaryDirectory() as out:
        cfg = RunConfig(
            output_dir=out,
            model=ModelSection(model),
            ppo=ppo,
            runner_wrapper=LossScaleConfig(loss_scale_value=1.0),
            lora=LoRAConfig(**LORA) if mode == "lora" else LoRAConfig(),
        )
        init_context(cfg.context, cfg.seed)
        prompts = write_prompts(os.path.join(out, "prompts.mindrecord"), model.vocab_size)
        tick = time.perf_counter()
        trainer = train_ppo(cfg, prompts, share_of_token)
        total = time.perf_counter() - tick
        trainable = sum(p.size for p in trainer.step.weights)
        with open(os.path.join(out, "ppo_metrics.jsonl"), encoding="utf-8") as f:
            iterations = [json.loads(line) for line in f]
    report = {
        "mode": mode,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "trainable_parameters": int(trainable),
        "run_seconds": total,
        "iteration_seconds": [m["seconds"] for m in iterations],
    }
    if phases is not None:
        phases.running = False
        report["rss_after_import_mib"] = round(start_rss)
        report["phases_mib"] = phases.phases  # [phase, RSS at entry, peak inside, RSS at exit]
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("full", "lora"), help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="PATH", help="write the report here")
    parser.add_argument("--profile", action="store_true", help="add the resident set of each phase")
    args = parser.parse_args(argv)
    if args.side:
        print(json.dumps(run_side(args.side, args.profile)))
        return
    report = {}
    for side in ("full", "lora"):
        out = subprocess.run(
            [sys.executable, __file__, "--side", side] + ["--profile"] * args.profile,
            check=True,
            capture_output=True,
            text=True,
        )
        report[side] = json.loads(out.stdout.strip().splitlines()[-1])
    report["rss_ratio_lora_over_full"] = report["lora"]["peak_rss_mib"] / report["full"]["peak_rss_mib"]
    text = json.dumps(report, indent=2)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text)
    sys.stdout.write(text + "\n")


if __name__ == "__main__":
    main()
