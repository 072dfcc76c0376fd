"""Low-rank adapters (LoRA) on the dense layers of any backbone.

``apply_lora(model, cfg)`` replaces every :class:`~mindrlhf.models.layers.Linear` whose dotted name matches one of
``cfg.target_modules`` by a :class:`LoRALinear` that keeps the base ``weight``/``bias`` Parameters (same objects,
same names, so checkpoints and Hugging Face conversion are unchanged) and adds ``lora_A (r, in)`` and
``lora_B (out, r)``:

    y = x W^T + b + (alpha / r) * dropout(x) A^T B^T

``B`` starts at zero, so an adapted model starts as its base. Every base parameter is frozen; only the adapters and
the parameters named by ``cfg.trainable`` (a value or score head) stay trainable, so only they reach the optimizer and
the gradient all-reduce (both are built over ``trainable_params()``).

Each adapter's scale ``alpha / r`` lives in a frozen Parameter ``lora_scale``: :func:`set_adapters_enabled` sets it to
0 (the base model: PPO's, GRPO's and DPO's reference, no second copy of the weights) and back, without recompiling a
graph. :func:`merge_lora` folds ``W + (alpha / r) B A`` into the base and removes the adapters (export).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import logging
import os
import re
from typing import Dict, List, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import HeUniform, Zero, initializer

from mindrlhf.config import ConfigError, LoRAConfig
from mindrlhf.manifest import CheckpointError
from mindrlhf.models.layers import Linear, cast, dropout

logger = logging.getLogger(__name__)

LORA_PARAMS = ("lora_A", "lora_B")  # the trainable adapter parameters of a LoRALinear
LORA_SCALE = "lora_scale"  # its frozen scale alpha / r (0 while adapters are disabled)
BASE_KEY = "lora_base"  # an adapter checkpoint's record of the frozen base it was trained on (JSON text)


def adopt(cell: Linear, base: Linear) -> Linear:
    """Initialise ``cell`` (a bare :class:`Linear` or subclass) to compute with ``base``'s Parameters, not copies."""
    nn.Cell.__init__(cell)
    cell.weight = base.weight
    cell.has_bias = base.has_bias
    if base.has_bias:
        cell.bias = base.bias
    cell.matmul = ops.MatMul(transpose_b=True)
    cell.out_features, cell.compute_dtype = base.out_features, base.compute_dtype
    return cell


class LoRALinear(Linear):
    """A :class:`Linear` plus a rank-``r`` update; same ``construct`` contract: ``(..., in) -> (..., out)``.

    Args:
        base: the layer to adapt; its ``weight`` ``(out, in)`` and ``bias`` ``(out,)`` Parameters are taken over
            (not copied) and frozen.
        r: adapter rank, ``1 <= r <= min(in, out)``.
        alpha: the update is scaled by ``alpha / r``.
        rate: dropout on the adapter's input (training only).
    """

    def __init__(self, base: Linear, r: int, alpha: float, rate: float = 0.0):
        adopt(self, base)
        out_features, in_features = base.weight.shape
        dtype = base.weight.dtype
        # PEFT's initialisation: A Kaiming-uniform, B zero (the adapted model starts as the base)
        self.lora_A = Parameter(
            initializer(HeUniform(negative_slope=np.sqrt(5)), (r, in_features), dtype), name="lora_A"
        )
        self.lora_B = Parameter(initializer(Zero(), (out_features, r), dtype), name="lora_B")
        self.lora_scale = Parameter(Tensor(alpha / r, ms.float32), name=LORA_SCALE, requires_grad=False)
        self.r, self.alpha = r, alpha
        self.lora_dropout = dropout(rate)

    def construct(self, x):
        y = Linear.construct(self, x)
        shape = x.shape
        x2d = ops.reshape(self.lora_dropout(cast(x, self.compute_dtype)), (-1, shape[-1]))
        down = self.matmul(x2d, cast(self.lora_A, self.compute_dtype))  # (N, r)
        up = self.matmul(down, cast(self.lora_B, self.compute_dtype)) * cast(self.lora_scale, self.compute_dtype)
        return y + ops.reshape(up, shape[:-1] + (self.out_features,))


def dense_layers(model: nn.Cell) -> Dict[str, Tuple[nn.Cell, str, Linear]]:
    """Every :class:`Linear` of ``model`` by dotted name: ``name -> (parent cell, attribute, layer)``."""
    found = {}
    for parent_name, parent in model.cells_and_names():
        for attr, child in parent.name_cells().items():
            if isinstance(child, Linear):
                found[f"{parent_name}.{attr}" if parent_name else attr] = (parent, attr, child)
    return found


def matches(name: str, patterns) -> bool:
    """PEFT's rule: ``name`` matches a pattern that it equals or ends with (after a dot), or that fully matches it
    as a regular expression."""
    return any(name == p or name.endswith("." + p) or re.fullmatch(p, name) for p in patterns)


def _check_rank(name: str, layer: Linear, r: int) -> None:
    out_features, in_features = layer.weight.shape
    if r > min(in_features, out_features):
        raise ConfigError(
            f"lora.r: rank {r} is larger than layer {name!r} ({in_features} -> {out_features}) "
            f"allows (at most {min(in_features, out_features)})"
        )


def rename_parameters(model: nn.Cell) -> None:
    """Name every Parameter by its path in ``model`` (adapters added after construction get their full names)."""
    for name, param in model.parameters_and_names():
        if not name.startswith("kv_cache") and param.name != name:
            param.name = name


def apply_lora(model: nn.Cell, cfg: LoRAConfig) -> List[str]:
    """Wrap the dense layers of ``model`` that ``cfg.target_modules`` names and freeze everything else but the
    adapters and ``cfg.trainable``; returns the adapted layer names.

    Raises:
        ConfigError: a pattern that matches no dense layer (the error lists those that exist), or a rank larger
            than an adapted layer.
    """
    layers = dense_layers(model)
    for pattern in cfg.target_modules:
        if not any(matches(name, [pattern]) for name in layers):
            kinds = sorted({re.sub(r"\.\d+\.", ".<i>.", name) for name in layers})
            near = difflib.get_close_matches(pattern, sorted({n.rsplit(".", 1)[-1] for n in layers}), n=1)
            hint = f"did you mean {near[0]!r}? " if near else ""
            raise ConfigError(
                f"lora.target_modules: {pattern!r} matches no dense layer; {hint}the model has: {', '.join(kinds)}"
            )
    chosen = sorted(name for name in layers if matches(name, cfg.target_modules))
    for name in chosen:
        _check_rank(name, layers[name][2], cfg.r)
    for name in chosen:
        parent, attr, layer = layers[name]
        setattr(parent, attr, LoRALinear(layer, cfg.r, cfg.alpha, cfg.dropout))
    rename_parameters(model)
    freeze_base(model, cfg.trainable)
    trainable = sum(int(np.prod(p.shape)) for p in model.trainable_params())
    total = sum(int(np.prod(p.shape)) for p in model.get_parameters() if not p.name.startswith("kv_cache"))
    logger.info(
        "LoRA r=%d alpha=%g on %d layers: %d of %d parameters trainable (%.2f%%)",
        cfg.r,
        cfg.alpha,
        len(chosen),
        trainable,
        total,
        100.0 * trainable / max(total, 1),
    )
    return chosen


def freeze_base(model: nn.Cell, trainable=()) -> None:
    """``requires_grad`` only for adapter parameters and those whose name matches ``trainable``."""
    for name, param in model.parameters_and_names():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == LORA_SCALE or name.startswith("kv_cache"):
            continue
        param.requires_grad = leaf in LORA_PARAMS or any(
            name == p or name.startswith(p + ".") or re.fullmatch(p, name) for p in trainable
        )


def lora_layers(model: nn.Cell) -> Dict[str, LoRALinear]:
    """The adapted layers of ``model`` by dotted name."""
    return {name: cell for name, cell in model.cells_and_names() if isinstance(cell, LoRALinear)}


def set_adapters_enabled(model: nn.Cell, enabled: bool) -> None:
    """Switch every adapter of ``model`` on (scale ``alpha / r``) or off (scale 0: the base model)."""
    for layer in lora_layers(model).values():
        layer.lora_scale.set_data(Tensor(layer.alpha / layer.r if enabled else 0.0, ms.float32))


def merged_weight(layer: LoRALinear) -> np.ndarray:
    """``W + (alpha / r) B A`` as a numpy array of the base weight's dtype."""
    weight = layer.weight.asnumpy()
    update = layer.lora_B.asnumpy().astype(np.float64) @ layer.lora_A.asnumpy().astype(np.float64)
    return (weight.astype(np.float64) + (layer.alpha / layer.r) * update).astype(weight.dtype)


def merge_lora(model: nn.Cell) -> List[str]:
    """Fold every adapter into its base weight and put a plain :class:`Linear` (the same Parameters) back in its
    place; returns the merged layer names. The merged model computes what the adapted one did."""
    layers = dense_layers(model)
    merged = sorted(lora_layers(model))
    for name in merged:
        parent, attr, layer = layers[name]
        layer.weight.set_data(Tensor(merged_weight(layer)))
        setattr(parent, attr, adopt(Linear.__new__(Linear), layer))
    rename_parameters(model)
    return merged


def prepare_lora(model: nn.Cell, cfg: LoRAConfig, heads=()) -> List[str]:
    """:func:`apply_lora` with the stage's ``heads`` (name prefixes: ``v_head``, ``score``) trained in full, when
    ``cfg`` enables adapters (new ones, or ``cfg.adapter``'s); otherwise nothing (full fine-tuning). Returns the
    adapted layer names."""
    if not cfg.enabled:
        return []
    trainable = list(cfg.trainable) + list(heads)
    if cfg.adapter:
        from mindrlhf.models.peft import load_adapter

        return load_adapter(model, model.config.type, cfg.adapter, trainable)
    return apply_lora(model, dataclasses.replace(cfg, trainable=trainable))


def has_adapters(model: nn.Cell) -> bool:
    """``model`` holds LoRA layers."""
    return bool(lora_layers(model))


def adapter_parameters(model: nn.Cell) -> Dict[str, Parameter]:
    """What an adapter checkpoint of ``model`` holds: its trainable parameters (adapters, trained heads) and the
    adapter scales, by name; the frozen base is rebuilt from where it came from."""
    return {
        p.name: p
        for p in model.get_parameters()
        if not p.name.startswith("kv_cache") and (p.requires_grad or p.name.endswith("." + LORA_SCALE))
    }


def frozen_base(model: nn.Cell) -> Dict[str, Parameter]:
    """The frozen base parameters of an adapted ``model`` by name: what its adapter checkpoints leave out."""
    saved = adapter_parameters(model)
    return {p.name: p for p in model.get_parameters() if not p.name.startswith("kv_cache") and p.name not in saved}


def array_digest(array: np.ndarray) -> str:
    """A short SHA-256 (16 hex digits) of an array's bytes: which weights, not where they came from."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()[:16]


def base_record(model: nn.Cell, source: str) -> str:
    """What an adapter checkpoint of ``model`` records of its base: JSON ``{"path": the weights file or folder the
    base was loaded from ("" = seeded fresh weights), "digests": {name: array_digest} of every frozen parameter}``.
    A consumer loads the base from ``path`` and refuses it when a digest differs."""
    path = os.path.abspath(source) if source and os.path.exists(source) else source
    digests = {name: array_digest(p.asnumpy()) for name, p in sorted(frozen_base(model).items())}
    return json.dumps({"path": path, "digests": digests})


def parse_base_record(text: str, source: str) -> dict:
    """The record :func:`base_record` wrote into checkpoint ``source``; :class:`CheckpointError` when unreadable."""
    try:
        record = json.loads(text)
        if isinstance(record.get("path"), str) and isinstance(record.get("digests"), dict):
            return record
    except (ValueError, AttributeError):
        pass
    raise CheckpointError(f"{source}: entry {BASE_KEY!r} is not a LoRA base record")


def check_base(params: Dict[str, Parameter], record: dict, source: str) -> None:
    """Refuse, in one line naming ``source``, base weights ``params`` other than the ones its adapters were trained
    on (``record``); parameters the record or ``params`` lacks (another stage's head) are not compared."""
    common = [name for name in record["digests"] if name in params]
    differing = [name for name in common if array_digest(params[name].asnumpy()) != record["digests"][name]]
    if common and not differing:
        return
    base = record["path"] or "fresh weights of the same seed"
    what = (
        f"{len(differing)} of {len(common)} base parameters differ, e.g. {differing[0]}"
        if differing
        else "no base parameter in common"
    )
    raise CheckpointError(
        f"{source}: its LoRA adapters were trained on the base {base}, but the base weights given "
        f"are another model ({what}); start from that base"
    )


class WithoutAdapters:
    """``scorer(*inputs)`` run with ``model``'s adapters off: the base model's outputs from the same weights (the
    reference of PPO, GRPO and DPO under LoRA; no second copy of the base). The outputs are computed before the
    adapters are switched back on."""

    def __init__(self, scorer, model: nn.Cell):
        self.scorer, self.model = scorer, model

    def __call__(self, *inputs):
        set_adapters_enabled(self.model, False)
        try:
            outputs = self.scorer(*inputs)
            ms.runtime.synchronize()
            return outputs
        finally:
            set_adapters_enabled(self.model, True)


def reference_scorer(scorer, ref: nn.Cell):
    """``scorer`` over the reference model ``ref``: as it is for a separate reference, wrapped in
    :class:`WithoutAdapters` when ``ref`` is an adapted policy (a reference is always scored as the base)."""
    return WithoutAdapters(scorer, ref) if has_adapters(ref) else scorer


def fold_lora_arrays(arrays: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """A state dict with adapters (``<layer>.lora_A/lora_B/lora_scale``) as one with each folded into its
    ``<layer>.weight`` (``W + scale B A``): what a model without adapters loads."""
    out = dict(arrays)
    for name in [n for n in arrays if n.endswith(".lora_A")]:
        layer = name[: -len(".lora_A")]
        a, b = out.pop(name), out.pop(f"{layer}.lora_B")
        scale = float(out.pop(f"{layer}.{LORA_SCALE}"))
        weight = out[f"{layer}.weight"]
        out[f"{layer}.weight"] = (
            weight.astype(np.float64) + scale * (b.astype(np.float64) @ a.astype(np.float64))
        ).astype(weight.dtype)
    return out
