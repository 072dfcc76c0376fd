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

import logging
from typing import Dict, Optional, Union

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from mindrlhf import rl
from mindrlhf.config import LoRAConfig, ModelConfig, RunConfig
from mindrlhf.losses import grpo_policy_loss, masked_entropy
from mindrlhf.models import CausalLM, RewardModel
from mindrlhf.models.convert import load_weights
from mindrlhf.models.policy import token_logprobs
from mindrlhf.train.rl_trainer import Collected, PromptSource, RLState, RLTrainer, format_rl_line
from mindrlhf.train.rollout import RolloutMaker

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = ("response_tensors", "attention_mask", "logprobs", "ref_logprobs", "advantages")
LOSS_METRICS = ("pg_loss", "clipfrac", "kl_k3", "entropy")  # kl_k3: the loss's per-token k3 estimate


def format_grpo_line(batch: int, update: int, loss: float, lr: float, overflow: bool, scale: float) -> str:
    """The step line, PPO's shape: ``GRPO Batch: 0 | GRPO Update: 0 | loss: [..] | lr: [..] | is overflow: False |
    loss scale: 1.0``."""
    return format_rl_line("GRPO", "Update", batch, update, loss, lr, overflow, scale)


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
        logits = self.policy.logits(hidden[:, self.start : length - 1])
        if self.temperature != 1.0:
            logits = logits / self.temperature
        new_logprobs = token_logprobs(logits, response_tensors[:, self.start + 1 :])
        mask = ops.cast(attention_mask[:, self.start + 1 :], ms.float32)
        count = token_count[0] / self.rank_size
        loss, clipfrac, kl = grpo_policy_loss(
            new_logprobs,
            logprobs,
            ref_logprobs,
            advantages,
            mask,
            self.epsilon_low,
            self.epsilon_high,
            self.beta,
            self.loss_type,
            self.max_completion_length,
            count,
        )
        entropy = masked_entropy(ops.stop_gradient(logits), mask, count)
        return loss, ops.stop_gradient(ops.stack([loss, clipfrac, kl, entropy]))


# ---------------------------------------------------------------------------------------------------------------
# Scores and advantages (host, numpy)


def group_scores(raw: Dict[str, np.ndarray], grpo) -> np.ndarray:
    """``(B,)`` the score each rollout is judged by: the reward, plus DAPO's soft overlong penalty, minus
    ``beta * sum_t (logp_t - ref_logp_t)`` when the KL is a reward penalty (``kl_in_reward``)."""
    scores = raw["scores"].astype(np.float64)
    if grpo.overlong_buffer:
        scores = scores + rl.overlong_penalty(
            raw["response_lengths"], grpo.generation.max_new_tokens, grpo.overlong_buffer, grpo.overlong_penalty_factor
        )
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


class GRPOTrainer(RLTrainer):
    """Runs GRPO iterations on one rank (the shared iteration driver, :class:`RLTrainer`).

    Args:
        cfg: the policy recipe; ``cfg.grpo`` holds the knobs, ``cfg.output_dir`` receives logs and checkpoints.
        policy, ref: the trained policy and the frozen reference.
        reward: a reward function of token lists (``answers`` keyword for reference answers) or a RewardModel.
        prompt_width: ``P``.
        prompts: ``prompts(iteration)`` -> this rank's ``num_prompts`` prompts.
        resume: a GRPO ``checkpoint`` root to continue from, or "".
    """

    name, label, update_label = "grpo", "GRPO", "Update"
    train_columns = TRAIN_COLUMNS
    metric_names = LOSS_METRICS
    equal_rows = False  # dynamic sampling keeps a different number of groups on each rank

    def __init__(
        self,
        cfg: RunConfig,
        policy: CausalLM,
        ref: CausalLM,
        reward,
        prompt_width: int,
        prompts: PromptSource,
        resume: str = "",
        rank_id: int = 0,
        rank_size: int = 1,
        progress: Union[bool, str] = False,
    ):
        super().__init__(cfg, cfg.grpo, policy, prompt_width, prompts, rank_id, rank_size, progress)
        self.grpo, self.ref = cfg.grpo, ref
        model_cfg = policy.config
        rollouts = self.grpo.num_prompts * self.grpo.num_generations
        self.maker = RolloutMaker(
            policy,
            ref,
            reward,
            self.grpo.generation,
            prompt_width,
            model_cfg.pad_token_id,
            model_cfg.eos_token_id,
            chunk_size=rollouts,
            rank_id=rank_id,
        )
        self.build(GRPOLoss(policy, self.grpo, prompt_width, rank_size), RLState(), resume)

    @property
    def updates_per_batch(self) -> int:
        return self.grpo.num_iterations

    def token_counts(self, data: Dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        """``(1,)``: the minibatch's generated tokens."""
        return np.array([data["attention_mask"][rows, self.prompt_width :].sum()], np.float64)

    def advantages(self, scores: np.ndarray) -> np.ndarray:
        """``(B,)`` advantages of this rank's rollouts from their :func:`group_scores` (group-relative;
        REINFORCE++'s scale over every rank)."""
        return rl.grpo_advantages(
            scores, self.grpo.num_generations, self.grpo.advantage_estimator, self.grpo.scale_rewards, self.reduce
        ).astype(np.float32)

    def rollout_metrics(self, raw: Dict[str, np.ndarray], kept: np.ndarray) -> Dict[str, float]:
        """Rollout statistics over every rank: reward mean / std, KL, length, eos, kept groups, and each reward
        part's mean (``reward/<name>``)."""
        mask = raw["response_mask"]
        kl = ((raw["logprobs"] - raw["ref_logprobs"]) * mask).sum(1)
        components = getattr(self.maker.reward, "last_components", {})
        sums = self.reduce(
            [
                raw["scores"].sum(),
                np.square(raw["scores"].astype(np.float64)).sum(),
                kl.sum(),
                mask.sum(),
                (~raw["ends_with_eos"]).sum(),
                len(kept),
                len(mask),
            ]
            + [np.sum(v) for v in components.values()]
        )
        n = sums[6]
        mean = sums[0] / n
        metrics = {
            "reward_mean": mean,
            "reward_std": float(np.sqrt(max(sums[1] / n - mean * mean, 0.0))),
            "kl": sums[2] / n,
            "response_length": sums[3] / n,
            "no_eos_rate": sums[4] / n,
            "kept_share": sums[5] / n,
        }
        metrics.update({f"reward/{name}": float(total / n) for name, total in zip(components, sums[7:])})
        return metrics

    def collect(self, iteration: int) -> Collected:
        """Sample G completions per prompt, score them, group advantages, keep the groups that train."""
        prompts = repeat_prompts(self.prompts(iteration), self.grpo.num_generations)
        raw = self.maker.rollouts(prompts, iteration, self.cfg.seed)
        scores = group_scores(raw, self.grpo)
        raw["advantages"] = self.advantages(scores)
        kept = kept_rows(scores, self.grpo)
        data = {name: raw[name] for name in TRAIN_COLUMNS}
        data["logprobs"] = raw["logprobs"] * raw["response_mask"]
        return Collected(data, kept, self.rollout_metrics(raw, kept))


# ---------------------------------------------------------------------------------------------------------------
# Entry


def build_policy_and_ref(
    model_cfg: ModelConfig,
    checkpoint: str = "",
    seed: int = 0,
    recompute: bool = False,
    lora: Optional[LoRAConfig] = None,
):
    """Policy and frozen reference from ``checkpoint`` (the same seeded random init without one); with ``lora``
    the policy trains adapters and the reference is the policy with its adapters off (one copy of the base)."""
    from mindrlhf.train.ppo import reference_of, weights_file, without_dropout

    lora = lora or LoRAConfig()  # LoRA off (a fresh one per call: no shared default instance)
    ms.set_seed(seed)
    model_cfg = without_dropout(model_cfg)
    policy = CausalLM(model_cfg, recompute=recompute)
    ref = None if lora.enabled else CausalLM(model_cfg)
    if checkpoint:
        load_weights(policy, weights_file(checkpoint), model_cfg)
        logger.info("policy initialised from %s", checkpoint)
    return policy, reference_of(policy, ref, lora)


def grpo_prompt_source(dataset_dir: str, cfg: RunConfig, rank_id: int, rank_size: int):
    """``(prompt width P, prompts(iteration) -> this rank's num_prompts prompts)`` for a prompt MindRecord."""
    from mindrlhf.data.datasets import PROMPT_COLUMNS, prompt_indices, read_prompts, record_count

    count = record_count(dataset_dir, PROMPT_COLUMNS)
    pad = cfg.model.model_config.pad_token_id
    width = read_prompts(dataset_dir, np.array([0]), pad)["prompt_ids"].shape[1]

    def prompts(iteration: int) -> Dict[str, object]:
        indices = prompt_indices(
            count, cfg.grpo.num_prompts, iteration, seed=cfg.seed, rank_id=rank_id, rank_size=rank_size
        )
        return read_prompts(dataset_dir, indices, pad)

    return width, prompts


def train_grpo(
    cfg: RunConfig,
    dataset_dir: str,
    reward,
    sft_checkpoint: str = "",
    resume: str = "",
    rank_id: int = 0,
    rank_size: int = 1,
    stop_after: Optional[int] = None,
    progress: Union[bool, str] = False,
) -> GRPOTrainer:
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
    policy, ref = build_policy_and_ref(
        cfg.model.model_config, sft_checkpoint, cfg.seed, cfg.recompute_config.recompute, cfg.lora
    )
    if isinstance(reward, RewardModel):
        reward.set_train(False)
    trainer = GRPOTrainer(cfg, policy, ref, reward, width, prompts, resume, rank_id, rank_size, progress)
    trainer.fit(stop_after)
    return trainer
