"""Building blocks shared by the GPT-2 and Llama backbones.

Parameter names mirror Hugging Face (``weight``/``bias``) so checkpoint conversion is a name map, not a rewrite.
The shapes of the ops are chosen for MindSpore's CPU kernels: matmuls take 2-D inputs, attention uses
``BatchMatMul(transpose_b=True)`` instead of an explicit transpose, and KV caches are Parameters updated in place.
"""

from __future__ import annotations

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.common.initializer import Normal, One, Zero, initializer

# additive bias for masked attention scores: finite in float16 and bfloat16 too (-1e9 overflows float16 to -inf),
# so the fully masked rows of pad queries stay NaN-free in every compute dtype; exp(-30000) is 0 in float32
NEG_INF = -3.0e4


def cast(x, dtype):
    """``ops.cast`` that adds no op when ``x`` already has ``dtype`` (decided at compile time)."""
    return x if x.dtype == dtype else ops.cast(x, dtype)


def ms_dtype(name: str):
    """MindSpore dtype from its config name (``float32``, ``float16``, ``bfloat16``)."""
    return {"float32": ms.float32, "float16": ms.float16, "bfloat16": ms.bfloat16}[name]


class Linear(nn.Cell):
    """``y = x @ W.T + b`` over the last axis, computed as one 2-D matmul.

    Args:
        in_features, out_features: sizes; ``weight`` is ``(out_features, in_features)``.
        has_bias: add a bias vector ``(out_features,)``.
        compute_dtype: dtype of the matmul; the result is returned in that dtype.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        has_bias: bool = True,
        init_std: float = 0.02,
        param_dtype=ms.float32,
        compute_dtype=ms.float32,
    ):
        super().__init__()
        self.weight = Parameter(initializer(Normal(init_std), (out_features, in_features), param_dtype), name="weight")
        self.has_bias = has_bias
        if has_bias:
            self.bias = Parameter(initializer(Zero(), (out_features,), param_dtype), name="bias")
        self.matmul = ops.MatMul(transpose_b=True)
        self.out_features = out_features
        self.compute_dtype = compute_dtype

    def construct(self, x):
        shape = x.shape
        x2d = ops.reshape(cast(x, self.compute_dtype), (-1, shape[-1]))
        y = self.matmul(x2d, cast(self.weight, self.compute_dtype))
        if self.has_bias:
            y = y + cast(self.bias, self.compute_dtype)
        return ops.reshape(y, shape[:-1] + (self.out_features,))


def mlp_projections(cfg, width: int):
    """The two projections of a two-layer MLP, ``hidden_size -> width -> hidden_size``, with biases, the config's
    initialiser and dtypes: ``(up, down)``."""
    dtypes = dict(
        init_std=cfg.initializer_range,
        param_dtype=ms_dtype(cfg.param_init_type),
        compute_dtype=ms_dtype(cfg.compute_dtype),
    )
    return Linear(cfg.hidden_size, width, **dtypes), Linear(width, cfg.hidden_size, **dtypes)


def dropout(rate: float) -> nn.Cell:
    """``nn.Dropout(p=rate)``, or an identity for rate 0 (no op in the graph)."""
    return nn.Dropout(p=rate) if rate > 0 else nn.Identity()


class TwoLayerMLP(nn.Cell):
    """``dropout(down(act(up(x))))``, ``(..., H) -> (..., H)``, width ``width`` inside (:func:`mlp_projections`).

    The two projections are stored under the family's own attribute names, ``names = (up, down)`` (e.g. GPT-2's
    ``("c_fc", "c_proj")``), so the parameter names checkpoints and the Hugging Face converters use stay as they
    are; ``construct`` looks them up by name, so a projection replaced under its name (LoRA) is the one called.
    """

    def __init__(self, cfg, width: int, names: tuple, act, dropout_rate: float = 0.0):
        super().__init__()
        self.names = tuple(names)
        for name, projection in zip(self.names, mlp_projections(cfg, width)):
            setattr(self, name, projection)
        self.act = act
        self.dropout = dropout(dropout_rate)

    def construct(self, x):
        up, down = getattr(self, self.names[0]), getattr(self, self.names[1])
        return self.dropout(down(self.act(up(x))))


class RowGatheredLookup(nn.Cell):
    """``table[ids]`` whose table gradient comes back already averaged over the data-parallel ranks, by gathering
    the rows the ranks looked up instead of all-reducing the whole table.

    The gradient of a lookup is ``dout (N, H)`` scattered into the rows ``ids (N,)`` of a ``(V, H)`` zero table.
    Summed over ``R`` ranks, that is the scatter of the ``R N`` all-gathered rows into one table: ``R N (H + 1)``
    numbers travel instead of ``V H`` (GPT-2: 50257 rows; a batch of 2048 tokens touches at most 2048 of them).
    The result is the mean over the ranks (``DistributedGradReducer(mean=True)``'s), so the reducer must skip it.
    """

    def __init__(self, group_size: int):
        super().__init__()
        self.all_gather = ops.AllGather()
        self.all_reduce = ops.AllReduce()
        self.segment_sum = ops.UnsortedSegmentSum()
        self.group_size = group_size

    def construct(self, table, ids):
        return ops.gather(table, ids, 0)

    def bprop(self, table, ids, out, dout):
        rows = ops.reshape(cast(dout, ms.float32), (-1, dout.shape[-1]))  # (N, H)
        row_ids = ops.reshape(ids, (-1,))  # (N,)
        if row_ids.shape[0] * self.group_size < table.shape[0]:  # decided at compile time
            grad = self.segment_sum(self.all_gather(rows), self.all_gather(row_ids), table.shape[0])
        else:  # more rows than the table holds: the dense all-reduce moves fewer bytes
            grad = self.all_reduce(self.segment_sum(rows, row_ids, table.shape[0]))
        return cast(grad * (1.0 / self.group_size), table.dtype), ops.zeros_like(ids)


class Embedding(nn.Cell):
    """Token (or position) lookup table ``weight (num, dim)``.

    ``row_lookup`` (a :class:`RowGatheredLookup`, set by a data-parallel train step) is the lookup of the graphs
    compiled while it is set; every other graph (generation, scoring) keeps the plain gather. The attribute is
    read when a graph compiles, so a train step sets it around each of its own calls (``row_gathered_lookups``).
    """

    def __init__(self, num: int, dim: int, init_std: float = 0.02, param_dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(initializer(Normal(init_std), (num, dim), param_dtype), name="weight")
        self.gather = ops.Gather()
        self.row_lookup = None

    def construct(self, ids):
        if self.row_lookup is not None:
            return self.row_lookup(self.weight, ids)
        return self.gather(self.weight, ids, 0)


# Below this many rows (tokens) a fused kernel beats the elementwise/matmul forms: decode steps are bound by the
# number of kernels launched, large batches by the (slow) fused CPU kernels and their gradients.
FUSED_MAX_ROWS = 256


def row_mean(x2d, mean_column):
    """Mean over the last axis of ``(N, H)`` as a matmul with a ``(H, 1)`` column of ``1/H``: ``(N, 1)``.

    MindSpore's CPU reduction kernels (and their gradients) are far slower than a matmul at these shapes.
    """
    return ops.matmul(x2d, mean_column)


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with ``weight``/``bias``, computed in ``compute_dtype``."""

    def __init__(self, dim: int, eps: float = 1e-5, param_dtype=ms.float32, compute_dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(initializer(One(), (dim,), param_dtype), name="weight")
        self.bias = Parameter(initializer(Zero(), (dim,), param_dtype), name="bias")
        self.mean_column = Tensor(np.full((dim, 1), 1.0 / dim), compute_dtype)
        self.eps = eps
        self.compute_dtype = compute_dtype
        self.fused = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        shape, out_dtype = x.shape, x.dtype
        x2d = ops.reshape(cast(x, self.compute_dtype), (-1, shape[-1]))
        if x2d.shape[0] <= FUSED_MAX_ROWS:
            y, _, _ = self.fused(x2d, cast(self.weight, self.compute_dtype), cast(self.bias, self.compute_dtype))
            return cast(ops.reshape(y, shape), out_dtype)
        centered = x2d - row_mean(x2d, self.mean_column)
        y = centered * ops.rsqrt(row_mean(centered * centered, self.mean_column) + self.eps)
        y = y * cast(self.weight, self.compute_dtype) + cast(self.bias, self.compute_dtype)
        return cast(ops.reshape(y, shape), out_dtype)


def hidden_norm(cfg, rms: bool = False) -> nn.Cell:
    """A norm over ``hidden_size`` in the config's dtypes (``param_init_type``, ``layernorm_compute_type``):
    :class:`LayerNorm` with ``layernorm_epsilon``, or with ``rms`` :class:`RMSNorm` with ``rms_norm_eps``."""
    dtypes = (ms_dtype(cfg.param_init_type), ms_dtype(cfg.layernorm_compute_type))
    if rms:
        return RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, *dtypes)
    return LayerNorm(cfg.hidden_size, cfg.layernorm_epsilon, *dtypes)


class RMSNorm(nn.Cell):
    """Root-mean-square norm ``x / sqrt(mean(x^2) + eps) * weight`` (Llama), computed in ``compute_dtype``."""

    def __init__(self, dim: int, eps: float = 1e-5, param_dtype=ms.float32, compute_dtype=ms.float32):
        super().__init__()
        self.weight = Parameter(initializer(One(), (dim,), param_dtype), name="weight")
        self.mean_column = Tensor(np.full((dim, 1), 1.0 / dim), compute_dtype)
        self.eps = eps
        self.compute_dtype = compute_dtype

    def construct(self, x):
        shape, out_dtype = x.shape, x.dtype
        x2d = ops.reshape(cast(x, self.compute_dtype), (-1, shape[-1]))
        y = x2d * ops.rsqrt(row_mean(x2d * x2d, self.mean_column) + self.eps)
        return cast(ops.reshape(y * cast(self.weight, self.compute_dtype), shape), out_dtype)


GELU_K, GELU_C = 0.7978845608028654, 0.044715  # sqrt(2/pi) and the cubic coefficient of the tanh GELU


def gelu_tanh(x):
    """GPT-2's GELU, ``0.5 x (1 + tanh(k (x + c x^3)))``; fused for decode-sized inputs, else elementwise as the
    equal ``x sigmoid(2 k (x + c x^3))`` (MindSpore's fused CPU GeLU and its gradient are several times slower
    there, and its CPU ``tanh`` loses the tail: ``1 + tanh(u)`` is 0 below u = -5, half its value at u = -4.7).

    A plain function differentiated by autodiff: a Cell with a hand-written ``bprop`` here made MindSpore copy
    two whole tensors (about 50 MB) in every compiled decode step, even though nothing is differentiated there.
    """
    if x.size <= FUSED_MAX_ROWS * x.shape[-1]:
        return ops.gelu(x, approximate="tanh")
    return x * ops.sigmoid(2.0 * GELU_K * x * (1.0 + GELU_C * x * x))


def gelu_tanh_fused(x):
    """GPT-2's GELU as MindSpore's GeLU op at every size: under graph-kernel fusion its expander turns GeLU and
    GeLUGrad into fused elementwise kernels, which keep fewer intermediates than the sigmoid form's autodiff."""
    return ops.gelu(x, approximate="tanh")


def gelu_exact(x):
    """GELU with the error function, ``0.5 x (1 + erf(x / sqrt(2)))``."""
    return ops.gelu(x, approximate="none")


def activation(name: str):
    """The elementwise MLP activation ``ModelConfig.hidden_act`` names (already validated): gelu (tanh
    approximation: :func:`gelu_tanh`, or :func:`gelu_tanh_fused` when graph-kernel fusion is on as the model is
    built), gelu_exact, silu or relu."""
    if name == "gelu":
        return gelu_tanh_fused if ms.get_context("enable_graph_kernel") else gelu_tanh
    return {"gelu_exact": gelu_exact, "silu": ops.silu, "relu": ops.relu}[name]


def positions_from_mask(attention_mask):
    """Position ids that count only real tokens: ``clip(cumsum(mask) - 1, 0)``.

    With right padding this is ``arange``; with left padding the first real token gets position 0, the same
    positions generation uses, so scoring a padded batch sees what sampling saw. Shapes: ``(B, S) -> (B, S)``.
    """
    pos = ops.cumsum(ops.cast(attention_mask, ms.int32), 1) - 1
    return ops.maximum(pos, 0)


def causal_padding_bias(attention_mask, dtype):
    """Additive attention bias ``(B, 1, S, S)``: 0 where query i may see key j (j <= i and key j is real)."""
    seq = attention_mask.shape[1]
    causal = ops.tril(ops.ones((seq, seq), ms.float32))
    allowed = ops.expand_dims(causal, 0) * ops.expand_dims(ops.cast(attention_mask, ms.float32), 1)
    return ops.cast(ops.expand_dims((1.0 - allowed) * NEG_INF, 1), dtype)


def key_padding_bias(key_mask, dtype):
    """Additive attention bias ``(B, 1, 1, L)`` from a key mask over cache slots (decode step)."""
    return ops.cast(
        ops.reshape((1.0 - ops.cast(key_mask, ms.float32)) * NEG_INF, (key_mask.shape[0], 1, 1, key_mask.shape[1])),
        dtype,
    )


class Attention(nn.Cell):
    """Scaled dot-product attention over ``num_kv_heads`` key/value heads shared by groups of query heads.

    Grouped-query attention needs no key/value repeat: query head ``h`` uses key/value head
    ``h // (num_heads // num_kv_heads)`` (Hugging Face's ``repeat_kv`` order), so queries are reshaped to
    ``(B, num_kv_heads, groups * S, head_dim)`` and multiplied with the un-repeated keys.

    The optional KV cache is a pair of Parameters ``(B, num_kv_heads, L, head_dim)``:
    - prefill (``cache_index`` None): the prompt's keys/values fill slots ``[0, S)``;
    - decode (``cache_index`` the ``(B, num_kv_heads, 3)`` scatter index from :func:`cache_slot_index`): the one
      new key/value goes to its slot in place and the query attends over all ``L`` slots (the bias masks empty and
      padded ones).
    """

    def __init__(
        self,
        num_heads: int,
        num_kv_heads: int,
        head_dim: int,
        dropout: float = 0.0,
        softmax_dtype=ms.float32,
        compute_dtype=ms.float32,
    ):
        super().__init__()
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.groups = num_heads // num_kv_heads
        self.head_dim = head_dim
        self.scale = 1.0 / float(np.sqrt(head_dim))
        self.qk = ops.BatchMatMul(transpose_b=True)
        self.pv = ops.BatchMatMul()
        self.softmax_dtype = softmax_dtype
        self.compute_dtype = compute_dtype
        self.dropout = nn.Dropout(p=dropout) if dropout > 0 else nn.Identity()

    def write_cache(self, k, v, k_cache, v_cache, cache_index):
        """Store new keys/values in the cache; returns the keys/values to attend over."""
        if cache_index is None:
            batch, heads, seq, dim = k.shape
            pad = ops.zeros((batch, heads, k_cache.shape[2] - seq, dim), k_cache.dtype)
            k = ops.depend(k, ops.assign(k_cache, ops.concat((ops.cast(k, k_cache.dtype), pad), 2)))
            v = ops.depend(v, ops.assign(v_cache, ops.concat((ops.cast(v, v_cache.dtype), pad), 2)))
            return k, v
        batch, heads, _, dim = k.shape
        k_all = ops.scatter_nd_update(k_cache, cache_index, cast(ops.reshape(k, (batch, heads, dim)), k_cache.dtype))
        v_all = ops.scatter_nd_update(v_cache, cache_index, cast(ops.reshape(v, (batch, heads, dim)), v_cache.dtype))
        return cast(k_all, k.dtype), cast(v_all, v.dtype)

    def construct(self, q, k, v, bias, k_cache=None, v_cache=None, cache_index=None):
        """q ``(B, num_heads, S, D)``, k/v ``(B, num_kv_heads, S, D)``, bias ``(B, 1, S, L)`` -> ``(B, S, H)``."""
        if k_cache is not None:
            k, v = self.write_cache(k, v, k_cache, v_cache, cache_index)
        batch, _, seq, dim = q.shape
        keys = k.shape[2]
        q = q * ops.cast(self.scale, q.dtype)
        if self.groups == 1:
            scores = cast(self.qk(q, k), self.softmax_dtype) + cast(bias, self.softmax_dtype)  # (B, n, S, L)
        else:
            qg = ops.reshape(q, (batch, self.num_kv_heads, self.groups * seq, dim))
            scores = ops.reshape(
                cast(self.qk(qg, k), self.softmax_dtype), (batch, self.num_kv_heads, self.groups, seq, keys)
            )
            scores = scores + ops.expand_dims(cast(bias, self.softmax_dtype), 1)
        probs = self.dropout(cast(ops.softmax(scores, -1), self.compute_dtype))
        out = self.pv(ops.reshape(probs, (batch, self.num_kv_heads, self.groups * seq, keys)), v)
        if seq == 1:
            return ops.reshape(out, (batch, 1, self.num_heads * dim))
        out = ops.reshape(out, (batch, self.num_heads, seq, dim))
        return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (batch, seq, self.num_heads * dim))


def cache_slot_index(slot, batch: int, heads: int):
    """Scatter index ``(B, heads, 3)`` of ``[b, h, slot]`` entries: where a decode step writes into the cache.

    Built once per decode step and shared by every layer.
    """
    rows = ops.reshape(ops.repeat_interleave(ops.arange(batch, dtype=ms.int32), heads), (batch, heads))
    cols = ops.reshape(ops.tile(ops.arange(heads, dtype=ms.int32), (batch,)), (batch, heads))
    return ops.stack([rows, cols, ops.fill(ms.int32, (batch, heads), 1) * slot], axis=-1)


def attention_inputs(input_ids, attention_mask, position_ids, cache_index, dtype, cache_heads: int):
    """What every backbone derives before its blocks: ``(position_ids, bias, cache_index)``.

    Without a decode index (no cache, or a prefill) the bias is causal plus key padding ``(B, 1, S, S)``; in a decode
    step ``attention_mask`` is the ``(B, L)`` cache-slot mask, the bias is ``(B, 1, 1, L)`` and the scalar slot
    becomes the scatter index of :func:`cache_slot_index`. Missing masks mean all real; missing positions come from
    :func:`positions_from_mask`.
    """
    if attention_mask is None:
        attention_mask = ops.ones_like(input_ids)
    if position_ids is None:
        position_ids = positions_from_mask(attention_mask)
    if cache_index is None:
        return position_ids, causal_padding_bias(attention_mask, dtype), None
    return (
        position_ids,
        key_padding_bias(attention_mask, dtype),
        cache_slot_index(cache_index, input_ids.shape[0], cache_heads),
    )


def split_heads(x, heads: int, head_dim: int):
    """``(B, S, heads*head_dim) -> (B, heads, S, head_dim)``."""
    batch, seq, _ = x.shape
    if seq == 1:  # a decode step: the transpose is a reshape, and a reshape costs no kernel
        return ops.reshape(x, (batch, heads, 1, head_dim))
    return ops.transpose(ops.reshape(x, (batch, seq, heads, head_dim)), (0, 2, 1, 3))


class Backbone(nn.Cell):
    """What every family's backbone shares: the numbers its ``construct`` needs and the loop over its blocks.

    Subclasses name their token :class:`Embedding` (``embedding_name``) and their block CellList (``blocks_name``),
    the attribute names their checkpoints use, and call :meth:`run_blocks` from ``construct``.
    """

    embedding_name = ""  # attribute holding the token Embedding, e.g. GPT-2's "wte"
    blocks_name = ""  # attribute holding the block CellList, e.g. GPT-2's "h"

    def __init__(self, cfg, cache_heads: int):
        super().__init__()
        self.num_layers = cfg.num_layers
        self.compute_dtype = ms_dtype(cfg.compute_dtype)
        self.cache_heads = cache_heads  # key/value heads of the KV cache

    def input_embedding_table(self):
        """The ``(V, H)`` token table (a tied LM head multiplies with it)."""
        return getattr(self, self.embedding_name).weight

    def blocks(self):
        """The transformer blocks (for recompute)."""
        return getattr(self, self.blocks_name)

    def run_blocks(self, blocks, x, bias, extra, kv_cache, cache_index):
        """``x = block(x, bias, *extra[, k_cache, v_cache, cache_index])`` for each block; ``kv_cache`` is the
        ``(k_0, v_0, k_1, v_1, ...)`` tuple or None."""
        for i in range(self.num_layers):
            if kv_cache is None:
                x = blocks[i](x, bias, *extra)
            else:
                x = blocks[i](x, bias, *extra, kv_cache[2 * i], kv_cache[2 * i + 1], cache_index)
        return x
