"""Checkpoints: Hugging Face folders (``config.json`` + ``model.safetensors`` or a sharded
``model.safetensors.index.json``) to and from our cells, checked key by key and shape by shape, and MindSpore
``.ckpt`` files. Everything written goes to a temporary name first and is renamed into place.

Only generic renaming, transposing and shape checking lives here; what differs between families (the backbone
prefix, which weights are stored transposed, which buffers to skip, the ``config.json`` fields) is each family's
:class:`mindrlhf.models.registry.ModelFamily` entry. Name map: the family's Hugging Face prefix (``transformer.``,
``model.``) <-> our ``backbone.``; heads keep their names (``lm_head.weight``, ``lm_head.bias``, ``score.weight``).

mindformers ``.ckpt`` files (GPT-2, Llama) load through :func:`load_ckpt` / :func:`load_weights` with their names
mapped by the family's ``mindformers`` layout, and :func:`save_mindformers_ckpt` writes them back.

Tied embeddings (``tie_word_embeddings``): the one ``(V, H)`` matrix may be stored as the token table, as
``lm_head.weight`` or under both names; loading accepts all three, writing stores the token table only (the
layout ``transformers`` saves). Bundled models load by name: ``tinystories`` is :data:`BUNDLED_MODELS`' folder.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import logging
import os
import shutil
from typing import Dict, Iterable, List, Optional, Tuple, Union

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn

from mindrlhf.atomic import atomic_folder, atomic_path, remove_file
from mindrlhf.config import ModelConfig
from mindrlhf.models.registry import (
    CheckpointError,
    HFLayout,
    MindformersLayout,  # noqa: F401 (re-exported)
    ModelFamily,
    family,
    family_for_model_type,
)
from mindrlhf.faults import reach
from mindrlhf.manifest import verify, write_manifest
from mindrlhf.runlock import current_run

logger = logging.getLogger(__name__)

BACKBONE_PREFIX = "backbone."
LM_HEAD = "lm_head.weight"

MODELS_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "models")
# name -> Hugging Face folder shipped with the package (mindrlhf/assets/README.md has the sources and licenses)
BUNDLED_MODELS: Dict[str, str] = {"tinystories": os.path.join(MODELS_DIR, "tinystories_656k")}


# ---------------------------------------------------------------------------------------------------------------
# config.json <-> ModelConfig: the family's own fields come from its registry entry, the generic ones from here


def hf_family(hf: dict, source: str = "config.json") -> ModelFamily:
    """The registered family of a ``config.json`` dict (a clear error listing the known ones otherwise)."""
    return family_for_model_type(hf.get("model_type"), source)


def model_config_from_hf(hf: dict, source: str = "config.json") -> ModelConfig:
    """Translate a Hugging Face ``config.json`` dict into a :class:`ModelConfig`."""
    entry = hf_family(hf, source)
    cfg = entry.config_from_hf(hf, source)
    return dataclasses.replace(
        cfg, initializer_range=hf.get("initializer_range", 0.02), tie_word_embeddings=hf_ties_embeddings(hf, source)
    )


def hf_ties_embeddings(hf: dict, source: str = "config.json") -> bool:
    """Whether a ``config.json`` dict ties the LM head to the token table (its family's default when unsaid)."""
    tied = hf.get("tie_word_embeddings")
    return hf_family(hf, source).tied_default if tied is None else bool(tied)


def ties_embeddings(cfg: ModelConfig) -> bool:
    """Whether the model of ``cfg`` ties its LM head to the token table (the family's default when unsaid)."""
    return family(cfg.type).tied_default if cfg.tie_word_embeddings is None else bool(cfg.tie_word_embeddings)


def model_config_to_hf(cfg: ModelConfig, reward: bool = False) -> dict:
    """The ``config.json`` dict Hugging Face ``transformers`` loads for ``cfg``."""
    entry = family(cfg.type)
    arch = entry.hf.reward_class if reward else entry.hf.lm_class
    common = {
        "architectures": [arch],
        "model_type": entry.hf.model_type,
        "vocab_size": cfg.vocab_size,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": cfg.eos_token_id,
        "pad_token_id": cfg.pad_token_id,
        "initializer_range": cfg.initializer_range,
        "torch_dtype": cfg.param_init_type,
        "tie_word_embeddings": ties_embeddings(cfg),
    }
    if reward:
        common["num_labels"] = 1
    return {**common, **entry.config_to_hf(cfg)}


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


def _layout(cfg: ModelConfig) -> HFLayout:
    return family(cfg.type).hf


def hf_to_ours(tensors: Dict[str, np.ndarray], cfg: ModelConfig) -> Dict[str, np.ndarray]:
    """Rename (and transpose) Hugging Face tensors to our parameter names; buffers are dropped."""
    layout = _layout(cfg)
    head_names = ("lm_head.", "score.", "v_head.")
    out = {}
    for name, array in tensors.items():
        if name.endswith(layout.ignored):
            continue
        if name.startswith(layout.prefix):
            ours = BACKBONE_PREFIX + name[len(layout.prefix) :]
        elif name.startswith(head_names):
            ours = name
        else:  # the original GPT-2 release stores backbone names without a prefix
            ours = BACKBONE_PREFIX + name
        if name.endswith(layout.transposed) and array.ndim == 2:
            array = array.T
        out[ours] = np.ascontiguousarray(array)
    return out


def ours_to_hf(params: Dict[str, np.ndarray], cfg: ModelConfig) -> Dict[str, np.ndarray]:
    """Inverse of :func:`hf_to_ours` (our names -> Hugging Face names)."""
    layout = _layout(cfg)
    out = {}
    for name, array in params.items():
        hf = layout.prefix + name[len(BACKBONE_PREFIX) :] if name.startswith(BACKBONE_PREFIX) else name
        if hf.endswith(layout.transposed) and array.ndim == 2:
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
    layout = _layout(cfg)
    embed = BACKBONE_PREFIX + layout.embed
    arrays = dict(arrays)
    head = arrays.pop(LM_HEAD, None)
    if head is None:
        return arrays
    if embed not in arrays:
        arrays[embed] = head
    elif arrays[embed].shape != head.shape or not np.array_equal(arrays[embed], head):
        raise CheckpointError(
            f"{source}: tie_word_embeddings is true but {LM_HEAD} and the token table "
            f"{layout.prefix}{layout.embed} hold different values"
        )
    return arrays


# ---------------------------------------------------------------------------------------------------------------
# loading into cells


def cell_parameters(cell: nn.Cell) -> Dict[str, ms.Parameter]:
    """Trainable and frozen parameters of ``cell`` by name (KV caches and other state excluded)."""
    return {p.name: p for p in cell.get_parameters() if not p.name.startswith("kv_cache")}


def assign_parameters(
    cell: nn.Cell,
    arrays: Dict[str, np.ndarray],
    source: str,
    allow_missing: Iterable[str] = (),
    ignore_unexpected: Iterable[str] = (),
) -> List[str]:
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
    from mindrlhf.models.lora import fold_lora_arrays

    params = cell_parameters(cell)
    if not any(".lora_" in n for n in params):  # a LoRA-trained checkpoint loaded without adapters: merged
        arrays = fold_lora_arrays(arrays)
    allow_missing, ignore_unexpected = tuple(allow_missing), tuple(ignore_unexpected)
    missing = [n for n in params if n not in arrays and not n.startswith(allow_missing)]
    unexpected = [n for n in arrays if n not in params and not n.startswith(ignore_unexpected)]
    arrays = {
        n: (a.reshape(params[n].shape) if n in params and a.size == 1 == np.prod(params[n].shape) else a)
        for n, a in arrays.items()
    }  # MindSpore saves one-element tensors as scalars
    mismatched = [
        f"{n}: checkpoint {tuple(arrays[n].shape)} vs model {tuple(params[n].shape)}"
        for n in params
        if n in arrays and tuple(arrays[n].shape) != tuple(params[n].shape)
    ]
    if missing or unexpected or mismatched:
        parts = []
        for title, names in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", mismatched),
        ):
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


def check_table_fits_config(arrays: Dict[str, np.ndarray], hf: dict, cfg: ModelConfig, folder: str) -> None:
    """The stored token table ``(V, H)`` (or a tied checkpoint's ``lm_head.weight``) must have the ``vocab_size``
    rows and hidden-size columns ``config.json`` states: otherwise a :class:`CheckpointError` naming the file and
    the field. (A model built with another size than the folder states gets the per-name shape list instead.)"""
    table = arrays.get(BACKBONE_PREFIX + _layout(cfg).embed, arrays.get(LM_HEAD))
    if table is None or table.ndim != 2:
        return
    source = os.path.join(folder, "config.json")
    stated = model_config_from_hf(hf, source)
    for axis, (field, ours) in enumerate((("vocab_size", stated.vocab_size), ("hidden_size", stated.hidden_size))):
        if table.shape[axis] != ours:
            what = "rows" if axis == 0 else "columns"
            raise CheckpointError(
                f"{source}: field {field!r} is {ours} but the weights' token table has "
                f"{table.shape[axis]} {what} (config.json and the weights disagree)"
            )


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
    hf_config = read_hf_config(folder)
    check_table_fits_config(arrays, hf_config, cfg, folder)
    if hf_ties_embeddings(hf_config):
        arrays = merge_tied_embeddings(arrays, cfg, folder)
        embed = BACKBONE_PREFIX + _layout(cfg).embed
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


def save_hf_checkpoint(
    cell: nn.Cell, cfg: ModelConfig, folder: str, reward: Optional[bool] = None, extra_files: Iterable[str] = ()
) -> str:
    """Write ``cell`` as a Hugging Face folder (``config.json`` + ``model.safetensors``) that ``transformers``
    loads; ``reward`` (default: the cell has a ``score`` head) selects ``*ForSequenceClassification``.

    A tied model stores its token table only (``transformers``' own layout). ``extra_files`` (tokenizer files,
    ``generation_config.json``) are copied in before the folder is moved into place.
    """
    from safetensors.numpy import save_file

    from mindrlhf.models.lora import fold_lora_arrays

    arrays = fold_lora_arrays({name: p.asnumpy() for name, p in cell_parameters(cell).items()})  # LoRA merged
    if reward is None:
        reward = "score.weight" in arrays
    hf_arrays = ours_to_hf(arrays, cfg)
    with atomic_folder(folder) as tmp:
        for path in extra_files:
            shutil.copyfile(path, os.path.join(tmp, os.path.basename(path)))
        save_file(hf_arrays, os.path.join(tmp, "model.safetensors"), metadata={"format": "pt"})
        with open(os.path.join(tmp, "config.json"), "w", encoding="utf-8") as f:
            json.dump(model_config_to_hf(cfg, reward), f, indent=2)
    return folder


def file_mode() -> int:
    """0644 less the process umask: the mode of every file the project writes."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o644 & ~mask


def load_entries(path: str) -> Dict[str, ms.Parameter]:
    """Every entry of a MindSpore ``.ckpt`` after checking it against its manifest (see :mod:`mindrlhf.manifest`);
    :class:`CheckpointError` naming the file when it is missing, corrupt, partial or not a checkpoint."""
    verify(path)
    try:
        entries = ms.load_checkpoint(path)
    except (ValueError, RuntimeError, TypeError) as err:
        raise CheckpointError(f"{path}: cannot read MindSpore checkpoint: {' '.join(str(err).split())}") from None
    logger.info("loaded checkpoint %s", path)
    return entries


def save_ckpt(cell: nn.Cell, path: str, append_dict: Optional[dict] = None) -> str:
    """Save a MindSpore ``.ckpt`` of ``cell``'s parameters atomically (see :func:`save_tensors`)."""
    return save_tensors(cell_parameters(cell), path, append_dict)


def save_tensors(
    named: Dict[str, Union[ms.Parameter, ms.Tensor]], path: str, append_dict: Optional[dict] = None
) -> str:
    """Save named tensors as a MindSpore ``.ckpt`` atomically (written under a temporary name, its manifest
    written, then renamed into place) with mode 0644 less the umask; :class:`CheckpointError` when it cannot be
    written (a full disk), leaving any earlier file of that name as it was."""
    params = [{"name": n, "data": p} for n, p in named.items()]
    try:
        # MindSpore appends ".ckpt" to a name without it, writes read-only (0400) files, and writes through its
        # own "<name>.tmp" file
        with atomic_path(path, suffix=".ckpt", mode=file_mode()) as tmp:
            try:
                ms.save_checkpoint(params, tmp, append_dict=append_dict)
            finally:
                remove_file(tmp[: -len(".ckpt")] + ".tmp")
            reach("checkpoint_write")
            write_manifest(tmp, path, current_run())
    except (OSError, RuntimeError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot write the checkpoint: {err}") from None
    return path


def load_ckpt(
    cell: nn.Cell, path: str, allow_missing: Iterable[str] = (), ignore_unexpected: Iterable[str] = ()
) -> Dict[str, np.ndarray]:
    """Load a MindSpore ``.ckpt`` into ``cell`` with the same checks as Hugging Face loading.

    Returns the entries of the file that are not parameters of ``cell`` (``append_dict`` values such as a step).
    """
    return _load_ckpt(cell, path, allow_missing, ignore_unexpected)[0]


def _load_ckpt(
    cell: nn.Cell, path: str, allow_missing: Iterable[str], ignore_unexpected: Iterable[str]
) -> Tuple[Dict[str, np.ndarray], List[str]]:
    """``(extras, names kept at their initial values)``; see :func:`load_ckpt`."""
    from mindrlhf.models.lora import BASE_KEY

    loaded = load_entries(path)
    record = loaded.pop(BASE_KEY, None)
    model_names = (BACKBONE_PREFIX, "lm_head.", "score.", "v_head.")
    layout = mindformers_layout(cell, loaded)
    if layout is not None:
        model_names += layout.markers
    arrays = {n: v.asnumpy() for n, v in loaded.items() if n.startswith(model_names)}
    extras = {n: v.asnumpy() for n, v in loaded.items() if not n.startswith(model_names)}
    if layout is not None:
        arrays = layout.to_ours(arrays, cell.config)
        logger.info("%s: mindformers parameter names mapped to ours", path)
    if record is not None:
        arrays = with_recorded_base(cell, arrays, record, path)
    kept = assign_parameters(cell, arrays, path, allow_missing=allow_missing, ignore_unexpected=ignore_unexpected)
    return extras, kept


def load_recorded_base(cell: nn.Cell, record: dict) -> None:
    """Load the base weights an adapter checkpoint's ``record`` names into ``cell`` (nothing for a base of seeded
    fresh weights); its heads may be absent (a reward model's ``score`` lives in the adapter checkpoint)."""
    if record["path"]:
        load_weights(cell, record["path"], cell.config, new_heads=True)
        logger.info("LoRA base loaded from %s", record["path"])


def with_recorded_base(
    cell: nn.Cell, arrays: Dict[str, np.ndarray], record_text: str, path: str
) -> Dict[str, np.ndarray]:
    """An adapter-only checkpoint's ``arrays`` completed by the frozen base it records (loaded into ``cell`` and
    checked digest by digest): what a model with or without adapters loads (without, they are folded in)."""
    from mindrlhf.models.lora import check_base, parse_base_record

    record = parse_base_record(record_text, path)
    load_recorded_base(cell, record)
    params = cell_parameters(cell)
    check_base(params, record, path)
    base = {n: params[n].asnumpy() for n in record["digests"] if n in params and n not in arrays}
    return {**base, **arrays}


def mindformers_layout(cell: nn.Cell, names: Iterable[str]) -> Optional[MindformersLayout]:
    """The mindformers naming of ``cell``'s family when a checkpoint's ``names`` use it (a name starting with one
    of the family's mindformers-only prefixes), else None."""
    config = getattr(cell, "config", None)
    layout = family(config.type).mindformers if config is not None else None
    if layout is None or not any(name.startswith(layout.markers) for name in names):
        return None
    return layout


def save_mindformers_ckpt(cell: nn.Cell, path: str) -> str:
    """Save ``cell`` (a CausalLM, RewardModel or Critic) as a MindSpore ``.ckpt`` under mindformers' parameter names
    (GPT-2 and Llama), atomically; :func:`load_ckpt` reads such files back (names mapped, shapes checked)."""
    layout = family(cell.config.type).mindformers
    if layout is None:
        raise CheckpointError(f"{path}: no mindformers parameter names are known for model type {cell.config.type!r}")
    arrays = layout.from_ours({name: p.asnumpy() for name, p in cell_parameters(cell).items()}, cell.config)
    return save_tensors({name: Tensor(a) for name, a in arrays.items()}, path)


# the files of a Hugging Face folder besides its config and weights that describe how to use it
HF_SIDE_FILES = (
    "generation_config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
)


def hf_side_files(folder: str) -> List[str]:
    """Paths of the :data:`HF_SIDE_FILES` (tokenizer, generation settings) that ``folder`` holds."""
    folder = resolve_checkpoint(folder)
    return [os.path.join(folder, name) for name in HF_SIDE_FILES if os.path.isfile(os.path.join(folder, name))]


def is_hf_folder(path: str) -> bool:
    """True for a folder holding a Hugging Face ``config.json`` and for a bundled model's name."""
    path = resolve_checkpoint(path)
    return os.path.isdir(path) and os.path.exists(os.path.join(path, "config.json"))


def load_weights(
    cell: nn.Cell, path: str, cfg: ModelConfig, new_heads: bool = False, ignore_unexpected: Iterable[str] = ()
) -> List[str]:
    """Load a Hugging Face folder (or a bundled model's name, see :data:`BUNDLED_MODELS`) or a MindSpore ``.ckpt``
    into ``cell``; returns the names left initialised.

    ``new_heads``: the value / score heads may be absent (they start fresh); ``ignore_unexpected``: name prefixes
    the file may have that ``cell`` does not (a PPO policy's ``v_head.`` when loading it for generation).
    """
    path = resolve_checkpoint(path)
    if is_hf_folder(path):
        kept = load_hf_checkpoint(cell, path, cfg, new_heads=new_heads)
        logger.info("loaded Hugging Face checkpoint %s", path)
        return kept
    if path.endswith(".ckpt"):
        if new_heads:  # e.g. a causal LM's weights starting a reward model: its LM head is not needed
            ignore_unexpected = tuple(ignore_unexpected) + ("lm_head.",)
        return _load_ckpt(cell, path, ("v_head.", "score.") if new_heads else (), ignore_unexpected)[1]
    newest = sorted(glob.glob(os.path.join(path, "**", "*.ckpt"), recursive=True), key=os.path.getmtime)
    hint = f"; it holds .ckpt files: pass one (the newest is {newest[-1]})" if os.path.isdir(path) and newest else ""
    raise CheckpointError(f"{path}: not a Hugging Face folder (config.json) or a MindSpore .ckpt file{hint}")
