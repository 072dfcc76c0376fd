"""Causal language model (policy / reference) on any registered backbone, with an optional value head that shares
the backbone (PPO's actor-critic)."""

from __future__ import annotations

import mindspore as ms
from mindspore import nn, ops

from mindrlhf.config import ModelConfig
from mindrlhf.models.heads import LMHead, ScalarHead
from mindrlhf.models.layers import ms_dtype
from mindrlhf.models.registry import build_backbone, family


def token_logprobs(logits, labels, temperature: float = 1.0):
    """Log-probability of each label under ``softmax(logits / temperature)``: ``(B, T, V), (B, T) -> (B, T)``
    float32.

    PPO passes its sampling temperature, so the log-probs are those of the distribution the rollouts were drawn
    from (:func:`mindrlhf.models.generation.sample_tokens` divides the logits the same way). ``log_softmax`` then a
    gather: on CPU the fused log-softmax kernel is about ten times faster than ``logsumexp``, whose max and sum
    reductions are slow.
    """
    logits = ops.cast(logits, ms.float32)
    if temperature != 1.0:
        logits = logits / temperature
    logp = ops.log_softmax(logits, -1)
    return ops.squeeze(ops.gather_elements(logp, -1, ops.expand_dims(labels, -1)), -1)


class CausalLM(nn.Cell):
    """Backbone + LM head (tied to the token table when the family or config says so; with a bias for GPT-J),
    optionally + value head ``v_head``.

    ``construct(input_ids (B, S), attention_mask (B, S) | None, position_ids | None) -> logits (B, S, V)``.
    Graph-mode callers use the methods below from their own ``construct``.
    """

    def __init__(self, cfg: ModelConfig, with_value_head: bool = False, recompute: bool = False):
        super().__init__()
        self.backbone = build_backbone(cfg, recompute)
        entry = family(cfg.type)
        tied = entry.tied_default if cfg.tie_word_embeddings is None else cfg.tie_word_embeddings
        self.tied = tied
        self.lm_head = LMHead(
            cfg.hidden_size,
            cfg.vocab_size,
            tied,
            cfg.initializer_range,
            ms_dtype(cfg.param_init_type),
            ms_dtype(cfg.compute_dtype),
            entry.lm_head_bias,
        )
        self.with_value_head = with_value_head
        if with_value_head:
            self.v_head = ScalarHead(
                cfg.hidden_size,
                has_bias=True,
                init_std=cfg.initializer_range,
                compute_dtype=ms_dtype(cfg.compute_dtype),
            )
        self.config = cfg

    def logits(self, hidden):
        """``(..., H) -> (..., V)`` float32 logits."""
        return self.lm_head(hidden, self.backbone.input_embedding_table())

    def values(self, hidden):
        """``(B, S, H) -> (B, S)`` value estimates from the shared-backbone value head."""
        return self.v_head(hidden)

    def logprobs(self, input_ids, attention_mask=None, position_ids=None):
        """``log p(x_{t+1} | x_<=t)`` for the given tokens: ``(B, T) -> (B, T-1)``."""
        hidden = self.backbone(input_ids, attention_mask, position_ids)
        return token_logprobs(self.logits(hidden[:, :-1]), input_ids[:, 1:])

    def construct(self, input_ids, attention_mask=None, position_ids=None):
        return self.logits(self.backbone(input_ids, attention_mask, position_ids))


class TokenLogProbs(nn.Cell):
    """Compiled wrapper: ``(input_ids, attention_mask) -> logprobs (B, T-1)`` [, ``values (B, T)``]."""

    def __init__(self, lm: CausalLM):
        super().__init__(auto_prefix=False)
        self.lm = lm

    def construct(self, input_ids, attention_mask):
        hidden = self.lm.backbone(input_ids, attention_mask)
        logprobs = token_logprobs(self.lm.logits(hidden[:, :-1]), input_ids[:, 1:])
        if self.lm.with_value_head:
            return logprobs, self.lm.values(hidden)
        return logprobs
