"""``mindrlhf`` command: one subcommand per stage or tool.

    mindrlhf generate --config model_configs/gpt2_config/run_gpt2_tiny.yaml --prompt "如何伪造医疗文件？"
    mindrlhf export-hf --config run.yaml --load_checkpoint model.ckpt --output_dir hf_model
    mindrlhf rm train --config run_gpt2_tiny_rm.yaml --train_dataset train.mindrecord
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import List, Optional

from mindrlhf.cli import generate as generate_cmd
from mindrlhf.cli import reward as reward_cmd


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr as ``time level name: message``."""
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mindrlhf", description="MindSpore-native RLHF: SFT, reward model, PPO.")
    parser.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    generate_cmd.add_generate_parser(sub)
    generate_cmd.add_export_parser(sub)
    reward_cmd.add_reward_parser(sub)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
