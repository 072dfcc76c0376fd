"""``mindrlhf`` command: one subcommand per stage or tool.

    mindrlhf demo                     # SFT -> reward model -> PPO on the bundled data, a few minutes on CPU

    mindrlhf generate --config model_configs/gpt2_config/run_gpt2_tiny.yaml --prompt "如何伪造医疗文件？"
    mindrlhf export-hf --config run.yaml --load_checkpoint model.ckpt --output_dir hf_model
    mindrlhf convert-sft --model gpt2 --src_file oasst_sft_zh.json --dst_file sft.mindrecord --seq_length 256
    mindrlhf sft --config run_gpt2_tiny_sft.yaml --train_dataset sft.mindrecord
    mindrlhf convert-preference --model gpt2 --src_file pairs.jsonl --dst_file train.mindrecord --seq_length 256
    mindrlhf rm train --config run_gpt2_tiny_rm.yaml --train_dataset train.mindrecord
    mindrlhf convert-prompts --tokenizer_name_or_path gpt2 --file_path prompts.jsonl --output_path ppo.mindrecord \
        --max_prompt_length 224 --seq_length 257 --pad_token_id 50256 --template qa
    mindrlhf ppo --dataset_dir ppo.mindrecord --sft_model_path run_gpt2_tiny_ppo.yaml \
        --reward_model_path run_gpt2_tiny_rm.yaml --sft_checkpoint sft/checkpoint --reward_checkpoint rm/checkpoint
    mindrlhf grpo --config run_tinystories_656k_grpo.yaml --dataset_dir prompts.mindrecord
    mindrlhf eval --baseline tinystories --candidate ppo_hf --question_set mt_bench --reward_funcs sentiment
    mindrlhf dpo --config run_gpt2_tiny_dpo.yaml --train_dataset train.mindrecord --sft_checkpoint sft/checkpoint
    mindrlhf plan-memory --config run_llama2_7b_ppo.yaml --stage ppo --devices 8 --device_memory 32GB
    mindrlhf loss-plot --log_file output/log/rank_0/info.log --output_file_dir loss_dir
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from mindrlhf import __version__
from mindrlhf.cli import demo as demo_cmd
from mindrlhf.cli import evaluate as eval_cmd
from mindrlhf.cli import dpo as dpo_cmd
from mindrlhf.cli import generate as generate_cmd
from mindrlhf.cli import grpo as grpo_cmd
from mindrlhf.cli import ppo as ppo_cmd
from mindrlhf.cli import reward as reward_cmd
from mindrlhf.cli import sft as sft_cmd
from mindrlhf.cli.common import setup_logging
from mindrlhf.errors import USER_ERROR_STATUS, run_command


# commands whose module owns its argument parser: `mindrlhf <command> --help` shows the module's flags
PASS_THROUGH = {
    "convert-sft": ("mindrlhf.data.convert_sft", "instruction JSONL/JSON (alpaca, ShareGPT) -> SFT MindRecord"),
    "convert-preference": ("mindrlhf.data.convert_preference", "preference JSONL/JSON -> MindRecord (seed flags)"),
    "convert-prompts": ("mindrlhf.data.convert_prompts", "RLHF prompts JSONL -> PPO MindRecord (rlhf_data.py flags)"),
    "loss-plot": ("mindrlhf.tools.loss_plot", "training log -> TensorBoard events and loss.png"),
    "rank-table": ("mindrlhf.tools.rank_table", "HCCL rank table: generate, --merge, --validate (Ascend)"),
    "plan-memory": ("mindrlhf.tools.memory_plan", "per-device memory of a recipe, full and LoRA: does it fit?"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mindrlhf", description="MindSpore-native RLHF: SFT, reward model, PPO.")
    parser.add_argument("--log_level", default="INFO", help="DEBUG, INFO, WARNING or ERROR")
    parser.add_argument("--version", action="version", version=f"mindrlhf {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo_cmd.add_demo_parser(sub)
    generate_cmd.add_generate_parser(sub)
    generate_cmd.add_export_parser(sub)
    sft_cmd.add_sft_parser(sub)
    reward_cmd.add_reward_parser(sub)
    ppo_cmd.add_ppo_parser(sub)
    grpo_cmd.add_grpo_parser(sub)
    eval_cmd.add_eval_parser(sub)
    dpo_cmd.add_dpo_parser(sub)
    for name, (_, help_text) in PASS_THROUGH.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in PASS_THROUGH:
        import importlib

        setup_logging()
        sys.argv[0] = f"mindrlhf {argv[0]}"  # argparse names the program after it in usage and errors
        status = run_command(importlib.import_module(PASS_THROUGH[argv[0]][0]).main, argv[1:])
        return USER_ERROR_STATUS if status == 1 else status  # the tools' own mains return 1 on an error
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    return run_command(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
