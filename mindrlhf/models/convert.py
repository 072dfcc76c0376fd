"""Checkpoints: Hugging Face folders (``config.json`` + ``model.safetensors`` or a sharded
``model.safetensors.index.json``) to and from our cells, checked key by key and shape by shape, and MindSpore
``.ckpt`` files. Everything written goes to a temporary name first and is renamed into place.

Name map: Hugging Face ``transformer.*`` (GPT-2) / ``model.*`` (Llama) <-> our ``backbone.*``; heads keep their
names (``lm_head.weight``, ``score.weight``). GPT-2's ``Conv1D`` weights are stored ``(in, out)`` and are
transposed to our ``(out, in)``.

Tied embeddings (``tie_word_embeddings``): the one ``(V, H)`` matrix may be stored as the token table, as
``lm_head.weight`` or under both names; loading accepts all three, writing stores the token table only (the
layout ``transformers`` saves). Bundled models load by name: ``tinystories`` is :data:`BUNDLED_MODELS`' folder.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from mindrlhf.config import ModelConfig

BACKBONE_PREFIX = "backbone."
LM_HEAD = "lm_head.weight"

MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "models")
# name -> Hugging Face folder shipped with the package (mindrlhf/assets/README.md has the sources and licenses)
BUNDLED_MODELS: Dict[str, str] = {"tinystories": os.path.join(MODELS_DIR, "tinystories_656k")}


class CheckpointError(ValueError):
    """A checkpoint that does not fit the model: names the file and lists every problem."""


@dataclass(frozen=True)
class HFFamily:
    """How one model family is laid out in Hugging Face checkpoints."""

    model_type: str  # config.json "model_type"
    prefix: str  # backbone prefix in HF state dicts
    embed: str  # the token table's name under the prefix
    tied_default: bool  # tie_word_embeddings when config.json does not say
    transposed: Tuple[str, ...]  # name suffixes stored (in, out) in HF
    ignored: Tuple[str, ...]  # HF buffers that are not parameters
    lm_class: str  # architectures entry for a causal LM
    reward_class: str  # architectures entry for a scalar-head model


FAMILIES: Dict[str, HFFamily] = {
    "gpt2": HFFamily("gpt2", "transformer.", "wte.weight", True,
                     ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
                     (".attn.bias", ".attn.masked_bias"), "GPT2LMHeadModel", "GPT2ForSequenceClassification"),
    "llama": HFFamily("llama", "model.", "embed_tokens.weight", False, (), (".rotary_emb.inv_freq",),
                      "LlamaForCausalLM", "LlamaForSequenceClassification"),
}


# ---------------------------------------------------------------------------------------------------------------
# config.json <-> ModelConfig


def model_config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Translate a Hugging Face ``config.json`` dict into a :class:`ModelConfig`."""
    model_type = hf.get("model_type")
    if model_type == "gpt2":
        act = hf.get("activation_function", "gelu_new")
        if act not in ("gelu_new", "gelu_pytorch_tanh"):
            raise CheckpointError(f"{source}: activation_function {act!r} is not supported (gelu_new only)")
        eos = hf.get("eos_token_id", 50256)
        return ModelConfig(
            type="gpt2", vocab_size=hf["vocab_size"], hidden_size=hf["n_embd"], num_layers=hf["n_layer"],
            num_heads=hf["n_head"], intermediate_size=hf.get("n_inner"), seq_length=hf["n_positions"],
            hidden_act="gelu", layernorm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
            initializer_range=hf.get("initializer_range", 0.02),
            tie_word_embeddings=hf_ties_embeddings(hf),
            bos_token_id=hf.get("bos_token_id", eos), eos_token_id=eos,
            pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else eos)
    if model_type == "llama":
        if hf.get("rope_scaling"):
            raise CheckpointError(f"{source}: rope_scaling {hf['rope_scaling']!r} is not supported")
        if hf.get("attention_bias") or hf.get("mlp_bias"):
            raise CheckpointError(f"{source}: attention_bias/mlp_bias are not supported (Llama-2 has none)")
        eos = hf.get("eos_token_id", 2)
        return ModelConfig(
            type="llama", vocab_size=hf["vocab_size"], hidden_size=hf["hidden_size"],
            num_layers=hf["num_hidden_layers"], num_heads=hf["num_attention_heads"],
            num_kv_heads=hf.get("num_key_value_heads") or hf["num_attention_heads"],
            intermediate_size=hf["intermediate_size"], seq_length=hf.get("max_position_embeddings", 4096),
            hidden_act="silu", rms_norm_eps=hf.get("rms_norm_eps", 1e-5), rope_theta=hf.get("rope_theta", 10000.0),
            initializer_range=hf.get("initializer_range", 0.02),
            tie_word_embeddings=hf_ties_embeddings(hf), bos_token_id=hf.get("bos_token_id", 1),
            eos_token_id=eos, pad_token_id=hf.get("pad_token_id") if hf.get("pad_token_id") is not None else 0)
    raise CheckpointError(f"{source}: model_type {model_type!r} is not supported (supported: {', '.join(FAMILIES)})")


def hf_ties_embeddings(hf: dict) -> bool:
    """Whether a ``config.json`` dict ties the LM head to the token table (its family's default when unsaid)."""
    tied = hf.get("tie_word_embeddings")
    if tied is None:
        family = FAMILIES.get(hf.get("model_type"))
        return bool(family and family.tied_default)
    return bool(tied)


def model_config_to_hf(cfg: ModelConfig, reward: bool = False) -> dict:
    """The ``config.json`` dict Hugging Face ``transformers`` loads for ``cfg``."""
    family = FAMILIES[cfg.type]
    arch = family.reward_class if reward else family.lm_class
    common = {"architectures": [arch], "model_type": family.model_type, "vocab_size": cfg.vocab_size,
              "bos_token_id": cfg.bos_token_id, "eos_token_id": cfg.eos_token_id, "pad_token_id": cfg.pad_token_id,
              "initializer_range": cfg.initializer_range, "torch_dtype": cfg.param_init_type}
    if reward:
        common["num_labels"] = 1
    if cfg.type == "gpt2":
        tied = True if cfg.tie_word_embeddings is None else cfg.tie_word_embeddings
        return {**common, "n_embd": cfg.hidden_size, "n_layer": cfg.num_layers, "n_head": cfg.num_heads,
                "n_inner": cfg.intermediate_size, "n_positions": cfg.seq_length, "n_ctx": cfg.seq_length,
                "activation_function": "gelu_new", "layer_norm_epsilon": cfg.layernorm_epsilon,
                "resid_pdrop": cfg.hidden_dropout_rate, "embd_pdrop": cfg.hidden_dropout_rate,
                "attn_pdrop": cfg.attention_dropout_rate, "tie_word_embeddings": tied}
    from mindrlhf.models.llama import llama_intermediate_size
    return {**common, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
            "num_attention_heads": cfg.num_heads, "num_key_value_heads": cfg.num_kv_heads,
            "intermediate_size": llama_intermediate_size(cfg), "max_position_embeddings": cfg.seq_length,
            "hidden_act": "silu", "rms_norm_eps": cfg.rms_norm_eps, "rope_theta": cfg.rope_theta,
            "attention_bias": False, "mlp_bias": False, "attention_dropout": cfg.attention_dropout_rate,
            "tie_word_embeddings": bool(cfg.tie_word_embeddings)}


# ---------------------------------------------------------------------------------------------------------------
# reading Hugging Face folders


def resolve_checkpoint(path: str) -> str:
    """A bundled model's name (a key of :data:`BUNDLED_MODELS`, e.g. ``tinystories``) -> its folder; any other
    path, and a name that exists as a local path, is returned unchanged."""
    if path in BUNDLED_MODELS and not os.path.exists(path):
        return BUNDLED_MODELS[path]
    return path


def read_hf_config(folder: str) -> dict:
    """``folder/config.json`` as a dict (clear error when missing or malformed)."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: not found (a Hugging Face checkpoint folder needs config.json)") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: not valid JSON: line {err.lineno}: {err.msg}") from None


def safetensors_files(folder: str) -> List[str]:
    """The weight files of a checkpoint folder: ``model.safetensors`` or the shards listed by its index."""
    single = os.path.join(folder, "model.safetensors")
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise CheckpointError(f"{index}: not a safetensors index (needs a 'weight_map'): {err}") from None
        files = sorted(set(weight_map.values()))
        missing = [name for name in files if not os.path.exists(os.path.join(folder, name))]
        if missing:
            raise CheckpointError(f"{index}: shard files missing: {', '.join(missing)}")
        return [os.path.join(folder, name) for name in files]
    if os.path.exists(single):
        return [single]
    raise CheckpointError(f"{folder}: no model.safetensors or model.safetensors.index.json")


def read_hf_tensors(folder: str) -> Dict[str, np.ndarray]:
    """All tensors of a checkpoint folder as numpy arrays, by their Hugging Face names."""
    from safetensors.numpy import load_file

    tensors: Dict[str, np.ndarray] = {}
    for path in safetensors_files(folder):
        try:
            tensors.update(load_file(path))
        except Exception as err:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: cannot read safetensors: {err}") from None
    return tensors


def _family_of(cfg: ModelConfig) -> HFFamily:
    if cfg.type not in FAMILIES:
        raise CheckpointError(f"no Hugging Face layout known for model type {cfg.type!r}")
    return FAMILIES[cfg.type]


def hf_to_ours(tensors: Dict[str, np.ndarray], cfg: ModelConfig) -> Dict[str, np.ndarray]:
    """Rename (and transpose) Hugging Face tensors to our parameter names; buffers are dropped."""
    family = _family_of(cfg)
    head_names = ("lm_head.", "score.", "v_head.")
    out = {}
    for name, array in tensors.items():
        if name.endswith(family.ignored):
            continue
        if name.startswith(family.prefix):
            ours = BACKBONE_PREFIX + name[len(family.prefix):]
        elif name.startswith(head_names):
            ours = name
        else:  # the original GPT-2 release stores backbone names without a prefix
            ours = BACKBONE_PREFIX + name
        if name.endswith(family.transposed) and array.ndim == 2:
            array = array.T
        out[ours] = np.ascontiguousarray(array)
    return out


def ours_to_hf(params: Dict[str, np.ndarray], cfg: ModelConfig) -> Dict[str, np.ndarray]:
    """Inverse of :func:`hf_to_ours` (our names -> Hugging Face names)."""
    family = _family_of(cfg)
    out = {}
    for name, array in params.items():
        hf = family.prefix + name[len(BACKBONE_PREFIX):] if name.startswith(BACKBONE_PREFIX) else name
        if hf.endswith(family.transposed) and array.ndim == 2:
            array = array.T
        out[hf] = np.ascontiguousarray(array)
    return out


def merge_tied_embeddings(arrays: Dict[str, np.ndarray], cfg: ModelConfig, source: str) -> Dict[str, np.ndarray]:
    """Put a tied checkpoint's shared ``(V, H)`` matrix under the token table's name alone.

    A tied checkpoint may store it as the token table, as ``lm_head.weight`` (only the head, as some exporters
    do) or under both names, which must then be equal. ``arrays`` uses our names; returns a new dict.
    Raises:
        CheckpointError: both names are stored with different values.
    """
    family = _family_of(cfg)
    embed = BACKBONE_PREFIX + family.embed
    arrays = dict(arrays)
    head = arrays.pop(LM_HEAD, None)
    if head is None:
        return arrays
    if embed not in arrays:
        arrays[embed] = head
    elif arrays[embed].shape != head.shape or not np.array_equal(arrays[embed], head):
        raise CheckpointError(f"{source}: tie_word_embeddings is true but {LM_HEAD} and the token table "
                              f"{family.prefix}{family.embed} hold different values")
    return arrays


# ---------------------------------------------------------------------------------------------------------------
# loading into cells


def cell_parameters(cell: nn.Cell) -> Dict[str, ms.Parameter]:
    """Trainable and frozen parameters of ``cell`` by name (KV caches and other state excluded)."""
    return {p.name: p for p in cell.get_parameters() if not p.name.startswith("kv_cache")}


def assign_parameters(cell: nn.Cell, arrays: Dict[str, np.ndarray], source: str,
                      allow_missing: Iterable[str] = (), ignore_unexpected: Iterable[str] = ()) -> List[str]:
    """Copy ``arrays`` into ``cell``'s parameters after checking every name and shape.

    Args:
        allow_missing: name prefixes that may be absent from ``arrays`` (freshly initialised heads).
        ignore_unexpected: name prefixes in ``arrays`` that the cell does not need (an LM head when loading a
            causal LM checkpoint into a reward model).
    Returns:
        The names that kept their initial values.
    Raises:
        CheckpointError: listing every missing, unexpected and shape-mismatched name.
    """
    params = cell_parameters(cell)
    allow_missing, ignore_unexpected = tuple(allow_missing), tuple(ignore_unexpected)
    missing = [n for n in params if n not in arrays and not n.startswith(allow_missing)]
    unexpected = [n for n in arrays if n not in params and not n.startswith(ignore_unexpected)]
    arrays = {n: (a.reshape(params[n].shape) if n in params and a.size == 1 == np.prod(params[n].shape) else a)
              for n, a in arrays.items()}  # MindSpore saves one-element tensors as scalars
    mismatched = [f"{n}: checkpoint {tuple(arrays[n].shape)} vs model {tuple(params[n].shape)}"
                  for n in params if n in arrays and tuple(arrays[n].shape) != tuple(params[n].shape)]
    if missing or unexpected or mismatched:
        parts = []
        for title, names in (("missing keys", missing), ("unexpected keys", unexpected),
                             ("shape mismatches", mismatched)):
            if names:
                parts.append(f"{title} ({len(names)}): " + ", ".join(names[:20]) + (" ..." if len(names) > 20 else ""))
        raise CheckpointError(f"{source}: checkpoint does not fit the model; " + "; ".join(parts))
    for name, param in params.items():
        if name in arrays:
            param.set_data(Tensor(arrays[name], param.dtype))
    # only names under allow_missing can be absent (new heads, the learning-rate table): the callers that start a
    # head fresh say so themselves, and a resume's rebuilt learning-rate table is no news
    return [n for n in params if n not in arrays]


TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def check_folder_tokenizer(folder: str, cfg: ModelConfig) -> None:
    """A checkpoint folder that ships a tokenizer must ship one the model can use (an eos, ids within
    ``vocab_size``): :class:`CheckpointError` before any weight is read, let alone a training step taken."""
    if not any(os.path.exists(os.path.join(folder, name)) for name in TOKENIZER_FILES):
        return
    from mindrlhf.data.tokenizer import check_tokenizer_fits, load_tokenizer

    try:
        check_tokenizer_fits(load_tokenizer(folder), cfg, folder)
    except (OSError, ValueError) as err:
        raise CheckpointError(str(err)) from None


def load_hf_checkpoint(cell: nn.Cell, folder: str, cfg: ModelConfig, new_heads: bool = False) -> List[str]:
    """Load a Hugging Face checkpoint folder (or a bundled model's name) into ``cell`` (a CausalLM, RewardModel
    or Critic).

    A checkpoint whose ``config.json`` ties the embeddings may store the shared matrix under either name (see
    :func:`merge_tied_embeddings`); an untied one needs both. An ``lm_head`` is ignored by cells without one (reward
    models, critics). With ``new_heads`` the value/score heads may be missing (they keep their initialisation),
    so an SFT checkpoint can start a reward model or a critic.
    """
    folder = resolve_checkpoint(folder)
    check_folder_tokenizer(folder, cfg)
    arrays = hf_to_ours(read_hf_tensors(folder), cfg)
    params = cell_parameters(cell)
    if hf_ties_embeddings(read_hf_config(folder)):
        arrays = merge_tied_embeddings(arrays, cfg, folder)
        embed = BACKBONE_PREFIX + _family_of(cfg).embed
        if LM_HEAD in params and embed in arrays:  # an untied model started from tied weights
            arrays[LM_HEAD] = arrays[embed]
    has_lm_head = getattr(cell, "lm_head", None) is not None
    ignore = ("lm_head.",) if (new_heads or not has_lm_head) else ()
    allow = ("v_head.", "score.") if new_heads else ()
    return assign_parameters(cell, arrays, folder, allow_missing=allow, ignore_unexpected=ignore)


def model_config_from_hf_folder(folder: str) -> ModelConfig:
    """The :class:`ModelConfig` of a Hugging Face checkpoint folder (or a bundled model's name)."""
    folder = resolve_checkpoint(folder)
    return model_config_from_hf(read_hf_config(folder), os.path.join(folder, "config.json"))


# ---------------------------------------------------------------------------------------------------------------
# writing


def _atomic_dir(final: str):
    parent = os.path.dirname(os.path.abspath(final)) or "."
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".tmp_" + os.path.basename(final) + "_", dir=parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it private; the finished folder gets the usual permissions
    return tmp


def _replace_dir(tmp: str, final: str) -> None:
    if os.path.isdir(final):
        old = tmp + ".old"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old)
    else:
        os.replace(tmp, final)


def save_hf_checkpoint(cell: nn.Cell, cfg: ModelConfig, folder: str, reward: Optional[bool] = None,
                       extra_files: Iterable[str] = ()) -> str:
    """Write ``cell`` as a Hugging Face folder (``config.json`` + ``model.safetensors``) that ``transformers``
    loads; ``reward`` (default: the cell has a ``score`` head) selects ``*ForSequenceClassification``.

    A tied model stores its token table only (``transformers``' own layout). ``extra_files`` (tokenizer files,
    ``generation_config.json``) are copied in before the folder is moved into place.
    """
    from safetensors.numpy import save_file

    arrays = {name: p.asnumpy() for name, p in cell_parameters(cell).items()}
    if reward is None:
        reward = "score.weight" in arrays
    hf_arrays = ours_to_hf(arrays, cfg)
    tmp = _atomic_dir(folder)
    try:
        for path in extra_files:
            shutil.copyfile(path, os.path.join(tmp, os.path.basename(path)))
        save_file(hf_arrays, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(model_config_to_hf(cfg, reward), f, indent=2)
        _replace_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def save_ckpt(cell: nn.Cell, path: str, append_dict: Optional[dict] = None) -> str:
    """Save a MindSpore ``.ckpt`` of ``cell``'s parameters atomically (see :func:`save_tensors`)."""
    return save_tensors(cell_parameters(cell), path, append_dict)


def save_tensors(named: Dict[str, Union[ms.Parameter, ms.Tensor]], path: str,
                 append_dict: Optional[dict] = None) -> str:
    """Save named tensors as a MindSpore ``.ckpt`` atomically (written under a temporary name, then renamed)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    # MindSpore appends ".ckpt" to a name without it, and writes through its own "<name>.tmp" file
    tmp = f"{path}.tmp.{os.getpid()}.ckpt"
    params = [{"name": n, "data": p} for n, p in named.items()]
    try:
        ms.save_checkpoint(params, tmp, append_dict=append_dict)
        os.replace(tmp, path)
    finally:
        for leftover in (tmp, tmp[:-len(".ckpt")] + ".tmp"):
            if os.path.exists(leftover):
                os.remove(leftover)
    return path


def load_ckpt(cell: nn.Cell, path: str, allow_missing: Iterable[str] = (),
              ignore_unexpected: Iterable[str] = ()) -> Dict[str, np.ndarray]:
    """Load a MindSpore ``.ckpt`` into ``cell`` with the same checks as Hugging Face loading.

    Returns the entries of the file that are not parameters of ``cell`` (``append_dict`` values such as a step).
    """
    return _load_ckpt(cell, path, allow_missing, ignore_unexpected)[0]


def _load_ckpt(cell: nn.Cell, path: str, allow_missing: Iterable[str], ignore_unexpected: Iterable[str]
               ) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """``(extras, names kept at their initial values)``; see :func:`load_ckpt`."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        loaded = ms.load_checkpoint(path)
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot read MindSpore checkpoint: {err}") from None
    model_names = (BACKBONE_PREFIX, "lm_head.", "score.", "v_head.")
    arrays = {n: v.asnumpy() for n, v in loaded.items() if n.startswith(model_names)}
    extras = {n: v.asnumpy() for n, v in loaded.items() if not n.startswith(model_names)}
    kept = assign_parameters(cell, arrays, path, allow_missing=allow_missing, ignore_unexpected=ignore_unexpected)
    return extras, kept


# the files of a Hugging Face folder besides its config and weights that describe how to use it
HF_SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                 "tokenizer.model", "vocab.json", "merges.txt")


def hf_side_files(folder: str) -> List[str]:
    """Paths of the :data:`HF_SIDE_FILES` (tokenizer, generation settings) that ``folder`` holds."""
    folder = resolve_checkpoint(folder)
    return [os.path.join(folder, name) for name in HF_SIDE_FILES if os.path.isfile(os.path.join(folder, name))]


def is_hf_folder(path: str) -> bool:
    """True for a folder holding a Hugging Face ``config.json`` and for a bundled model's name."""
    path = resolve_checkpoint(path)
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def load_weights(cell: nn.Cell, path: str, cfg: ModelConfig, new_heads: bool = False,
                 ignore_unexpected: Iterable[str] = ()) -> List[str]:
    """Load a Hugging Face folder (or a bundled model's name, see :data:`BUNDLED_MODELS`) or a MindSpore ``.ckpt``
    into ``cell``; returns the names left initialised.

    ``new_heads``: the value / score heads may be absent (they start fresh); ``ignore_unexpected``: name prefixes
    the file may have that ``cell`` does not (a PPO policy's ``v_head.`` when loading it for generation).
    """
    path = resolve_checkpoint(path)
    if is_hf_folder(path):
        return load_hf_checkpoint(cell, path, cfg, new_heads=new_heads)
    if path.endswith(".ckpt"):
        if new_heads:  # e.g. a causal LM's weights starting a reward model: its LM head is not needed
            ignore_unexpected = tuple(ignore_unexpected) + ("lm_head.",)
        return _load_ckpt(cell, path, ("v_head.", "score.") if new_heads else (), ignore_unexpected)[1]
    newest = sorted(glob.glob(os.path.join(path, "**", "*.ckpt"), recursive=True), key=os.path.getmtime)
    hint = (f"; it holds .ckpt files: pass one (the newest is {newest[-1]})" if os.path.isdir(path) and newest
            else "")
    raise CheckpointError(f"{path}: not a Hugging Face folder (config.json) or a MindSpore .ckpt file{hint}")
