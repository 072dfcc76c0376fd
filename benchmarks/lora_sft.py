"""SFT with LoRA: mindrlhf against TRL's ``SFTTrainer`` + PEFT on the same model and data (not a test).

Setup: GPT-2 124M shape (12 layers x 768, vocab 50257), one set of random weights written once as a Hugging Face
folder that both sides start from; 32 random token sequences of 256 tokens, loss on the second half of each
(TRL: ``completion_mask``); batch 4, 8 steps, AdamW lr 1e-4, float32 on CPU with 2 threads, no gradient
checkpointing; LoRA r 16, alpha 32, no dropout, on ``c_attn`` (PEFT: ``fan_in_fan_out`` for GPT-2's Conv1D).
Each side runs in its own process, so its peak RSS (``ru_maxrss``) is its own; step time is the median of the
steps after the first (ours compiles its graph in the first).

    python benchmarks/lora_sft.py [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_124m.yaml")
TOKENIZER = os.path.join(ROOT, "mindrlhf", "assets", "tokenizers", "gpt2")
WIDTH, RECORDS, BATCH, STEPS, THREADS, LR = 256, 32, 4, 8, 2, 1e-4
LORA = dict(r=16, alpha=32.0, target_modules=["c_attn"])


def token_rows():
    """``RECORDS`` rows of ``WIDTH`` random token ids and the loss mask (second half)."""
    import numpy as np

    rng = np.random.default_rng(0)
    ids = rng.integers(3, 50257, (RECORDS, WIDTH)).astype(np.int32)
    mask = np.tile((np.arange(WIDTH) >= WIDTH // 2).astype(np.int32), (RECORDS, 1))
    return ids, mask


def write_base(folder: str) -> str:
    """The shared starting weights: a seeded random GPT-2 124M as a Hugging Face folder."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(n_positions=WIDTH)).save_pretrained(folder)
    return folder


def run_ours(base: str, out: str) -> dict:
    import mindspore as ms
    import numpy as np

    from mindrlhf.config import load_config
    from mindrlhf.context import init_context
    from mindrlhf.data.convert_preference import atomic_mindrecord
    from mindrlhf.data.convert_sft import SFT_SCHEMA
    from mindrlhf.train.sft import train_sft

    cfg = load_config(
        RECIPE,
        [
            "model.model_config.compute_dtype=float32",
            f"model.model_config.seq_length={WIDTH}",
            "context.device_target=CPU",
            f"runner_config.batch_size={BATCH}",
            "runner_config.epochs=1",
            "runner_wrapper.loss_scale_value=1.0",
            "optimizer.type=AdamWeightDecay",
            "optimizer.weight_decay=0.0",
            f"optimizer.learning_rate={LR}",
            "lr_schedule.type=constant",
            f"lr_schedule.learning_rate={LR}",
            f"load_checkpoint={base}",
            f"output_dir={out}",
            f"lora.r={LORA['r']}",
            f"lora.alpha={LORA['alpha']}",
            "lora.target_modules=[c_attn]",
            "checkpoint.save_checkpoint_steps=1000",
        ],
    )
    init_context(cfg.context, cfg.seed)
    ms.device_context.cpu.op_tuning.threads_num(THREADS)
    ids, mask = token_rows()
    path = os.path.join(out, "sft.mindrecord")
    with atomic_mindrecord(path, SFT_SCHEMA) as writer:
        writer.write_raw_data(
            [{"input_ids": i, "attention_mask": np.ones(WIDTH, np.int32), "loss_mask": m} for i, m in zip(ids, mask)]
        )
    _, fit = train_sft(cfg, path, stop_at_step=STEPS)
    return {
        "steps": len(fit.losses),
        "step_s_median": float(np.median(fit.step_seconds[1:])),
        "first_loss": fit.losses[0],
        "last_loss": fit.losses[-1],
    }


def run_trl(base: str, out: str) -> dict:
    import numpy as np
    import peft
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, GPT2TokenizerFast, TrainerCallback

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_common import step_clock  # noqa: E402 - a sibling module

    torch.set_num_threads(THREADS)
    ids, mask = token_rows()
    dataset = Dataset.from_dict({"input_ids": ids.tolist(), "completion_mask": mask.tolist()})
    tokenizer = GPT2TokenizerFast(os.path.join(TOKENIZER, "vocab.json"), os.path.join(TOKENIZER, "merges.txt"))
    tokenizer.pad_token = tokenizer.eos_token
    args = trl.SFTConfig(
        output_dir=os.path.join(out, "trl"),
        use_cpu=True,
        seed=0,
        learning_rate=LR,
        lr_scheduler_type="constant",
        weight_decay=0.0,
        per_device_train_batch_size=BATCH,
        max_steps=STEPS,
        max_length=WIDTH,
        completion_only_loss=True,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
        gradient_checkpointing=False,
    )
    lora = peft.LoraConfig(
        r=LORA["r"],
        lora_alpha=LORA["alpha"],
        lora_dropout=0.0,
        target_modules=LORA["target_modules"],
        fan_in_fan_out=True,
        task_type="CAUSAL_LM",
    )
    clock, times = step_clock(TrainerCallback)
    trainer = trl.SFTTrainer(
        model=AutoModelForCausalLM.from_pretrained(base),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        peft_config=lora,
        callbacks=[clock],
    )
    trainer.train()
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "steps": len(times),
        "step_s_median": float(np.median([b - a for a, b in times[1:]])),
        "first_loss": losses[0],
        "last_loss": losses[-1],
        "versions": f"trl {trl.__version__}, peft {peft.__version__}, torch {torch.__version__}",
    }


def run_side(side: str, base: str) -> dict:
    with tempfile.TemporaryDirectory() as out:
        tick = time.perf_counter()
        figures = run_ours(base, out) if side == "mindrlhf" else run_trl(base, out)
    figures.update(
        side=side,
        wall_s=time.perf_counter() - tick,
        peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / float(1 << 20),
    )
    return figures


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("mindrlhf", "trl"), help=argparse.SUPPRESS)
    parser.add_argument("--base", help=argparse.SUPPRESS)
    parser.add_argument("--json", metavar="PATH", help="write the report here")
    args = parser.parse_args(argv)
    if args.side:
        sys.stdout.write(json.dumps(run_side(args.side, args.base)) + "\n")
        return
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with tempfile.TemporaryDirectory() as tmp:
        base = write_base(os.path.join(tmp, "base"))
        report = {
            side: json.loads(
                subprocess.run(
                    [sys.executable, __file__, "--side", side, "--base", base],
                    check=True,
                    capture_output=True,
                    text=True,
                    env=env,
                )
                .stdout.strip()
                .splitlines()[-1]
            )
            for side in ("mindrlhf", "trl")
        }
    report["speedup_trl_over_mindrlhf"] = report["trl"]["step_s_median"] / report["mindrlhf"]["step_s_median"]
    report["load_average_at_end"] = os.getloadavg()[0]
    if args.json:
        with open(f"{args.json}.tmp", "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        os.replace(f"{args.json}.tmp", args.json)
    sys.stdout.write(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
