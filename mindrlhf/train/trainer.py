"""The epoch driver of the supervised stages (SFT, reward model): MindRecord batches -> the shared step loop
(:class:`~mindrlhf.train.loop.UpdateLoop`) -> step lines, TensorBoard, checkpoints, and exact resume (model,
optimizer, loss scale, epoch and position in the data)."""

from __future__ import annotations

import itertools
import logging
import math
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from mindspore import Tensor, nn
from tqdm import tqdm

from mindrlhf.config import RunConfig, save_config
from mindrlhf.models.lora import base_record, frozen_base, has_adapters
from mindrlhf.train.checkpoint import CheckpointManager, TrainState, recorded_base, restore, resume_checkpoint
from mindrlhf.train.loop import StepResult, UpdateLoop
from mindrlhf.train.monitor import TrainMonitor, format_step_line
from mindrlhf.train.optim import build_optimizer, lr_table
from mindrlhf.train.step import TrainStep

logger = logging.getLogger(__name__)

# (epoch, batches to skip) -> iterable of batches, each a dict of numpy arrays
BatchSource = Callable[[int, int], Iterable[Dict[str, np.ndarray]]]


def mindrecord_source(
    cfg: RunConfig,
    train_path: Optional[str],
    make_dataset: Callable,
    columns: Sequence[str],
    rank_id: int,
    rank_size: int,
) -> Tuple[int, int, BatchSource]:
    """``(batch size, batches per epoch, source)`` for a training MindRecord (``train_path`` or
    ``train_dataset.data_loader.dataset_dir``) read by ``make_dataset`` (``sft_dataset``, ``reward_model_dataset``)
    with the ``train_dataset`` settings, sharded by rank."""
    from mindrlhf.data.datasets import num_batches

    data = cfg.train_dataset
    path = train_path or data.data_loader.dataset_dir
    if not path:
        raise ValueError("no training data: pass --train_dataset or set train_dataset.data_loader.dataset_dir")
    batch_size = data.batch_size or cfg.runner_config.batch_size
    steps = num_batches(path, batch_size, rank_size, data.drop_remainder, data.data_loader.num_samples, tuple(columns))

    def source(epoch: int, skip: int):
        dataset = make_dataset(
            path,
            batch_size,
            epoch=epoch,
            seed=cfg.seed,
            shuffle=data.data_loader.shuffle,
            rank_id=rank_id,
            rank_size=rank_size,
            skip_batches=skip,
            drop_remainder=data.drop_remainder,
            num_samples=data.data_loader.num_samples,
            num_parallel_workers=data.num_parallel_workers,
        )
        return dataset.create_dict_iterator(num_epochs=1, output_numpy=True)

    return batch_size, steps, source


@dataclass
class FitResult:
    """What :meth:`Trainer.fit` returns."""

    losses: List[float] = field(default_factory=list)  # loss of every step run in this call
    overflows: int = 0  # steps skipped for non-finite gradients
    metrics: List[Dict[str, float]] = field(default_factory=list)  # the loss net's metrics of every step (if any)
    step_seconds: List[float] = field(default_factory=list)  # wall time of every step (the first compiles)
    nan_losses: int = 0  # steps skipped for a NaN loss (a batch with no token to learn from)
    state: TrainState = field(default_factory=TrainState)  # where the run stopped
    last_checkpoint: Optional[str] = None  # the newest checkpoint written


class Trainer:
    """Trains ``loss_net`` on batches from ``source``.

    Args:
        cfg: the run config (epochs, optimizer, schedule, loss scale, checkpoints, output_dir, load_checkpoint).
        loss_net: ``loss_net(*[batch[c] for c in input_columns]) -> scalar loss``.
        input_columns: batch keys fed to ``loss_net``, in order.
        source: ``source(epoch, skip_batches)`` yields the batches of one epoch for this rank.
        steps_per_epoch: batches per epoch per rank.
        rank_id, rank_size: this process in a data-parallel group.
        progress: show a progress bar over the run's steps (rank 0), labelled ``progress`` when a string.
        metric_names: when given, ``loss_net`` returns ``(loss, metrics)`` with ``metrics`` a float32 vector of these
            named values, logged with each step (a second line, TensorBoard) and kept in :class:`FitResult`.
        base_weights: with LoRA, where the frozen base was loaded from (default: ``load_checkpoint`` when it names
            weights); checkpoints then hold the adapters (and trained heads) alone and record that base.
    """

    def __init__(
        self,
        cfg: RunConfig,
        loss_net: nn.Cell,
        input_columns: Sequence[str],
        source: BatchSource,
        steps_per_epoch: int,
        rank_id: int = 0,
        rank_size: int = 1,
        progress: Union[bool, str] = False,
        metric_names: Sequence[str] = (),
        base_weights: Optional[str] = None,
    ):
        if steps_per_epoch < 1:
            raise ValueError("the training data gives no full batch: lower the batch size or add data")
        self.cfg = cfg
        self.input_columns = list(input_columns)
        self.source = source
        self.steps_per_epoch = steps_per_epoch
        self.epochs = cfg.runner_config.epochs
        self.total_steps = self.epochs * steps_per_epoch
        self.rank_id = rank_id
        self.optimizer = build_optimizer(loss_net.trainable_params(), cfg.optimizer, cfg.lr_schedule, self.total_steps)
        self.step = TrainStep(
            loss_net,
            self.optimizer,
            cfg.runner_wrapper,
            has_aux=bool(metric_names),
            gather_embedding_rows=cfg.parallel_config.embedding_grad_rows,
        )
        self.step.set_train(True)
        self.loop = UpdateLoop(self.step, lr_table(cfg.lr_schedule, cfg.optimizer, self.total_steps), metric_names)
        self.checkpoints = CheckpointManager(
            os.path.join(cfg.output_dir, "checkpoint"),
            rank_id,
            cfg.checkpoint.prefix,
            cfg.checkpoint.keep_checkpoint_max,
        )
        self.monitor = TrainMonitor(cfg.output_dir, rank_id, is_main=rank_id == 0)
        self.progress = progress if rank_id == 0 else False
        self.state = TrainState()
        resume_from = resume_checkpoint(cfg.load_checkpoint, rank_id)
        if resume_from:
            self.state = restore(self.step, resume_from)
        self.frozen, self.base = self._adapter_checkpoints(loss_net, base_weights, resume_from)
        if rank_id == 0:
            save_config(cfg, os.path.join(cfg.output_dir, "resolved_config.yaml"))

    def _adapter_checkpoints(self, loss_net: nn.Cell, base_weights: Optional[str], resume_from: Optional[str]):
        """``(frozen names, base record)`` of a LoRA run's checkpoints (``((), None)``: whole checkpoints). A resumed
        run keeps the base its checkpoint records (:func:`restore` checked it)."""
        if not has_adapters(loss_net):
            return (), None
        if base_weights is None:
            resumed = recorded_base(resume_from) if resume_from else None
            base_weights = resumed["path"] if resumed else ("" if resume_from else self.cfg.load_checkpoint)
        return frozenset(frozen_base(loss_net)), base_record(loss_net, base_weights)

    def _save(self, state: TrainState) -> str:
        return self.checkpoints.save(self.step, state, self.frozen, self.base)

    def _inputs(self, batch: Dict[str, np.ndarray]):
        return [Tensor(batch[name]) for name in self.input_columns]

    def _log(self, result: StepResult) -> None:
        state, log_every = self.state, self.cfg.checkpoint.log_interval
        if state.global_step % log_every and state.step_in_epoch != self.steps_per_epoch:
            return
        self.monitor.line(
            format_step_line(
                state.epoch + 1,
                self.epochs,
                state.step_in_epoch,
                self.steps_per_epoch,
                result.loss,
                result.seconds * 1000.0,
                result.lr,
                result.overflow,
                result.scale,
            )
        )
        if result.metrics:
            self.monitor.line(", ".join(f"{name}: {value:.4f}" for name, value in result.metrics.items()))
        self.monitor.scalars(
            state.global_step,
            {
                "loss": result.loss,
                "lr": result.lr,
                "loss_scale": result.scale,
                "overflow": float(result.overflow),
                **result.metrics,
            },
        )

    def fit(self, stop_at_step: Optional[int] = None) -> FitResult:
        """Train to the end (or until ``global_step == stop_at_step``); saves every ``save_checkpoint_steps`` and at
        the end."""
        result = FitResult()
        save_every = self.cfg.checkpoint.save_checkpoint_steps
        bar = tqdm(
            total=self.total_steps,
            initial=self.state.global_step,
            unit="step",
            disable=not self.progress,
            desc=self.progress if isinstance(self.progress, str) else "train",
        )

        def on_step(_, step: StepResult) -> bool:
            self.state.step_in_epoch += 1
            result.losses.append(step.loss)
            result.overflows += int(step.overflow and not math.isnan(step.loss))
            if math.isnan(step.loss):
                result.nan_losses += 1
                logger.warning(
                    "global step %d: loss is %s (a batch with no token to learn from): skipped, not trained on",
                    self.state.global_step,
                    step.loss,
                )
            result.step_seconds.append(step.seconds)
            if step.metrics:
                result.metrics.append(step.metrics)
            bar.update(1)
            bar.set_postfix(loss=f"{step.loss:.4f}", refresh=False)
            self._log(step)
            done = stop_at_step is not None and self.state.global_step >= stop_at_step
            if self.state.global_step % save_every == 0 or done:
                result.last_checkpoint = self._save(self.state)
            return done

        try:
            while self.state.epoch < self.epochs:
                batches = (self._inputs(b) for b in self.source(self.state.epoch, self.state.step_in_epoch))
                remaining = self.steps_per_epoch - self.state.step_in_epoch
                self.loop.run(itertools.islice(batches, remaining), self.state, on_step)
                if stop_at_step is not None and self.state.global_step >= stop_at_step:
                    result.state = self.state
                    return result
                self.state = TrainState(self.state.epoch + 1, 0, self.state.global_step)
            if result.last_checkpoint is None or self.state.global_step % save_every:
                result.last_checkpoint = self._save(self._end_state())
        finally:
            bar.close()
            self.monitor.close()
        result.state = self.state
        return result

    def _end_state(self) -> TrainState:
        """The state saved after the last epoch: resuming from it trains nothing more."""
        return TrainState(self.state.epoch - 1, self.steps_per_epoch, self.state.global_step)
