"""LoRA adapters in PEFT's folder layout: ``adapter_config.json`` + ``adapter_model.safetensors``, which ``peft``
loads onto the ``transformers`` model of the same base (``PeftModel.from_pretrained``), and back.

Names: our layer ``backbone.h.0.attn.c_attn`` is the Hugging Face module ``transformer.h.0.attn.c_attn`` (the
family's prefix, :class:`~mindrlhf.models.registry.HFLayout`), stored as
``base_model.model.<module>.lora_A.weight`` ``(r, in)`` and ``.lora_B.weight`` ``(out, r)``: our own shapes, also for
GPT-2's transposed Conv1D layers (PEFT then sets ``fan_in_fan_out``). ``target_modules`` is written as the full module
names, so a PEFT model adapts exactly the layers we did.

A reward model's or critic's ``score`` head, trained in full beside the adapters, is written as PEFT writes a
sequence-classification adapter's trained head: ``task_type: SEQ_CLS``, ``modules_to_save: [score]`` and the
whole matrix as ``base_model.model.score.weight``, so ``PeftModel.from_pretrained`` on
``AutoModelForSequenceClassification`` of the base scores as ours. PPO's shared value head (``v_head``) has no
``transformers`` counterpart and stays out of an adapter folder.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Dict, List, Tuple

import numpy as np
from mindspore import nn

from mindrlhf.config import ConfigError, LoRAConfig
from mindrlhf.atomic import atomic_folder
from mindrlhf.models.convert import BACKBONE_PREFIX, CheckpointError, assign_parameters
from mindrlhf.models.lora import LORA_SCALE, apply_lora, lora_layers
from mindrlhf.models.registry import family

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."  # PeftModel's prefix of the wrapped transformers model's names
UNSUPPORTED = ("use_dora", "use_rslora")  # PEFT options whose update we do not compute
SAVED_HEAD = "score"  # the trained head PEFT saves in full (modules_to_save) for a sequence-classification model
HEAD_MODULES = ("classifier", SAVED_HEAD)  # what PEFT puts in modules_to_save for task_type SEQ_CLS


def hf_module(name: str, prefix: str) -> str:
    """Our dotted layer name -> the Hugging Face module name (``backbone.`` -> the family's prefix)."""
    return prefix + name[len(BACKBONE_PREFIX) :] if name.startswith(BACKBONE_PREFIX) else name


def our_layer(module: str, prefix: str) -> str:
    """Inverse of :func:`hf_module`."""
    return BACKBONE_PREFIX + module[len(prefix) :] if module.startswith(prefix) else module


def single_setting(values: List[float], what: str) -> float:
    """The one value every adapter shares (PEFT's per-layer patterns are not written)."""
    if len(set(values)) != 1:
        raise ConfigError(f"adapters of different {what} ({sorted(set(values))}) cannot be written as one PEFT config")
    return values[0]


def save_peft_adapter(model: nn.Cell, model_type: str, folder: str) -> str:
    """Write ``model``'s adapters as a PEFT LoRA folder (replaced atomically); returns ``folder``."""
    from safetensors.numpy import save_file

    layers = lora_layers(model)
    if not layers:
        raise ConfigError("the model has no LoRA adapters to export (set lora.r and lora.target_modules)")
    layout = family(model_type).hf
    tensors, modules = {}, []
    for name, layer in sorted(layers.items()):
        module = hf_module(name, layout.prefix)
        modules.append(module)
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = np.ascontiguousarray(layer.lora_A.asnumpy())
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = np.ascontiguousarray(layer.lora_B.asnumpy())
    head = getattr(model, SAVED_HEAD, None)
    if head is not None:  # a reward model or critic: its trained head in full, as PEFT saves modules_to_save
        tensors[f"{PEFT_PREFIX}{SAVED_HEAD}.weight"] = np.ascontiguousarray(head.weight.asnumpy())
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM" if head is None else "SEQ_CLS",
        "base_model_name_or_path": None,
        "r": int(single_setting([layer.r for layer in layers.values()], "ranks")),
        "lora_alpha": single_setting([layer.alpha for layer in layers.values()], "alphas"),
        "lora_dropout": 0.0,
        "target_modules": modules,
        "bias": "none",
        "inference_mode": True,
        "fan_in_fan_out": any(f"{m}.weight".endswith(layout.transposed) for m in modules),
        "modules_to_save": None if head is None else list(HEAD_MODULES),
    }
    with atomic_folder(folder) as tmp:
        save_file(tensors, os.path.join(tmp, ADAPTER_WEIGHTS), metadata={"format": "pt"})
        with open(os.path.join(tmp, ADAPTER_CONFIG), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2)
    return folder


def read_peft_config(folder: str) -> Dict:
    """``adapter_config.json`` of a PEFT LoRA folder, checked for what we can load."""
    path = os.path.join(folder, ADAPTER_CONFIG)
    if not os.path.isfile(path) or not os.path.isfile(os.path.join(folder, ADAPTER_WEIGHTS)):
        raise CheckpointError(f"{folder}: not a PEFT adapter folder (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS})")
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
    if config.get("peft_type") != "LORA":
        raise CheckpointError(f"{path}: field 'peft_type' {config.get('peft_type')!r} is not supported (LORA)")
    for key in UNSUPPORTED + ("rank_pattern", "alpha_pattern"):
        if config.get(key):
            raise CheckpointError(f"{path}: field {key!r} is not supported")
    if config.get("bias", "none") != "none":
        raise CheckpointError(f"{path}: field 'bias' is not supported (none)")
    extra = sorted(set(config.get("modules_to_save") or ()) - set(HEAD_MODULES))
    if extra:
        raise CheckpointError(
            f"{path}: field 'modules_to_save' names {extra}: only a sequence-classification "
            f"head ({', '.join(HEAD_MODULES)}) is supported"
        )
    return config


def peft_arrays(folder: str, model_type: str) -> Tuple[Dict[str, np.ndarray], LoRAConfig]:
    """A PEFT LoRA folder's tensors under our names (``<layer>.lora_A`` / ``.lora_B``) and its settings."""
    from safetensors.numpy import load_file

    config = read_peft_config(folder)
    prefix = family(model_type).hf.prefix
    arrays, modules = {}, set()
    for key, array in load_file(os.path.join(folder, ADAPTER_WEIGHTS)).items():
        if key == f"{PEFT_PREFIX}{SAVED_HEAD}.weight" and config.get("modules_to_save"):
            arrays[f"{SAVED_HEAD}.weight"] = array  # the trained score head, whole
            continue
        module, kind = key[len(PEFT_PREFIX) :].rsplit(".lora_", 1) if key.startswith(PEFT_PREFIX) else (key, "")
        if kind not in ("A.weight", "B.weight"):
            raise CheckpointError(f"{folder}/{ADAPTER_WEIGHTS}: tensor {key!r} is not a LoRA A/B weight")
        layer = our_layer(module, prefix)
        modules.add(layer)
        arrays[f"{layer}.lora_{kind[0]}"] = array
    lora = LoRAConfig(
        r=int(config["r"]),
        alpha=float(config.get("lora_alpha", 8)),
        dropout=float(config.get("lora_dropout", 0.0)),
        target_modules=sorted(modules),
    )
    return arrays, lora


def load_peft_adapter(model: nn.Cell, model_type: str, folder: str, trainable=()) -> List[str]:
    """Add the adapters of a PEFT LoRA folder to ``model`` (its base weights already loaded); returns the adapted
    layer names. :class:`CheckpointError` when the adapters do not fit the model (a module it lacks, other shapes)."""
    arrays, lora = peft_arrays(folder, model_type)
    return attach_adapters(model, arrays, dataclasses.replace(lora, trainable=list(trainable)), folder)


def ckpt_adapter_arrays(path: str) -> Tuple[Dict[str, np.ndarray], LoRAConfig]:
    """The adapters of a MindSpore checkpoint (a LoRA run's adapter-only RL checkpoint, or a full LoRA training
    checkpoint) under our names, with the rank and alpha they were trained with."""
    from mindrlhf.train.checkpoint import read_ckpt

    entries = read_ckpt(path)
    layers = sorted(n[: -len(".lora_A")] for n in entries if n.endswith(".lora_A"))
    if not layers:
        raise CheckpointError(f"{path}: holds no LoRA adapters (no <layer>.lora_A entries)")
    r = int(entries[f"{layers[0]}.lora_A"].shape[0])
    alpha = float(np.asarray(entries[f"{layers[0]}.{LORA_SCALE}"]).reshape(())) * r
    arrays = {f"{layer}.lora_{k}": entries[f"{layer}.lora_{k}"] for layer in layers for k in "AB"}
    arrays.update({n: a for n, a in entries.items() if n.startswith(f"{SAVED_HEAD}.")})  # a trained score head
    return arrays, LoRAConfig(r=r, alpha=alpha, target_modules=layers)


def load_adapter(model: nn.Cell, model_type: str, path: str, trainable=()) -> List[str]:
    """Add the adapters of ``path`` (a PEFT folder or a MindSpore ``.ckpt`` holding them) to ``model``."""
    if os.path.isdir(path):
        return load_peft_adapter(model, model_type, path, trainable)
    arrays, lora = ckpt_adapter_arrays(path)
    return attach_adapters(model, arrays, dataclasses.replace(lora, trainable=list(trainable)), path)


def attach_adapters(model: nn.Cell, arrays: Dict[str, np.ndarray], lora: LoRAConfig, source: str) -> List[str]:
    """:func:`apply_lora` for ``lora`` then the adapters' values from ``arrays`` (our names); errors name
    ``source``."""
    try:
        adapted = apply_lora(model, lora)
    except ConfigError as err:
        raise CheckpointError(f"{source}: the adapters do not fit the model: {err}") from None
    expected = {f"{name}.lora_{k}" for name in adapted for k in "AB"}
    if getattr(model, SAVED_HEAD, None) is None:  # a causal LM takes the adapters of a scoring model, not its head
        arrays = {n: a for n, a in arrays.items() if not n.startswith(f"{SAVED_HEAD}.")}
    else:
        expected.update(n for n in arrays if n.startswith(f"{SAVED_HEAD}."))
    assign_parameters(
        model, arrays, source, allow_missing=tuple(n for n, _ in model.parameters_and_names() if n not in expected)
    )
    return adapted
