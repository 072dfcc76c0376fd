"""GPT-J backbone: attention and MLP in parallel from one LayerNorm, partial rotary positions in the
rotate-every-two layout, no position table (Hugging Face ``GPTJModel`` layout); the LM head is untied and has a
bias."""

from __future__ import annotations

import dataclasses

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindrlhf.config import ConfigError, ModelConfig
from mindrlhf.models.gpt2 import gpt2_config_from_hf, gpt2_config_to_hf
from mindrlhf.models.layers import (
    Attention,
    Backbone,
    Embedding,
    Linear,
    attention_inputs,
    activation,
    dropout,
    hidden_norm,
    TwoLayerMLP,
    ms_dtype,
    split_heads,
)
from mindrlhf.models.registry import HFLayout, ModelFamily, register_family


def rotate_every_two_matrix(dim: int) -> np.ndarray:
    """``(dim, dim)`` matrix ``R`` with ``x @ R = rotate_every_two(x)``: pairs ``(x0, x1)`` become ``(-x1, x0)``."""
    rot = np.zeros((dim, dim), np.float32)
    for i in range(0, dim, 2):
        rot[i + 1, i] = -1.0
        rot[i, i + 1] = 1.0
    return rot


class InterleavedRotary(nn.Cell):
    """GPT-J's rotary tables for the first ``rotary_dim`` dims of each head, pairing neighbours ``(2i, 2i+1)``
    (Hugging Face ``rotate_every_two``), inverse frequencies ``theta^(-2i/rotary_dim)``."""

    def __init__(self, rotary_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (np.arange(0, rotary_dim, 2, dtype=np.float32) / rotary_dim))
        self.inv_freq = Tensor(inv_freq.reshape(1, 1, -1), ms.float32)

    def construct(self, position_ids):
        """``(B, S)`` positions -> cos, sin ``(B, 1, S, rotary_dim)`` float32, each frequency repeated twice."""
        freqs = ops.expand_dims(ops.cast(position_ids, ms.float32), -1) * self.inv_freq  # (B, S, rotary_dim / 2)
        batch, seq, half = freqs.shape
        emb = ops.reshape(ops.stack((freqs, freqs), -1), (batch, seq, 2 * half))
        return ops.expand_dims(ops.cos(emb), 1), ops.expand_dims(ops.sin(emb), 1)


def apply_partial_rotary(x, cos, sin, rot, rotary_dim: int):
    """Rotate the first ``rotary_dim`` dims of ``x (B, heads, S, head_dim)`` (``rot`` from
    :func:`rotate_every_two_matrix`); the other dims pass through."""
    dtype = x.dtype
    x = ops.cast(x, ms.float32)
    partial = rotary_dim < x.shape[-1]
    x_rot = x[..., :rotary_dim] if partial else x
    shape = x_rot.shape
    rotated = ops.reshape(ops.matmul(ops.reshape(x_rot, (-1, rotary_dim)), rot), shape)
    out = x_rot * cos + rotated * sin
    if partial:
        out = ops.concat((out, x[..., rotary_dim:]), -1)
    return ops.cast(out, dtype)


class GPTJAttention(nn.Cell):
    """``q_proj``/``k_proj``/``v_proj``/``out_proj`` without biases; rotary on q and k."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dtypes = dict(
            has_bias=False,
            init_std=cfg.initializer_range,
            param_dtype=ms_dtype(cfg.param_init_type),
            compute_dtype=ms_dtype(cfg.compute_dtype),
        )
        self.q_proj = Linear(cfg.hidden_size, cfg.hidden_size, **dtypes)
        self.k_proj = Linear(cfg.hidden_size, cfg.hidden_size, **dtypes)
        self.v_proj = Linear(cfg.hidden_size, cfg.hidden_size, **dtypes)
        self.out_proj = Linear(cfg.hidden_size, cfg.hidden_size, **dtypes)
        self.attn = Attention(
            cfg.num_heads,
            cfg.num_heads,
            cfg.head_dim,
            cfg.attention_dropout_rate,
            ms_dtype(cfg.softmax_compute_type),
            ms_dtype(cfg.compute_dtype),
        )
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.rotary_dim = cfg.rotary_dim or cfg.head_dim
        self.rot = Tensor(rotate_every_two_matrix(self.rotary_dim), ms.float32)

    def construct(self, x, bias, cos, sin, k_cache=None, v_cache=None, cache_index=None):
        q = split_heads(self.q_proj(x), self.heads, self.head_dim)
        k = split_heads(self.k_proj(x), self.heads, self.head_dim)
        q = apply_partial_rotary(q, cos, sin, self.rot, self.rotary_dim)
        k = apply_partial_rotary(k, cos, sin, self.rot, self.rotary_dim)
        v = split_heads(self.v_proj(x), self.heads, self.head_dim)
        return self.out_proj(self.attn(q, k, v, bias, k_cache, v_cache, cache_index))


class GPTJMLP(TwoLayerMLP):
    """``fc_out(act(fc_in(x)))`` with biases; ``act`` = ``hidden_act`` (default: the tanh GELU)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(
            cfg,
            cfg.intermediate_size or 4 * cfg.hidden_size,
            ("fc_in", "fc_out"),
            activation(cfg.hidden_act or "gelu"),
            cfg.hidden_dropout_rate,
        )


class GPTJBlock(nn.Cell):
    """Parallel residual: ``h = ln_1(x)``; ``x + attn(h) + mlp(h)``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = hidden_norm(cfg)
        self.attn = GPTJAttention(cfg)
        self.mlp = GPTJMLP(cfg)
        self.dropout = dropout(cfg.hidden_dropout_rate)

    def construct(self, x, bias, cos, sin, k_cache=None, v_cache=None, cache_index=None):
        h = self.ln_1(x)
        return x + self.dropout(self.attn(h, bias, cos, sin, k_cache, v_cache, cache_index)) + self.mlp(h)


class GPTJModel(Backbone):
    """GPT-J transformer without the LM head; same call contract as :class:`mindrlhf.models.gpt2.GPT2Model`."""

    embedding_name, blocks_name = "wte", "h"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, cfg.num_heads)
        rotary_dim = cfg.rotary_dim or cfg.head_dim
        if rotary_dim > cfg.head_dim or rotary_dim % 2:
            raise ConfigError(f"model_config.rotary_dim: {rotary_dim} must be even and at most head_dim {cfg.head_dim}")
        self.wte = Embedding(cfg.vocab_size, cfg.hidden_size, cfg.initializer_range, ms_dtype(cfg.param_init_type))
        self.drop = dropout(cfg.hidden_dropout_rate)
        self.h = nn.CellList([GPTJBlock(cfg) for _ in range(cfg.num_layers)])
        self.ln_f = hidden_norm(cfg)
        self.rotary = InterleavedRotary(rotary_dim, cfg.rope_theta)

    def construct(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, cache_index=None):
        position_ids, bias, cache_index = attention_inputs(
            input_ids, attention_mask, position_ids, cache_index, self.compute_dtype, self.cache_heads
        )
        cos, sin = self.rotary(position_ids)
        x = self.drop(ops.cast(self.wte(input_ids), self.compute_dtype))
        x = self.run_blocks(self.h, x, bias, (cos, sin), kv_cache, cache_index)
        return self.ln_f(x)


def gptj_config_from_hf(hf: dict, source: str) -> ModelConfig:
    """``GPTJConfig`` fields (GPT-2's names plus ``rotary_dim``) -> :class:`ModelConfig`."""
    return dataclasses.replace(gpt2_config_from_hf(hf, source), type="gptj", rotary_dim=hf.get("rotary_dim"))


def gptj_config_to_hf(cfg: ModelConfig) -> dict:
    """:class:`ModelConfig` -> ``GPTJConfig`` fields."""
    return {**gpt2_config_to_hf(cfg), "rotary_dim": cfg.rotary_dim or cfg.head_dim}


GPTJ = register_family(
    ModelFamily(
        name="gptj",
        backbone=GPTJModel,
        hf=HFLayout(
            "gptj",
            "transformer.",
            "wte.weight",
            "GPTJForCausalLM",
            "GPTJForSequenceClassification",
            ignored=(".attn.bias", ".attn.masked_bias", ".attn.embed_positions"),
        ),
        config_from_hf=gptj_config_from_hf,
        config_to_hf=gptj_config_to_hf,
        tied_default=False,
        lm_head_bias=True,
        tokenizer="gpt2",
        add_bos=False,
    )
)
