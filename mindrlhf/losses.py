"""Losses as pure functions of tensors: each maps inputs (+ masks) to a scalar loss (and, where useful, the
per-example values for metrics). None reads a config or keeps state.

Shapes: ``B`` pairs / sequences, ``S`` sequence length.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import ops


def log_sigmoid(x):
    """Numerically stable ``log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|))``."""
    return ops.minimum(x, 0.0) - ops.log1p(ops.exp(-ops.abs(x)))


def masked_mean(values, mask, axis=None):
    """Mean of ``values`` where ``mask`` is 1; 0 where a reduced slice has no valid entry."""
    mask = ops.cast(mask, values.dtype)
    total = ops.reduce_sum(values * mask, axis) if axis is not None else ops.reduce_sum(values * mask)
    count = ops.reduce_sum(mask, axis) if axis is not None else ops.reduce_sum(mask)
    return total / ops.maximum(count, 1.0)


def pairwise_span_loss(chosen_scores, rejected_scores, loss_mask):
    """Pairwise ranking loss averaged over the span where the pair differs.

    ``L_b = mean_{t: m_bt = 1} -log sigmoid(c_bt - r_bt)``, loss ``= mean_b L_b``.

    Args:
        chosen_scores, rejected_scores: ``(B, S)`` per-token scores of the chosen / rejected sequences.
        loss_mask: ``(B, S)`` 1 on ``[first divergence, end of the longer sequence)``.
    Returns:
        (loss scalar, per-pair loss ``(B,)``).
    """
    per_token = -log_sigmoid(chosen_scores - rejected_scores)
    per_pair = masked_mean(per_token, loss_mask, axis=1)
    return ops.mean(per_pair), per_pair


def pairwise_end_loss(chosen_end, rejected_end):
    """Bradley-Terry loss on end-of-sequence scores: ``mean_b -log sigmoid(c_b - r_b)``; inputs ``(B,)``."""
    per_pair = -log_sigmoid(chosen_end - rejected_end)
    return ops.mean(per_pair), per_pair


def pairwise_accuracy(chosen_end, rejected_end):
    """Share of pairs whose chosen score is strictly higher: ``(B,), (B,) -> scalar``."""
    return ops.mean(ops.cast(chosen_end > rejected_end, ms.float32))
