"""Model-family registry: one :class:`ModelFamily` entry per family holds everything the rest of the package needs to
know about it: the backbone class, how Hugging Face names and stores its weights, ``config.json`` <-> our
:class:`ModelConfig`, its default tokenizer and bos rule, and its chat template.

Families register with :func:`register_family` from their own module (``gpt2.py``, ``llama.py``, ...); everything
else looks them up with :func:`family` (by ``model_config.type``) or :func:`family_for_model_type` (by a Hugging Face
``config.json`` ``model_type``), so no ``construct`` and no converter branches on a family name.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import mindspore as ms

from mindrlhf.config import ConfigError, ModelConfig
from mindrlhf.manifest import CheckpointError  # noqa: F401 (re-exported to the family modules)


@dataclass(frozen=True)
class HFLayout:
    """How a family's weights are named and stored in Hugging Face checkpoints.

    Our parameter names are Hugging Face's with the backbone prefix replaced by ``backbone.``; the cells compute
    in Hugging Face's layouts (fused QKV order, rotary pairing), so converting a tensor is a rename and, for the
    suffixes in ``transposed``, a transpose.
    """

    model_type: str  # config.json "model_type"
    prefix: str  # backbone prefix in Hugging Face state dicts ("transformer.", "model.")
    embed: str  # the token table's name under the prefix
    lm_class: str  # architectures entry of the causal LM
    reward_class: str  # architectures entry of the scalar-head (sequence classification) model
    transposed: Tuple[str, ...] = ()  # name suffixes stored (in, out) (GPT-2's Conv1D)
    ignored: Tuple[str, ...] = ()  # name suffixes of buffers that are not parameters (causal masks, inv_freq)


@dataclass(frozen=True)
class MindformersLayout:
    """How mindformers names a family's parameters in its MindSpore ``.ckpt`` files.

    ``to_ours(arrays, cfg)`` renames (and splits, joins or transposes) a mindformers state dict into our names;
    ``from_ours`` is its inverse. A name either cannot map stays as it is, so the loader lists it as unexpected.
    """

    markers: Tuple[str, ...]  # name prefixes only a mindformers checkpoint of the family has
    to_ours: Callable[[Dict[str, Any], ModelConfig], Dict[str, Any]]
    from_ours: Callable[[Dict[str, Any], ModelConfig], Dict[str, Any]]


def rename_by_pairs(name: str, pairs: Tuple[Tuple[str, str], ...]) -> str:
    """``name`` with each ``(old, new)`` substring of ``pairs`` replaced in order (a name map both ways: swap the
    pairs for the inverse)."""
    for old, new in pairs:
        name = name.replace(old, new)
    return name


@dataclass(frozen=True)
class ModelFamily:
    """One model family: everything that differs between families, in one place.

    ``config_from_hf(hf_dict, source) -> ModelConfig`` reads the family's ``config.json`` fields (``source`` names
    the file in errors); ``config_to_hf(cfg) -> dict`` writes them back (the generic keys, such as ``vocab_size``,
    the special ids and ``tie_word_embeddings``, are added by :func:`mindrlhf.models.convert.model_config_to_hf`).
    """

    name: str  # model_config.type
    backbone: type  # the nn.Cell class: cls(cfg); construct(input_ids, attention_mask, ...) -> hidden (B, S, H)
    hf: HFLayout
    config_from_hf: Callable[[Dict[str, Any], str], ModelConfig]
    config_to_hf: Callable[[ModelConfig], Dict[str, Any]]
    tied_default: bool  # tie_word_embeddings when neither the YAML nor config.json says
    lm_head_bias: bool = False  # the LM head has a bias (GPT-J)
    tokenizer: Optional[str] = None  # bundled tokenizer (mindrlhf.data.tokenizer.BUNDLED key); None: none ships
    add_bos: bool = False  # prompts start with bos when the tokenizer's own files do not say
    chat_template: Optional[str] = None  # mindrlhf.data.templates name of the family's chat format, if any
    mindformers: Optional[MindformersLayout] = None  # mindformers .ckpt names, for the families it ships


_FAMILIES: Dict[str, ModelFamily] = {}


def register_family(entry: ModelFamily) -> ModelFamily:
    """Add ``entry`` to the registry (its module calls this once at import)."""
    if entry.name in _FAMILIES:
        raise ValueError(f"model family {entry.name!r} is registered twice")
    _FAMILIES[entry.name] = entry
    return entry


def list_backbones() -> List[str]:
    """Registered family names (``model_config.type`` values)."""
    return sorted(_FAMILIES)


def family(name: str) -> ModelFamily:
    """The family registered under ``name``; an unknown name is an error naming the nearest one."""
    if name not in _FAMILIES:
        near = difflib.get_close_matches(name, list_backbones(), n=1, cutoff=0.3)
        hint = f"; did you mean {near[0]!r}?" if near else ""
        raise ConfigError(
            f"model_config.type: unknown model {name!r}{hint} (registered: {', '.join(list_backbones())})"
        )
    return _FAMILIES[name]


def family_for_model_type(model_type: Any, source: str) -> ModelFamily:
    """The family whose Hugging Face ``model_type`` is ``model_type`` (``source`` names the config file)."""
    for entry in _FAMILIES.values():
        if entry.hf.model_type == model_type:
            return entry
    known = ", ".join(sorted({e.hf.model_type for e in _FAMILIES.values()}))
    raise CheckpointError(f"{source}: model_type {model_type!r} is not supported (supported: {known})")


def backbone_class(name: str):
    """The backbone class of the family ``name``."""
    return family(name).backbone


def build_backbone(cfg: ModelConfig, recompute: bool = False):
    """Build the backbone named by ``cfg.type``; ``recompute`` recomputes each block in the backward pass."""
    if cfg.compute_dtype == "bfloat16" and ms.get_context("device_target") == "CPU":
        raise ConfigError(
            "model_config.compute_dtype: bfloat16 matmuls are not available on MindSpore's CPU "
            "kernels; use float32 or float16 on CPU (bfloat16 works on GPU/Ascend)"
        )
    backbone = backbone_class(cfg.type)(cfg)
    if recompute:
        for block in backbone.blocks():
            block.recompute()
    return backbone


_MISSING = object()


# Hugging Face's activation names (transformers ACT2FN) -> ``ModelConfig.hidden_act``, and back
HF_ACTIVATIONS = {
    "gelu_new": "gelu",
    "gelu_pytorch_tanh": "gelu",
    "gelu": "gelu_exact",
    "silu": "silu",
    "swish": "silu",
    "relu": "relu",
}
HF_ACTIVATION_NAMES = {"gelu": "gelu_new", "gelu_exact": "gelu", "silu": "silu", "relu": "relu"}


def hf_activation(hf: Dict[str, Any], source: str, key: str, default: str) -> str:
    """``ModelConfig.hidden_act`` for the Hugging Face activation named by ``config.json``'s ``key``.

    Raises:
        CheckpointError: for an activation no family cell computes, naming the file and the field.
    """
    name = hf.get(key, default)
    if name not in HF_ACTIVATIONS:
        raise CheckpointError(f"{source}: field {key!r} {name!r} is not supported (one of {', '.join(HF_ACTIVATIONS)})")
    return HF_ACTIVATIONS[name]


def hf_field(hf: Dict[str, Any], key: str, source: str, default: Any = _MISSING) -> Any:
    """``hf[key]``; a missing required field is a :class:`CheckpointError` naming the file and the field."""
    value = hf.get(key, default)
    if value is _MISSING or (value is None and default is _MISSING):
        raise CheckpointError(f"{source}: field {key!r} is missing")
    return value


def hf_special_ids(hf: Dict[str, Any], bos: Optional[int], eos: Optional[int], pad: Optional[int]) -> Dict[str, int]:
    """``bos_token_id`` / ``eos_token_id`` / ``pad_token_id`` for :class:`ModelConfig`: ``config.json``'s values,
    else the family's defaults; a missing bos or pad falls back to eos (one id for all, GPT-2 style)."""
    eos = hf.get("eos_token_id") if hf.get("eos_token_id") is not None else eos
    if isinstance(eos, list):  # generation configs may list several stop ids; the first is the eos
        eos = eos[0]
    bos = hf.get("bos_token_id") if hf.get("bos_token_id") is not None else bos
    pad = hf.get("pad_token_id") if hf.get("pad_token_id") is not None else pad
    return {
        "eos_token_id": eos,
        "bos_token_id": eos if bos is None else bos,
        "pad_token_id": eos if pad is None else pad,
    }


def hf_rope_theta(hf: Dict[str, Any], source: str, default: float = 10000.0) -> float:
    """The rotary base of a ``config.json`` dict: ``rope_theta`` (``transformers`` 4) or
    ``rope_parameters.rope_theta`` (``transformers`` 5). Rotary scaling (linear, dynamic, yarn, llama3, ...) is not
    implemented: an error naming the file and the field."""
    scaling = hf.get("rope_scaling")
    params = hf.get("rope_parameters") or {}
    for field, value in (("rope_scaling", scaling), ("rope_parameters", params)):
        kind = value.get("rope_type", value.get("type", "default")) if isinstance(value, dict) else value
        if value and kind != "default":
            raise CheckpointError(
                f"{source}: field {field!r} of type {kind!r} is not supported (only unscaled rotary positions are)"
            )
    if hf.get("rope_theta") is not None:
        return float(hf["rope_theta"])
    return float(params.get("rope_theta", default)) if isinstance(params, dict) else default
