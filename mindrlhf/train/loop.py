"""The optimizer-step loop every stage trains with (SFT, the reward model, PPO, GRPO, ...).

A stage hands :meth:`UpdateLoop.run` an iterable of input lists; each list goes through the shared
:class:`~mindrlhf.train.step.TrainStep` (loss scale, overflow skip, clipping, gradient all-reduce) and comes back as
host numbers, a :class:`StepResult`: the loss, whether the step overflowed, the loss scale, the learning rate the
step used and the loss net's own metrics by name. The stages differ only in where their batches come from (an
epoch of a MindRecord for :class:`~mindrlhf.train.trainer.Trainer`; minibatches of rollouts for
:class:`~mindrlhf.train.rl_trainer.RLTrainer`) and in what they do after a step (``on_step``: the step line,
TensorBoard, checkpoints). A new algorithm names its metrics (``metric_names``) and logs them without touching
this loop.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import numpy as np
from mindspore import Tensor

from mindrlhf.faults import reach
from mindrlhf.train.step import TrainStep


@dataclass
class StepResult:
    """One optimizer step, on the host."""

    loss: float
    overflow: bool  # the gradients were not finite: the update was skipped
    scale: float  # the loss scale after the step
    lr: float  # the learning rate the step used
    seconds: float
    metrics: Dict[str, float] = field(default_factory=dict)  # the loss net's metrics, by name


@dataclass
class UpdateStats:
    """What one :meth:`UpdateLoop.run` did on this rank."""

    losses: List[float] = field(default_factory=list)
    overflows: int = 0
    metric_sums: Optional[np.ndarray] = None  # (len(metric_names),) sums over the steps

    def add(self, result: StepResult, names: Sequence[str]) -> None:
        self.losses.append(result.loss)
        self.overflows += int(result.overflow)
        if names:
            values = np.array([result.metrics[n] for n in names], np.float64)
            self.metric_sums = values if self.metric_sums is None else self.metric_sums + values


class UpdateLoop:
    """Takes optimizer steps and counts them.

    Args:
        step: the train step; with ``metric_names`` it is built ``has_aux`` (the loss net returns ``(loss,
            metrics (M,))``).
        lrs: the learning-rate table of the optimizer's schedule (:func:`mindrlhf.train.optim.lr_table`).
        metric_names: the ``M`` names of the loss net's metrics vector, in order.
    """

    def __init__(self, step: TrainStep, lrs: np.ndarray, metric_names: Sequence[str] = ()):
        if bool(metric_names) != step.has_aux:
            raise ValueError("metric_names must name the loss net's metrics exactly when the train step has_aux")
        self.step = step
        self.lrs = lrs
        self.metric_names = tuple(metric_names)

    def lr(self, global_step: int) -> float:
        """The learning rate of the step taken after ``global_step`` steps."""
        return float(self.lrs[min(global_step, len(self.lrs) - 1)])

    def take_step(self, inputs: Sequence[Tensor], global_step: int) -> StepResult:
        """One step on ``inputs``; ``global_step`` is the number of steps taken before it."""
        start = time.perf_counter()
        outputs = self.step(*inputs)
        loss, overflow, scale = (float(outputs[0].asnumpy()), bool(outputs[1].asnumpy()), float(outputs[2].asnumpy()))
        metrics = dict(zip(self.metric_names, outputs[3].asnumpy().tolist())) if self.metric_names else {}
        reach("train_step")
        return StepResult(loss, overflow, scale, self.lr(global_step), time.perf_counter() - start, metrics)

    def run(
        self, batches: Iterable[Sequence[Tensor]], state, on_step: Optional[Callable[[int, StepResult], bool]] = None
    ) -> UpdateStats:
        """One step per input list of ``batches``, advancing ``state.global_step``. ``on_step(index, result)``
        runs after each (``index`` counts this call's steps from 0) and returns True to stop early."""
        stats = UpdateStats()
        for index, inputs in enumerate(batches):
            result = self.take_step(inputs, state.global_step)
            state.global_step += 1
            stats.add(result, self.metric_names)
            if on_step is not None and on_step(index, result):
                break
        return stats
