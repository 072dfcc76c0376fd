"""Backbone registry: ``name -> builder``. Families register with :func:`register_backbone`; everything else
builds through :func:`build_backbone`, so no ``construct`` ever branches on a model-type string."""
from __future__ import annotations

import difflib
from typing import Callable, Dict, List

import mindspore as ms

from mindrlhf.config import ConfigError, ModelConfig

_BACKBONES: Dict[str, Callable] = {}


def register_backbone(name: str):
    """Class decorator: make ``cls(cfg)`` buildable as ``model_config.type: name``."""

    def wrap(cls):
        if name in _BACKBONES:
            raise ValueError(f"backbone {name!r} is registered twice")
        _BACKBONES[name] = cls
        return cls

    return wrap


def list_backbones() -> List[str]:
    """Registered family names."""
    return sorted(_BACKBONES)


def backbone_class(name: str):
    """The class registered under ``name``; an unknown name is an error naming the nearest one."""
    if name not in _BACKBONES:
        near = difflib.get_close_matches(name, list_backbones(), n=1, cutoff=0.3)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(f"model_config.type: unknown model {name!r}{hint} "
                          f"(registered: {', '.join(list_backbones())})")
    return _BACKBONES[name]


def build_backbone(cfg: ModelConfig, recompute: bool = False):
    """Build the backbone named by ``cfg.type``; ``recompute`` recomputes each block in the backward pass."""
    if cfg.compute_dtype == "bfloat16" and ms.get_context("device_target") == "CPU":
        raise ConfigError("model_config.compute_dtype: bfloat16 matmuls are not available on MindSpore's CPU "
                          "kernels; use float32 or float16 on CPU (bfloat16 works on GPU/Ascend)")
    backbone = backbone_class(cfg.type)(cfg)
    if recompute:
        for block in backbone.blocks():
            block.recompute()
    return backbone
