"""The one train step shared by SFT, reward-model and PPO training.

``TrainStep(loss_net, optimizer, scale_cfg)`` compiles (GRAPH_MODE) into: forward, backward with the loss scale as
the sensitivity, gradient all-reduce when data parallel, unscale, an overflow check over every gradient (reduced
across devices, so every rank skips together), clip by global norm, and the optimizer update only when every
gradient is finite. The dynamic loss scale lives in Parameters (``loss_scale``, ``loss_scale_good_steps``), so it is
saved and restored with the optimizer state.
"""
from __future__ import annotations

import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops
from mindspore.amp import all_finite
from mindspore.communication import get_group_size
from mindspore.context import ParallelMode
from mindspore.parallel._utils import _get_parallel_mode

from mindrlhf.config import LossScaleConfig

_unscale = ops.MultitypeFuncGraph("unscale")


@_unscale.register("Tensor", "Tensor")
def _unscale_tensor(inv_scale, grad):
    return grad * ops.cast(inv_scale, grad.dtype)


def data_parallel_reducer(parameters):
    """Mean all-reduce of gradients in data-parallel runs; identity otherwise."""
    mode = _get_parallel_mode()
    if mode in (ParallelMode.DATA_PARALLEL, ParallelMode.HYBRID_PARALLEL):
        return nn.DistributedGradReducer(parameters, mean=True, degree=get_group_size())
    return nn.Identity()


class TrainStep(nn.Cell):
    """``construct(*inputs) -> (loss, overflow, loss_scale)`` for a ``loss_net(*inputs) -> scalar loss``.

    Args:
        loss_net: a Cell returning the scalar loss.
        optimizer: built over the trainable parameters of ``loss_net``.
        scale_cfg: initial loss scale, growth/backoff factor, window, clipping.
    """

    def __init__(self, loss_net: nn.Cell, optimizer: nn.Optimizer, scale_cfg: LossScaleConfig):
        super().__init__(auto_prefix=False)
        self.network = loss_net
        self.network.set_grad()
        self.optimizer = optimizer
        self.weights = optimizer.parameters
        self.grad = ops.GradOperation(get_by_list=True, sens_param=True)
        self.hyper_map = ops.HyperMap()
        self.reducer = data_parallel_reducer(self.weights)
        self.distributed = _get_parallel_mode() != ParallelMode.STAND_ALONE
        self.allreduce = ops.AllReduce() if self.distributed else None
        self.loss_scale = Parameter(Tensor(scale_cfg.loss_scale_value, ms.float32), name="loss_scale",
                                    requires_grad=False)
        self.good_steps = Parameter(Tensor(0, ms.int32), name="loss_scale_good_steps", requires_grad=False)
        self.scale_factor = float(scale_cfg.scale_factor)
        self.scale_window = int(scale_cfg.scale_window)
        self.use_clip = scale_cfg.use_clip_grad
        self.max_grad_norm = float(scale_cfg.max_grad_norm)

    def _update_scale(self, finite):
        """Back off on overflow (not below 1); grow after ``scale_window`` clean steps."""
        scale = self.loss_scale
        good = self.good_steps + 1
        grow = good >= self.scale_window
        new_scale = ops.select(finite, ops.select(grow, scale * self.scale_factor, scale),
                               ops.maximum(scale / self.scale_factor, 1.0))
        new_good = ops.select(finite, ops.select(grow, ops.zeros_like(good), good), ops.zeros_like(good))
        ops.assign(self.good_steps, new_good)
        return ops.assign(self.loss_scale, new_scale)

    def construct(self, *inputs):
        loss = self.network(*inputs)
        scale = self.loss_scale * 1.0
        sens = ops.fill(loss.dtype, loss.shape, 1) * ops.cast(scale, loss.dtype)
        grads = self.grad(self.network, self.weights)(*inputs, sens)
        grads = self.reducer(grads)
        grads = self.hyper_map(ops.partial(_unscale, 1.0 / scale), grads)
        finite = all_finite(grads)
        if self.distributed:
            finite = self.allreduce(ops.cast(ops.logical_not(finite), ms.float32)) < 0.5
        if self.use_clip:
            grads = ops.clip_by_global_norm(grads, self.max_grad_norm)
        new_scale = self._update_scale(finite)
        if finite:
            loss = ops.depend(loss, self.optimizer(grads))
        return loss, ops.logical_not(finite), ops.depend(scale, new_scale)
