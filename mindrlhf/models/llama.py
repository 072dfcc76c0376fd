"""Llama-2 backbone: RMSNorm, rotary positions, SwiGLU MLP, no biases, grouped-query attention
(Hugging Face ``LlamaModel`` layout)."""

from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindrlhf.config import ModelConfig
from mindrlhf.models.layers import (
    Attention,
    Backbone,
    Embedding,
    Linear,
    activation,
    attention_inputs,
    dropout,
    hidden_norm,
    ms_dtype,
    split_heads,
)
from mindrlhf.models.registry import (
    HF_ACTIVATION_NAMES,
    CheckpointError,
    HFLayout,
    MindformersLayout,
    ModelFamily,
    hf_activation,
    hf_field,
    hf_rope_theta,
    hf_special_ids,
    register_family,
    rename_by_pairs,
)


def llama_intermediate_size(cfg: ModelConfig) -> int:
    """MLP width: ``intermediate_size`` if set, else ``2/3 * 4H`` rounded up to ``multiple_of`` (11008 for 7B)."""
    if cfg.intermediate_size:
        return cfg.intermediate_size
    width = int(2 * 4 * cfg.hidden_size / 3)
    return cfg.multiple_of * ((width + cfg.multiple_of - 1) // cfg.multiple_of)


def apply_rotary(x, cos, sin):
    """Rotate ``x (B, heads, S, D)`` in Hugging Face's half-split layout: ``x*cos + rotate_half(x)*sin``."""
    dtype = x.dtype
    half = x.shape[-1] // 2
    x = ops.cast(x, ms.float32)
    rotated = ops.concat((-x[..., half:], x[..., :half]), -1)
    return ops.cast(x * cos + rotated * sin, dtype)


class Rotary(nn.Cell):
    """Rotary position tables: inverse frequencies ``theta^(-2i/D)``."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        self.inv_freq = Tensor(inv_freq.reshape(1, 1, -1), ms.float32)

    def construct(self, position_ids):
        """``(B, S)`` positions -> cos, sin ``(B, 1, S, head_dim)`` in float32."""
        freqs = ops.expand_dims(ops.cast(position_ids, ms.float32), -1) * self.inv_freq
        emb = ops.concat((freqs, freqs), -1)
        return ops.expand_dims(ops.cos(emb), 1), ops.expand_dims(ops.sin(emb), 1)


class LlamaAttention(nn.Cell):
    """``q_proj``/``k_proj``/``v_proj`` (biases only with ``qkv_bias``, Qwen2), rotary on q and k, attention,
    ``o_proj`` (no bias)."""

    def __init__(self, cfg: ModelConfig, qkv_bias: bool = False):
        super().__init__()
        dtypes = dict(
            has_bias=False,
            init_std=cfg.initializer_range,
            param_dtype=ms_dtype(cfg.param_init_type),
            compute_dtype=ms_dtype(cfg.compute_dtype),
        )
        kv_width = cfg.num_kv_heads * cfg.head_dim
        qkv = {**dtypes, "has_bias": qkv_bias}
        self.q_proj = Linear(cfg.hidden_size, cfg.hidden_size, **qkv)
        self.k_proj = Linear(cfg.hidden_size, kv_width, **qkv)
        self.v_proj = Linear(cfg.hidden_size, kv_width, **qkv)
        self.o_proj = Linear(cfg.hidden_size, cfg.hidden_size, **dtypes)
        self.attn = Attention(
            cfg.num_heads,
            cfg.num_kv_heads,
            cfg.head_dim,
            cfg.attention_dropout_rate,
            ms_dtype(cfg.softmax_compute_type),
            ms_dtype(cfg.compute_dtype),
        )
        self.heads, self.kv_heads, self.head_dim = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    def construct(self, x, bias, cos, sin, k_cache=None, v_cache=None, cache_index=None):
        q = apply_rotary(split_heads(self.q_proj(x), self.heads, self.head_dim), cos, sin)
        k = apply_rotary(split_heads(self.k_proj(x), self.kv_heads, self.head_dim), cos, sin)
        v = split_heads(self.v_proj(x), self.kv_heads, self.head_dim)
        return self.o_proj(self.attn(q, k, v, bias, k_cache, v_cache, cache_index))


class LlamaMLP(nn.Cell):
    """Gated MLP: ``down_proj(act(gate_proj(x)) * up_proj(x))``, ``act`` = ``hidden_act`` (default silu: SwiGLU)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        width = llama_intermediate_size(cfg)
        dtypes = dict(
            has_bias=False,
            init_std=cfg.initializer_range,
            param_dtype=ms_dtype(cfg.param_init_type),
            compute_dtype=ms_dtype(cfg.compute_dtype),
        )
        self.gate_proj = Linear(cfg.hidden_size, width, **dtypes)
        self.up_proj = Linear(cfg.hidden_size, width, **dtypes)
        self.down_proj = Linear(width, cfg.hidden_size, **dtypes)
        self.act = activation(cfg.hidden_act or "silu")

    def construct(self, x):
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Cell):
    """Pre-RMSNorm block: ``x + attn(input_layernorm(x))``, then ``x + mlp(post_attention_layernorm(x))``."""

    def __init__(self, cfg: ModelConfig, qkv_bias: bool = False):
        super().__init__()
        self.input_layernorm = hidden_norm(cfg, rms=True)
        self.self_attn = LlamaAttention(cfg, qkv_bias)
        self.post_attention_layernorm = hidden_norm(cfg, rms=True)
        self.mlp = LlamaMLP(cfg)
        self.dropout = dropout(cfg.hidden_dropout_rate)

    def construct(self, x, bias, cos, sin, k_cache=None, v_cache=None, cache_index=None):
        x = x + self.dropout(self.self_attn(self.input_layernorm(x), bias, cos, sin, k_cache, v_cache, cache_index))
        return x + self.dropout(self.mlp(self.post_attention_layernorm(x)))


class LlamaModel(Backbone):
    """Llama transformer without the LM head; same call contract as :class:`mindrlhf.models.gpt2.GPT2Model`.
    Subclasses set ``qkv_bias`` (Qwen2)."""

    qkv_bias = False
    embedding_name, blocks_name = "embed_tokens", "layers"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, cfg.num_kv_heads)
        self.embed_tokens = Embedding(
            cfg.vocab_size, cfg.hidden_size, cfg.initializer_range, ms_dtype(cfg.param_init_type)
        )
        self.layers = nn.CellList([LlamaDecoderLayer(cfg, self.qkv_bias) for _ in range(cfg.num_layers)])
        self.norm = hidden_norm(cfg, rms=True)
        self.rotary = Rotary(cfg.head_dim, cfg.rope_theta)

    def construct(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, cache_index=None):
        position_ids, bias, cache_index = attention_inputs(
            input_ids, attention_mask, position_ids, cache_index, self.compute_dtype, self.cache_heads
        )
        cos, sin = self.rotary(position_ids)
        x = ops.cast(self.embed_tokens(input_ids), self.compute_dtype)
        x = self.run_blocks(self.layers, x, bias, (cos, sin), kv_cache, cache_index)
        return self.norm(x)


def rotary_config_from_hf(hf: dict, source: str, family_name: str, defaults) -> ModelConfig:
    """Fields shared by the Llama-layout families (Llama, Qwen2) -> :class:`ModelConfig`; ``defaults`` are the
    family's ``(bos, eos, pad)`` ids when ``config.json`` does not give them."""
    heads = hf_field(hf, "num_attention_heads", source)
    return ModelConfig(
        type=family_name,
        vocab_size=hf_field(hf, "vocab_size", source),
        hidden_size=hf_field(hf, "hidden_size", source),
        num_layers=hf_field(hf, "num_hidden_layers", source),
        num_heads=heads,
        num_kv_heads=hf.get("num_key_value_heads") or heads,
        intermediate_size=hf_field(hf, "intermediate_size", source),
        seq_length=hf.get("max_position_embeddings", 4096),
        hidden_act=hf_activation(hf, source, "hidden_act", "silu"),
        rms_norm_eps=hf.get("rms_norm_eps", 1e-6),
        rope_theta=hf_rope_theta(hf, source),
        **hf_special_ids(hf, *defaults),
    )


def rotary_config_to_hf(cfg: ModelConfig) -> dict:
    """:class:`ModelConfig` -> the fields shared by ``LlamaConfig`` and ``Qwen2Config``."""
    return {
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads,
        "num_key_value_heads": cfg.num_kv_heads,
        "intermediate_size": llama_intermediate_size(cfg),
        "max_position_embeddings": cfg.seq_length,
        "hidden_act": HF_ACTIVATION_NAMES[cfg.hidden_act or "silu"],
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "attention_dropout": cfg.attention_dropout_rate,
    }


def llama_config_from_hf(hf: dict, source: str) -> ModelConfig:
    """``LlamaConfig`` fields -> :class:`ModelConfig` (Llama-2: no attention or MLP biases)."""
    for key in ("attention_bias", "mlp_bias"):
        if hf.get(key):
            raise CheckpointError(f"{source}: field {key!r} true is not supported (Llama-2 has no biases)")
    return rotary_config_from_hf(hf, source, "llama", (1, 2, 0))


def llama_config_to_hf(cfg: ModelConfig) -> dict:
    """:class:`ModelConfig` -> ``LlamaConfig`` fields."""
    return {**rotary_config_to_hf(cfg), "attention_bias": False, "mlp_bias": False}


# mindformers' Llama names (its convert_weight.py name_replace) -> ours; the tensors keep Hugging Face's layout
MINDFORMERS_LLAMA_NAMES = (
    ("model.tok_embeddings.embedding_weight", "backbone.embed_tokens.weight"),
    ("model.norm_out.", "backbone.norm."),
    (".attention.wq.", ".self_attn.q_proj."),
    (".attention.wk.", ".self_attn.k_proj."),
    (".attention.wv.", ".self_attn.v_proj."),
    (".attention.wo.", ".self_attn.o_proj."),
    (".feed_forward.w1.", ".mlp.gate_proj."),
    (".feed_forward.w2.", ".mlp.down_proj."),
    (".feed_forward.w3.", ".mlp.up_proj."),
    (".attention_norm.", ".input_layernorm."),
    (".ffn_norm.", ".post_attention_layernorm."),
    ("model.layers.", "backbone.layers."),
)


def llama_from_mindformers(arrays: dict, cfg: ModelConfig) -> dict:
    """A mindformers Llama state dict under our names."""
    del cfg
    return {rename_by_pairs(name, MINDFORMERS_LLAMA_NAMES): a for name, a in arrays.items()}


def llama_to_mindformers(arrays: dict, cfg: ModelConfig) -> dict:
    """Our Llama state dict under mindformers' names."""
    del cfg
    inverse = tuple((new, old) for old, new in MINDFORMERS_LLAMA_NAMES)
    return {rename_by_pairs(name, inverse): a for name, a in arrays.items()}


LLAMA = register_family(
    ModelFamily(
        name="llama",
        backbone=LlamaModel,
        hf=HFLayout(
            "llama",
            "model.",
            "embed_tokens.weight",
            "LlamaForCausalLM",
            "LlamaForSequenceClassification",
            ignored=(".rotary_emb.inv_freq",),
        ),
        config_from_hf=llama_config_from_hf,
        config_to_hf=llama_config_to_hf,
        tied_default=False,
        tokenizer="llama",
        add_bos=True,
        mindformers=MindformersLayout(
            ("model.tok_embeddings.", "model.layers.", "model.norm_out."), llama_from_mindformers, llama_to_mindformers
        ),
    )
)
