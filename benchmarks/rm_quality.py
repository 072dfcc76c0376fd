"""Reward-model quality on real human preferences: train a tiny reward model on the bundled Chinese OpenAssistant
rankings (``mindrlhf/assets/data/oasst_rm_zh.json``) and report held-out pairwise accuracy and wall time.

The split is by conversation (no prompt appears on both sides): every ``--holdout``-th conversation is held out.
Pairs are best-vs-each-worse answers (the converter's oasst rule). Prints JSON.

    python benchmarks/rm_quality.py [--family llama] [--epochs 2] [--seq 384]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mindspore as ms  # noqa: E402

from mindrlhf.config import load_config  # noqa: E402
from mindrlhf.data.convert_preference import convert_preference  # noqa: E402
from mindrlhf.train.checkpoint import latest_checkpoint  # noqa: E402
from mindrlhf.train.reward import evaluate_reward_model, train_reward_model  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
DATA = os.path.join(ROOT, "mindrlhf", "assets", "data", "oasst_rm_zh.json")
RECIPES = {
    "gpt2": ("model_configs/gpt2_config/run_gpt2_tiny_rm.yaml", "gpt2", 50256),
    "llama": ("model_configs/llama2_config/run_llama2_tiny_rm.yaml", "llama", 2),
}


def split_conversations(path: str, holdout: int, out_dir: str):
    """Write train/held-out JSON files; every ``holdout``-th conversation goes to held-out."""
    with open(path, encoding="utf-8") as f:
        rows = json.load(f)
    train = [r for i, r in enumerate(rows) if i % holdout]
    test = [r for i, r in enumerate(rows) if not i % holdout]
    paths = []
    for name, part in (("train", train), ("test", test)):
        paths.append(os.path.join(out_dir, f"{name}.json"))
        with open(paths[-1], "w", encoding="utf-8") as f:
            json.dump(part, f, ensure_ascii=False)
    return paths, len(train), len(test)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=sorted(RECIPES), default="llama")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--seq", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--holdout", type=int, default=10, help="every N-th conversation is held out")
    parser.add_argument("--loss", choices=["span", "end"], default="end")
    parser.add_argument("--lr", type=float, default=5e-4)
    args = parser.parse_args(argv)
    recipe, tokenizer, pad = RECIPES[args.family]
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    with tempfile.TemporaryDirectory() as tmp:
        (train_json, test_json), n_train, n_test = split_conversations(DATA, args.holdout, tmp)
        start = time.perf_counter()
        train_stats = convert_preference(
            train_json, os.path.join(tmp, "train.mindrecord"), tokenizer, seq_length=args.seq, pad_token_id=pad
        )
        test_stats = convert_preference(
            test_json, os.path.join(tmp, "test.mindrecord"), tokenizer, seq_length=args.seq, pad_token_id=pad
        )
        convert_s = time.perf_counter() - start
        cfg = load_config(
            os.path.join(ROOT, recipe),
            [
                f"output_dir={tmp}/out",
                f"runner_config.epochs={args.epochs}",
                f"runner_config.batch_size={args.batch}",
                f"reward.loss_type={args.loss}",
                f"lr_schedule.learning_rate={args.lr}",
                f"train_dataset.data_loader.dataset_dir={tmp}/train.mindrecord",
                f"eval_dataset.data_loader.dataset_dir={tmp}/test.mindrecord",
                "checkpoint.log_interval=50",
                "checkpoint.save_checkpoint_steps=100000",
            ],
        )
        start = time.perf_counter()
        _, fit = train_reward_model(cfg)
        train_s = time.perf_counter() - start
        checkpoint = latest_checkpoint(os.path.join(tmp, "out", "checkpoint", "rank_0"))
        start = time.perf_counter()
        held_out = evaluate_reward_model(cfg, checkpoint, log_batches=False)
        train_acc = evaluate_reward_model(cfg, checkpoint, f"{tmp}/train.mindrecord", log_batches=False)
        eval_s = time.perf_counter() - start
    model_cfg = cfg.model.model_config
    report = {
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine()},
        "mindspore": ms.__version__,
        "model": {
            "family": args.family,
            "hidden": model_cfg.hidden_size,
            "layers": model_cfg.num_layers,
            "heads": model_cfg.num_heads,
            "vocab": model_cfg.vocab_size,
            "seq": args.seq,
        },
        "data": {
            "conversations_train": n_train,
            "conversations_held_out": n_test,
            "pairs_train": train_stats["count"],
            "pairs_held_out": test_stats["count"],
            "skipped_identical_after_truncation": (train_stats["skipped_identical"] + test_stats["skipped_identical"]),
        },
        "training": {
            "epochs": args.epochs,
            "batch_pairs": args.batch,
            "loss": args.loss,
            "lr": args.lr,
            "steps": fit.state.global_step,
            "first_loss": fit.losses[0],
            "last_loss": fit.losses[-1],
        },
        "held_out_accuracy": held_out.accuracy,
        "train_accuracy": train_acc.accuracy,
        "seconds": {"convert": convert_s, "train": train_s, "eval": eval_s},
    }
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
