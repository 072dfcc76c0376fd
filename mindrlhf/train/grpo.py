"""GRPO and its family (Dr. GRPO, DAPO's clip-higher / token-level loss / dynamic sampling / overlong penalty,
RLOO, REINFORCE++ with baseline) on the shared RL core (:mod:`mindrlhf.train.rollout`).

One iteration on each rank::

    num_prompts prompts, each repeated G = num_generations times (a group: consecutive rows)
      -> RolloutMaker.rollouts: G samples per prompt, scores (reward functions and / or a reward model at eos),
         old-policy and reference log-probs at the sampling temperature (no values: no critic)
      -> scores (+ DAPO overlong penalty, - beta * KL when kl_in_reward) -> advantages within each group
         (rl.grpo_advantages; REINFORCE++'s batch std over every rank)
      -> [dynamic sampling: drop the groups whose scores are all equal]
      -> num_iterations passes of shuffled minibatches: losses.grpo_policy_loss (clipped ratio, epsilon_low /
         epsilon_high, beta * k3 KL, loss_type aggregation) on the shared TrainStep

Checkpoints per rank under ``<output_dir>/checkpoint/rank_<id>/``: ``policy_model_epoch_<n>.ckpt`` (loads into
``CausalLM``: ``mindrlhf generate`` and ``export-hf`` take it) and ``grpo_state_epoch_<n>.ckpt`` (optimizer, loss
scale, :class:`RLState`), the state last; ``resume`` continues exactly.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Union

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops
from tqdm import tqdm

from mindrlhf import rl
from mindrlhf.config import ModelConfig, RunConfig, save_config
from mindrlhf.faults import reach
from mindrlhf.losses import grpo_policy_loss, masked_entropy
from mindrlhf.models import CausalLM, RewardModel
from mindrlhf.models.convert import assign_parameters, cell_parameters, load_weights, save_ckpt, \
    save_tensors
from mindrlhf.models.policy import token_logprobs
from mindrlhf.train.checkpoint import (SCHEDULE_PARAMS, newest_iteration_state, prune_iterations, rank_dir,
                                       read_ckpt)
from mindrlhf.train.distributed import AllReduceSum
from mindrlhf.train.monitor import TrainMonitor, append_jsonl, trim_jsonl
from mindrlhf.train.optim import build_optimizer, lr_table
from mindrlhf.train.rollout import RolloutMaker
from mindrlhf.train.step import TrainStep

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = ("response_tensors", "attention_mask", "logprobs", "ref_logprobs", "advantages")
LOSS_METRICS = ("pg_loss", "clipfrac", "kl_k3", "entropy")  # kl_k3: the loss's per-token k3 estimate
STATE_PREFIX = "rl_state."


def format_grpo_line(batch: int, update: int, loss: float, lr: float, overflow: bool, scale: float) -> str:
    """The step line, PPO's shape: ``GRPO Batch: 0 | GRPO Update: 0 | loss: [..] | lr: [..] | is overflow: False |
    loss scale: 1.0``."""
    return (f"GRPO Batch: {batch} | GRPO Update: {update} | loss: [{np.float32(loss)!s}] | "
            f"lr: [{np.float32(lr)!s}] | is overflow: {bool(overflow)} | loss scale: {float(scale)}")


@dataclass
class RLState:
    """Where an RL run is besides its weights, saved and restored as a whole."""

    iteration: int = 0  # next iteration to run
    global_step: int = 0  # optimizer steps done

    def state_dict(self) -> Dict[str, float]:
        return {k: float(v) for k, v in dataclasses.asdict(self).items()}

    def load_state_dict(self, values: Dict[str, float]) -> None:
        for f in dataclasses.fields(self):  # every field is a counter
            setattr(self, f.name, int(values[f.name]))


class GRPOLoss(nn.Cell):
    """``(response_tensors (B, L), attention_mask (B, L), logprobs (B, N), ref_logprobs (B, N), advantages (B,),
    token_count (1,)) -> (loss, metrics)``, ``metrics`` = :data:`LOSS_METRICS` (float32 vector).

    ``token_count`` is the global minibatch's generated-token count summed over the ``rank_size`` ranks; the token
    means divide by ``token_count / rank_size`` (as PPO's loss does), so the mean over ranks equals one process on
    the global minibatch.
    """

    def __init__(self, policy: CausalLM, grpo, prompt_width: int, rank_size: int = 1):
        super().__init__(auto_prefix=False)
        self.policy = policy
        self.start = prompt_width - 1
        self.temperature = float(grpo.generation.temperature)
        self.rank_size = float(rank_size)
        self.epsilon_low, self.epsilon_high = grpo.epsilon_low, grpo.epsilon_high
        self.beta = 0.0 if grpo.kl_in_reward else float(grpo.beta)
        self.loss_type = grpo.loss_type
        self.max_completion_length = grpo.generation.max_new_tokens

    def construct(self, response_tensors, attention_mask, logprobs, ref_logprobs, advantages, token_count):
        length = response_tensors.shape[1]
        hidden = self.policy.backbone(response_tensors, attention_mask)
        logits = self.policy.logits(hidden[:, self.start:length - 1])
        if self.temperature != 1.0:
            logits = logits / self.temperature
        new_logprobs = token_logprobs(logits, response_tensors[:, self.start + 1:])
        mask = ops.cast(attention_mask[:, self.start + 1:], ms.float32)
        count = token_count[0] / self.rank_size
        loss, clipfrac, kl = grpo_policy_loss(new_logprobs, logprobs, ref_logprobs, advantages, mask,
                                              self.epsilon_low, self.epsilon_high, self.beta, self.loss_type,
                                              self.max_completion_length, count)
        entropy = masked_entropy(ops.stop_gradient(logits), mask, count)
        return loss, ops.stop_gradient(ops.stack([loss, clipfrac, kl, entropy]))


# ---------------------------------------------------------------------------------------------------------------
# Scores and advantages (host, numpy)


def group_scores(raw: Dict[str, np.ndarray], grpo) -> np.ndarray:
    """``(B,)`` the score each rollout is judged by: the reward, plus DAPO's soft overlong penalty, minus
    ``beta * sum_t (logp_t - ref_logp_t)`` when the KL is a reward penalty (``kl_in_reward``)."""
    scores = raw["scores"].astype(np.float64)
    if grpo.overlong_buffer:
        scores = scores + rl.overlong_penalty(raw["response_lengths"], grpo.generation.max_new_tokens,
                                              grpo.overlong_buffer, grpo.overlong_penalty_factor)
    if grpo.kl_in_reward and grpo.beta:
        scores = scores - grpo.beta * ((raw["logprobs"] - raw["ref_logprobs"]) * raw["response_mask"]).sum(1)
    return scores.astype(np.float32)


def kept_rows(scores: np.ndarray, grpo) -> np.ndarray:
    """Row indices that train: all, or with dynamic sampling those of groups whose scores differ."""
    if not grpo.dynamic_sampling:
        return np.arange(len(scores))
    return np.flatnonzero(rl.dynamic_sampling_keep(scores, grpo.num_generations))


def repeat_prompts(prompts: Dict[str, object], group_size: int) -> Dict[str, object]:
    """Each prompt ``G`` times in a row (a group is consecutive rows); lists (answers) too."""
    out = {}
    for name, value in prompts.items():
        if isinstance(value, np.ndarray):
            out[name] = np.repeat(value, group_size, axis=0)
        else:
            out[name] = [v for v in value for _ in range(group_size)]
    return out


@dataclass
class GRPOIteration:
    """What one iteration did (metrics are over every rank)."""

    iteration: int
    metrics: Dict[str, float] = field(default_factory=dict)
    losses: List[float] = field(default_factory=list)
    timings: Dict[str, float] = field(default_factory=dict)


class GroupReward:
    """Reward functions (:class:`mindrlhf.rewards.CombinedReward`) and / or a reward model as the rollout maker's
    reward: ``(prompt token lists, response token lists, answers) -> (B,)`` summed scores; each part's scores of
    the last call stay in ``last_components`` for the metrics (``reward/<name>``)."""

    def __init__(self, functions=None, reward_model: Optional[RewardModel] = None, pad_token_id: int = 0,
                 eos_token_id: Optional[int] = None):
        if functions is None and reward_model is None:
            raise ValueError("GRPO needs reward functions (grpo.reward_funcs) or a reward model")
        self.functions, self.reward_model = functions, reward_model
        self.pad_token_id, self.eos_token_id = pad_token_id, eos_token_id
        self.last_components: Dict[str, np.ndarray] = {}

    def model_scores(self, prompts: List[List[int]], responses: List[List[int]]) -> np.ndarray:
        """The reward model on ``[pad | prompt | response | pad]``, read at eos (:func:`close_with_eos`)."""
        from mindrlhf.data.contract import close_with_eos
        from mindrlhf.data.tokenizer import left_pad

        ids, mask = left_pad(prompts, self.pad_token_id)
        width = max(max(len(r) for r in responses), 1)
        resp = np.full((len(responses), width), self.pad_token_id, np.int32)
        resp_mask = np.zeros_like(resp)
        for i, row in enumerate(responses):
            resp[i, :len(row)], resp_mask[i, :len(row)] = row, 1
        tokens, full_mask = close_with_eos(np.concatenate([ids, resp], 1), np.concatenate([mask, resp_mask], 1),
                                           self.eos_token_id, self.reward_model.config.seq_length)
        return self.reward_model(Tensor(tokens), Tensor(full_mask)).asnumpy().astype(np.float32)

    def __call__(self, prompts: List[List[int]], responses: List[List[int]], answers: List[str]) -> np.ndarray:
        total = np.zeros(len(responses), np.float32)
        parts: Dict[str, np.ndarray] = {}
        if self.functions is not None:
            scores, components = self.functions(prompts, responses, answers)
            total, parts = total + scores, dict(components)
        if self.reward_model is not None:
            parts["reward_model"] = self.model_scores(prompts, responses)
            total = total + parts["reward_model"]
        self.last_components = parts
        return total


# ---------------------------------------------------------------------------------------------------------------
# Trainer


PromptSource = Callable[[int], Dict[str, object]]  # iteration -> this rank's num_prompts prompts


class GRPOTrainer:
    """Runs GRPO iterations on one rank.

    Args:
        cfg: the policy recipe; ``cfg.grpo`` holds the knobs, ``cfg.output_dir`` receives logs and checkpoints.
        policy, ref: the trained policy and the frozen reference.
        reward: a reward function of token lists (``answers`` keyword for reference answers) or a RewardModel.
        prompt_width: ``P``.
        prompts: ``prompts(iteration)`` -> this rank's ``num_prompts`` prompts.
        resume: a GRPO ``checkpoint`` root to continue from, or "".
    """

    def __init__(self, cfg: RunConfig, policy: CausalLM, ref: CausalLM, reward, prompt_width: int,
                 prompts: PromptSource, resume: str = "", rank_id: int = 0, rank_size: int = 1,
                 progress: Union[bool, str] = False):
        self.cfg, self.grpo = cfg, cfg.grpo
        self.policy, self.ref, self.prompts = policy, ref, prompts
        self.rank_id, self.rank_size = rank_id, rank_size
        model_cfg = policy.config
        if prompt_width + self.grpo.generation.max_new_tokens > model_cfg.seq_length:
            raise ValueError(f"prompt width {prompt_width} + grpo.generation.max_new_tokens "
                             f"{self.grpo.generation.max_new_tokens} exceeds the policy's seq_length "
                             f"{model_cfg.seq_length}")
        self.prompt_width = prompt_width
        self.reduce = AllReduceSum(rank_size)
        rollouts = self.grpo.num_prompts * self.grpo.num_generations
        self.maker = RolloutMaker(policy, ref, reward, self.grpo.generation, prompt_width, model_cfg.pad_token_id,
                                  model_cfg.eos_token_id, chunk_size=rollouts, rank_id=rank_id)
        self.loss_net = GRPOLoss(policy, self.grpo, prompt_width, rank_size)
        total_steps = self.grpo.epochs * self.grpo.steps_per_epoch
        self.lrs = lr_table(self.grpo.lr_schedule_config(), self.grpo.optimizer_config(), total_steps)
        optimizer = build_optimizer(self.loss_net.trainable_params(), self.grpo.optimizer_config(),
                                    self.grpo.lr_schedule_config(), total_steps)
        self.step = TrainStep(self.loss_net, optimizer, self.grpo.loss_scale_config(), has_aux=True)
        self.folder = rank_dir(os.path.join(cfg.output_dir, "checkpoint"), rank_id)
        self.monitor = TrainMonitor(cfg.output_dir, rank_id, is_main=rank_id == 0)
        self.progress = progress if rank_id == 0 else False
        self.state = RLState()
        if resume:
            self._restore(resume)
        if rank_id == 0:
            save_config(cfg, os.path.join(cfg.output_dir, "resolved_config.yaml"))
            trim_jsonl(os.path.join(cfg.output_dir, "grpo_metrics.jsonl"), self.state.iteration)

    # -- checkpoints ------------------------------------------------------------------------------------------

    def save(self, iteration: int) -> str:
        """The policy, then the state file (optimizer, loss scale, :class:`RLState`) last."""
        os.makedirs(self.folder, exist_ok=True)
        policy_path = os.path.join(self.folder, f"policy_model_epoch_{iteration}.ckpt")
        save_ckpt(self.policy, policy_path)
        names = set(cell_parameters(self.policy))
        extra = {p.name: p for p in self.step.get_parameters() if p.name not in names}
        extra.update({STATE_PREFIX + k: Tensor(np.float64(v)) for k, v in self.state.state_dict().items()})
        save_tensors(extra, os.path.join(self.folder, f"grpo_state_epoch_{iteration}.ckpt"))
        logger.info("Save checkpoints in %s", self.folder)
        prune_iterations(self.folder, self.cfg.checkpoint.keep_checkpoint_max)
        return policy_path

    def _restore(self, root: str) -> None:
        folder, iteration, name = newest_iteration_state(root, self.rank_id, "grpo_state_epoch_")
        entries = read_ckpt(os.path.join(folder, name))
        entries.update(read_ckpt(os.path.join(folder, f"policy_model_epoch_{iteration}.ckpt")))
        params = {p.name for p in self.step.get_parameters() if p.name not in SCHEDULE_PARAMS}
        assign_parameters(self.step, {n: v for n, v in entries.items() if n in params}, folder,
                          allow_missing=SCHEDULE_PARAMS)
        self.state.load_state_dict({k: float(entries[STATE_PREFIX + k]) for k in self.state.state_dict()})
        logger.info("resumed GRPO from %s at iteration %d (global step %d)", folder, self.state.iteration,
                    self.state.global_step)

    # -- one iteration ----------------------------------------------------------------------------------------

    def advantages(self, scores: np.ndarray) -> np.ndarray:
        """``(B,)`` advantages of this rank's rollouts from their :func:`group_scores` (group-relative;
        REINFORCE++'s scale over every rank)."""
        return rl.grpo_advantages(scores, self.grpo.num_generations, self.grpo.advantage_estimator,
                                  self.grpo.scale_rewards, self.reduce).astype(np.float32)

    def minibatches(self, rows: np.ndarray, iteration: int, update: int) -> List[np.ndarray]:
        """Shuffled minibatches of ``batch_size`` rows; every rank takes the same number (the smallest)."""
        size = self.grpo.batch_size
        order = rows[np.random.default_rng([self.cfg.seed, iteration, update]).permutation(len(rows))]
        mine = np.zeros(self.rank_size)
        mine[self.rank_id] = len(order) // size
        count = int(self.reduce(mine).min())
        return [order[b * size:(b + 1) * size] for b in range(count)]

    def train_on(self, data: Dict[str, np.ndarray], rows: np.ndarray, iteration: int) -> GRPOIteration:
        """``num_iterations`` passes of minibatch updates over ``rows`` of ``data``."""
        result = GRPOIteration(iteration)
        sums = np.zeros(len(LOSS_METRICS))
        width = self.prompt_width
        for update in range(self.grpo.num_iterations):
            batches = self.minibatches(rows, iteration, update)
            counts = self.reduce([data["attention_mask"][b, width:].sum() for b in batches]) if batches else []
            for batch, b_rows in enumerate(batches):
                inputs = [Tensor(data[name][b_rows]) for name in TRAIN_COLUMNS]
                inputs.append(Tensor(np.asarray([counts[batch]], np.float32)))
                loss, overflow, scale, metrics = self.step(*inputs)
                loss, overflow = float(loss.asnumpy()), bool(overflow.asnumpy())
                reach("train_step")
                lr = float(self.lrs[min(self.state.global_step, len(self.lrs) - 1)])
                self.state.global_step += 1
                result.losses.append(loss)
                sums += metrics.asnumpy()
                if self.state.global_step % self.cfg.checkpoint.log_interval == 0:
                    self.monitor.line(format_grpo_line(batch, update, loss, lr, overflow, float(scale.asnumpy())))
        steps = max(len(result.losses), 1)
        totals = self.reduce(sums) / (self.rank_size * steps)
        result.metrics = {name: float(v) for name, v in zip(LOSS_METRICS, totals)}
        return result

    def rollout_metrics(self, raw: Dict[str, np.ndarray], kept: np.ndarray) -> Dict[str, float]:
        """Rollout statistics over every rank: reward mean / std, KL, length, eos, kept groups."""
        mask = raw["response_mask"]
        kl = ((raw["logprobs"] - raw["ref_logprobs"]) * mask).sum(1)
        sums = self.reduce([raw["scores"].sum(), np.square(raw["scores"].astype(np.float64)).sum(), kl.sum(),
                            mask.sum(), (~raw["ends_with_eos"]).sum(), len(kept), len(mask)])
        n = sums[6]
        mean = sums[0] / n
        return {"reward_mean": mean, "reward_std": float(np.sqrt(max(sums[1] / n - mean * mean, 0.0))),
                "kl": sums[2] / n, "response_length": sums[3] / n, "no_eos_rate": sums[4] / n,
                "kept_share": sums[5] / n}

    def run_iteration(self, iteration: int) -> GRPOIteration:
        """Sample G completions per prompt, score, group advantages, update."""
        start = time.perf_counter()
        self.maker.timings = {}
        prompts = repeat_prompts(self.prompts(iteration), self.grpo.num_generations)
        raw = self.maker.rollouts(prompts, iteration, self.cfg.seed)
        reach("rollout")
        timings = dict(self.maker.timings)
        scores = group_scores(raw, self.grpo)
        raw["advantages"] = self.advantages(scores)
        kept = kept_rows(scores, self.grpo)
        data = {name: raw[name] for name in TRAIN_COLUMNS}
        data["logprobs"] = raw["logprobs"] * raw["response_mask"]
        tick = time.perf_counter()
        result = self.train_on(data, kept, iteration)
        timings["update"] = time.perf_counter() - tick
        timings["total"] = time.perf_counter() - start
        result.metrics.update(self.rollout_metrics(raw, kept))
        components = getattr(self.maker.reward, "last_components", {})
        if components:  # each reward part's mean over every rank: one all-reduce of [sums..., count]
            totals = self.reduce([np.sum(v) for v in components.values()] + [len(next(iter(components.values())))])
            result.metrics.update({f"reward/{name}": float(total / totals[-1])
                                   for name, total in zip(components, totals[:-1])})
        result.metrics["loss"] = float(np.mean(result.losses)) if result.losses else None
        result.timings = timings
        self._finish_iteration(result)
        return result

    def _finish_iteration(self, result: GRPOIteration) -> None:
        self.state.iteration = result.iteration + 1
        measured = {k: v for k, v in result.metrics.items() if v is not None}
        self.monitor.scalars(result.iteration + 1, {f"grpo/{k}": v for k, v in measured.items()})
        logger.info("iteration %d: %s", result.iteration, ", ".join(f"{k} {v:.4g}" for k, v in measured.items()))
        if self.rank_id == 0:
            append_jsonl(os.path.join(self.cfg.output_dir, "grpo_metrics.jsonl"),
                          {"iteration": result.iteration, "global_step": self.state.global_step,
                           **result.metrics, "seconds": result.timings})
        last = result.iteration + 1 == self.grpo.epochs
        if (result.iteration + 1) % self.grpo.save_checkpoint_epochs == 0 or last:
            self.save(result.iteration)

    def fit(self, stop_after: Optional[int] = None) -> List[GRPOIteration]:
        """Run the remaining iterations (or up to iteration ``stop_after`` exclusive)."""
        results = []
        end = self.grpo.epochs if stop_after is None else min(stop_after, self.grpo.epochs)
        bar = tqdm(total=self.grpo.epochs, initial=self.state.iteration, unit="iter", disable=not self.progress,
                   desc=self.progress if isinstance(self.progress, str) else "grpo")
        try:
            for iteration in range(self.state.iteration, end):
                results.append(self.run_iteration(iteration))
                bar.update(1)
                bar.set_postfix(reward=f"{results[-1].metrics['reward_mean']:.3f}", refresh=False)
            if stop_after is not None and results and self.state.iteration < self.grpo.epochs:
                if (results[-1].iteration + 1) % self.grpo.save_checkpoint_epochs:
                    self.save(results[-1].iteration)
        finally:
            bar.close()
            self.monitor.close()
        return results


# ---------------------------------------------------------------------------------------------------------------
# Entry


def build_policy_and_ref(model_cfg: ModelConfig, checkpoint: str = "", seed: int = 0, recompute: bool = False):
    """Policy and frozen reference from ``checkpoint`` (the same seeded random init without one)."""
    from mindrlhf.train.ppo import copy_weights, weights_file, without_dropout

    ms.set_seed(seed)
    model_cfg = without_dropout(model_cfg)
    policy, ref = CausalLM(model_cfg, recompute=recompute), CausalLM(model_cfg)
    if checkpoint:
        load_weights(policy, weights_file(checkpoint), model_cfg)
        logger.info("policy initialised from %s", checkpoint)
    copy_weights(policy, ref)
    ref.set_train(False)
    for param in ref.get_parameters():
        param.requires_grad = False
    return policy, ref


def grpo_prompt_source(dataset_dir: str, cfg: RunConfig, rank_id: int, rank_size: int):
    """``(prompt width P, prompts(iteration) -> this rank's num_prompts prompts)`` for a prompt MindRecord."""
    from mindrlhf.data.datasets import PROMPT_COLUMNS, prompt_indices, read_prompts, record_count

    count = record_count(dataset_dir, PROMPT_COLUMNS)
    pad = cfg.model.model_config.pad_token_id
    width = read_prompts(dataset_dir, np.array([0]), pad)["prompt_ids"].shape[1]

    def prompts(iteration: int) -> Dict[str, object]:
        indices = prompt_indices(count, cfg.grpo.num_prompts, iteration, seed=cfg.seed, rank_id=rank_id,
                                 rank_size=rank_size)
        return read_prompts(dataset_dir, indices, pad)

    return width, prompts


def train_grpo(cfg: RunConfig, dataset_dir: str, reward, sft_checkpoint: str = "", resume: str = "",
               rank_id: int = 0, rank_size: int = 1, stop_after: Optional[int] = None,
               progress: Union[bool, str] = False) -> GRPOTrainer:
    """Build everything and run GRPO.

    Args:
        cfg: the policy recipe with its ``grpo`` section.
        dataset_dir: prompt MindRecord (``convert-prompts``; reference answers ride along for the reward functions).
        reward: a reward function of token lists (:class:`mindrlhf.rewards.CombinedReward` or any callable) or a
            :class:`RewardModel`.
        sft_checkpoint: policy / reference weights (.ckpt, checkpoint root or Hugging Face folder).
        resume: a GRPO checkpoint root to continue from.
    """
    width, prompts = grpo_prompt_source(dataset_dir, cfg, rank_id, rank_size)
    policy, ref = build_policy_and_ref(cfg.model.model_config, sft_checkpoint, cfg.seed,
                                       cfg.recompute_config.recompute)
    if isinstance(reward, RewardModel):
        reward.set_train(False)
    trainer = GRPOTrainer(cfg, policy, ref, reward, width, prompts, resume, rank_id, rank_size, progress)
    trainer.fit(stop_after)
    return trainer
