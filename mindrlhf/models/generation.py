"""Batched autoregressive generation with a static-shape KV cache.

Prompts arrive left-padded ``(B, P)``. One *prefill* call runs the prompts, fills cache slots ``[0, P)`` and
returns the last position's logits; then each *decode* call feeds one token per row, writes its key/value into
slot ``P + t`` in place and returns the next logits. The decode step has fixed shapes (``(B, 1)`` tokens, a
``(B, L)`` slot mask, a scalar slot index), so graph mode compiles it once per ``(B, L)``, ``L = P + max_new_tokens``.

Positions count real tokens only (``clip(cumsum(mask) - 1, 0)``), the same rule the models use when scoring a
padded batch, so log-probs computed later match the sampling distribution.

Top-k runs inside the compiled step (only ``(B, k)`` candidates leave the device); temperature, top-p and the
seeded draw run on the host in numpy.
Rows that emit ``eos_token_id`` are finished: later tokens are ``pad_token_id`` and not in the response mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Tuple

import numpy as np
import mindspore as ms
from mindspore import Parameter, ParameterTuple, Tensor, nn, ops

from mindrlhf.config import GenerationConfig
from mindrlhf.models.policy import CausalLM

NO_CACHE_BUCKET = 32  # without a cache, sequences are padded up to a multiple of this (fewer graph compiles)


@dataclass
class GenerationOutput:
    """What :meth:`Generator.generate` returns (numpy arrays)."""

    sequences: np.ndarray  # (B, P + N) int32: the left-padded prompt followed by the response
    response_ids: np.ndarray  # (B, N) int32: generated tokens, pad after a row's eos
    response_mask: np.ndarray  # (B, N) int32: 1 on generated tokens up to and including eos
    response_lengths: np.ndarray  # (B,) int32: number of generated tokens per row (eos included)
    prompt_mask: np.ndarray  # (B, P) int32: 1 on real prompt tokens


def candidate_count(cfg: GenerationConfig, vocab_size: int) -> int:
    """How many best tokens the compiled step returns per row: 1 for greedy, ``top_k`` when set, else all (0)."""
    if not cfg.do_sample:
        return 1
    return cfg.top_k if 0 < cfg.top_k < vocab_size else 0


def topk_group_size(vocab_size: int, k: int) -> int:
    """A divisor of ``vocab_size`` in [16, 128] leaving at least ``k`` groups (the smallest such), or 0 if none."""
    for size in range(16, 129):
        if vocab_size % size == 0 and vocab_size // size >= k:
            return size
    return 0


def grouped_topk(logits, k: int, group: int):
    """Exact top-k of ``(B, V)`` in two small passes: the ``k`` best groups of ``group`` consecutive tokens by their
    maximum (they hold the top ``k`` tokens), then the top ``k`` of those ``k * group`` candidates. On CPU this is
    faster than one ``TopK`` over the whole vocabulary. Returns values and token ids ``(B, k)``, best first."""
    batch, vocab = logits.shape
    grouped = ops.reshape(logits, (batch, vocab // group, group))
    _, best_groups = ops.topk(ops.reduce_max(grouped, -1), k)
    picked = ops.gather_elements(grouped, 1, ops.tile(ops.expand_dims(best_groups, -1), (1, 1, group)))
    values, slot = ops.topk(ops.reshape(picked, (batch, k * group)), k)
    return values, ops.gather_elements(best_groups, 1, slot // group) * group + slot % group


class _StepBase(nn.Cell):
    """Shared tail of the compiled steps: logits of one position -> sampling candidates.

    With ``k > 0`` the step returns ``(values, token_ids)`` of the ``k`` best tokens, sorted best first, so the
    host never touches the ``(B, V)`` logits; with ``k == 0`` it returns the logits.
    """

    def __init__(self, lm: CausalLM, k: int):
        super().__init__(auto_prefix=False)
        self.lm = lm
        self.k = k
        self.group = topk_group_size(lm.config.vocab_size, k) if k > 1 else 0

    def candidates(self, hidden_last):
        logits = self.lm.logits(hidden_last)
        if self.k > 0 and self.group:
            return grouped_topk(logits, self.k, self.group)
        if self.k > 0:
            return ops.topk(logits, self.k)
        return logits


class _Prefill(_StepBase):
    """Runs the prompt, fills the cache, returns candidates for the next token."""

    def __init__(self, lm: CausalLM, k: int, cache: ParameterTuple):
        super().__init__(lm, k)
        self.cache = cache

    def construct(self, input_ids, attention_mask):
        hidden = self.lm.backbone(input_ids, attention_mask, None, self.cache)  # positions from the mask
        return self.candidates(hidden[:, -1])


class _Decode(_StepBase):
    """One token per row into cache slot ``index``; returns candidates for the next token."""

    def __init__(self, lm: CausalLM, k: int, cache: ParameterTuple):
        super().__init__(lm, k)
        self.cache = cache

    def construct(self, tokens, slot_mask, position_ids, index):
        hidden = self.lm.backbone(tokens, slot_mask, position_ids, self.cache, index)
        return self.candidates(hidden[:, -1])


class _FullStep(_StepBase):
    """No-cache step: runs the whole (right-padded) sequence, returns candidates at position ``index``."""

    def construct(self, input_ids, attention_mask, index):
        hidden = self.lm.backbone(input_ids, attention_mask)
        return self.candidates(ops.squeeze(ops.gather(hidden, index, 1), 1))


def sample_tokens(
    values: np.ndarray, token_ids: Optional[np.ndarray], cfg: GenerationConfig, rng: np.random.Generator
) -> np.ndarray:
    """Pick one token per row.

    Args:
        values: ``(B, K)`` candidate logits; sorted best first when ``token_ids`` is given.
        token_ids: ``(B, K)`` vocabulary ids of the candidates, or None when ``values`` are the full logits.
        cfg: greedy (``do_sample`` False) or temperature / top-p sampling over the candidates (top-k was
            applied by choosing the candidates).
    Returns:
        ``(B,)`` int32 token ids.
    """
    rows = np.arange(len(values))
    if not cfg.do_sample:
        return (token_ids[:, 0] if token_ids is not None else values.argmax(-1)).astype(np.int32)
    logits = values.astype(np.float64 if token_ids is not None else np.float32) / cfg.temperature
    if cfg.top_p < 1.0 and token_ids is None:
        token_ids = np.argsort(-logits, axis=-1, kind="stable")
        logits = np.take_along_axis(logits, token_ids, -1)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    if cfg.top_p < 1.0:
        # keep the smallest best-first prefix whose mass reaches top_p (the best token is always kept)
        probs = np.where(np.cumsum(probs, -1) - probs < cfg.top_p, probs, 0.0)
    cdf = np.cumsum(probs, -1)
    u = rng.random((len(values), 1)) * cdf[:, -1:]
    choice = np.minimum((cdf < u).sum(-1), values.shape[-1] - 1)
    return (choice if token_ids is None else token_ids[rows, choice]).astype(np.int32)


class Generator:
    """Generates from a :class:`CausalLM`; the compiled steps and the cache of the last ``(batch, length)`` shape are
    kept, so repeated calls with the same shapes reuse them.

    Args:
        lm: the policy.
        cfg: sampling settings.
        eos_token_id: a row stops after emitting it (None: never).
        pad_token_id: fills a row after its eos.
    """

    def __init__(self, lm: CausalLM, cfg: GenerationConfig, eos_token_id: Optional[int], pad_token_id: int):
        self.lm = lm
        self.cfg = cfg
        self.eos_token_id = eos_token_id
        self.pad_token_id = pad_token_id
        self._cached_key: Optional[Tuple[int, int]] = None  # shape of the one cache kept alive
        self._cached_steps: Optional[Tuple[_Prefill, _Decode]] = None
        self._full: Optional[_FullStep] = None

    def _steps(self, batch: int, length: int) -> Tuple[_Prefill, _Decode]:
        key = (batch, length)
        if key != self._cached_key:
            lm_cfg = self.lm.config
            shape = (batch, lm_cfg.num_kv_heads, length, lm_cfg.head_dim)
            dtype = ms.float16 if lm_cfg.compute_dtype == "float16" else ms.float32
            params = []
            for i in range(lm_cfg.num_layers):
                for kind in ("k", "v"):
                    params.append(
                        Parameter(Tensor(np.zeros(shape), dtype), name=f"kv_cache.{kind}{i}", requires_grad=False)
                    )
            cache = ParameterTuple(params)
            k = candidate_count(self.cfg, lm_cfg.vocab_size)
            self._cached_key = key
            self._cached_steps = (_Prefill(self.lm, k, cache), _Decode(self.lm, k, cache))
        return self._cached_steps

    def generate(
        self,
        prompt_ids: np.ndarray,
        prompt_mask: Optional[np.ndarray] = None,
        max_new_tokens: Optional[int] = None,
        seed=None,
    ) -> GenerationOutput:
        """Generate for a left-padded batch.

        Args:
            prompt_ids: ``(B, P)`` int, left-padded.
            prompt_mask: ``(B, P)``, 1 on real tokens (default: all ones).
            max_new_tokens: overrides ``cfg.max_new_tokens``.
            seed: overrides ``cfg.seed`` (an int or a sequence of ints, as ``numpy.random.default_rng`` takes).
        """
        prompt_ids = np.asarray(prompt_ids, np.int32)
        prompt_mask = np.ones_like(prompt_ids) if prompt_mask is None else np.asarray(prompt_mask, np.int32)
        if prompt_ids.ndim != 2 or prompt_mask.shape != prompt_ids.shape:
            raise ValueError(
                f"prompt_ids must be (B, P) with a mask of the same shape, got {prompt_ids.shape} "
                f"and {prompt_mask.shape}"
            )
        if (prompt_mask[:, -1] == 0).any():
            raise ValueError("prompts must be left-padded: the last column of prompt_mask has zeros")
        steps = max_new_tokens or self.cfg.max_new_tokens
        if prompt_ids.shape[1] + steps > self.lm.config.seq_length:
            raise ValueError(
                f"prompt length {prompt_ids.shape[1]} + max_new_tokens {steps} exceeds the model's "
                f"seq_length {self.lm.config.seq_length}"
            )
        rng = np.random.default_rng(self.cfg.seed if seed is None else seed)
        was_training = self.lm.training
        self.lm.set_train(False)
        try:
            if self.cfg.use_cache:
                response = self._decode_cached(prompt_ids, prompt_mask, steps, rng)
            else:
                response = self._decode_full(prompt_ids, prompt_mask, steps, rng)
        finally:
            self.lm.set_train(was_training)
        return self._output(prompt_ids, prompt_mask, response)

    def _next(self, candidates, finished: np.ndarray, rng) -> np.ndarray:
        if isinstance(candidates, (tuple, list)):
            tokens = sample_tokens(candidates[0].asnumpy(), candidates[1].asnumpy(), self.cfg, rng)
        else:
            tokens = sample_tokens(candidates.asnumpy(), None, self.cfg, rng)
        return np.where(finished, self.pad_token_id, tokens).astype(np.int32)

    def _is_eos(self, tokens: np.ndarray) -> np.ndarray:
        return np.zeros(tokens.shape, bool) if self.eos_token_id is None else tokens == self.eos_token_id

    def _decode_cached(self, prompt_ids, prompt_mask, steps, rng) -> np.ndarray:
        batch, plen = prompt_ids.shape
        prefill, decode = self._steps(batch, plen + steps)
        slot_mask = np.zeros((batch, plen + steps), np.int32)
        slot_mask[:, :plen] = prompt_mask
        next_pos = prompt_mask.sum(1).astype(np.int32)
        response = np.full((batch, steps), self.pad_token_id, np.int32)
        finished = np.zeros(batch, bool)
        logits = prefill(Tensor(prompt_ids), Tensor(prompt_mask))
        for t in range(steps):
            tokens = self._next(logits, finished, rng)
            response[:, t] = tokens
            finished |= self._is_eos(tokens)
            if finished.all() or t == steps - 1:
                break
            slot_mask[:, plen + t] = 1
            logits = decode(
                Tensor(tokens[:, None]), Tensor(slot_mask), Tensor((next_pos + t)[:, None]), Tensor(plen + t, ms.int32)
            )
        return response

    def _decode_full(self, prompt_ids, prompt_mask, steps, rng) -> np.ndarray:
        """Reference path without a cache: the whole sequence is recomputed each step."""
        if self._full is None:
            self._full = _FullStep(self.lm, candidate_count(self.cfg, self.lm.config.vocab_size))
        batch, plen = prompt_ids.shape
        response = np.full((batch, steps), self.pad_token_id, np.int32)
        finished = np.zeros(batch, bool)
        for t in range(steps):
            length = plen + t
            padded = -(-length // NO_CACHE_BUCKET) * NO_CACHE_BUCKET
            ids = np.full((batch, padded), self.pad_token_id, np.int32)
            mask = np.zeros((batch, padded), np.int32)
            ids[:, :plen], mask[:, :plen] = prompt_ids, prompt_mask
            ids[:, plen:length], mask[:, plen:length] = response[:, :t], 1
            logits = self._full(Tensor(ids), Tensor(mask), Tensor([length - 1], ms.int32))
            tokens = self._next(logits, finished, rng)
            response[:, t] = tokens
            finished |= self._is_eos(tokens)
            if finished.all():
                break
        return response

    def _output(self, prompt_ids, prompt_mask, response) -> GenerationOutput:
        steps = response.shape[1]
        if self.eos_token_id is None:
            lengths = np.full(len(response), steps, np.int32)
        else:
            is_eos = response == self.eos_token_id
            lengths = np.where(is_eos.any(1), is_eos.argmax(1) + 1, steps).astype(np.int32)
        response_mask = (np.arange(steps)[None, :] < lengths[:, None]).astype(np.int32)
        response = np.where(response_mask == 1, response, self.pad_token_id).astype(np.int32)
        return GenerationOutput(
            np.concatenate([prompt_ids, response], 1), response, response_mask, lengths, prompt_mask
        )
