"""PPO (stage 3) with the seed tutorial's ``train.py`` flags:

    mindrlhf ppo --dataset_dir ppo_prompts.mindrecord --sft_model_path run_gpt2_124m_ppo.yaml \\
        --reward_model_path run_gpt2_124m_rm.yaml --sft_checkpoint sft/checkpoint --reward_checkpoint rm/checkpoint

``--align_type rlhf_stages`` splits an iteration into two processes (the predecessor's ``make_experience.py`` and
``ppo_train.py``): ``--stage experience`` writes ``--save_data_file``, ``--stage train`` trains on it.
``examples/rlhf_train_tutorial/{train,make_experience,ppo_train}.py`` call :func:`main`.
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
    start_rl_run,
)
from mindrlhf.config import load_config

logger = logging.getLogger(__name__)


def add_ppo_args(parser: argparse.ArgumentParser, default_stage: str = "all") -> None:
    """The seed's flags plus checkpoints, output and overrides."""
    parser.add_argument("--dataset_dir", required=True, help="prompt MindRecord from rlhf_data.py")
    parser.add_argument("--sft_model_path", required=True, help="policy recipe (run_*.yaml) with its ppo section")
    parser.add_argument("--reward_model_path", required=True, help="reward-model recipe (run_*.yaml)")
    parser.add_argument(
        "--critic_model_path",
        default="",
        help="critic recipe (default: the reward model's); used with ppo.is_shared_backbone False",
    )
    parser.add_argument(
        "--sft_checkpoint",
        default=None,
        help="policy/reference weights: .ckpt, checkpoint root or "
        "Hugging Face folder (default: the policy recipe's load_checkpoint)",
    )
    parser.add_argument(
        "--reward_checkpoint", default=None, help="reward-model weights (default: the reward recipe's load_checkpoint)"
    )
    parser.add_argument("--critic_checkpoint", default=None, help="critic weights (default: the reward model's)")
    add_output_dir_argument(parser, "logs, checkpoints, metrics (default: the policy recipe's output_dir)")
    parser.add_argument("--resume", default="", help="PPO checkpoint root (with rank_<id>/) to continue from")
    parser.add_argument("--save_data_file", default="", help="write each iteration's experience here (MindRecord)")
    parser.add_argument(
        "--align_type",
        default="rlhf",
        choices=["rlhf", "rlhf_stages"],
        help="rlhf: experience and training in one process; rlhf_stages: see --stage",
    )
    parser.add_argument(
        "--stage",
        default=default_stage,
        choices=["all", "experience", "train"],
        help="with rlhf_stages: experience (make it) or train (train on --save_data_file)",
    )
    parser.add_argument("--device_target", default=None, help="CPU, GPU or Ascend (default: the recipe's)")
    parser.add_argument("--mode", type=int, default=None, help="0 graph, 1 pynative (default: the recipe's)")
    parser.add_argument("--max_device_memory", default=None, help="e.g. 59GB (GPU/Ascend)")
    add_use_parallel_argument(parser)
    add_set_argument(parser, "ppo.kl_coef=0.05", "policy-recipe")
    parser.add_argument(
        "--set_reward",
        dest="reward_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a reward-recipe value, e.g. --set_reward model.model_config.compute_dtype=float32 (repeatable)",
    )
    parser.add_argument(
        "--set_critic",
        dest="critic_overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a critic-recipe value (repeatable)",
    )
    add_overwrite_flag(parser)
    parser.set_defaults(func=run_ppo)


def add_ppo_parser(sub) -> None:
    """``mindrlhf ppo``."""
    add_ppo_args(
        sub.add_parser(
            "ppo",
            help="stage 3: PPO against a reward model",
            description="Stage 3: PPO of the SFT policy against a reward model on a prompt "
            "MindRecord (mindrlhf convert-prompts); per-iteration checkpoints, "
            "metrics and exact resume.",
        )
    )


def _stage(args) -> str:
    if args.align_type == "rlhf_stages" and args.stage == "all":
        raise SystemExit("--align_type rlhf_stages needs --stage experience or --stage train")
    if args.align_type == "rlhf" and args.stage != "all":
        raise SystemExit(f"--stage {args.stage} needs --align_type rlhf_stages")
    if args.stage != "all" and not args.save_data_file:
        raise SystemExit(f"--stage {args.stage} needs --save_data_file (the experience MindRecord)")
    return args.stage


def run_ppo(args) -> int:
    from mindrlhf.train.ppo import train_ppo

    stage = _stage(args)
    cfg = load_config(args.sft_model_path, args.overrides, stage="ppo")
    for name in ("device_target", "mode", "max_device_memory"):
        if getattr(args, name) is not None:
            setattr(cfg.context, name, getattr(args, name))
    if args.output_dir:
        cfg.output_dir = args.output_dir
    reward_cfg = load_config(args.reward_model_path, args.reward_overrides)
    critic_cfg = (
        load_config(args.critic_model_path, args.critic_overrides)
        if args.critic_model_path
        else load_config(args.reward_model_path, args.reward_overrides + args.critic_overrides)
    )
    # the split stages are one run in one folder, made by several processes in turn
    rank_id, rank_size = start_rl_run(cfg, args, bool(args.resume) or stage != "all")
    sft = cfg.load_checkpoint if args.sft_checkpoint is None else args.sft_checkpoint
    reward_ckpt = reward_cfg.load_checkpoint if args.reward_checkpoint is None else args.reward_checkpoint
    critic_ckpt = (
        (critic_cfg.load_checkpoint if args.critic_model_path else "")
        if args.critic_checkpoint is None
        else args.critic_checkpoint
    )
    trainer = train_ppo(
        cfg,
        args.dataset_dir,
        reward_cfg.model.model_config,
        sft,
        reward_ckpt,
        critic_cfg.model.model_config,
        critic_ckpt,
        args.resume,
        args.save_data_file,
        stage,
        rank_id,
        rank_size,
    )
    if stage == "experience":  # the run's iteration moves on when ppo_train.py trains on the file
        logger.info(
            "PPO experience of iteration %d of %d written to %s; train on it with --stage train",
            trainer.state.iteration + 1,
            cfg.ppo.epochs,
            args.save_data_file,
        )
    else:
        logger.info(
            "PPO at iteration %d of %d (global step %d); output in %s",
            trainer.state.iteration,
            cfg.ppo.epochs,
            trainer.state.global_step,
            cfg.output_dir,
        )
    return 0


def main(
    argv: Optional[List[str]] = None,
    prog: str = "train.py",
    default_stage: str = "all",
    align_type: Optional[str] = None,
) -> int:
    """Entry for the example scripts (``train.py``; ``make_experience.py`` / ``ppo_train.py`` fix the stage)."""
    parser = argparse.ArgumentParser(prog=prog)
    add_ppo_args(parser, default_stage)
    if align_type:
        parser.set_defaults(align_type=align_type)
    return run_script(parser, argv)
