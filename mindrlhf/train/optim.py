"""AdamW (bias-corrected Adam plus decoupled weight decay, as ``torch.optim.AdamW``) with a per-step learning-rate
table (linear warmup, then constant / cosine / polynomial decay).

The schedule is materialised as a ``(total_steps,)`` table that the optimizer indexes with its own ``global_step``
Parameter, so a resumed run continues the schedule exactly where it stopped.
"""

from __future__ import annotations

from typing import List

import numpy as np
import mindspore as ms
from mindspore import ParameterTuple, Tensor, nn, ops

from mindrlhf.config import LrScheduleConfig, OptimizerConfig


def lr_table(schedule: LrScheduleConfig, optimizer: OptimizerConfig, total_steps: int) -> np.ndarray:
    """Learning rate of every step ``0 .. total_steps-1`` (float32).

    warmup: ``peak * (step + 1) / warmup`` for ``step < warmup`` (so step 0 trains); then
    constant: ``peak``; cosine: ``end + (peak - end) * (1 + cos(pi * p)) / 2``;
    polynomial: ``end + (peak - end) * (1 - p)``, with ``p`` the share of decay steps done.
    """
    peak = schedule.learning_rate if schedule.learning_rate is not None else optimizer.learning_rate
    horizon = schedule.total_steps if schedule.total_steps > 0 else total_steps
    warmup = schedule.warmup_steps or int(schedule.warmup_ratio * horizon)
    steps = np.arange(max(total_steps, 1), dtype=np.float64)
    progress = np.clip((steps - warmup) / max(horizon - warmup, 1), 0.0, 1.0)
    if schedule.type == "constant":
        decayed = np.full_like(steps, peak)
    elif schedule.type == "cosine":
        decayed = schedule.lr_end + (peak - schedule.lr_end) * 0.5 * (1.0 + np.cos(np.pi * progress))
    else:
        decayed = schedule.lr_end + (peak - schedule.lr_end) * (1.0 - progress)
    warm = peak * (steps + 1) / max(warmup, 1)
    return np.where(steps < warmup, warm, decayed).astype(np.float32)


def decay_groups(params: List[ms.Parameter], weight_decay: float) -> list:
    """Parameter groups: weight decay on matrices, none on biases, norm weights and scalars."""
    is_decayed = [p.ndim >= 2 and "norm" not in p.name and ".ln_" not in p.name for p in params]
    decay = [p for p, d in zip(params, is_decayed) if d]
    no_decay = [p for p, d in zip(params, is_decayed) if not d]
    groups = []
    if decay:
        groups.append({"params": decay, "weight_decay": weight_decay})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


_decay = ops.MultitypeFuncGraph("decay")


@_decay.register("Tensor", "Tensor")
def _decay_parameter(keep, param):
    return ops.assign(param, param * ops.cast(keep, param.dtype))


class AdamW(nn.Cell):
    """``p <- p * (1 - lr * weight_decay)`` on the decayed group, then a bias-corrected Adam step (MindSpore's fused
    ``nn.Adam`` kernel). ``nn.AdamWeightDecay`` has no bias correction and is several times slower on CPU.

    Exposes ``parameters`` (all trained parameters) like an ``nn.Optimizer``; ``construct(grads)`` in that order.
    """

    def __init__(
        self, params: List[ms.Parameter], lrs: Tensor, beta1: float, beta2: float, eps: float, weight_decay: float
    ):
        super().__init__(auto_prefix=False)
        self.adam = nn.Adam(params, learning_rate=lrs, beta1=beta1, beta2=beta2, eps=eps, weight_decay=0.0)
        self.parameters = self.adam.parameters
        self.decayed = ParameterTuple(decay_groups(params, weight_decay)[0]["params"]) if weight_decay > 0 else None
        self.weight_decay = weight_decay
        self.hyper_map = ops.HyperMap()

    def current_lr(self):
        """The learning rate of the step about to be taken."""
        return self.adam.get_lr()

    def construct(self, grads):
        if self.decayed is not None:
            keep = 1.0 - self.adam.get_lr() * self.weight_decay
            grads = ops.depend(grads, self.hyper_map(ops.partial(_decay, keep), self.decayed))
        return self.adam(grads)


def build_optimizer(
    params: List[ms.Parameter], optimizer: OptimizerConfig, schedule: LrScheduleConfig, total_steps: int
):
    """:class:`AdamW` over ``params`` with the scheduled learning rate.

    ``type`` FP32StateAdamWeightDecay / FusedAdamWeightDecay / AdamWeightDecay (mindformers' names) all map to it.
    """
    known = ("AdamWeightDecay", "FP32StateAdamWeightDecay", "FusedAdamWeightDecay", "adamw", "AdamW")
    if optimizer.type not in known:
        raise ValueError(f"optimizer.type {optimizer.type!r} is not one of {', '.join(known)}")
    table = Tensor(lr_table(schedule, optimizer, total_steps))
    return AdamW(params, table, optimizer.beta1, optimizer.beta2, optimizer.eps, optimizer.weight_decay)
