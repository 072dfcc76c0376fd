"""One DPO side per process, for the benchmarks that put mindrlhf's DPO next to TRL's ``DPOTrainer``
(``alignment_quality.py --algorithms dpo`` and ``dpo_oasst.py``).

:func:`run_side` writes a job file and runs this script on it in a fresh process, so each side's peak RSS
(``VmHWM``) is its own and the TRL side imports no MindSpore. A job names the DPO recipe and its ``--set``
overrides (both sides read their settings from it), the starting model folder, the pairs MindRecord (ours) and
the same pairs' prompt / chosen / rejected token ids (TRL's, its tokenization bypassed), and the compute threads.

    python benchmarks/dpo_sides.py JOB.json     # prints the side's result as JSON on its last line
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from bench_common import rss_mb, step_clock  # noqa: E402 - shared with the other benchmarks


def job_config(job: dict):
    """The DPO recipe with the job's overrides (mindrlhf.config imports no framework)."""
    from mindrlhf.config import load_config

    return load_config(job["recipe"], job["overrides"])


def train_ours(job: dict) -> dict:
    """mindrlhf DPO on the pairs MindRecord; returns the checkpoint, step times and losses."""
    import mindspore as ms

    from mindrlhf.train.dpo import train_dpo

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    ms.device_context.cpu.op_tuning.threads_num(job["threads"])
    after_import = rss_mb()
    _, fit = train_dpo(job_config(job), job["pairs_file"], job["model"])
    return {
        "checkpoint": fit.last_checkpoint,
        "step_s": fit.step_seconds,
        "losses": fit.losses,
        "rss_after_import_mb": after_import,
    }


def trl_args(cfg, out_dir: str):
    """TRL's ``DPOConfig`` with the recipe's settings: beta, loss, Adam, clipping, batch, epochs, constant lr,
    precomputed reference log-probs, no checkpointing, no saving, no logging integrations."""
    import trl

    opt, runner = cfg.optimizer, cfg.runner_config
    return trl.DPOConfig(
        output_dir=os.path.join(out_dir, "trl_dpo_run"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=0,
        beta=cfg.dpo.beta,
        loss_type=[cfg.dpo.loss_type],
        learning_rate=opt.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.beta1,
        adam_beta2=opt.beta2,
        adam_epsilon=opt.eps,
        max_grad_norm=cfg.runner_wrapper.max_grad_norm,
        per_device_train_batch_size=runner.batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=runner.epochs,
        dataloader_drop_last=True,
        max_length=None,
        precompute_ref_log_probs=True,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )


def train_trl(job: dict) -> dict:
    """TRL's ``DPOTrainer`` on the job's token ids; returns the saved folder, step times and losses."""
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    torch.set_num_threads(job["threads"])
    torch.manual_seed(0)
    after_import = rss_mb()

    class PreTokenized(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, *_, **__):  # the ids are the benchmark's: no re-tokenization
            return dataset

    prompts, chosen, rejected = job["pairs"]
    dataset = Dataset.from_dict({"prompt_ids": prompts, "chosen_ids": chosen, "rejected_ids": rejected})
    tokenizer = AutoTokenizer.from_pretrained(job["model"])
    if tokenizer.pad_token is None:  # GPT-2 has none; masks, not ids, mark padding
        tokenizer.pad_token = tokenizer.eos_token
    clock, times = step_clock(TrainerCallback)
    trainer = PreTokenized(
        model=AutoModelForCausalLM.from_pretrained(job["model"]),
        args=trl_args(job_config(job), job["out_dir"]),
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    trainer.train()
    saved = os.path.join(job["out_dir"], "trl_dpo_policy")
    trainer.model.save_pretrained(saved)
    return {
        "checkpoint": saved,
        "step_s": [b - a for a, b in times],
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "rss_after_import_mb": after_import,
        "framework_version": f"trl {trl.__version__}",
    }


def run_side(side: str, job: dict) -> dict:
    """Train ``side`` ("ours" or "trl") in a fresh process; its result plus ``wall_s``, ``steps``,
    ``step_s_median`` (steps after the first, which compiles / warms up), first and last loss."""
    os.makedirs(job["out_dir"], exist_ok=True)
    job_file = os.path.join(job["out_dir"], f"job_{side}.json")
    with open(job_file, "w", encoding="utf-8") as f:
        json.dump({**job, "side": side}, f)
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), job_file], capture_output=True, text=True, check=False
    )
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{side} DPO worker failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    steps, losses = result["step_s"], result["losses"]
    result.update(
        wall_s=wall,
        steps=len(steps),
        step_s_median=float(np.median(steps[1:])),
        first_loss=losses[0] if losses else None,
        last_loss=losses[-1] if losses else None,
    )
    return result


def main(job_file: str) -> None:
    with open(job_file, encoding="utf-8") as f:
        job = json.load(f)
    result = {"ours": train_ours, "trl": train_trl}[job["side"]](job)
    result["peak_rss_mb"] = rss_mb()
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
