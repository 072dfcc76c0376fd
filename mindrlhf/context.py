"""Device and execution-mode set-up from a :class:`ContextConfig` (CPU / GPU / Ascend, graph / pynative)."""
from __future__ import annotations

import logging

import mindspore as ms

from mindrlhf.config import ContextConfig

logger = logging.getLogger(__name__)


def init_context(ctx: ContextConfig, seed: int = 0) -> None:
    """Apply ``ctx`` to MindSpore's global context and seed MindSpore's generators."""
    mode = ms.GRAPH_MODE if ctx.mode == 0 else ms.PYNATIVE_MODE
    kwargs = dict(mode=mode, device_target=ctx.device_target, max_call_depth=ctx.max_call_depth)
    if ctx.device_target != "CPU":
        kwargs["device_id"] = ctx.device_id
        if ctx.max_device_memory:
            kwargs["max_device_memory"] = ctx.max_device_memory
    ms.set_context(**kwargs)
    ms.set_seed(seed)
    logger.info("context: %s mode on %s (device %d), seed %d", "graph" if ctx.mode == 0 else "pynative",
                ctx.device_target, ctx.device_id, seed)
