"""The one train step shared by SFT, reward-model and PPO training.

``TrainStep(loss_net, optimizer, scale_cfg)`` compiles (GRAPH_MODE) into: forward, backward with the loss scale as
the sensitivity, gradient all-reduce when data parallel (MindSpore's all-reduce fusion merges the per-gradient
all-reduces into buckets of ``parallel_config.allreduce_bucket_mb``, see :func:`mindrlhf.context.parallel_settings`),
one global-norm pass that serves both the overflow check (the norm is finite only when every gradient is; the flag is
reduced across devices, so every rank skips together) and clipping, one multiply that unscales and clips, and the
optimizer update only when every gradient and the loss are finite (a loss net returns NaN for a batch with nothing
to learn from: the step is skipped, the loss scale kept).
The dynamic loss scale lives in Parameters (``loss_scale``, ``loss_scale_good_steps``), so it is saved and restored
with the optimizer state.
"""

from __future__ import annotations

import contextlib
from typing import List, Tuple

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.communication import get_group_size
from mindspore.context import ParallelMode
from mindspore.parallel._utils import _get_parallel_mode

from mindrlhf.config import LossScaleConfig
from mindrlhf.models.layers import Backbone, Embedding, RowGatheredLookup
from mindrlhf.models.policy import CausalLM

_scale_grad = ops.MultitypeFuncGraph("scale_grad")


@_scale_grad.register("Tensor", "Tensor")
def _scale_grad_tensor(factor, grad):
    return grad * ops.cast(factor, grad.dtype)


def global_norm(grads):
    """``sqrt(sum_i |g_i|^2)`` in float32, each square sum as one dot product (MindSpore's CPU reductions are slow);
    inf or nan when any gradient holds one."""
    squares = [
        ops.matmul(ops.reshape(ops.cast(g, ms.float32), (1, -1)), ops.reshape(ops.cast(g, ms.float32), (-1, 1)))
        for g in grads
    ]
    return ops.sqrt(ops.reshape(ops.addn(squares), ()))


def untied_token_embeddings(net: nn.Cell) -> List[Embedding]:
    """The token :class:`Embedding` of every backbone in ``net`` whose table only the lookup uses (no tied LM head
    multiplies with it): a reward model's, a critic's, an untied causal LM's."""
    cells = [cell for _, cell in net.cells_and_names()]
    tied = {id(cell.backbone) for cell in cells if isinstance(cell, CausalLM) and cell.tied}
    return [getattr(c, c.embedding_name) for c in cells if isinstance(c, Backbone) and id(c) not in tied]


def data_parallel_reducer(net: nn.Cell, parameters, gather_embedding_rows: bool = True):
    """Mean all-reduce of gradients in data-parallel runs; identity otherwise.

    With ``gather_embedding_rows`` (graph mode), the trainable untied token tables of ``net`` reduce their gradients
    inside the backward pass as gathered rows (:class:`RowGatheredLookup`) and the all-reduce skips them. Returns
    ``(reducer, those embeddings)``.
    """
    mode = _get_parallel_mode()
    if mode not in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL):
        return nn.Identity(), []
    reducer = nn.DistributedGradReducer(parameters, mean=True, degree=get_group_size())
    if not gather_embedding_rows or ms.get_context("mode") != ms.GRAPH_MODE:
        return reducer, []
    trained = {id(param) for param in parameters}
    gathered = [e for e in untied_token_embeddings(net) if id(e.weight) in trained]
    skip = {id(e.weight) for e in gathered}
    reducer.allreduce_filter = tuple(f and id(p) not in skip for f, p in zip(reducer.allreduce_filter, parameters))
    return reducer, gathered


@contextlib.contextmanager
def row_gathered_lookups(lookups: List[Tuple[Embedding, RowGatheredLookup]]):
    """Within the block, each embedding looks up through its :class:`RowGatheredLookup`, so a train-step graph
    compiled there (on its first call, or again for new input shapes) has it; outside, the plain gather, for the
    generation and scoring graphs."""
    for embedding, lookup in lookups:
        embedding.row_lookup = lookup
    try:
        yield
    finally:
        for embedding, _ in lookups:
            embedding.row_lookup = None


class TrainStep(nn.Cell):
    """``construct(*inputs) -> (loss, overflow, loss_scale)`` for a ``loss_net(*inputs) -> scalar loss``.

    With ``has_aux`` the loss net returns ``(loss, aux)`` (``aux`` a float32 vector of metrics, not
    differentiated) and the step returns ``(loss, overflow, loss_scale, aux)``.

    Args:
        loss_net: a Cell returning the scalar loss.
        optimizer: built over the trainable parameters of ``loss_net``.
        scale_cfg: initial loss scale, growth/backoff factor, window, clipping.
        has_aux: the loss net also returns a metrics vector.
        gather_embedding_rows: data parallel: untied token tables' gradients travel as the looked-up rows
            (``parallel_config.embedding_grad_rows``, :func:`data_parallel_reducer`).
    """

    def __init__(
        self,
        loss_net: nn.Cell,
        optimizer: nn.Optimizer,
        scale_cfg: LossScaleConfig,
        has_aux: bool = False,
        gather_embedding_rows: bool = True,
    ):
        super().__init__(auto_prefix=False)
        self.has_aux = has_aux
        self.network = loss_net
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        self.reducer, gathered = data_parallel_reducer(loss_net, self.weights, gather_embedding_rows)
        self.row_lookups = [(embedding, RowGatheredLookup(get_group_size())) for embedding in gathered]
        self.distributed = _get_parallel_mode() != ParallelMode.STAND_ALONE
        self.allreduce = ops.AllReduce() if self.distributed else None
        self.loss_scale = Parameter(
            Tensor(scale_cfg.loss_scale_value, ms.float32), name="loss_scale", requires_grad=False
        )
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.scale_factor = float(scale_cfg.scale_factor)
        self.scale_window = int(scale_cfg.scale_window)
        self.use_clip = scale_cfg.use_clip_grad
        self.max_grad_norm = float(scale_cfg.max_grad_norm)

    def _update_scale(self, finite, counted):
        """Back off on overflow (not below 1); grow after ``scale_window`` clean steps; a step not ``counted`` (a
        NaN loss from data) leaves both as they are."""
        scale = self.loss_scale
        good = self.good_steps + 1
        grow = good >= self.scale_window
        new_scale = ops.select(
            finite, ops.select(grow, scale * self.scale_factor, scale), ops.maximum(scale / self.scale_factor, 1.0)
        )
        new_good = ops.select(finite, ops.select(grow, ops.zeros_like(good), good), ops.zeros_like(good))
        new_scale = ops.select(counted, new_scale, scale)
        new_good = ops.select(counted, new_good, self.good_steps)
        ops.assign(self.good_steps, new_good)
        return ops.assign(self.loss_scale, new_scale)

    def __call__(self, *inputs):
        if not self.row_lookups:
            return super().__call__(*inputs)
        with row_gathered_lookups(self.row_lookups):  # read only when the call compiles a graph
            return super().__call__(*inputs)

    def construct(self, *inputs):
        outputs = self.network(*inputs)
        loss = outputs[0] if self.has_aux else outputs
        scale = self.loss_scale * 1.0
        sens = ops.fill(loss.dtype, loss.shape, 1) * ops.cast(scale, loss.dtype)
        if self.has_aux:
            sens = (sens, ops.zeros_like(outputs[1]))
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.reducer(grads)
        norm = global_norm(grads) / scale  # of the unscaled gradients
        # [gradients, loss] not finite on this rank; summed over the ranks so that every rank skips together
        bad = ops.cast(ops.logical_not(ops.stack([ops.isfinite(norm), ops.isfinite(loss)])), ms.float32)
        if self.distributed:
            bad = self.allreduce(bad)
        grads_finite, loss_finite = bad[0] < 0.5, bad[1] < 0.5
        finite = ops.logical_and(grads_finite, loss_finite)
        factor = 1.0 / scale
        if self.use_clip:
            factor = factor * ops.minimum(self.max_grad_norm / (norm + 1e-6), 1.0)
        grads = self.hyper_map(ops.partial(_scale_grad, factor), grads)
        # a non-finite loss with finite gradients (a NaN loss from data) is no reason to back off
        new_scale = self._update_scale(grads_finite, ops.logical_or(loss_finite, ops.logical_not(grads_finite)))
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
        if self.has_aux:
            return loss, ops.logical_not(finite), ops.depend(scale, new_scale), outputs[1]
        return loss, ops.logical_not(finite), ops.depend(scale, new_scale)
