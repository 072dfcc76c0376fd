"""Device and execution-mode set-up from a :class:`ContextConfig` (CPU / GPU / Ascend, graph / pynative)."""
from __future__ import annotations

import logging
import os
from typing import Tuple

import mindspore as ms

from mindrlhf.config import ContextConfig

logger = logging.getLogger(__name__)


def init_context(ctx: ContextConfig, seed: int = 0) -> None:
    """Apply ``ctx`` to MindSpore's global context and seed MindSpore's generators."""
    mode = ms.GRAPH_MODE if ctx.mode == 0 else ms.PYNATIVE_MODE
    kwargs = dict(mode=mode, device_target=ctx.device_target, max_call_depth=ctx.max_call_depth)
    if ctx.device_target != "CPU":
        kwargs["device_id"] = int(os.environ.get("DEVICE_ID", ctx.device_id))  # launch scripts export DEVICE_ID
        if ctx.max_device_memory:
            kwargs["max_device_memory"] = ctx.max_device_memory
    ms.set_context(**kwargs)
    ms.set_seed(seed)
    logger.info("context: %s mode on %s (device %s), seed %d", "graph" if ctx.mode == 0 else "pynative",
                ctx.device_target, kwargs.get("device_id", ctx.device_id), seed)


def launched_as_worker() -> bool:
    """True inside a process started by msrun, or by a rank-table launch of more than one device."""
    if os.environ.get("MS_WORKER_NUM"):
        return True
    return bool(os.environ.get("RANK_TABLE_FILE")) and int(os.environ.get("RANK_SIZE") or 1) > 1


def init_distributed() -> Tuple[int, int]:
    """Join the process group started by ``msrun`` (or a rank-table launch) and switch to data parallel with
    mean-reduced gradients. Returns ``(rank_id, rank_size)``; ``(0, 1)`` when this process was not launched as a
    worker of a group."""
    from mindspore.communication import get_group_size, get_rank, init

    if not launched_as_worker():
        logger.info("not launched by msrun or with a rank table: running as a single process")
        return 0, 1
    init()
    rank_id, rank_size = get_rank(), get_group_size()
    ms.set_auto_parallel_context(parallel_mode=ms.ParallelMode.DATA_PARALLEL, gradients_mean=True,
                                 device_num=rank_size)
    logger.info("data parallel: rank %d of %d", rank_id, rank_size)
    return rank_id, rank_size
