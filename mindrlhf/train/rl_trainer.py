"""The iteration driver every RL algorithm shares (PPO, GRPO and its family): per iteration, the algorithm's
``collect`` (rollouts and their advantages, :mod:`mindrlhf.train.rollout`), then passes of shuffled minibatch
updates on the shared step loop (:class:`~mindrlhf.train.loop.UpdateLoop`), then the iteration's metrics (step
lines, TensorBoard ``<name>/<metric>``, ``<name>_metrics.jsonl``) and checkpoints.

An algorithm is a subclass naming itself (``name``), its loss net's inputs (``train_columns``) and metrics
(``metric_names``), how many passes an iteration makes (``updates_per_batch``) and how it counts a minibatch's
tokens (``token_counts``), and implementing ``collect``. Everything an algorithm keeps besides weights lives in one
:class:`RLState` (subclassed for more, e.g. PPO's KL coefficient and score moments), saved and restored as a whole.

Checkpoints per rank under ``<output_dir>/checkpoint/rank_<id>/`` (the newest ``checkpoint.keep_checkpoint_max``
iterations are kept): ``policy_model_epoch_<n>.ckpt`` (loads into
``CausalLM``), one ``<role>_epoch_<n>.ckpt`` per extra trained model (PPO's separate critic) and
``<name>_state_epoch_<n>.ckpt`` (optimizer moments, loss scale, :class:`RLState`) written last, ``n`` the 0-based
iteration just finished; ``resume`` continues exactly.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np
from mindspore import Parameter, Tensor, nn
from tqdm import tqdm

from mindrlhf.config import RunConfig, save_config
from mindrlhf.models import CausalLM
from mindrlhf.models.convert import assign_parameters, cell_parameters, save_tensors
from mindrlhf.models.lora import adapter_parameters, has_adapters
from mindrlhf.faults import reach
from mindrlhf.train.checkpoint import SCHEDULE_PARAMS, newest_iteration_state, prune_iterations, rank_dir, read_ckpt
from mindrlhf.train.distributed import AllReduceSum
from mindrlhf.train.loop import StepResult, UpdateLoop
from mindrlhf.train.monitor import TrainMonitor, append_jsonl, trim_jsonl
from mindrlhf.train.optim import build_optimizer, lr_table
from mindrlhf.train.step import TrainStep

logger = logging.getLogger(__name__)

PromptSource = Callable[[int], Dict[str, object]]  # iteration -> this rank's prompts (see datasets)


@dataclass
class RLState:
    """Where an RL run is besides its weights; subclasses add what their algorithm learns (all saved as floats)."""

    iteration: int = 0  # next iteration to run
    global_step: int = 0  # optimizer steps done

    def state_dict(self) -> Dict[str, float]:
        return {"iteration": float(self.iteration), "global_step": float(self.global_step)}

    def load_state_dict(self, values: Dict[str, float]) -> None:
        self.iteration, self.global_step = int(values["iteration"]), int(values["global_step"])


@dataclass
class Collected:
    """One iteration's training data on this rank: ``data`` columns by name (first axis: rollouts), the ``rows``
    that train, and the rollout metrics (over every rank)."""

    data: Dict[str, np.ndarray]
    rows: np.ndarray
    metrics: Dict[str, float] = field(default_factory=dict)
    rollout: object = None  # the algorithm's own rollout record (PPO: RolloutStats)


@dataclass
class IterationResult:
    """What one iteration did: ``losses`` are this rank's step losses; ``metrics`` the rollout metrics, then the
    loss net's metrics and ``loss`` as means over every rank and step (None when no step ran)."""

    iteration: int
    metrics: Dict[str, Optional[float]] = field(default_factory=dict)
    losses: List[float] = field(default_factory=list)
    overflows: int = 0
    timings: Dict[str, float] = field(default_factory=dict)
    rollout: object = None


def saved_parameters(model: nn.Cell) -> Dict[str, Parameter]:
    """What an iteration checkpoint holds of ``model``: every parameter, or with LoRA the adapters, trained heads
    and adapter scales alone (the frozen base is rebuilt from the weights the run started from)."""
    return adapter_parameters(model) if has_adapters(model) else cell_parameters(model)


def format_rl_line(
    label: str, update_label: str, batch: int, update: int, loss: float, lr: float, overflow: bool, scale: float
) -> str:
    """The seed's step line: ``PPO Batch: 0 | PPO Epoch: 0 | loss: [9.821571] | lr: [2.25e-08] | is overflow:
    False | loss scale: 4096.0`` (``label`` PPO, ``update_label`` Epoch)."""
    return (
        f"{label} Batch: {batch} | {label} {update_label}: {update} | loss: [{np.float32(loss)!s}] | "
        f"lr: [{np.float32(lr)!s}] | is overflow: {bool(overflow)} | loss scale: {float(scale)}"
    )


class RLTrainer:
    """Runs one RL algorithm's iterations on one rank. Subclasses call :meth:`build` at the end of their
    ``__init__`` with their loss net and state.

    Args:
        cfg: the policy recipe; ``algo`` its algorithm section (epochs, batch_size, optimizer, checkpoints);
            ``cfg.output_dir`` receives logs and checkpoints.
        policy: the trained policy.
        prompt_width: ``P``, the stored prompt width.
        prompts: ``prompts(iteration)`` -> this rank's prompts.
        rank_id, rank_size: this process in a data-parallel group.
        progress: a progress bar over the iterations (rank 0), labelled ``progress`` when a string.
    """

    name = "rl"  # metric namespace and file names: <name>/<metric>, <name>_metrics.jsonl, <name>_state_epoch_<n>
    label = "RL"  # in log lines
    update_label = "Update"  # what one pass over an iteration's data is called in the step line
    train_columns: Tuple[str, ...] = ()  # the loss net's data inputs; token counts follow
    metric_names: Tuple[str, ...] = ()  # the loss net's metrics vector
    equal_rows = True  # every rank trains the same number of rows (else minibatch counts are agreed on)

    def __init__(
        self,
        cfg: RunConfig,
        algo,
        policy: CausalLM,
        prompt_width: int,
        prompts: PromptSource,
        rank_id: int = 0,
        rank_size: int = 1,
        progress: Union[bool, str] = False,
    ):
        self.cfg, self.algo = cfg, algo
        self.policy, self.prompts = policy, prompts
        self.rank_id, self.rank_size = rank_id, rank_size
        max_new = algo.generation.max_new_tokens
        if prompt_width + max_new > policy.config.seq_length:
            raise ValueError(
                f"prompt width {prompt_width} + {self.name}.generation.max_new_tokens {max_new} "
                f"exceeds the policy's seq_length {policy.config.seq_length}"
            )
        self.prompt_width = prompt_width
        self.reduce = AllReduceSum(rank_size)  # host statistics over every rank
        self.folder = rank_dir(os.path.join(cfg.output_dir, "checkpoint"), rank_id)
        self.monitor = TrainMonitor(cfg.output_dir, rank_id, is_main=rank_id == 0)
        self.progress = progress if rank_id == 0 else False

    def build(self, loss_net: nn.Cell, state: RLState, resume: str = "") -> None:
        """The optimizer over ``loss_net``'s trainable parameters, the train step and its loop; then resume."""
        cfg = self.cfg
        self.loss_net, self.state = loss_net, state
        self.total_steps = self.algo.epochs * self.algo.steps_per_epoch
        optimizer = build_optimizer(loss_net.trainable_params(), cfg.optimizer, cfg.lr_schedule, self.total_steps)
        self.step = TrainStep(
            loss_net,
            optimizer,
            cfg.runner_wrapper,
            has_aux=True,
            gather_embedding_rows=cfg.parallel_config.embedding_grad_rows,
        )
        self.loop = UpdateLoop(self.step, lr_table(cfg.lr_schedule, cfg.optimizer, self.total_steps), self.metric_names)
        if resume:
            self._restore(resume)
        if self.rank_id == 0:
            save_config(self.cfg, os.path.join(self.cfg.output_dir, "resolved_config.yaml"))
            trim_jsonl(os.path.join(self.cfg.output_dir, f"{self.name}_metrics.jsonl"), self.state.iteration)

    # -- what an algorithm provides ---------------------------------------------------------------------------

    @property
    def updates_per_batch(self) -> int:
        """Passes over one iteration's data (PPO's ``ppo_epochs``, GRPO's ``num_iterations``)."""
        raise NotImplementedError

    def token_counts(self, data: Dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``(K,)`` float64 token counts of one minibatch of this rank, summed over the ranks before the step."""
        raise NotImplementedError

    def collect(self, iteration: int) -> Collected:
        """This iteration's rollouts and their advantages (timings in ``self.maker.timings``)."""
        raise NotImplementedError

    def extra_models(self) -> Dict[str, Tuple[str, nn.Cell]]:
        """Trained models besides the policy: ``role -> (parameter-name prefix, cell)``, saved as
        ``<role>_epoch_<n>.ckpt`` with the prefix stripped."""
        return {}

    # -- checkpoints ------------------------------------------------------------------------------------------

    def save(self, iteration: int) -> str:
        """The policy (and extra models), then the state file last: a run stopped in between resumes from the
        previous complete set."""
        os.makedirs(self.folder, exist_ok=True)
        policy_path = os.path.join(self.folder, f"policy_model_epoch_{iteration}.ckpt")
        save_tensors(saved_parameters(self.policy), policy_path)
        model_names = set(cell_parameters(self.policy))
        for role, (prefix, cell) in self.extra_models().items():
            model_names.update(cell_parameters(cell))
            save_tensors(
                {n[len(prefix) :]: p for n, p in saved_parameters(cell).items()},
                os.path.join(self.folder, f"{role}_epoch_{iteration}.ckpt"),
            )
        extra = {p.name: p for p in self.step.get_parameters() if p.name not in model_names}
        extra.update({f"{self.name}_state.{k}": Tensor(np.float64(v)) for k, v in self.state.state_dict().items()})
        save_tensors(extra, os.path.join(self.folder, f"{self.name}_state_epoch_{iteration}.ckpt"))
        logger.info("Save checkpoints in %s", self.folder)
        prune_iterations(self.folder, self.cfg.checkpoint.keep_checkpoint_max)
        return policy_path

    def _restore(self, root: str) -> None:
        folder, iteration, name = newest_iteration_state(root, self.rank_id, f"{self.name}_state_epoch_")
        entries = read_ckpt(os.path.join(folder, name))
        entries.update(read_ckpt(os.path.join(folder, f"policy_model_epoch_{iteration}.ckpt")))
        for role, (prefix, _) in self.extra_models().items():
            saved = read_ckpt(os.path.join(folder, f"{role}_epoch_{iteration}.ckpt"))
            entries.update({prefix + n: v for n, v in saved.items()})
        params = {p.name for p in self.step.get_parameters() if p.name not in SCHEDULE_PARAMS}
        models = [self.policy] + [cell for _, cell in self.extra_models().values()]
        base = tuple(n for cell in models for n in set(cell_parameters(cell)) - set(saved_parameters(cell)))
        assign_parameters(
            self.step, {n: v for n, v in entries.items() if n in params}, folder, allow_missing=SCHEDULE_PARAMS + base
        )
        prefix = f"{self.name}_state."
        self.state.load_state_dict({k[len(prefix) :]: float(v) for k, v in entries.items() if k.startswith(prefix)})
        logger.info(
            "resumed %s from %s at iteration %d (global step %d)",
            self.label,
            folder,
            self.state.iteration,
            self.state.global_step,
        )

    # -- updates ----------------------------------------------------------------------------------------------

    def minibatches(self, rows: Union[int, np.ndarray], iteration: int, update: int) -> List[np.ndarray]:
        """Shuffled minibatches of ``batch_size`` of ``rows`` (a count means ``0..count-1``), a seeded shuffle;
        every rank takes as many minibatches as the rank with the fewest rows."""
        rows = np.arange(rows) if np.isscalar(rows) else np.asarray(rows)
        size = self.algo.batch_size
        order = rows[np.random.default_rng([self.cfg.seed, iteration, update]).permutation(len(rows))]
        count = len(order) // size
        if not self.equal_rows:
            mine = np.zeros(self.rank_size)
            mine[self.rank_id] = count
            count = int(self.reduce(mine).min())
        return [order[b * size : (b + 1) * size] for b in range(count)]

    def step_inputs(self, data: Dict[str, np.ndarray], rows: np.ndarray, counts: np.ndarray) -> List[Tensor]:
        """The train step's inputs for ``rows`` of ``data``: :attr:`train_columns`, then the global minibatch's
        token counts."""
        return [Tensor(data[name][rows]) for name in self.train_columns] + [Tensor(np.asarray(counts, np.float32))]

    def _log_step(self, batch: int, update: int, step: StepResult) -> None:
        if self.state.global_step % self.cfg.checkpoint.log_interval:
            return
        self.monitor.line(
            format_rl_line(self.label, self.update_label, batch, update, step.loss, step.lr, step.overflow, step.scale)
        )
        self.monitor.scalars(
            self.state.global_step, {"train/loss": step.loss, "train/lr": step.lr, "train/loss_scale": step.scale}
        )

    def update(self, data: Dict[str, np.ndarray], rows: np.ndarray, iteration: int) -> IterationResult:
        """:attr:`updates_per_batch` passes of minibatch updates over ``rows`` of ``data``. Each pass first sums
        every minibatch's token counts over the ranks (one host all-reduce)."""
        result = IterationResult(iteration)
        sums = np.zeros(len(self.metric_names))
        for update in range(self.updates_per_batch):
            batches = self.minibatches(rows, iteration, update)
            if not batches:
                continue
            counts = self.reduce(np.stack([self.token_counts(data, b) for b in batches]))
            inputs = (self.step_inputs(data, b, counts[i]) for i, b in enumerate(batches))
            stats = self.loop.run(inputs, self.state, lambda i, step, update=update: self._log_step(i, update, step))
            result.losses += stats.losses
            result.overflows += stats.overflows
            sums += stats.metric_sums
        totals = self.reduce(np.concatenate([sums, [np.sum(result.losses), len(result.losses)]]))
        steps = totals[-1]
        names = self.metric_names + ("loss",)
        result.metrics = {n: (float(v / steps) if steps else None) for n, v in zip(names, totals[:-1])}
        return result

    # -- iterations -------------------------------------------------------------------------------------------

    def run_iteration(self, iteration: int) -> IterationResult:
        """Collect, update, record."""
        start = time.perf_counter()
        self.maker.timings = {}
        collected = self.collect(iteration)
        reach("rollout")
        timings = dict(self.maker.timings)
        tick = time.perf_counter()
        result = self.update(collected.data, collected.rows, iteration)
        timings["update"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        result.metrics = {**collected.metrics, **result.metrics}
        result.rollout, result.timings = collected.rollout, timings
        self.finish_iteration(result)
        return result

    def finish_iteration(self, result: IterationResult) -> None:
        """Advance the state; log, write and checkpoint the iteration."""
        self.state.iteration = result.iteration + 1
        measured = {k: v for k, v in result.metrics.items() if v is not None}
        self.monitor.scalars(result.iteration + 1, {f"{self.name}/{k}": v for k, v in measured.items()})
        logger.info("iteration %d: %s", result.iteration, ", ".join(f"{k} {v:.4g}" for k, v in measured.items()))
        if self.rank_id == 0:
            append_jsonl(
                os.path.join(self.cfg.output_dir, f"{self.name}_metrics.jsonl"),
                {
                    "iteration": result.iteration,
                    "global_step": self.state.global_step,
                    **result.metrics,
                    "seconds": result.timings,
                },
            )
        last = result.iteration + 1 == self.algo.epochs
        if (result.iteration + 1) % self.algo.save_checkpoint_epochs == 0 or last:
            self.save(result.iteration)

    def fit(self, stop_after: Optional[int] = None) -> List[IterationResult]:
        """Run the remaining iterations (or up to iteration ``stop_after`` exclusive, checkpointing there)."""
        results = []
        epochs = self.algo.epochs
        end = epochs if stop_after is None else min(stop_after, epochs)
        bar = tqdm(
            total=epochs,
            initial=self.state.iteration,
            unit="iter",
            disable=not self.progress,
            desc=self.progress if isinstance(self.progress, str) else self.name,
        )
        try:
            for iteration in range(self.state.iteration, end):
                logger.info("%s iteration %d/%d", self.label, iteration + 1, epochs)
                results.append(self.run_iteration(iteration))
                metrics = results[-1].metrics
                bar.update(1)
                bar.set_postfix(reward=f"{metrics['reward_mean']:.3f}", kl=f"{metrics['kl']:.3f}", refresh=False)
            if stop_after is not None and results and self.state.iteration < epochs:
                if (results[-1].iteration + 1) % self.algo.save_checkpoint_epochs:
                    self.save(results[-1].iteration)
        finally:
            bar.close()
            self.monitor.close()
        if self.state.iteration >= epochs:
            logger.info("%s train done!", self.label)
        return results
