"""Tokenizers from files: a Hugging Face tokenizer folder (``tokenizer.json`` with ``tokenizer_config.json`` /
``special_tokens_map.json``), a bare ``tokenizer.json``, a GPT-2 folder (``vocab.json`` + ``merges.txt``) or a
SentencePiece ``tokenizer.model`` (Llama-2 / Mistral layout). No hub downloads: a tokenizer is a path.

``load_tokenizer("gpt2")`` and ``load_tokenizer("llama")`` load the files shipped in
``mindrlhf/assets/tokenizers`` (GPT-2 BPE; the Apache-2.0 Mistral-v1 SentencePiece model as the Llama-compatible one).

Every tokenizer exposes the special ids and one rule, ``add_bos``: whether a sequence starts with ``bos``.

- Hugging Face files: ``bos_token`` / ``eos_token`` / ``pad_token`` and ``add_bos_token`` come from
  ``tokenizer_config.json`` (then ``special_tokens_map.json``) in the tokenizer's folder. Without ``add_bos_token``
  the rule is what the ``tokenizer.json`` post-processor does (it adds bos or it does not). A vocabulary without
  configured specials that has ``<|endoftext|>`` (GPT-2 style) uses it as bos and eos, with ``add_bos`` False.
- SentencePiece: the model's own bos / eos / pad ids (no pad: the ``pad_token`` a config file beside the model
  names, else None) and ``add_bos`` True (the Llama convention), unless a ``tokenizer_config.json`` beside the
  model says otherwise.

``encode(text)`` is the text alone, without special tokens (``encode(text, add_bos=True)`` puts bos in front);
the converters and the rollouts never ask for bos there: :mod:`mindrlhf.data.contract` adds bos (by the rule) and eos.

Functions: :func:`load_tokenizer` (a path or bundled name -> :class:`HFTokenizer` or
:class:`SentencePieceTokenizer`), :func:`special_tokens` (the specials of a folder's config files),
:func:`save_tokenizer` (a folder ``transformers.AutoTokenizer`` loads), :func:`check_tokenizer_fits` (a tokenizer
against a model config) and :func:`left_pad` (token lists -> the left-padded ids and mask generation takes).
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tokenizers")
BUNDLED = {
    "gpt2": os.path.join(ASSETS, "gpt2", "tokenizer.json"),
    "llama": os.path.join(ASSETS, "mistral_v1", "tokenizer.model"),
}
GPT2_EOS = "<|endoftext|>"  # bos, eos (and the usual pad) of GPT-2-style byte-level BPE vocabularies
SPECIAL_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # read in this order, first value wins


class Tokenizer:
    """Common interface: ``encode(text) -> ids`` (no special tokens unless ``add_bos``), ``decode(ids) -> text``,
    the special ids
    (None when the tokenizer has none) and ``add_bos``, whether a sequence starts with ``bos_token_id``."""

    vocab_size: int
    bos_token_id: Optional[int]
    eos_token_id: Optional[int]
    pad_token_id: Optional[int]
    add_bos: bool
    path: str

    def encode(self, text: str, add_bos: bool = False) -> List[int]:
        """Token ids of ``text`` alone; with ``add_bos`` (and a bos id) the bos id in front."""
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    def id_to_token(self, token_id: int) -> Optional[str]:
        """The token string of ``token_id`` (None when out of range)."""
        raise NotImplementedError

    def save_vocabulary(self, folder: str) -> Tuple[str, str]:
        """Write the vocabulary file ``transformers`` reads into ``folder``; return ``(file name, the
        ``tokenizer_class`` that reads it)``."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size}, bos={self.bos_token_id}, "
            f"eos={self.eos_token_id}, pad={self.pad_token_id}, add_bos={self.add_bos})"
        )


def _token_text(value: Any) -> Optional[str]:
    """A special token as written in the config files: a string, or an object with ``content``."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def special_tokens(folder: str) -> Dict[str, Any]:
    """``{"bos_token", "eos_token", "pad_token": str, "add_bos_token": bool}`` (only what is set) from the
    Hugging Face config files in ``folder``; ``tokenizer_config.json`` wins over ``special_tokens_map.json``."""
    found: Dict[str, Any] = {}
    for name in SPECIAL_FILES:
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            continue
        with open(path, encoding="utf-8") as f:
            try:
                config = json.load(f)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
        for key in ("bos_token", "eos_token", "pad_token"):
            if key not in found and _token_text(config.get(key)) is not None:
                found[key] = _token_text(config.get(key))
        if "add_bos_token" not in found and isinstance(config.get("add_bos_token"), bool):
            found["add_bos_token"] = config["add_bos_token"]
    return found


class HFTokenizer(Tokenizer):
    """A Hugging Face ``tokenizers`` vocabulary (byte-level BPE such as GPT-2's, Llama-style BPE, ...)."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer as _Tok
        from tokenizers import decoders, models, pre_tokenizers

        folder = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            vocab, merges = os.path.join(path, "vocab.json"), os.path.join(path, "merges.txt")
            if os.path.exists(os.path.join(path, "tokenizer.json")):
                self._tok = _Tok.from_file(os.path.join(path, "tokenizer.json"))
            elif os.path.exists(vocab) and os.path.exists(merges):
                self._tok = _Tok(models.BPE.from_file(vocab, merges))
                self._tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
                self._tok.decoder = decoders.ByteLevel()
            else:
                raise FileNotFoundError(f"{path}: no tokenizer.json, and no vocab.json + merges.txt pair")
        else:
            self._tok = _Tok.from_file(path)
        self.path = path
        self.vocab_size = self._tok.get_vocab_size()
        self._set_specials(special_tokens(folder), folder)

    def _id(self, token: Optional[str], folder: str, key: str) -> Optional[int]:
        if token is None:
            return None
        token_id = self._tok.token_to_id(token)
        if token_id is None:
            raise ValueError(f"{folder}: {key} {token!r} is not in the vocabulary of {self.path}")
        return token_id

    def _set_specials(self, config: Dict[str, Any], folder: str) -> None:
        self.bos_token_id = self._id(config.get("bos_token"), folder, "bos_token")
        self.eos_token_id = self._id(config.get("eos_token"), folder, "eos_token")
        self.pad_token_id = self._id(config.get("pad_token"), folder, "pad_token")
        fallback = self._tok.token_to_id(GPT2_EOS)
        if self.eos_token_id is None and fallback is not None:  # GPT-2 style: one token for bos and eos
            self.eos_token_id = fallback
            self.bos_token_id = fallback if self.bos_token_id is None else self.bos_token_id
        if "add_bos_token" in config:
            self.add_bos = bool(config["add_bos_token"]) and self.bos_token_id is not None
        else:
            self.add_bos = self._post_processor_adds_bos()

    def _post_processor_adds_bos(self) -> bool:
        """Whether the ``tokenizer.json`` post-processor puts bos in front (its own rule, e.g. Llama-3 files)."""
        if self.bos_token_id is None:
            return False
        with_specials = self._tok.encode("a", add_special_tokens=True).ids
        plain = self._tok.encode("a", add_special_tokens=False).ids
        return with_specials[:1] == [self.bos_token_id] and plain[:1] != [self.bos_token_id]

    def encode(self, text: str, add_bos: bool = False) -> List[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_token_id] if add_bos and self.bos_token_id is not None else []) + ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        """Text of ``ids``; ``skip_special_tokens`` also drops the configured bos / eos / pad ids, which a
        ``tokenizer.json`` need not mark as special (transformers skips them too)."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            special = {self.bos_token_id, self.eos_token_id, self.pad_token_id} - {None}
            ids = [i for i in ids if i not in special]
        return self._tok.decode(ids, skip_special_tokens=skip_special_tokens)

    def id_to_token(self, token_id: int) -> Optional[str]:
        return self._tok.id_to_token(int(token_id))

    def save_vocabulary(self, folder: str) -> Tuple[str, str]:
        """``tokenizer.json`` (also for a vocab.json + merges.txt source: the byte-level pipeline built from it)."""
        self._tok.save(os.path.join(folder, "tokenizer.json"))
        return "tokenizer.json", "PreTrainedTokenizerFast"


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece model (Llama-2 / Mistral ``tokenizer.model``)."""

    def __init__(self, path: str):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=path)
        self.path = path
        self.vocab_size = self._sp.get_piece_size()
        self.bos_token_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_token_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None
        self.pad_token_id = self._sp.pad_id() if self._sp.pad_id() >= 0 else None
        config = special_tokens(os.path.dirname(os.path.abspath(path)))
        if self.pad_token_id is None and config.get("pad_token") is not None:
            pad = self._sp.piece_to_id(config["pad_token"])
            self.pad_token_id = pad if self._sp.id_to_piece(pad) == config["pad_token"] else None
        self.add_bos = bool(config.get("add_bos_token", True)) and self.bos_token_id is not None

    def encode(self, text: str, add_bos: bool = False) -> List[int]:
        ids = self._sp.encode(text)
        return ([self.bos_token_id] if add_bos and self.bos_token_id is not None else []) + ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            special = {self.bos_token_id, self.eos_token_id, self.pad_token_id, self._sp.pad_id()}
            ids = [i for i in ids if i not in special and 0 <= i < self.vocab_size]
        return self._sp.decode(ids)

    def id_to_token(self, token_id: int) -> Optional[str]:
        return self._sp.id_to_piece(int(token_id)) if 0 <= int(token_id) < self.vocab_size else None

    def save_vocabulary(self, folder: str) -> Tuple[str, str]:
        """``tokenizer.model`` (the SentencePiece model file, as Llama-2 folders ship it)."""
        shutil.copyfile(self.path, os.path.join(folder, "tokenizer.model"))
        return "tokenizer.model", "LlamaTokenizer"


def save_tokenizer(tokenizer: Tokenizer, folder: str, pad_token_id: Optional[int] = None) -> List[str]:
    """Write ``tokenizer`` into ``folder`` as ``transformers.AutoTokenizer`` loads it: the vocabulary file,
    ``tokenizer_config.json`` (class, bos / eos / pad tokens, ``add_bos_token``) and ``special_tokens_map.json``.

    ``pad_token_id`` (the model's pad id) names the pad token when the tokenizer has none of its own. Returns the
    paths written.
    """
    vocabulary, tokenizer_class = tokenizer.save_vocabulary(folder)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else pad_token_id
    specials = {
        key: tokenizer.id_to_token(token_id)
        for key, token_id in (
            ("bos_token", tokenizer.bos_token_id),
            ("eos_token", tokenizer.eos_token_id),
            ("pad_token", pad),
        )
        if token_id is not None
    }
    config = {
        "tokenizer_class": tokenizer_class,
        **specials,
        "add_bos_token": bool(tokenizer.add_bos),
        "add_eos_token": False,
        "clean_up_tokenization_spaces": False,
    }
    written = [os.path.join(folder, vocabulary)]
    for name, content in (("tokenizer_config.json", config), ("special_tokens_map.json", specials)):
        written.append(os.path.join(folder, name))
        with open(written[-1], "w", encoding="utf-8") as f:
            json.dump(content, f, indent=2, ensure_ascii=False)
    return written


def load_tokenizer(path: str) -> Tokenizer:
    """Load a tokenizer from a path: ``*.model`` (SentencePiece), ``*.json`` or a folder (Hugging Face
    ``tokenizers``, special tokens from the folder's config files); ``gpt2`` and ``llama`` name the bundled files."""
    path = BUNDLED.get(path, path)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"tokenizer not found: {path} (give a tokenizer.json, a folder with vocab.json + "
            f"merges.txt, a SentencePiece tokenizer.model, or one of: {', '.join(BUNDLED)})"
        )
    if (
        os.path.isdir(path)
        and os.path.exists(os.path.join(path, "tokenizer.model"))
        and not os.path.exists(os.path.join(path, "tokenizer.json"))
    ):
        path = os.path.join(path, "tokenizer.model")
    try:
        return SentencePieceTokenizer(path) if path.endswith(".model") else HFTokenizer(path)
    except (OSError, ValueError):
        raise
    except Exception as err:  # noqa: BLE001 - tokenizers and sentencepiece raise plain Exception on a bad file
        raise ValueError(f"{path}: not a readable tokenizer: {err}") from None


def check_tokenizer_fits(tokenizer: Tokenizer, model_cfg, source: str) -> None:
    """Raise ``ValueError`` when ``tokenizer`` cannot drive the model of ``model_cfg`` (a ``ModelConfig``).

    Checked: the tokenizer has an eos id (every response ends in eos and the reward is read there), and its ids
    ``0..vocab_size-1`` fit the model's ``vocab_size`` (an id past the embedding table fails deep inside a step).
    ``source`` names where the tokenizer came from (a flag and its value) in the message.
    """
    if tokenizer.eos_token_id is None:
        raise ValueError(
            f"{source}: the tokenizer {tokenizer.path} has no eos token (responses end in eos and the "
            f"reward model reads its score there); use a tokenizer folder whose tokenizer_config.json or "
            f"special_tokens_map.json names eos_token"
        )
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise ValueError(
            f"{source}: the tokenizer {tokenizer.path} has {tokenizer.vocab_size} ids, more than the "
            f"model's vocab_size {model_cfg.vocab_size} (model.model_config.vocab_size): ids "
            f"{model_cfg.vocab_size}..{tokenizer.vocab_size - 1} have no embedding; use the model's own "
            f"tokenizer"
        )


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, width: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Token lists -> left-padded ``ids (B, P)`` and ``mask (B, P)`` int32 (the layout generation takes);
    ``P`` = the longest row, or ``width`` (rows must fit)."""
    width = max(len(r) for r in rows) if width is None else width
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the width {width}")
        ids[i, width - len(row) :] = row
        mask[i, width - len(row) :] = 1
    return ids, mask
