"""DPO and its offline family on preference pairs (no reward model):

    mindrlhf convert-preference --model gpt2 --src_file pairs.jsonl --dst_file pairs.mindrecord --seq_length 256
    mindrlhf dpo --config model_configs/gpt2_config/run_gpt2_tiny_dpo.yaml --train_dataset pairs.mindrecord \\
        [--sft_checkpoint sft/checkpoint] [--eval_dataset held_out.mindrecord] [--resume output/checkpoint]

``--set dpo.loss_type=ipo`` (or hinge, simpo, orpo), ``--set dpo.beta=0.2``, ``--set
dpo.precompute_ref_log_probs=False`` pick the loss and how the reference is read. With ``--eval_dataset`` the
trained policy's held-out metrics (implicit-reward accuracy ``rewards/accuracies`` among them) are logged and written
to ``<output_dir>/dpo_eval.json``; with ``--win_rate_prompts`` (a ``convert-prompts`` MindRecord) and
``--reward_funcs`` the policy's win rate against the reference is added.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional

from mindrlhf.cli.common import (
    add_output_dir_argument,
    add_overwrite_flag,
    add_set_argument,
    add_use_parallel_argument,
    choose_tokenizer,
    run_script,
    start_rl_run,
)
from mindrlhf.config import load_config
from mindrlhf.context import add_device_argument, apply_device_target

logger = logging.getLogger(__name__)


def add_dpo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy recipe (run_*_dpo.yaml) with its dpo section")
    parser.add_argument(
        "--train_dataset",
        default="",
        help="preference MindRecord from convert-preference "
        "(default: the recipe's train_dataset.data_loader.dataset_dir)",
    )
    parser.add_argument(
        "--sft_checkpoint",
        default=None,
        help="policy and reference start weights: .ckpt, "
        "checkpoint root, Hugging Face folder or bundled name (default: the recipe's load_checkpoint)",
    )
    parser.add_argument("--resume", default="", help="DPO checkpoint root (with rank_<id>/) to continue from")
    add_output_dir_argument(parser, "logs, checkpoints, metrics (default: the recipe's)")
    parser.add_argument("--eval_dataset", default="", help="held-out preference MindRecord: metrics after training")
    parser.add_argument(
        "--win_rate_prompts",
        default="",
        help="held-out prompt MindRecord (convert-prompts): win rate of the policy against the reference",
    )
    parser.add_argument(
        "--reward_funcs",
        default="",
        help="comma-separated reward functions judging the win rate (built-in names or module:function)",
    )
    parser.add_argument(
        "--tokenizer",
        default="",
        help="tokenizer the reward functions decode with (default: the "
        "checkpoint folder's, else the model family's bundled one)",
    )
    add_device_argument(parser)
    add_use_parallel_argument(parser)
    add_overwrite_flag(parser)
    add_set_argument(parser, "dpo.beta=0.2", "recipe")
    parser.set_defaults(func=run_dpo)


def add_dpo_parser(sub) -> None:
    """``mindrlhf dpo``."""
    add_dpo_args(sub.add_parser("dpo", help="DPO (and IPO, hinge, conservative DPO, SimPO, ORPO) on preference pairs"))


def prepare(args):
    """The recipe with the command's settings and the win-rate judge, checked before any model is built; a bad
    recipe, override or reward function stops the command with one ``error: ...`` line."""
    from mindrlhf.rewards import CombinedReward, load_reward_funcs

    try:
        cfg = load_config(args.config, args.overrides, stage="dpo")
        if args.output_dir:
            cfg.output_dir = args.output_dir
        judge = None
        if args.win_rate_prompts:
            if not args.reward_funcs:
                raise ValueError("--win_rate_prompts needs --reward_funcs to judge the responses with")
            start = cfg.load_checkpoint if args.sft_checkpoint is None else args.sft_checkpoint
            tokenizer, _ = choose_tokenizer(args.tokenizer, [start], cfg.model.model_config.type)
            funcs = load_reward_funcs([{"name": n.strip()} for n in args.reward_funcs.split(",") if n.strip()])
            combined = CombinedReward(funcs, tokenizer)

            def weighted_sum(prompts, responses, answers):
                return combined(prompts, responses, answers)[0]

            judge = weighted_sum
        return cfg, judge
    except (ValueError, OSError) as err:  # ConfigError, reward functions, tokenizer files
        raise SystemExit(f"error: {err}") from None


def evaluate(args, cfg, policy, judge) -> dict:
    """Held-out metrics and win rate of the trained policy (rank 0), written to ``dpo_eval.json``."""
    import numpy as np

    from mindrlhf.data.datasets import PROMPT_COLUMNS, read_prompts, record_count
    from mindrlhf.train.dpo import evaluate_preferences, reference_model, win_rate

    start = cfg.load_checkpoint if args.sft_checkpoint is None else args.sft_checkpoint
    model_cfg = cfg.model.model_config
    ref = reference_model(model_cfg, cfg.dpo.ref_checkpoint or start, cfg.seed)
    report = {}
    if args.eval_dataset:
        report["held_out"] = evaluate_preferences(
            policy, None if cfg.dpo.reference_free else ref, args.eval_dataset, cfg.dpo
        )
        logger.info("held-out: %s", ", ".join(f"{k} {v:.4f}" for k, v in report["held_out"].items()))
    if judge is not None:
        count = record_count(args.win_rate_prompts, PROMPT_COLUMNS)
        prompts = read_prompts(args.win_rate_prompts, np.arange(count), model_cfg.pad_token_id)
        result = win_rate(
            policy, ref, prompts, judge, cfg.generation, model_cfg.eos_token_id, model_cfg.pad_token_id, cfg.seed
        )
        report["win_rate"] = result.__dict__
        logger.info(
            "win rate against the reference: %.3f over %d prompts (scores %.4f vs %.4f)",
            result.win_rate,
            result.prompts,
            result.policy_score,
            result.reference_score,
        )
    from mindrlhf.atomic import write_json

    write_json(os.path.join(cfg.output_dir, "dpo_eval.json"), report)
    return report


def run_dpo(args) -> int:
    from mindrlhf.models.convert import CheckpointError
    from mindrlhf.train.dpo import train_dpo

    cfg, judge = prepare(args)
    apply_device_target(cfg.context, args.device_target)
    rank_id, rank_size = start_rl_run(cfg, args, bool(args.resume))
    try:
        policy, result = train_dpo(
            cfg,
            args.train_dataset or None,
            args.sft_checkpoint,
            args.resume,
            rank_id,
            rank_size,
            progress=rank_id == 0 and "dpo",
        )
    except (ValueError, FileNotFoundError, CheckpointError) as err:  # bad data file, reference, checkpoint
        raise SystemExit(f"error: {err}") from None
    logger.info(
        "DPO finished: global step %d, last loss %s; checkpoint %s",
        result.state.global_step,
        f"{result.losses[-1]:.4f}" if result.losses else "-",
        result.last_checkpoint,
    )
    if rank_id == 0 and (args.eval_dataset or judge is not None):
        evaluate(args, cfg, policy, judge)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Entry for the example script: ``mindrlhf dpo`` with ``argv`` (default: the script's own arguments)."""
    parser = argparse.ArgumentParser(prog="mindrlhf dpo")
    add_dpo_args(parser)
    return run_script(parser, argv)
