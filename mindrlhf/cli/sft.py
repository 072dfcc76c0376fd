"""Supervised fine-tuning command (stage 1):

    mindrlhf convert-sft --model gpt2 --src_file oasst_sft_zh.json --dst_file sft.mindrecord --seq_length 256
    mindrlhf sft --config model_configs/gpt2_config/run_gpt2_tiny_sft.yaml --train_dataset sft.mindrecord

``--load_checkpoint`` resumes from a checkpoint root (with ``rank_<id>/``) or starts from weights (a .ckpt or a
Hugging Face folder).
"""

from __future__ import annotations

import argparse
import logging
from typing import List, Optional

from mindrlhf.cli.common import (
    add_output_dir_argument,
    add_overwrite_flag,
    add_set_argument,
    add_use_parallel_argument,
    run_script,
    run_training,
)
from mindrlhf.context import add_device_argument

logger = logging.getLogger(__name__)


def add_sft_args(parser: argparse.ArgumentParser) -> None:
    """The flags of ``mindrlhf sft`` (those of ``mindrlhf rm train`` plus ``--output_dir`` and ``--seed``)."""
    parser.add_argument("--config", required=True, help="run_*_sft.yaml recipe")
    add_set_argument(parser, "runner_config.epochs=1")
    parser.add_argument(
        "--train_dataset",
        default="",
        help="SFT MindRecord from mindrlhf convert-sft (default: the YAML's train_dataset.data_loader.dataset_dir)",
    )
    add_output_dir_argument(parser)
    parser.add_argument(
        "--load_checkpoint",
        default=None,
        help="resume from a checkpoint root (with rank_<id>/) or start from weights (.ckpt or Hugging Face folder)",
    )
    parser.add_argument("--seed", type=int, default=None, help="global seed (default: the YAML's seed)")
    add_device_argument(parser)
    add_use_parallel_argument(parser)
    add_overwrite_flag(parser)
    parser.set_defaults(func=run_sft, stage="sft")


def add_sft_parser(sub) -> None:
    """``mindrlhf sft``."""
    add_sft_args(
        sub.add_parser(
            "sft",
            help="supervised fine-tuning on an SFT MindRecord",
            description="Stage 1: supervised fine-tuning of a causal LM on an SFT MindRecord "
            "(mindrlhf convert-sft): next-token loss on the response tokens.",
        )
    )


def run_sft(args) -> int:
    """Load the config (flags over ``--set`` over the YAML), set up the context and train."""
    from mindrlhf.train.sft import train_sft

    if args.seed is not None:
        args.overrides = [*args.overrides, f"seed={args.seed}"]  # before setup_run, which seeds MindSpore with it
    return run_training(args, train_sft)


def main(argv: Optional[List[str]] = None) -> int:
    """Entry for scripts: ``main(sys.argv[1:])`` runs ``mindrlhf sft`` with those flags."""
    parser = argparse.ArgumentParser(prog="mindrlhf sft", description="Supervised fine-tuning (stage 1).")
    add_sft_args(parser)
    return run_script(parser, argv)
