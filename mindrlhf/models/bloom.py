"""BLOOM backbone: ALiBi position biases instead of position embeddings, a LayerNorm right after the word
embeddings, a fused ``query_key_value`` projection laid out per head as ``(q, k, v)``, GELU MLP, tied LM head
(Hugging Face ``BloomModel`` layout)."""

from __future__ import annotations

import math

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindrlhf.config import ConfigError, ModelConfig
from mindrlhf.models.layers import (
    Attention,
    Backbone,
    Embedding,
    Linear,
    activation,
    attention_inputs,
    dropout,
    hidden_norm,
    TwoLayerMLP,
    ms_dtype,
)
from mindrlhf.models.registry import CheckpointError, HFLayout, ModelFamily, hf_field, hf_special_ids, register_family


def alibi_slopes(num_heads: int) -> np.ndarray:
    """ALiBi slopes ``(num_heads,)``: the geometric sequence ``2^(-8i/n)`` for the largest power of two ``n`` not
    above ``num_heads``, then every other slope of the ``2n`` sequence for the remaining heads (Press et al.)."""
    closest = 2 ** int(math.floor(math.log2(num_heads)))
    base = 2.0 ** (-(2.0 ** -(math.log2(closest) - 3)))
    slopes = [base**p for p in range(1, closest + 1)]
    if closest != num_heads:
        extra_base = 2.0 ** (-(2.0 ** -(math.log2(2 * closest) - 3)))
        remaining = min(closest, num_heads - closest)
        slopes += [extra_base**p for p in range(1, 1 + 2 * remaining, 2)]
    return np.asarray(slopes, np.float32)


def alibi_bias(key_mask, slopes, dtype):
    """ALiBi ``(B, heads, 1, L)``: each head's slope times the key's position among the real tokens of its row
    (``(cumsum(mask) - 1) * mask``; a softmax is shift-invariant, so this equals the slope times the distance)."""
    mask = ops.cast(key_mask, ms.float32)
    positions = (ops.cumsum(mask, 1) - 1.0) * mask  # (B, L)
    bias = ops.expand_dims(ops.expand_dims(positions, 1), 1) * slopes  # (B, 1, 1, L) * (1, heads, 1, 1)
    return ops.cast(bias, dtype)


class BloomAttention(nn.Cell):
    """Fused ``query_key_value`` (H -> 3H, per head ``(q, k, v)``), attention with ALiBi, ``dense`` output."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dtypes = dict(
            init_std=cfg.initializer_range,
            param_dtype=ms_dtype(cfg.param_init_type),
            compute_dtype=ms_dtype(cfg.compute_dtype),
        )
        self.query_key_value = Linear(cfg.hidden_size, 3 * cfg.hidden_size, **dtypes)
        self.dense = Linear(cfg.hidden_size, cfg.hidden_size, **dtypes)
        self.attn = Attention(
            cfg.num_heads,
            cfg.num_heads,
            cfg.head_dim,
            cfg.attention_dropout_rate,
            ms_dtype(cfg.softmax_compute_type),
            ms_dtype(cfg.compute_dtype),
        )
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim

    def construct(self, x, bias, k_cache=None, v_cache=None, cache_index=None):
        batch, seq, _ = x.shape
        qkv = ops.reshape(self.query_key_value(x), (batch, seq, self.heads, 3, self.head_dim))
        q, k, v = (ops.transpose(ops.squeeze(t, 3), (0, 2, 1, 3)) for t in ops.split(qkv, 1, 3))
        return self.dense(self.attn(q, k, v, bias, k_cache, v_cache, cache_index))


class BloomMLP(TwoLayerMLP):
    """``dense_4h_to_h(gelu(dense_h_to_4h(x)))`` (BLOOM's GELU is the tanh approximation, fixed: Hugging Face's
    ``BloomConfig`` has no activation field, so ``hidden_act`` can only be gelu); no dropout inside (the block's
    dropout follows it)."""

    def __init__(self, cfg: ModelConfig):
        if cfg.hidden_act not in (None, "gelu"):
            raise ConfigError(f"model_config.hidden_act: BLOOM's MLP is the tanh GELU (gelu), got {cfg.hidden_act!r}")
        super().__init__(cfg, 4 * cfg.hidden_size, ("dense_h_to_4h", "dense_4h_to_h"), activation("gelu"))


class BloomBlock(nn.Cell):
    """Pre-LN block: ``x + attn(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = hidden_norm(cfg)
        self.self_attention = BloomAttention(cfg)
        self.post_attention_layernorm = hidden_norm(cfg)
        self.mlp = BloomMLP(cfg)
        self.dropout = dropout(cfg.hidden_dropout_rate)

    def construct(self, x, bias, k_cache=None, v_cache=None, cache_index=None):
        x = x + self.dropout(self.self_attention(self.input_layernorm(x), bias, k_cache, v_cache, cache_index))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class BloomModel(Backbone):
    """BLOOM transformer without the LM head; same call contract as :class:`mindrlhf.models.gpt2.GPT2Model`
    (``position_ids`` are accepted and unused: ALiBi reads positions from the mask)."""

    embedding_name, blocks_name = "word_embeddings", "h"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, cfg.num_heads)
        if cfg.intermediate_size not in (None, 4 * cfg.hidden_size):
            raise ConfigError(
                f"model_config.intermediate_size: BLOOM's MLP width is 4 * hidden_size "
                f"({4 * cfg.hidden_size}), got {cfg.intermediate_size}"
            )
        dtype = ms_dtype(cfg.param_init_type)
        self.word_embeddings = Embedding(cfg.vocab_size, cfg.hidden_size, cfg.initializer_range, dtype)
        self.word_embeddings_layernorm = hidden_norm(cfg)
        self.drop = dropout(cfg.hidden_dropout_rate)
        self.h = nn.CellList([BloomBlock(cfg) for _ in range(cfg.num_layers)])
        self.ln_f = hidden_norm(cfg)
        self.slopes = Tensor(alibi_slopes(cfg.num_heads).reshape(1, -1, 1, 1), ms.float32)

    def construct(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, cache_index=None):
        if attention_mask is None:
            attention_mask = ops.ones_like(input_ids)
        _, bias, cache_index = attention_inputs(
            input_ids, attention_mask, position_ids, cache_index, self.compute_dtype, self.cache_heads
        )
        bias = bias + alibi_bias(attention_mask, self.slopes, self.compute_dtype)  # (B, heads, S, L)
        x = self.drop(self.word_embeddings_layernorm(ops.cast(self.word_embeddings(input_ids), self.compute_dtype)))
        x = self.run_blocks(self.h, x, bias, (), kv_cache, cache_index)
        return self.ln_f(x)


def bloom_config_from_hf(hf: dict, source: str) -> ModelConfig:
    """``BloomConfig`` fields -> :class:`ModelConfig` (``seq_length``: the training context, 2048 when unsaid;
    ALiBi itself has no length limit)."""
    if hf.get("apply_residual_connection_post_layernorm"):
        raise CheckpointError(f"{source}: field 'apply_residual_connection_post_layernorm' true is not supported")
    hidden = hf.get("hidden_size") or hf_field(hf, "n_embed", source)
    return ModelConfig(
        type="bloom",
        vocab_size=hf_field(hf, "vocab_size", source),
        hidden_size=hidden,
        num_layers=hf.get("n_layer") or hf_field(hf, "num_hidden_layers", source),
        num_heads=hf.get("n_head") or hf_field(hf, "num_attention_heads", source),
        seq_length=hf.get("seq_length", 2048),
        hidden_act="gelu",
        layernorm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        **hf_special_ids(hf, 1, 2, 3),
    )


def bloom_config_to_hf(cfg: ModelConfig) -> dict:
    """:class:`ModelConfig` -> ``BloomConfig`` fields."""
    return {
        "hidden_size": cfg.hidden_size,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "layer_norm_epsilon": cfg.layernorm_epsilon,
        "seq_length": cfg.seq_length,
        "apply_residual_connection_post_layernorm": False,
        "hidden_dropout": cfg.hidden_dropout_rate,
        "attention_dropout": cfg.attention_dropout_rate,
    }


BLOOM = register_family(
    ModelFamily(
        name="bloom",
        backbone=BloomModel,
        hf=HFLayout(
            "bloom", "transformer.", "word_embeddings.weight", "BloomForCausalLM", "BloomForSequenceClassification"
        ),
        config_from_hf=bloom_config_from_hf,
        config_to_hf=bloom_config_to_hf,
        tied_default=True,
        tokenizer=None,
        add_bos=False,
    )
)
