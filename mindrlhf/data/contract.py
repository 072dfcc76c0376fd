"""The tokenization contract: how a (prompt text, response text) becomes token ids, written once and called by the
SFT, preference and prompt converters, ``rm infer`` and whatever builds rollout tokens, so that a sequence means
the same ids in every stage.

- The prompt and the response are tokenized SEPARATELY, each without special tokens (``Tokenizer.encode``), so the
  boundary between them is exact whatever the tokenizer merges across it (a SentencePiece model encodes a response
  on its own with a leading word boundary, ``"▁"``, that a joint encoding would not have).
- The prompt gets the tokenizer's bos in front iff ``tokenizer.add_bos`` (False for the bundled GPT-2 BPE, True
  for SentencePiece Llama-style models and for folders whose ``tokenizer_config.json`` says ``add_bos_token``).
- The response gets the tokenizer's eos appended. A PPO rollout ends in the eos the policy emitted, and the reward
  model reads its score at each sequence's last real token, which is therefore the eos.

Truncation:

- A prompt over its budget keeps its LAST tokens (the end holds the question and the template's answer cue); a
  prompt that had bos gets it back in front, inside the budget. For PPO / GRPO prompts (the prompt converter,
  ``whole_characters=True``) the kept tokens never start inside a character: the tokens holding the tail of a
  character the cut splits are dropped too, so the policy never starts from half a character.
- A response over its room is cut from the right. Two rules for the eos:

  - ``keep_eos=True`` (preference data, ``rm infer``): the response text is cut one token earlier, so eos stays the
    last token. A reward model is trained and read at the eos, the token PPO's reward is read at; a row ending
    anywhere else would train a score at a position it is never used at.
  - ``keep_eos=False`` (SFT, the ptx answer of prompt data): the eos is the first token to go. An eos after a cut
    text would teach the policy to stop in mid-answer; without it the loss covers only real text.

A rollout cut at ``max_new_tokens`` without eos is scored by a reward model with an eos appended
(:func:`close_with_eos`), so every score is read at an eos.

Functions: :func:`tokenize_prompt`, :func:`tokenize_response`, :func:`encode_prompt_response` (both, with a total
length), :func:`encode_for_reward` (the preference / scoring rule on top of it) and :func:`close_with_eos`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np

from mindrlhf.data.tokenizer import Tokenizer


@dataclass(frozen=True)
class EncodedText:
    """One (prompt, response) under the contract."""

    prompt_ids: List[int]  # bos (iff tokenizer.add_bos) + prompt text tokens, after truncation
    response_ids: List[int]  # response text tokens + eos, after truncation (may have lost the eos, or be empty)
    prompt_cut: bool  # the prompt lost tokens from its front
    response_cut: bool  # the response (text or eos) lost tokens from its end

    @property
    def ids(self) -> List[int]:
        """``prompt_ids + response_ids``: the sequence as stored, trained on and scored."""
        return self.prompt_ids + self.response_ids

    @property
    def truncated(self) -> bool:
        """Whether the prompt or the response lost tokens."""
        return self.prompt_cut or self.response_cut


def _bos(tokenizer: Tokenizer) -> List[int]:
    return [tokenizer.bos_token_id] if tokenizer.add_bos and tokenizer.bos_token_id is not None else []


def _eos(tokenizer: Tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError(f"the tokenizer {tokenizer.path} has no eos token to end a response with")
    return tokenizer.eos_token_id


# A UTF-8 character is at most 4 bytes, so a cut inside one leaves at most 3 tokens of it (byte-level BPE, or
# SentencePiece byte fallback) in front of the kept text.
_MAX_PARTIAL_TOKENS = 3


def _whole_characters(tokenizer: Tokenizer, ids: List[int]) -> List[int]:
    """``ids`` (a suffix of a text's tokens) without the leading tokens that hold the tail of a character cut in
    two: while they lead, the decoded text starts with U+FFFD, the replacement character."""
    for start in range(min(_MAX_PARTIAL_TOKENS, len(ids)) + 1):
        if not tokenizer.decode(ids[start:]).startswith("\ufffd"):
            return ids[start:]
    return ids[_MAX_PARTIAL_TOKENS:]


def _cut_prompt(
    tokenizer: Tokenizer, bos: List[int], ids: List[int], max_length: Optional[int], whole_characters: bool = False
) -> List[int]:
    """bos + the last tokens of ``ids`` that fit ``max_length`` (None: all), with ``whole_characters`` starting
    at a whole character."""
    if max_length is None:
        return bos + ids
    if max_length < 1:
        raise ValueError(f"a prompt budget must be >= 1 token, got {max_length}")
    room = max_length - len(bos)
    if len(ids) <= room:
        return bos + ids
    kept = ids[len(ids) - room :]
    return bos + (_whole_characters(tokenizer, kept) if whole_characters else kept)


def _cut_response(ids: List[int], eos: int, max_length: Optional[int], keep_eos: bool) -> List[int]:
    """``ids + [eos]`` cut to ``max_length`` (None: no cut) under the ``keep_eos`` rule."""
    full = ids + [eos]
    if max_length is None or len(full) <= max_length:
        return full
    if max_length <= 0:
        return []
    return full[: max_length - 1] + [eos] if keep_eos else full[:max_length]


def tokenize_prompt(
    tokenizer: Tokenizer, text: str, max_length: Optional[int] = None, whole_characters: bool = False
) -> List[int]:
    """``[bos]`` (iff ``tokenizer.add_bos``) + the tokens of ``text`` (no special tokens).

    Over ``max_length`` (>= 1) the LAST tokens are kept; with bos the result is bos + the last ``max_length - 1``
    text tokens. With ``whole_characters`` the kept tokens start at a whole character: a character the cut splits
    (a token holding only its last bytes) is dropped, so the result may be up to 3 tokens shorter.
    """
    return _cut_prompt(tokenizer, _bos(tokenizer), tokenizer.encode(text), max_length, whole_characters)


def tokenize_response(
    tokenizer: Tokenizer, text: str, max_length: Optional[int] = None, keep_eos: bool = False
) -> List[int]:
    """The tokens of ``text`` (no special tokens) + ``[eos]``.

    Over ``max_length`` the end is cut: with ``keep_eos`` the text loses one token more and eos stays last (a
    ``max_length`` of 1 leaves ``[eos]``); without it eos is the first token to go. ``max_length <= 0`` gives [].
    """
    return _cut_response(tokenizer.encode(text), _eos(tokenizer), max_length, keep_eos)


def encode_prompt_response(
    tokenizer: Tokenizer,
    prompt: str,
    response: str,
    seq_length: Optional[int] = None,
    *,
    max_prompt_length: Optional[int] = None,
    keep_eos: bool = False,
) -> EncodedText:
    """``prompt`` and ``response`` under the contract, the two together at most ``seq_length`` tokens.

    Args:
        prompt: the prompt text as the model sees it (already templated).
        response: the response text (already stripped, where a format strips).
        seq_length: total budget; the response gets ``seq_length - len(prompt_ids)`` (None: no limit).
        max_prompt_length: the prompt's budget (None: the whole prompt, which may leave the response no room).
        keep_eos: the truncation rule of the response, see the module docstring.
    Returns:
        :class:`EncodedText`; ``prompt_ids + response_ids`` is the sequence.
    """
    bos, text_ids = _bos(tokenizer), tokenizer.encode(prompt)
    prompt_ids = _cut_prompt(tokenizer, bos, text_ids, max_prompt_length)
    room = None if seq_length is None else seq_length - len(prompt_ids)
    answer_ids = tokenizer.encode(response)
    response_ids = _cut_response(answer_ids, _eos(tokenizer), room, keep_eos)
    return EncodedText(
        prompt_ids,
        response_ids,
        prompt_cut=len(prompt_ids) < len(bos) + len(text_ids),
        response_cut=room is not None and len(answer_ids) + 1 > room,
    )


def encode_for_reward(tokenizer: Tokenizer, prompt: str, response: str, seq_length: int) -> EncodedText:
    """The rule for every sequence a reward model is trained on or scores (preference rows, ``rm infer``).

    The prompt keeps at most its last ``seq_length - 1`` tokens and the response always ends in eos
    (``keep_eos``), so the sequence ends in eos and is at most ``seq_length`` long. A prompt that fills
    ``seq_length - 1`` tokens leaves the response only its eos.
    """
    if seq_length < 2:
        raise ValueError(f"a scored sequence needs seq_length >= 2 (a prompt token and the eos), got {seq_length}")
    return encode_prompt_response(
        tokenizer, prompt, response, seq_length, max_prompt_length=seq_length - 1, keep_eos=True
    )


def close_with_eos(
    tokens: np.ndarray, mask: np.ndarray, eos_token_id: Optional[int], max_length: Optional[int] = None
) -> Tuple[np.ndarray, np.ndarray]:
    """The rollout a reward model scores: every row ends in eos.

    A rollout cut at ``max_new_tokens`` has no eos; its score is read at an eos appended after its last real token,
    the position every preference row was trained at, instead of at an arbitrary mid-text token the reward model
    never saw as an end. ``missing_eos_penalty`` is what marks the cut. When the rollouts already fill
    ``max_length`` (the reward model's ``seq_length``, its last position), no column is added and a full row's last
    token is replaced by the eos instead (as OpenRLHF does).

    Args:
        tokens, mask: ``(B, L)`` rollouts ``[pad | prompt | response | pad]`` and their attention mask.
        max_length: the most tokens the reward model takes (None: no limit).
    Returns:
        ``(B, L + 1)`` tokens and mask (``(B, L)`` when ``L + 1 > max_length``); rows that end in eos are unchanged.
    """
    tokens, mask = np.asarray(tokens), np.asarray(mask)
    batch, length = tokens.shape
    extra = 0 if max_length is not None and length + 1 > max_length else 1
    wide = np.concatenate([tokens, np.zeros((batch, extra), tokens.dtype)], 1)
    wide_mask = np.concatenate([mask, np.zeros((batch, extra), mask.dtype)], 1)
    if eos_token_id is None:
        return wide, wide_mask
    last = length - 1 - np.argmax(mask[:, ::-1], axis=1)  # each row's last real column
    rows = np.flatnonzero(tokens[np.arange(batch), last] != eos_token_id)
    slot = np.minimum(last[rows] + 1, wide.shape[1] - 1)
    wide[rows, slot] = eos_token_id
    wide_mask[rows, slot] = 1
    return wide, wide_mask
