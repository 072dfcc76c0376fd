"""What the ``mindrlhf`` commands share: the common flags (``--set``, ``--output_dir``, ``--use_parallel``,
``--overwrite_output_dir``, ``--tokenizer``), logging set-up, the script entry, the start of a run (MindSpore
context, process group, output folder), the supervised stages' command body, the policy and tokenizer a command
loads, and the atomic JSON(L) / text writers.

Each command module (``cli/<command>.py``) imports from here and from the library, never from another command,
and nothing imports :mod:`mindrlhf.cli.main` back (``tests/test_cli_structure.py`` checks both).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
from typing import List, Optional, Tuple

from mindrlhf.config import RunConfig, load_config
from mindrlhf.context import apply_device_target, init_context

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------------------------------------------------------
# Logging and the script entry


def setup_logging(level: str = "INFO") -> None:
    """Log to stderr as ``time level name: message``."""
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def run_script(parser: argparse.ArgumentParser, argv: Optional[List[str]] = None) -> int:
    """Entry of an example script built on one command's parser: parse ``argv`` (default: the script's own
    arguments), set up logging and run the command as ``mindrlhf`` would (user errors in one line)."""
    from mindrlhf.errors import run_command

    args = parser.parse_args(argv)
    setup_logging()
    return run_command(args.func, args)


# ---------------------------------------------------------------------------------------------------------------
# Flags


def str2bool(text: str) -> bool:
    """``True/true/1/yes`` or ``False/false/0/no`` (the predecessor treated any non-empty string as true)."""
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "y"):
        return True
    if value in ("false", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean (True/False), got {text!r}")


def bool_or_auto(text: str) -> Optional[bool]:
    """``auto`` -> None (decide from the launcher), else :func:`str2bool`."""
    return None if str(text).strip().lower() == "auto" else str2bool(text)


def add_set_argument(
    parser: argparse.ArgumentParser, example: str, what: str = "config", flag: str = "--set", dest: str = "overrides"
) -> None:
    """``--set KEY=VALUE`` (repeatable; or ``flag`` for a second recipe such as ``--set_reward``), collected in
    ``args.<dest>`` for :func:`mindrlhf.config.load_config`."""
    parser.add_argument(
        flag,
        dest=dest,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=f"override a {what} value, e.g. {flag} {example} (repeatable)",
    )


def add_output_dir_argument(
    parser: argparse.ArgumentParser,
    help_text: str = "logs, checkpoints and the resolved config (default: the YAML's output_dir)",
) -> None:
    """``--output_dir`` (default None: the recipe's ``output_dir``)."""
    parser.add_argument("--output_dir", default=None, help=help_text)


def add_overwrite_flag(parser: argparse.ArgumentParser) -> None:
    """``--overwrite_output_dir`` of the training commands (see :func:`mindrlhf.runlock.claim_output_dir`)."""
    parser.add_argument(
        "--overwrite_output_dir",
        action="store_true",
        help="start afresh in an output folder that "
        "holds an earlier run (its checkpoints, logs and metrics are removed first)",
    )


def add_use_parallel_argument(parser: argparse.ArgumentParser) -> None:
    """``--use_parallel {auto,True,False}``, parsed the same way by every training command."""
    parser.add_argument(
        "--use_parallel",
        type=bool_or_auto,
        default=None,
        metavar="{auto,True,False}",
        help="data-parallel run; auto (default): yes when started by msrun or a rank-table launcher",
    )


def add_tokenizer_argument(parser) -> None:
    """``--tokenizer`` with the default every model command shares (see :func:`choose_tokenizer`)."""
    parser.add_argument(
        "--tokenizer",
        default=None,
        help="tokenizer.json, tokenizer folder or SentencePiece .model (default: the checkpoint "
        "folder's own tokenizer, else the bundled one of the model family)",
    )


# ---------------------------------------------------------------------------------------------------------------
# The start of a run


def setup_run(args, with_log: bool = True) -> RunConfig:
    """The recipe of ``args.config`` with ``args.overrides`` and ``--device_target``, the MindSpore context set up
    from it and (``with_log``) rank 0's log file attached under its ``output_dir``."""
    from mindrlhf.train.monitor import attach_rank_log

    cfg = load_config(args.config, args.overrides, stage=getattr(args, "stage", None))
    apply_device_target(cfg.context, args.device_target)
    init_context(cfg.context, cfg.seed)
    if with_log:
        attach_rank_log(cfg.output_dir, 0)
    return cfg


def join_group(cfg, use_parallel: Optional[bool]):
    """``(rank_id, rank_size)``: join the data-parallel group when asked to, or (``use_parallel`` None) when
    started by msrun or a rank-table launcher."""
    from mindrlhf.context import init_distributed, launched_as_worker

    parallel = launched_as_worker() if use_parallel is None else use_parallel
    return init_distributed(cfg.parallel_config, cfg.context.device_target) if parallel else (0, 1)


def start_rl_run(cfg, args, resuming: bool) -> Tuple[int, int]:
    """The start every RL / preference command shares (PPO, GRPO, DPO): the MindSpore context, the process group,
    the output folder claimed for this run (refused while another run holds it, or when it holds an earlier run
    and this is neither a resume nor ``--overwrite_output_dir``) and this rank's log file; returns
    ``(rank_id, rank_size)``."""
    from mindrlhf.runlock import claim_output_dir, run_mode
    from mindrlhf.train.monitor import attach_rank_log

    init_context(cfg.context, cfg.seed)
    rank_id, rank_size = join_group(cfg, args.use_parallel)
    claim_output_dir(
        cfg.output_dir,
        cfg,
        run_mode(resuming, args.overwrite_output_dir),
        rank_id,
        f"resume it with --resume {os.path.join(cfg.output_dir, 'checkpoint')}",
    )
    attach_rank_log(cfg.output_dir, rank_id)
    return rank_id, rank_size


def run_training(args, train) -> int:
    """The supervised stages' command body: config (flags over ``--set`` over the YAML), group, ``train(cfg,
    dataset, rank_id, rank_size)``, a closing log line. The output folder is claimed first
    (:func:`mindrlhf.runlock.claim_output_dir`): a checkpoint root as ``--load_checkpoint`` resumes."""
    from mindrlhf.runlock import claim_output_dir, run_mode
    from mindrlhf.train.checkpoint import resume_checkpoint

    cfg = setup_run(args, with_log=False)
    if args.output_dir is not None:
        cfg.output_dir = args.output_dir
    if args.load_checkpoint is not None:
        cfg.load_checkpoint = args.load_checkpoint
    rank_id, rank_size = join_group(cfg, args.use_parallel)
    resuming = resume_checkpoint(cfg.load_checkpoint, rank_id) is not None
    claim_output_dir(
        cfg.output_dir,
        cfg,
        run_mode(resuming, args.overwrite_output_dir),
        rank_id,
        f"resume it with --load_checkpoint {os.path.join(cfg.output_dir, 'checkpoint')}",
    )
    _, result = train(cfg, args.train_dataset or None, rank_id, rank_size)
    log = logging.getLogger(train.__module__)  # the stage's own logger: mindrlhf.train.sft or .reward
    if not result.losses:
        log.info(
            "nothing left to train: the checkpoint is at the end of training (global step %d)", result.state.global_step
        )
    else:
        log.info(
            "training finished: global step %d, last loss %.4f, %d overflow steps and %d NaN-loss steps "
            "skipped; checkpoint %s",
            result.state.global_step,
            result.losses[-1],
            result.overflows,
            result.nan_losses,
            result.last_checkpoint,
        )
    return 0


# ---------------------------------------------------------------------------------------------------------------
# The policy and tokenizer a command loads


def model_config_for(cfg: RunConfig, checkpoint: str):
    """The model's config: a Hugging Face checkpoint's ``config.json`` (with the YAML's dtypes), else the YAML's."""
    from mindrlhf.models.convert import is_hf_folder, model_config_from_hf_folder

    model_cfg = cfg.model.model_config
    if checkpoint and is_hf_folder(checkpoint):
        hf_cfg = model_config_from_hf_folder(checkpoint)
        model_cfg = dataclasses.replace(
            hf_cfg, compute_dtype=model_cfg.compute_dtype, param_init_type=model_cfg.param_init_type
        )
    return model_cfg


def build_policy(cfg: RunConfig, checkpoint: str, adapter: str = ""):
    """A CausalLM for ``cfg``, with weights from ``checkpoint`` (HF folder, bundled name or .ckpt) when given, and
    LoRA adapters from ``adapter`` (a PEFT folder or a .ckpt holding them) over them."""
    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import load_weights

    model_cfg = model_config_for(cfg, checkpoint)
    lm = CausalLM(model_cfg, recompute=cfg.recompute_config.recompute)
    if checkpoint:
        load_weights(lm, checkpoint, model_cfg, ignore_unexpected=("v_head.",))  # a PPO policy's value head
        logger.info("loaded weights from %s", checkpoint)
    else:
        logger.info("no checkpoint given: %s built with fresh random weights (seed %d)", model_cfg.type, cfg.seed)
    if adapter:
        from mindrlhf.models.peft import load_adapter

        logger.info("LoRA adapters from %s on %d layers", adapter, len(load_adapter(lm, model_cfg.type, adapter)))
    return lm


def has_tokenizer(folder: str) -> bool:
    """True for a folder with ``tokenizer.json``, ``tokenizer.model`` or ``vocab.json`` + ``merges.txt``."""

    def has(name):
        return os.path.isfile(os.path.join(folder, name))

    return os.path.isdir(folder) and (
        has("tokenizer.json") or has("tokenizer.model") or (has("vocab.json") and has("merges.txt"))
    )


def choose_tokenizer(explicit: str, folders, model_type: str):
    """``(tokenizer, its folder or None)``: ``explicit`` if given, else that of the first of ``folders`` (the
    checkpoint loaded, then the run's starting checkpoint) that ships one, else the family's bundled one (a
    family without one, such as Qwen2 or BLOOM, needs ``--tokenizer``)."""
    from mindrlhf.data.tokenizer import load_tokenizer
    from mindrlhf.models.convert import resolve_checkpoint
    from mindrlhf.models.registry import family

    if explicit:
        return load_tokenizer(explicit), (explicit if os.path.isdir(explicit) else None)
    for folder in folders:
        folder = resolve_checkpoint(folder) if folder else ""
        if folder and has_tokenizer(folder):
            return load_tokenizer(folder), folder
    bundled = family(model_type).tokenizer
    if bundled is None:
        raise SystemExit(
            f"model family {model_type!r} ships no bundled tokenizer and the checkpoint folder has "
            f"none: pass --tokenizer (the model's tokenizer.json or its folder)"
        )
    return load_tokenizer(bundled), None
