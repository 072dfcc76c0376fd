"""Reward model and critic: a backbone plus a scalar head ``score`` (Hugging Face's
``*ForSequenceClassification`` name, so reward checkpoints export to it and load into the critic)."""

from __future__ import annotations

from mindspore import nn

from mindrlhf.config import ModelConfig
from mindrlhf.models.heads import ScalarHead, gather_rows, last_token_index
from mindrlhf.models.layers import ms_dtype
from mindrlhf.models.registry import build_backbone


class ScalarModel(nn.Cell):
    """Backbone + ``score`` head: ``token_scores(input_ids, attention_mask) -> (B, S)`` float32."""

    def __init__(self, cfg: ModelConfig, recompute: bool = False):
        super().__init__()
        self.backbone = build_backbone(cfg, recompute)
        self.score = ScalarHead(
            cfg.hidden_size, has_bias=False, init_std=cfg.initializer_range, compute_dtype=ms_dtype(cfg.compute_dtype)
        )
        self.config = cfg

    def token_scores(self, input_ids, attention_mask=None, position_ids=None):
        """One score per position ``(B, S)``."""
        return self.score(self.backbone(input_ids, attention_mask, position_ids))


class RewardModel(ScalarModel):
    """Scores each sequence at its own last real token.

    ``construct(input_ids (B, S), attention_mask (B, S)) -> rewards (B,)``; works for left and right padding.
    """

    def construct(self, input_ids, attention_mask, position_ids=None):
        scores = self.token_scores(input_ids, attention_mask, position_ids)
        return gather_rows(scores, last_token_index(attention_mask))


class Critic(ScalarModel):
    """Separate value network: ``construct(input_ids, attention_mask) -> values (B, S)``; same parameter names
    as :class:`RewardModel`, so a reward checkpoint initialises it."""

    def construct(self, input_ids, attention_mask, position_ids=None):
        return self.token_scores(input_ids, attention_mask, position_ids)
