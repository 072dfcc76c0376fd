"""Tokenizers from files: a Hugging Face ``tokenizer.json``, a GPT-2 folder (``vocab.json`` + ``merges.txt``) or a
SentencePiece ``tokenizer.model`` (Llama-2 / Mistral layout). No hub downloads: a tokenizer is a path.

``bundled_tokenizer("gpt2")`` and ``bundled_tokenizer("llama")`` return the files shipped in
``mindrlhf/assets/tokenizers`` (GPT-2 BPE; the Apache-2.0 Mistral-v1 SentencePiece model as the Llama-compatible one).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "tokenizers")
BUNDLED = {"gpt2": os.path.join(ASSETS, "gpt2", "tokenizer.json"),
           "llama": os.path.join(ASSETS, "mistral_v1", "tokenizer.model")}


class Tokenizer:
    """Common interface: ``encode(text) -> ids``, ``decode(ids) -> text`` and the special ids."""

    vocab_size: int
    bos_token_id: Optional[int]
    eos_token_id: Optional[int]
    path: str

    def encode(self, text: str, add_bos: bool = False) -> List[int]:
        raise NotImplementedError

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, vocab_size={self.vocab_size})"


class HFTokenizer(Tokenizer):
    """Byte-level BPE through the Hugging Face ``tokenizers`` library (GPT-2)."""

    def __init__(self, path: str):
        from tokenizers import Tokenizer as _Tok
        from tokenizers import decoders, models, pre_tokenizers

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
        eos = self._tok.token_to_id("<|endoftext|>")
        self.eos_token_id = eos
        self.bos_token_id = eos

    def encode(self, text: str, add_bos: bool = False) -> List[int]:
        ids = self._tok.encode(text, add_special_tokens=False).ids
        return ([self.bos_token_id] if add_bos and self.bos_token_id is not None else []) + ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)


class SentencePieceTokenizer(Tokenizer):
    """SentencePiece model (Llama-2 / Mistral ``tokenizer.model``)."""

    def __init__(self, path: str):
        import sentencepiece as spm

        self._sp = spm.SentencePieceProcessor(model_file=path)
        self.path = path
        self.vocab_size = self._sp.get_piece_size()
        self.bos_token_id = self._sp.bos_id() if self._sp.bos_id() >= 0 else None
        self.eos_token_id = self._sp.eos_id() if self._sp.eos_id() >= 0 else None

    def encode(self, text: str, add_bos: bool = False) -> List[int]:
        ids = self._sp.encode(text)
        return ([self.bos_token_id] if add_bos and self.bos_token_id is not None else []) + ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            special = {self.bos_token_id, self.eos_token_id, self._sp.pad_id()}
            ids = [i for i in ids if i not in special and 0 <= i < self.vocab_size]
        return self._sp.decode(ids)


def load_tokenizer(path: str) -> Tokenizer:
    """Load a tokenizer from a path: ``*.model`` (SentencePiece), ``*.json`` or a folder (Hugging Face
    ``tokenizers``); ``gpt2`` and ``llama`` name the bundled files."""
    path = BUNDLED.get(path, path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer not found: {path} (give a tokenizer.json, a folder with vocab.json + "
                                f"merges.txt, a SentencePiece tokenizer.model, or one of: {', '.join(BUNDLED)})")
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "tokenizer.model")) and not os.path.exists(
            os.path.join(path, "tokenizer.json")):
        path = os.path.join(path, "tokenizer.model")
    if path.endswith(".model"):
        return SentencePieceTokenizer(path)
    return HFTokenizer(path)


def left_pad(rows: Sequence[Sequence[int]], pad_id: int, width: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Token lists -> left-padded ``ids (B, P)`` and ``mask (B, P)`` int32 (the layout generation takes);
    ``P`` = the longest row, or ``width`` (rows must fit)."""
    width = max(len(r) for r in rows) if width is None else width
    ids = np.full((len(rows), width), pad_id, np.int32)
    mask = np.zeros((len(rows), width), np.int32)
    for i, row in enumerate(rows):
        if len(row) > width:
            raise ValueError(f"row {i} has {len(row)} tokens, more than the width {width}")
        ids[i, width - len(row):] = row
        mask[i, width - len(row):] = 1
    return ids, mask
