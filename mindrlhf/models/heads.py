"""Heads that turn hidden states ``(B, S, H)`` into outputs: the LM head and scalar (value / reward) heads."""

from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, nn, ops
from mindspore.common.initializer import Normal, Zero, initializer

from mindrlhf.models.layers import Linear


class LMHead(nn.Cell):
    """``(B, S, H) -> (B, S, V)`` logits in float32.

    With ``tied`` the head owns no weight and multiplies with the ``(V, H)`` token table passed to ``construct``
    (GPT-2); otherwise it owns ``weight (V, H)`` (Llama's ``lm_head``) and ignores ``table``. ``has_bias`` adds a
    ``bias (V,)`` (GPT-J's head).
    """

    def __init__(
        self,
        hidden_size: int,
        vocab_size: int,
        tied: bool,
        init_std: float = 0.02,
        param_dtype=ms.float32,
        compute_dtype=ms.float32,
        has_bias: bool = False,
    ):
        super().__init__()
        self.tied = tied
        if not tied:
            self.weight = Parameter(
                initializer(Normal(init_std), (vocab_size, hidden_size), param_dtype), name="weight"
            )
        self.has_bias = has_bias
        if has_bias:
            self.bias = Parameter(initializer(Zero(), (vocab_size,), param_dtype), name="bias")
        self.matmul = ops.MatMul(transpose_b=True)
        self.vocab_size = vocab_size
        self.compute_dtype = compute_dtype

    def construct(self, hidden, table):
        weight = table if self.tied else self.weight
        shape = hidden.shape
        h2d = ops.reshape(ops.cast(hidden, self.compute_dtype), (-1, shape[-1]))
        logits = self.matmul(h2d, ops.cast(weight, self.compute_dtype))
        if self.has_bias:
            logits = logits + ops.cast(self.bias, self.compute_dtype)
        return ops.cast(ops.reshape(logits, shape[:-1] + (self.vocab_size,)), ms.float32)


class ScalarHead(Linear):
    """``(B, S, H) -> (B, S)`` float32: one number per position (value or reward); ``weight (1, H)``."""

    def __init__(self, hidden_size: int, has_bias: bool, init_std: float = 0.02, compute_dtype=ms.float32):
        super().__init__(hidden_size, 1, has_bias=has_bias, init_std=init_std, compute_dtype=compute_dtype)

    def construct(self, hidden):
        return ops.cast(ops.squeeze(super().construct(hidden), -1), ms.float32)


def last_token_index(attention_mask):
    """Index of each row's last real token ``(B,)`` int32, for left or right padding (0 for an all-pad row)."""
    positions = ops.arange(attention_mask.shape[1], dtype=ms.int32)
    return ops.cast(ops.argmax(ops.cast(attention_mask, ms.int32) * positions, -1), ms.int32)


def gather_rows(values, index):
    """``values (B, S)``, ``index (B,)`` -> ``values[b, index[b]]`` ``(B,)``."""
    return ops.squeeze(ops.gather_elements(values, 1, ops.expand_dims(index, -1)), -1)
