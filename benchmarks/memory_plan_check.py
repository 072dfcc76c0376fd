"""The memory planner against measured peak host memory (RSS) of real CPU training (not a test).

Each case trains for two SFT steps (real MindSpore training, graph mode, float32, random token MindRecords of the
recipe's width) in its own process and reports its peak RSS (``ru_maxrss``) beside the planner's per-device
total for the same run. CPU RSS also holds the Python and MindSpore runtime, the dataset pipeline and the compiled
graphs, which the planner does not cost: the smallest case (the tiny GPT-2) gives that offset, ``measured -
planned``, and the other cases are compared after subtracting it. Full against LoRA on the same model is compared
as a difference, where the offset cancels.

    python benchmarks/memory_plan_check.py [--cases sft_tiny_full,sft_124m_full] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_sft.yaml")
SFT_124M = [
    "model.model_config.compute_dtype=float32",
    "context.device_target=CPU",
    "model.model_config.seq_length=256",
    "runner_config.batch_size=4",
    "runner_config.epochs=1",
    "runner_wrapper.loss_scale_value=1.0",
]
LORA = ["lora.r=16", "lora.alpha=32", "lora.target_modules=[c_attn]"]
CASES = {  # name -> (recipe, overrides)
    "sft_tiny_full": (TINY, []),
    "sft_tiny_lora": (TINY, LORA),
    "sft_124m_full": (
        os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_124m.yaml"),
        SFT_124M + ["optimizer.type=AdamWeightDecay", "lr_schedule.type=constant"],
    ),
}
CASES["sft_124m_lora"] = (CASES["sft_124m_full"][0], CASES["sft_124m_full"][1] + LORA)
RECORDS = 16
STEPS = 2


def write_records(path: str, vocab: int, width: int) -> str:
    """``RECORDS`` random SFT records of ``width`` tokens (loss on the second half)."""
    import numpy as np

    from mindrlhf.data.convert_preference import atomic_mindrecord
    from mindrlhf.data.convert_sft import SFT_SCHEMA

    rng = np.random.default_rng(0)
    loss_mask = (np.arange(width) >= width // 2).astype(np.int32)
    records = [
        {
            "input_ids": rng.integers(3, vocab, width).astype(np.int32),
            "attention_mask": np.ones(width, np.int32),
            "loss_mask": loss_mask,
        }
        for _ in range(RECORDS)
    ]
    with atomic_mindrecord(path, SFT_SCHEMA) as writer:
        writer.write_raw_data(records)
    return path


def run_case(name: str) -> dict:
    """Train ``STEPS`` SFT steps of case ``name`` in this process; returns measured and planned bytes."""
    from mindrlhf.config import load_config
    from mindrlhf.context import init_context
    from mindrlhf.tools.memory_plan import Layout, plan
    from mindrlhf.train.sft import train_sft

    recipe, overrides = CASES[name]
    with tempfile.TemporaryDirectory() as out:
        cfg = load_config(recipe, [*overrides, f"output_dir={out}"])
        model_cfg = cfg.model.model_config
        planned = plan("sft", cfg, Layout(1, False))["lora" if cfg.lora.enabled else "full"]
        init_context(cfg.context, cfg.seed)
        data = write_records(os.path.join(out, "sft.mindrecord"), model_cfg.vocab_size, model_cfg.seq_length)
        train_sft(cfg, data, stop_at_step=STEPS)
    return {
        "case": name,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "planned_bytes": sum(m.total(cfg.recompute_config.recompute) for m in planned),
    }


def measure(name: str) -> dict:
    """Run case ``name`` in a fresh process (its peak RSS is its own) and return its figures."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, __file__, "--case", name], check=True, capture_output=True, text=True, env=env
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def compare(results: dict) -> dict:
    """Offset from the tiny full case; the model-dependent part and its error for every case; full - LoRA."""
    gib = float(1 << 30)
    base = results.get("sft_tiny_full")
    offset = base["peak_rss_bytes"] - base["planned_bytes"] if base else 0
    report = {"offset_gib": offset / gib, "cases": {}}
    for name, r in results.items():
        model_part = r["peak_rss_bytes"] - offset
        report["cases"][name] = {
            "peak_rss_gib": r["peak_rss_bytes"] / gib,
            "planned_gib": r["planned_bytes"] / gib,
            "measured_minus_offset_gib": model_part / gib,
            "error_of_plan": (r["planned_bytes"] - model_part) / max(model_part, 1),
        }
    for size in ("tiny", "124m"):
        full, lora = results.get(f"sft_{size}_full"), results.get(f"sft_{size}_lora")
        if full and lora:
            report[f"full_minus_lora_{size}_gib"] = {
                "measured": (full["peak_rss_bytes"] - lora["peak_rss_bytes"]) / gib,
                "planned": (full["planned_bytes"] - lora["planned_bytes"]) / gib,
            }
    return report


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=sorted(CASES), help=argparse.SUPPRESS)
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated cases to run")
    parser.add_argument("--json", metavar="PATH", help="write the report here")
    args = parser.parse_args(argv)
    if args.case:
        sys.stdout.write(json.dumps(run_case(args.case)) + "\n")
        return
    results = {name: measure(name) for name in args.cases.split(",")}
    report = {"results": results, "comparison": compare(results)}
    if args.json:
        tmp = f"{args.json}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        os.replace(tmp, args.json)
    sys.stdout.write(json.dumps(report["comparison"], indent=2) + "\n")


if __name__ == "__main__":
    main()
