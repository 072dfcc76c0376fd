"""GPT-2 backbone: learned positions, pre-LayerNorm blocks, GELU MLP (Hugging Face ``GPT2Model`` layout)."""

from __future__ import annotations

import re

import numpy as np
from mindspore import nn, ops

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
    TwoLayerMLP,
    ms_dtype,
    split_heads,
)
from mindrlhf.models.registry import (
    HF_ACTIVATION_NAMES,
    HFLayout,
    MindformersLayout,
    ModelFamily,
    hf_activation,
    hf_field,
    hf_special_ids,
    register_family,
)


class GPT2Attention(nn.Cell):
    """Fused QKV projection ``c_attn`` (H -> 3H), attention, output projection ``c_proj``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        dtypes = dict(param_dtype=ms_dtype(cfg.param_init_type), compute_dtype=ms_dtype(cfg.compute_dtype))
        self.c_attn = Linear(cfg.hidden_size, 3 * cfg.hidden_size, init_std=cfg.initializer_range, **dtypes)
        self.c_proj = Linear(cfg.hidden_size, cfg.hidden_size, init_std=cfg.initializer_range, **dtypes)
        self.attn = Attention(
            cfg.num_heads,
            cfg.num_heads,
            cfg.head_dim,
            cfg.attention_dropout_rate,
            ms_dtype(cfg.softmax_compute_type),
            ms_dtype(cfg.compute_dtype),
        )
        self.heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.resid_dropout = dropout(cfg.hidden_dropout_rate)

    def construct(self, x, bias, k_cache=None, v_cache=None, cache_index=None):
        q, k, v = ops.split(self.c_attn(x), x.shape[-1], -1)
        q, k, v = (split_heads(t, self.heads, self.head_dim) for t in (q, k, v))
        out = self.attn(q, k, v, bias, k_cache, v_cache, cache_index)
        return self.resid_dropout(self.c_proj(out))


class GPT2MLP(TwoLayerMLP):
    """``c_proj(act(c_fc(x)))``, ``act`` = ``hidden_act`` (default: the tanh GELU GPT-2 was trained with)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(
            cfg,
            cfg.intermediate_size or cfg.expand_ratio * cfg.hidden_size,
            ("c_fc", "c_proj"),
            activation(cfg.hidden_act or "gelu"),
            cfg.hidden_dropout_rate,
        )


class GPT2Block(nn.Cell):
    """Pre-LN block: ``x + attn(ln_1(x))``, then ``x + mlp(ln_2(x))``."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.ln_1 = hidden_norm(cfg)
        self.attn = GPT2Attention(cfg)
        self.ln_2 = hidden_norm(cfg)
        self.mlp = GPT2MLP(cfg)

    def construct(self, x, bias, k_cache=None, v_cache=None, cache_index=None):
        x = x + self.attn(self.ln_1(x), bias, k_cache, v_cache, cache_index)
        return x + self.mlp(self.ln_2(x))


class GPT2Model(Backbone):
    """GPT-2 transformer without the LM head.

    ``construct(input_ids (B, S), attention_mask (B, S) | None, position_ids (B, S) | None) -> hidden (B, S, H)``.
    Position ids default to :func:`positions_from_mask`. With ``kv_cache`` (a tuple ``(k_0, v_0, k_1, v_1, ...)``
    of Parameters ``(B, n_kv, L, head_dim)``) the call either fills the cache (``cache_index`` None) or decodes one
    token into slot ``cache_index``; in the decode case ``attention_mask`` is the ``(B, L)`` mask over cache slots
    and ``position_ids`` must be given.
    """

    embedding_name, blocks_name = "wte", "h"

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, cfg.num_heads)
        dtype = ms_dtype(cfg.param_init_type)
        self.wte = Embedding(cfg.vocab_size, cfg.hidden_size, cfg.initializer_range, dtype)
        self.wpe = Embedding(cfg.seq_length, cfg.hidden_size, cfg.initializer_range / 2, dtype)
        self.drop = dropout(cfg.hidden_dropout_rate)
        self.h = nn.CellList([GPT2Block(cfg) for _ in range(cfg.num_layers)])
        self.ln_f = hidden_norm(cfg)

    def construct(self, input_ids, attention_mask=None, position_ids=None, kv_cache=None, cache_index=None):
        position_ids, bias, cache_index = attention_inputs(
            input_ids, attention_mask, position_ids, cache_index, self.compute_dtype, self.cache_heads
        )
        x = self.drop(ops.cast(self.wte(input_ids) + self.wpe(position_ids), self.compute_dtype))
        x = self.run_blocks(self.h, x, bias, (), kv_cache, cache_index)
        return self.ln_f(x)


def gpt2_config_from_hf(hf: dict, source: str) -> ModelConfig:
    """``GPT2Config`` fields -> :class:`ModelConfig`."""
    return ModelConfig(
        type="gpt2",
        vocab_size=hf_field(hf, "vocab_size", source),
        hidden_size=hf_field(hf, "n_embd", source),
        num_layers=hf_field(hf, "n_layer", source),
        num_heads=hf_field(hf, "n_head", source),
        intermediate_size=hf.get("n_inner"),
        seq_length=hf_field(hf, "n_positions", source),
        hidden_act=hf_activation(hf, source, "activation_function", "gelu_new"),
        layernorm_epsilon=hf.get("layer_norm_epsilon", 1e-5),
        **hf_special_ids(hf, None, 50256, None),
    )


def gpt2_config_to_hf(cfg: ModelConfig) -> dict:
    """:class:`ModelConfig` -> ``GPT2Config`` fields."""
    return {
        "n_embd": cfg.hidden_size,
        "n_layer": cfg.num_layers,
        "n_head": cfg.num_heads,
        "n_inner": cfg.intermediate_size,
        "n_positions": cfg.seq_length,
        "n_ctx": cfg.seq_length,
        "activation_function": HF_ACTIVATION_NAMES[cfg.hidden_act or "gelu"],
        "layer_norm_epsilon": cfg.layernorm_epsilon,
        "resid_pdrop": cfg.hidden_dropout_rate,
        "embd_pdrop": cfg.hidden_dropout_rate,
        "attn_pdrop": cfg.attention_dropout_rate,
    }


# mindformers' GPT-2 names (its convert_weight.py) -> ours. Per block: (mindformers suffix, our suffix, transposed):
# mindformers' projection / mapping weights are stored (in, out), its q/k/v weights (out, in) as three matrices.
MINDFORMERS_GPT2_BLOCK = (
    ("layernorm1.gamma", "ln_1.weight", False),
    ("layernorm1.beta", "ln_1.bias", False),
    ("layernorm2.gamma", "ln_2.weight", False),
    ("layernorm2.beta", "ln_2.bias", False),
    ("attention.projection.weight", "attn.c_proj.weight", True),
    ("attention.projection.bias", "attn.c_proj.bias", False),
    ("output.mapping.weight", "mlp.c_fc.weight", True),
    ("output.mapping.bias", "mlp.c_fc.bias", False),
    ("output.projection.weight", "mlp.c_proj.weight", True),
    ("output.projection.bias", "mlp.c_proj.bias", False),
)
MINDFORMERS_GPT2_TOP = (
    ("backbone.embedding.word_embedding.embedding_table", "backbone.wte.weight"),
    ("backbone.embedding.position_embedding.embedding_table", "backbone.wpe.weight"),
    ("backbone.layernorm.gamma", "backbone.ln_f.weight"),
    ("backbone.layernorm.beta", "backbone.ln_f.bias"),
)
MINDFORMERS_GPT2_QKV = ("dense1", "dense2", "dense3")  # q, k, v: the thirds of our fused c_attn
MINDFORMERS_GPT2_BUFFERS = (".attention.beta", ".attention.masked_beta")  # causal-mask buffers, not parameters


def gpt2_from_mindformers(arrays: dict, cfg: ModelConfig) -> dict:
    """A mindformers GPT-2 state dict under our names: q/k/v joined into ``c_attn``, (in, out) weights transposed."""
    del cfg
    block = {mf: (ours, transposed) for mf, ours, transposed in MINDFORMERS_GPT2_BLOCK}
    top = dict(MINDFORMERS_GPT2_TOP)
    out, qkv = {}, {}
    for name, array in arrays.items():
        match = re.fullmatch(r"backbone\.blocks\.(\d+)\.(.+)", name)
        rest = match.group(2) if match else ""
        if name.endswith(MINDFORMERS_GPT2_BUFFERS):
            continue
        if rest in block:
            ours, transposed = block[rest]
            out[f"backbone.h.{match.group(1)}.{ours}"] = array.T if transposed else array
        elif re.fullmatch(r"attention\.dense[123]\.(weight|bias)", rest):
            qkv[name] = array
        else:
            out[top.get(name, name)] = array
    for name in [n for n in qkv if ".dense1." in n]:
        parts = [name.replace("dense1", d) for d in MINDFORMERS_GPT2_QKV]
        if all(p in qkv for p in parts) and len({qkv[p].shape[1:] for p in parts}) == 1:
            layer, kind = re.fullmatch(r"backbone\.blocks\.(\d+)\.attention\.dense1\.(\w+)", name).groups()
            out[f"backbone.h.{layer}.attn.c_attn.{kind}"] = np.concatenate([qkv.pop(p) for p in parts], 0)
    out.update(qkv)  # an incomplete or ragged q/k/v set stays under its own names and is reported as unexpected
    return out


def gpt2_to_mindformers(arrays: dict, cfg: ModelConfig) -> dict:
    """Our GPT-2 state dict under mindformers' names (inverse of :func:`gpt2_from_mindformers`)."""
    del cfg
    block = {ours: (mf, transposed) for mf, ours, transposed in MINDFORMERS_GPT2_BLOCK}
    top = {ours: mf for mf, ours in MINDFORMERS_GPT2_TOP}
    out = {}
    for name, array in arrays.items():
        match = re.fullmatch(r"backbone\.h\.(\d+)\.(.+)", name)
        rest = match.group(2) if match else ""
        if rest in block:
            mf, transposed = block[rest]
            out[f"backbone.blocks.{match.group(1)}.{mf}"] = array.T if transposed else array
        elif rest in ("attn.c_attn.weight", "attn.c_attn.bias"):
            kind = rest.rsplit(".", 1)[1]
            for dense, third in zip(MINDFORMERS_GPT2_QKV, np.split(array, 3, 0)):
                out[f"backbone.blocks.{match.group(1)}.attention.{dense}.{kind}"] = third
        else:
            out[top.get(name, name)] = array
    return out


GPT2 = register_family(
    ModelFamily(
        name="gpt2",
        backbone=GPT2Model,
        hf=HFLayout(
            "gpt2",
            "transformer.",
            "wte.weight",
            "GPT2LMHeadModel",
            "GPT2ForSequenceClassification",
            transposed=("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight"),
            ignored=(".attn.bias", ".attn.masked_bias"),
        ),
        config_from_hf=gpt2_config_from_hf,
        config_to_hf=gpt2_config_to_hf,
        tied_default=True,
        tokenizer="gpt2",
        add_bos=False,
        mindformers=MindformersLayout(
            ("backbone.blocks.", "backbone.embedding."), gpt2_from_mindformers, gpt2_to_mindformers
        ),
    )
)
