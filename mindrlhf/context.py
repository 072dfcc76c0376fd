"""Device and execution-mode set-up from a :class:`ContextConfig` (CPU / GPU / Ascend, graph / pynative)."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional, Tuple

import mindspore as ms

from mindrlhf.config import ConfigError, ContextConfig, ParallelConfig

logger = logging.getLogger(__name__)


DEVICE_TARGETS = ("CPU", "GPU", "Ascend")


def add_device_argument(parser) -> None:
    """``--device_target``, the flag every model command takes (see :func:`apply_device_target`)."""
    parser.add_argument(
        "--device_target",
        default=None,
        choices=DEVICE_TARGETS,
        help="CPU, GPU or Ascend (default: the recipe's context.device_target, or CPU with a "
        "notice when this machine cannot run that one)",
    )


def device_available(target: str) -> bool:
    """Whether MindSpore can run on ``target`` here (CPU always; GPU / Ascend when their plugin loads). The
    plugin loader's own complaints on stderr are kept out of the user's terminal."""
    if target == "CPU":
        return True
    from mindspore import hal

    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        return bool(hal.is_available(target))
    except (RuntimeError, ValueError):
        return False
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def apply_device_target(ctx: ContextConfig, flag: Optional[str]) -> None:
    """Set ``ctx.device_target`` from a ``--device_target`` flag (None: keep the recipe's). A device asked for
    by the flag that this machine cannot run stops the command with one line."""
    if flag is None:
        return
    if not device_available(flag):
        raise SystemExit(
            f"error: --device_target {flag}: MindSpore cannot run on {flag} on this machine (its "
            f"plugin does not load); use --device_target CPU"
        )
    ctx.device_target = flag


# MindSpore warnings that say nothing about the user's run: nn.Adam (our AdamW's kernel) builds a FusedSparseAdam
# for sparse gradients, which MindSpore reports as deprecated in every training process; our update is dense.
# enable_graph_kernel is reported as deprecated in favour of jit_level O1, which does not fuse anything on CPU.
HARMLESS_MINDSPORE_WARNINGS = (
    "'FusedSparseAdam' is deprecated",
    "'enable_graph_kernel' parameter is deprecated",
)


class _HarmlessWarningFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not any(text in record.getMessage() for text in HARMLESS_MINDSPORE_WARNINGS)


def quiet_mindspore_warnings() -> None:
    """Drop :data:`HARMLESS_MINDSPORE_WARNINGS` from MindSpore's own logger (once per process)."""
    from mindspore import log as ms_log

    ms_logger = ms_log._get_logger()  # MindSpore's logger: its name carries the process id
    if not any(isinstance(f, _HarmlessWarningFilter) for f in ms_logger.filters):
        ms_logger.addFilter(_HarmlessWarningFilter())


def graph_kernel_settings(ctx: ContextConfig) -> Dict[str, Any]:
    """``set_context`` keywords for ``ctx.enable_graph_kernel`` (graph mode only; PYNATIVE runs without it).

    MindSpore's AKG compiler writes the fused kernels under ``$MS_COMPILER_CACHE_PATH`` (else the working
    directory); it is pointed at ``ctx.kernel_cache_dir`` unless the user exported it, so later runs reuse them.
    The folder must exist: where it does not, MindSpore logs errors and silently runs the graph unfused.
    """
    if not ctx.enable_graph_kernel or ctx.mode != 0:
        return {"enable_graph_kernel": False} if ctx.mode == 0 else {}
    os.environ.setdefault("MS_COMPILER_CACHE_PATH", os.path.expanduser(ctx.kernel_cache_dir))
    os.makedirs(os.environ["MS_COMPILER_CACHE_PATH"], exist_ok=True)
    # AKG reads its bundled tiling repository only from under this folder (default: the working directory) and
    # prints a line to stdout for every kernel when it is elsewhere.
    os.environ.setdefault("AKG_WHITE_LIST_PATH", os.path.join(os.path.dirname(ms.__file__), "_akg", "akg"))
    return {"enable_graph_kernel": True}


def init_context(ctx: ContextConfig, seed: int = 0) -> None:
    """Apply ``ctx`` to MindSpore's global context and seed MindSpore's generators.

    A recipe's device that this machine cannot run (the Ascend recipes on a CPU machine) falls back to CPU with
    one warning, instead of MindSpore's plugin error; ``ctx.device_target`` then says CPU.
    """
    quiet_mindspore_warnings()
    if not device_available(ctx.device_target):
        logger.warning(
            "context.device_target %s is not available on this machine: running on CPU (pass "
            "--device_target to choose)",
            ctx.device_target,
        )
        ctx.device_target = "CPU"
    mode = ms.GRAPH_MODE if ctx.mode == 0 else ms.PYNATIVE_MODE
    kwargs, device_id = dict(mode=mode), None
    if ctx.device_target != "CPU":
        device_id = int(os.environ.get("DEVICE_ID", ctx.device_id))  # launch scripts export DEVICE_ID
        if ctx.max_device_memory:
            kwargs["max_device_memory"] = ctx.max_device_memory
    # set_device / set_recursion_limit: set_context's device_target and max_call_depth warn that they are deprecated.
    # set_device refuses once the runtime runs (a second command in one process): the device is then already set.
    if ms.get_context("device_target") != ctx.device_target or device_id is not None:
        try:
            ms.set_device(ctx.device_target, device_id)
        except RuntimeError:
            if ms.get_context("device_target") != ctx.device_target:
                raise
    ms.set_recursion_limit(ctx.max_call_depth)
    fusion = graph_kernel_settings(ctx)
    if fusion and fusion["enable_graph_kernel"] != ms.get_context("enable_graph_kernel"):
        kwargs.update(fusion)  # only on a change: MindSpore warns on every set_context that names it
    ms.set_context(**kwargs)
    ms.set_seed(seed)
    logger.info(
        "context: %s mode on %s (device %s), seed %d%s",
        "graph" if ctx.mode == 0 else "pynative",
        ctx.device_target,
        ctx.device_id if device_id is None else device_id,
        seed,
        ", graph-kernel fusion" if ms.get_context("enable_graph_kernel") else "",
    )


def launched_as_worker() -> bool:
    """True inside a process started by msrun, or by a rank-table launch of more than one device."""
    if os.environ.get("MS_WORKER_NUM"):
        return True
    return bool(os.environ.get("RANK_TABLE_FILE")) and int(os.environ.get("RANK_SIZE") or 1) > 1


def parallel_settings(parallel: Optional[ParallelConfig], device_num: int, device_target: str) -> Dict[str, Any]:
    """Check ``parallel_config`` against the devices of the run and return the ``set_auto_parallel_context``
    arguments.

    - ``data_parallel * model_parallel * pipeline_stage`` must equal ``device_num``; the all-ones default means
      plain data parallel over every device.
    - ``model_parallel`` and ``pipeline_stage`` above 1 are refused: the model cells carry no sharding strategies.
    - ``optimizer_shard`` shards optimizer states across the data-parallel ranks. MindSpore does that only in
      ``semi_auto_parallel`` mode (every op data parallel here, gradients mean-reduced by the framework), which it
      supports on Ascend and GPU, not on CPU.
    - ``allreduce_bucket_mb`` > 0 turns on MindSpore's all-reduce fusion by size (``comm_fusion`` mode ``size``):
      the compiled graph fuses the gradients' all-reduces into buckets of up to that many MB (one transfer each over
      a contiguous buffer, on CPU too), as DDP's ``bucket_cap_mb`` does; 0 leaves one all-reduce per gradient.
    Raises:
        ConfigError: naming the values that do not fit.
    """
    parallel = parallel or ParallelConfig()
    dp, mp, pp = parallel.data_parallel, parallel.model_parallel, parallel.pipeline_stage
    if (dp, mp, pp) != (1, 1, 1) and dp * mp * pp != device_num:
        raise ConfigError(
            f"parallel_config: data_parallel {dp} x model_parallel {mp} x pipeline_stage {pp} = "
            f"{dp * mp * pp}, but the run has {device_num} devices"
        )
    if mp > 1 or pp > 1:
        raise ConfigError(
            f"parallel_config: model_parallel {mp} / pipeline_stage {pp} > 1 is not supported (the "
            f"model cells carry no sharding strategies); use data_parallel {device_num}"
        )
    fusion = allreduce_fusion(parallel.allreduce_bucket_mb)
    if not parallel.optimizer_shard:
        return dict(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True, device_num=device_num, **fusion)
    if device_target == "CPU":
        raise ConfigError(
            "parallel_config.optimizer_shard needs semi_auto_parallel, which MindSpore supports on "
            "Ascend and GPU only; set it to False on CPU"
        )
    return dict(
        parallel_mode=ms.ParallelMode.SEMI_AUTO_PARALLEL,
        gradients_mean=True,
        device_num=device_num,
        enable_parallel_optimizer=True,
        dataset_strategy="data_parallel",
        **fusion,
    )


def allreduce_fusion(bucket_mb: int) -> Dict[str, Any]:
    """The ``set_auto_parallel_context`` argument that fuses gradient all-reduces into ``bucket_mb`` MB buckets
    (empty for 0: no fusion)."""
    if bucket_mb <= 0:
        return {}
    return {"comm_fusion": {"allreduce": {"mode": "size", "config": int(bucket_mb)}}}


def init_distributed(parallel: Optional[ParallelConfig] = None, device_target: str = "CPU") -> Tuple[int, int]:
    """Join the process group started by ``msrun`` (or a rank-table launch) and set the parallel mode from
    ``parallel_config`` (see :func:`parallel_settings`: data parallel with mean-reduced gradients by default).
    Returns ``(rank_id, rank_size)``; ``(0, 1)`` when this process was not launched as a worker of a group."""
    from mindspore.communication import get_group_size, get_rank, init

    if not launched_as_worker():
        logger.info("not launched by msrun or with a rank table: running as a single process")
        return 0, 1
    init()
    rank_id, rank_size = get_rank(), get_group_size()
    settings = parallel_settings(parallel, rank_size, device_target)
    ms.set_auto_parallel_context(**settings)
    logger.info(
        "data parallel: rank %d of %d%s",
        rank_id,
        rank_size,
        " (optimizer states sharded, semi_auto_parallel)" if "enable_parallel_optimizer" in settings else "",
    )
    return rank_id, rank_size
