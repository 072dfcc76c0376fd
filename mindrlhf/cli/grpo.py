"""GRPO and its family against reward functions and / or a reward model:

    mindrlhf grpo --config run_tinystories_656k_grpo.yaml --dataset_dir prompts.mindrecord \\
        [--sft_checkpoint tinystories] [--reward_model_path run_rm.yaml --reward_checkpoint rm/checkpoint]

The reward functions (``grpo.reward_funcs``) are resolved before any model is built, so a misspelt name or a module
that fails to import stops the command at once. ``examples/grpo_tutorial/train_grpo.py`` calls :func:`main`.
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
    choose_tokenizer,
    run_script,
    start_rl_run,
)
from mindrlhf.config import load_config

logger = logging.getLogger(__name__)


def add_grpo_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="policy recipe (run_*.yaml) with its grpo section")
    parser.add_argument("--dataset_dir", required=True, help="prompt MindRecord (convert-prompts; answers ride along)")
    parser.add_argument(
        "--sft_checkpoint",
        default=None,
        help="policy/reference weights: .ckpt, checkpoint root, "
        "Hugging Face folder or a bundled name (default: the recipe's load_checkpoint)",
    )
    parser.add_argument(
        "--tokenizer",
        default="",
        help="tokenizer the reward functions decode with (default: the "
        "checkpoint folder's, else the model family's bundled one)",
    )
    parser.add_argument(
        "--reward_model_path", default="", help="reward-model recipe; used with grpo.use_reward_model True"
    )
    parser.add_argument(
        "--reward_checkpoint", default=None, help="reward-model weights (default: the reward recipe's load_checkpoint)"
    )
    add_output_dir_argument(parser, "logs, checkpoints, metrics (default: the recipe's)")
    parser.add_argument("--resume", default="", help="GRPO checkpoint root (with rank_<id>/) to continue from")
    parser.add_argument("--device_target", default=None, help="CPU, GPU or Ascend (default: the recipe's)")
    parser.add_argument("--mode", type=int, default=None, help="0 graph, 1 pynative (default: the recipe's)")
    add_use_parallel_argument(parser)
    add_set_argument(parser, "grpo.beta=0.0", "recipe")
    parser.add_argument(
        "--set_reward",
        dest="reward_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a reward-recipe value (repeatable)",
    )
    add_overwrite_flag(parser)
    parser.set_defaults(func=run_grpo)


def add_grpo_parser(sub) -> None:
    """``mindrlhf grpo``."""
    add_grpo_args(
        sub.add_parser(
            "grpo", help="GRPO (and Dr. GRPO, DAPO, RLOO, REINFORCE++) against reward functions or a reward model"
        )
    )


def build_reward(cfg, args, tokenizer):
    """The run's :class:`~mindrlhf.train.rollout.RewardMix`: reward functions resolved first (clear errors before
    any model exists), then the reward model when ``grpo.use_reward_model``."""
    from mindrlhf.models import RewardModel
    from mindrlhf.models.convert import load_weights
    from mindrlhf.rewards import CombinedReward, load_reward_funcs
    from mindrlhf.train.ppo import weights_file
    from mindrlhf.train.rollout import RewardMix

    grpo = cfg.grpo
    grpo.check_rewards()
    functions = CombinedReward(load_reward_funcs(grpo.reward_funcs), tokenizer) if grpo.reward_funcs else None
    model = None
    if grpo.use_reward_model:
        if not args.reward_model_path:
            raise SystemExit("error: grpo.use_reward_model is True: give --reward_model_path (and its checkpoint)")
        reward_cfg = load_config(args.reward_model_path, args.reward_overrides)
        model = RewardModel(reward_cfg.model.model_config)
        checkpoint = reward_cfg.load_checkpoint if args.reward_checkpoint is None else args.reward_checkpoint
        if checkpoint:
            load_weights(model, weights_file(checkpoint), reward_cfg.model.model_config)
        else:
            logger.warning("no reward-model checkpoint given: the reward model is randomly initialised")
    return RewardMix(functions, model)


def prepare(args):
    """``(cfg, sft checkpoint, reward)``: the recipe with the command's settings, and the reward resolved before
    any policy is built. A bad recipe, override, tokenizer or reward function stops the command with one
    ``error: ...`` line (exit status 1), not a traceback."""
    try:
        cfg = load_config(args.config, args.overrides, stage="grpo")
        for name in ("device_target", "mode"):
            if getattr(args, name) is not None:
                setattr(cfg.context, name, getattr(args, name))
        if args.output_dir:
            cfg.output_dir = args.output_dir
        sft = cfg.load_checkpoint if args.sft_checkpoint is None else args.sft_checkpoint
        tokenizer, _ = choose_tokenizer(args.tokenizer, [sft], cfg.model.model_config.type)
        return cfg, sft, build_reward(cfg, args, tokenizer)
    except (ValueError, OSError) as err:  # ConfigError, reward-function resolution, tokenizer and weight files
        raise SystemExit(f"error: {err}") from None


def run_grpo(args) -> int:
    from mindrlhf.rewards import RewardFunctionError
    from mindrlhf.train.grpo import train_grpo

    cfg, sft, reward = prepare(args)
    rank_id, rank_size = start_rl_run(cfg, args, bool(args.resume))
    try:
        trainer = train_grpo(cfg, args.dataset_dir, reward, sft, args.resume, rank_id, rank_size)
    except RewardFunctionError as err:  # a reward function failed on a rollout: its name and the row say it all
        raise SystemExit(f"error: {err}") from None
    logger.info(
        "GRPO stopped at iteration %d of %d (global step %d); output in %s",
        trainer.state.iteration,
        cfg.grpo.epochs,
        trainer.state.global_step,
        cfg.output_dir,
    )
    return 0


def main(argv: Optional[List[str]] = None, prog: str = "train_grpo.py") -> int:
    """Entry for the example script."""
    parser = argparse.ArgumentParser(prog=prog)
    add_grpo_args(parser)
    return run_script(parser, argv)
