"""Stage 3: PPO. Each iteration makes experience (:mod:`mindrlhf.train.experience`) on ``num_rollouts`` prompts,
then runs ``ppo_epochs`` passes of minibatch updates over it; the iteration driver, checkpoints and metrics are
the shared :class:`~mindrlhf.train.rl_trainer.RLTrainer`'s.

Loss (per minibatch, means over the generated tokens of the minibatch)::

    loss = pg_loss + vf_coef * vf_loss + pretrain_coef * ptx_loss

(the predecessor weighted the policy loss by ``1 - pretrain_coef``, bug B16). The new log-probs and the entropy are
those of ``softmax(logits / T)``, ``T = ppo.generation.temperature``, as in the experience phase, so the first
ratio of an iteration is exactly 1. With ``W`` data-parallel ranks each rank divides its masked sums by
``G / W``, ``G`` the token count of the global minibatch (every rank's, summed on the host and passed in as
``token_counts``); the train step averages the ranks' gradients, so the update is that of one token mean over the
``G`` tokens, whatever the ranks' response lengths. Checkpoints, per rank under
``<output_dir>/checkpoint/rank_<id>/``: ``policy_model_epoch_<n>.ckpt`` (the policy, value head included),
``critic_model_epoch_<n>.ckpt`` (separate critic only) and ``ppo_state_epoch_<n>.ckpt`` (optimizer moments, loss
scale, KL coefficient, score statistics, next iteration), ``n`` the 0-based iteration just finished; a run given
that folder as ``resume`` continues exactly.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Union

import numpy as np
import mindspore as ms
from mindspore import nn, ops

from mindrlhf import rl
from mindrlhf.config import ConfigError, LoRAConfig, ModelConfig, PPOConfig, RunConfig
from mindrlhf.losses import causal_lm_loss, masked_entropy, ppo_policy_loss, ppo_value_loss
from mindrlhf.models import CausalLM, Critic, RewardModel
from mindrlhf.models.convert import assign_parameters, cell_parameters, load_weights
from mindrlhf.models.lora import prepare_lora
from mindrlhf.models.policy import token_logprobs
from mindrlhf.train.checkpoint import resume_checkpoint
from mindrlhf.train.experience import Experience, ExperienceMaker, RewardFunction, RolloutStats, save_experience
from mindrlhf.train.rl_trainer import Collected, IterationResult, PromptSource, RLState, RLTrainer, format_rl_line

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = (
    "response_tensors",
    "attention_mask",
    "logprobs",
    "values",
    "advantages",
    "returns",
    "pretrain_ids",
    "loss_mask",
)
LOSS_METRICS = ("pg_loss", "vf_loss", "ptx_loss", "clipfrac", "approx_kl", "entropy", "vf_clipfrac")
CRITIC_PREFIX = "critic."


def format_ppo_line(batch: int, ppo_epoch: int, loss: float, lr: float, overflow: bool, scale: float) -> str:
    """The seed's line: ``PPO Batch: 0 | PPO Epoch: 0 | loss: [9.821571] | lr: [2.25e-08] | is overflow: False |
    loss scale: 4096.0``."""
    return format_rl_line("PPO", "Epoch", batch, ppo_epoch, loss, lr, overflow, scale)


def token_counts(data: Dict[str, np.ndarray], rows: np.ndarray, prompt_width: int) -> np.ndarray:
    """``(2,)`` float64 token counts of one minibatch of a rank: ``[generated tokens (the PPO losses' mask),
    reference-answer tokens (the ptx loss's mask, loss_mask[:, 1:])]``."""
    return np.array([data["attention_mask"][rows, prompt_width:].sum(), data["loss_mask"][rows, 1:].sum()], np.float64)


class PPOLoss(nn.Cell):
    """``(response_tensors, attention_mask, logprobs, values, advantages, returns, pretrain_ids, loss_mask,
    token_counts) -> (loss, metrics)``, ``metrics`` = :data:`LOSS_METRICS` as a float32 vector.

    Shapes: tokens/mask ``(B, L)``, old log-probs, values, advantages, returns ``(B, N)``, pretrain ids and loss
    mask ``(B, T)``; ``L = prompt_width + N``; ``token_counts (2,)`` float32, the global minibatch's
    :func:`token_counts` summed over the ``rank_size`` ranks. Every token mean divides this rank's masked sum by
    ``token_counts / rank_size``: the mean over the ranks of their losses (and of their gradients, which the train
    step mean-reduces) is the token mean over the global minibatch.
    """

    def __init__(
        self, policy: CausalLM, critic: Optional[Critic], ppo: PPOConfig, prompt_width: int, rank_size: int = 1
    ):
        super().__init__(auto_prefix=False)
        self.policy = policy
        self.shared = critic is None
        if critic is not None:
            self.critic = critic
        self.temperature = float(ppo.generation.temperature)
        self.rank_size = float(rank_size)
        self.start = prompt_width - 1
        self.cliprange = ppo.cliprange
        self.cliprange_value = ppo.cliprange_value
        self.vf_coef = ppo.vf_coef
        self.ptx_coef = ppo.pretrain_coef
        self.use_ptx = ppo.pretrain_coef > 0

    def policy_outputs(self, response_tensors, attention_mask):
        """``(B, L), (B, L) -> (logits / T (B, N, V), new log-probs (B, N), new values (B, N))`` over the response
        window, at the sampling temperature ``T``."""
        length = response_tensors.shape[1]
        hidden = self.policy.backbone(response_tensors, attention_mask)
        window = hidden[:, self.start : length - 1]
        logits = self.policy.logits(window)
        if self.temperature != 1.0:
            logits = logits / self.temperature
        new_logprobs = token_logprobs(logits, response_tensors[:, self.start + 1 :])
        if self.shared:
            new_values = self.policy.values(window)
        else:
            new_values = self.critic(response_tensors, attention_mask)[:, self.start : length - 1]
        return logits, new_logprobs, new_values

    def construct(
        self,
        response_tensors,
        attention_mask,
        logprobs,
        values,
        advantages,
        returns,
        pretrain_ids,
        loss_mask,
        token_counts,
    ):
        logits, new_logprobs, new_values = self.policy_outputs(response_tensors, attention_mask)
        mask = ops.cast(attention_mask[:, self.start + 1 :], ms.float32)
        count = token_counts[0] / self.rank_size
        pg_loss, clipfrac, approx_kl = ppo_policy_loss(new_logprobs, logprobs, advantages, mask, self.cliprange, count)
        vf_loss, vf_clipfrac = ppo_value_loss(new_values, values, returns, mask, self.cliprange_value, count)
        loss = pg_loss + self.vf_coef * vf_loss
        ptx_loss = ops.zeros((), ms.float32)
        if self.use_ptx:
            pt_hidden = self.policy.backbone(pretrain_ids[:, :-1], None)
            ptx_loss = causal_lm_loss(
                self.policy.logits(pt_hidden), pretrain_ids[:, 1:], loss_mask[:, 1:], token_counts[1] / self.rank_size
            )
            loss = loss + self.ptx_coef * ptx_loss
        entropy = masked_entropy(ops.stop_gradient(logits), mask, count)
        metrics = ops.stack([pg_loss, vf_loss, ptx_loss, clipfrac, approx_kl, entropy, vf_clipfrac])
        return loss, ops.stop_gradient(metrics)


# ---------------------------------------------------------------------------------------------------------------
# Models


@dataclass
class PPOModels:
    """The four roles. ``critic`` is None with a shared backbone; ``reward`` may be a Python function."""

    policy: CausalLM
    ref: CausalLM
    reward: Union[RewardModel, RewardFunction]
    critic: Optional[Critic] = None


def without_dropout(cfg: ModelConfig) -> ModelConfig:
    """PPO runs without dropout (as trlx and TRL do): with it, the first update's ratio would not start at 1."""
    return dataclasses.replace(cfg, hidden_dropout_rate=0.0, attention_dropout_rate=0.0)


def weights_file(path: str, rank_id: int = 0) -> str:
    """A weights path as given, or the newest checkpoint of a training output's ``rank_<id>`` folder (an SFT or
    reward-model ``checkpoint`` root)."""
    return resume_checkpoint(path, rank_id) or path


def copy_weights(src: nn.Cell, dst: nn.Cell) -> None:
    """Give ``dst`` the values of the parameters of ``src`` that it shares by name."""
    values = {n: p.asnumpy() for n, p in cell_parameters(src).items()}
    assign_parameters(dst, {n: v for n, v in values.items() if n in cell_parameters(dst)}, "policy")


def reference_of(policy: CausalLM, ref: Optional[CausalLM], lora: LoRAConfig, heads=()) -> CausalLM:
    """The frozen reference of a loaded ``policy``: ``ref`` given the policy's weights, or with ``lora`` the
    policy itself, its adapters (and ``heads``) then added; the rollout scores it with adapters off
    (:func:`mindrlhf.models.lora.reference_scorer`), so the base is held once."""
    if lora.enabled:
        prepare_lora(policy, lora, heads)
        return policy
    copy_weights(policy, ref)
    ref.set_train(False)
    for param in ref.get_parameters():
        param.requires_grad = False
    return ref


def build_ppo_models(
    policy_cfg: ModelConfig,
    ppo: PPOConfig,
    reward: Union[ModelConfig, RewardFunction],
    critic_cfg: Optional[ModelConfig] = None,
    sft_checkpoint: str = "",
    reward_checkpoint: str = "",
    critic_checkpoint: str = "",
    rank_id: int = 0,
    recompute: bool = False,
    seed: int = 0,
    lora: Optional[LoRAConfig] = None,
) -> PPOModels:
    """Policy and reference from the SFT weights (the same random init without them), the value head new; the
    reward model from its checkpoint; the separate critic (``is_shared_backbone: False``) from the critic
    checkpoint, else the reward model's. Weights not loaded are a pure function of ``seed`` (a resumed run
    rebuilds the same reference). With ``lora`` the policy and critic train adapters (and their heads) and the
    reference is the policy itself with its adapters off; the critic's adapters follow ``lora.for_critic()``."""
    lora = lora or LoRAConfig()  # LoRA off (a fresh one per call: no shared default instance)
    if ppo.is_shared_backbone and lora.for_critic() is not lora:
        raise ConfigError(
            "lora.critic_r / critic_alpha / critic_target_modules set the separate critic's adapters: "
            "set ppo.is_shared_backbone: false, or remove them (a shared value head trains with the "
            "policy's adapters)"
        )
    ms.set_seed(seed)
    policy_cfg = without_dropout(policy_cfg)
    policy = CausalLM(policy_cfg, with_value_head=ppo.is_shared_backbone, recompute=recompute)
    ref = None if lora.enabled else CausalLM(policy_cfg)
    if sft_checkpoint:
        fresh = load_weights(policy, weights_file(sft_checkpoint, rank_id), policy_cfg, new_heads=True)
        logger.info("policy initialised from %s (fresh: %s)", sft_checkpoint, ", ".join(fresh) or "none")
    ref = reference_of(policy, ref, lora, heads=("v_head",))
    if isinstance(reward, ModelConfig):
        if reward.vocab_size != policy_cfg.vocab_size:
            raise ValueError(
                f"the reward model's vocab_size {reward.vocab_size} differs from the policy's "
                f"{policy_cfg.vocab_size}: PPO needs one tokenizer for both"
            )
        reward_model = RewardModel(without_dropout(reward))
        if reward_checkpoint:
            load_weights(reward_model, weights_file(reward_checkpoint, rank_id), reward)
        else:
            logger.warning("no reward-model checkpoint given: the reward model is randomly initialised")
        reward_model.set_train(False)
        reward = reward_model
    critic = None
    if not ppo.is_shared_backbone:
        critic_cfg = without_dropout(critic_cfg or (reward.config if isinstance(reward, RewardModel) else policy_cfg))
        critic = Critic(critic_cfg, recompute=recompute)
        source = critic_checkpoint or reward_checkpoint
        if source:
            load_weights(critic, weights_file(source, rank_id), critic_cfg, new_heads=not critic_checkpoint)
        prepare_lora(critic, lora.for_critic(), heads=("score",))
        critic.update_parameters_name(CRITIC_PREFIX)
    return PPOModels(policy, ref, reward, critic)


# ---------------------------------------------------------------------------------------------------------------
# Trainer


@dataclass
class PPOState(RLState):
    """Where a PPO run is and what it has learned besides weights: the counters, the KL controller and the running
    score moments (``reward_scaling: running``). The experience maker updates the two objects in place, so saving,
    restoring and the stages mode read and write them here, nowhere else."""

    kl_controller: object = None  # rl.FixedKLController / rl.AdaptiveKLController
    score_moments: rl.RunningMoments = field(default_factory=rl.RunningMoments)

    def state_dict(self) -> Dict[str, float]:
        moments = self.score_moments
        return {
            **super().state_dict(),
            "kl_coef": float(self.kl_controller.value),
            "score_mean": moments.mean,
            "score_var": moments.var,
            "score_count": moments.count,
        }

    def load_state_dict(self, values: Dict[str, float]) -> None:
        super().load_state_dict(values)
        self.kl_controller.value = float(values["kl_coef"])
        moments = self.score_moments
        moments.mean, moments.var, moments.count = (
            float(values["score_mean"]),
            float(values["score_var"]),
            float(values["score_count"]),
        )


class PPOTrainer(RLTrainer):
    """Runs PPO iterations on one rank (the shared iteration driver, :class:`RLTrainer`).

    Args:
        cfg: the policy recipe; ``cfg.ppo`` holds the PPO knobs, ``cfg.output_dir`` receives logs and checkpoints.
        models: from :func:`build_ppo_models`.
        prompt_width: ``P``, the stored prompt width.
        prompts: ``prompts(iteration)`` -> this rank's ``num_rollouts`` prompts.
        resume: a PPO ``checkpoint`` root (with ``rank_<id>``) to continue from, or "".
        progress: a progress bar over the iterations (rank 0), labelled ``progress`` when a string.
    """

    name, label, update_label = "ppo", "PPO", "Epoch"
    train_columns = TRAIN_COLUMNS
    metric_names = LOSS_METRICS

    def __init__(
        self,
        cfg: RunConfig,
        models: PPOModels,
        prompt_width: int,
        prompts: PromptSource,
        resume: str = "",
        rank_id: int = 0,
        rank_size: int = 1,
        progress: Union[bool, str] = False,
    ):
        super().__init__(cfg, cfg.ppo, models.policy, prompt_width, prompts, rank_id, rank_size, progress)
        self.ppo, self.models = cfg.ppo, models
        self.save_data_file = ""
        model_cfg = models.policy.config
        self.maker = ExperienceMaker(
            models.policy,
            models.ref,
            models.reward,
            models.critic,
            self.ppo,
            prompt_width,
            model_cfg.pad_token_id,
            model_cfg.eos_token_id,
            rank_id,
            self.reduce,
        )
        state = PPOState(kl_controller=self.maker.kl_controller, score_moments=self.maker.score_moments)
        self.build(PPOLoss(models.policy, models.critic, self.ppo, prompt_width, rank_size), state, resume)

    @property
    def updates_per_batch(self) -> int:
        return self.ppo.ppo_epochs

    def token_counts(self, data: Dict[str, np.ndarray], rows: np.ndarray) -> np.ndarray:
        return token_counts(data, rows, self.prompt_width)

    def extra_models(self):
        critic = self.models.critic
        return {"critic_model": (CRITIC_PREFIX, critic)} if critic is not None else {}

    def train_on(self, experience: Experience, iteration: int) -> IterationResult:
        """``ppo_epochs`` passes over ``experience`` in shuffled minibatches of ``batch_size``; the metrics are
        means over the ranks and steps."""
        return self.update(experience.as_dict(), np.arange(len(experience)), iteration)

    def collect(self, iteration: int) -> Collected:
        """Make experience (written to ``save_data_file`` when set, each rank its own file)."""
        experience, rollout = self.maker.make_experience(self.prompts(iteration), iteration, self.cfg.seed)
        logger.info("Avg scores: %.6f (iteration %d)", rollout.score_mean, iteration)
        if self.save_data_file:
            save_experience(experience, rollout, self.save_data_file)
        return Collected(experience.as_dict(), np.arange(len(experience)), rollout_metrics(rollout), rollout)

    def fit(self, stop_after: Optional[int] = None, save_data_file: str = "") -> List[IterationResult]:
        """Run the remaining iterations (or up to iteration ``stop_after`` exclusive); returns their results."""
        self.save_data_file = save_data_file
        return super().fit(stop_after)


def rollout_metrics(rollout: RolloutStats) -> Dict[str, float]:
    """The rollout half of a PPO iteration's metrics."""
    return {
        "reward_mean": rollout.score_mean,
        "reward_std": rollout.score_std,
        "kl": rollout.kl,
        "kl_coef": rollout.kl_coef,
        "response_length": rollout.response_length,
        "no_eos_rate": rollout.no_eos_rate,
        "explained_variance": rollout.explained_variance,
    }


# ---------------------------------------------------------------------------------------------------------------
# Entry: one function for the command line, the examples and the tests

STAGES = ("all", "experience", "train")


def experience_file(save_data_file: str, rank_id: int, rank_size: int) -> str:
    """Each rank keeps its own experience: ``ppo.mindrecord`` -> ``ppo_rank_<id>.mindrecord`` when distributed
    (the predecessor let every rank write the same file, bug B20)."""
    if rank_size == 1:
        return save_data_file
    stem, ext = os.path.splitext(save_data_file)
    return f"{stem}_rank_{rank_id}{ext}"


def prompt_source(dataset_dir: str, cfg: RunConfig, rank_id: int, rank_size: int):
    """``(prompt width P, prompts(iteration) -> this rank's prompts)`` for a prompt MindRecord."""
    from mindrlhf.data.datasets import PROMPT_COLUMNS, prompt_indices, read_prompts, record_count

    count = record_count(dataset_dir, PROMPT_COLUMNS)
    pad = cfg.model.model_config.pad_token_id
    width = read_prompts(dataset_dir, np.array([0]), pad)["prompt_ids"].shape[1]
    ppo = cfg.ppo

    def prompts(iteration: int) -> Dict[str, np.ndarray]:
        indices = prompt_indices(
            count, ppo.num_rollouts, iteration, seed=cfg.seed, rank_id=rank_id, rank_size=rank_size
        )
        return read_prompts(dataset_dir, indices, pad)

    return width, prompts


def train_ppo(
    cfg: RunConfig,
    dataset_dir: str,
    reward: Union[ModelConfig, RewardFunction],
    sft_checkpoint: str = "",
    reward_checkpoint: str = "",
    critic_cfg: Optional[ModelConfig] = None,
    critic_checkpoint: str = "",
    resume: str = "",
    save_data_file: str = "",
    stage: str = "all",
    rank_id: int = 0,
    rank_size: int = 1,
    stop_after: Optional[int] = None,
    progress: Union[bool, str] = False,
) -> PPOTrainer:
    """Build everything and run PPO.

    Args:
        cfg: the policy (SFT) recipe with its ``ppo`` section.
        dataset_dir: prompt MindRecord from ``rlhf_data.py``.
        reward: the reward model's config, or a Python reward function of token lists.
        sft_checkpoint, reward_checkpoint, critic_checkpoint: weights (.ckpt, checkpoint root or Hugging Face folder).
        resume: a PPO checkpoint root to continue from.
        save_data_file: write each iteration's experience there (MindRecord + ``.json``).
        stage: ``all`` (experience then training, every iteration); ``experience`` (make the next iteration's
            experience into ``save_data_file`` and stop); ``train`` (train on ``save_data_file``, save, stop).
        stop_after: with ``all``, stop before this iteration (checkpointing first).
        progress: a progress bar over the iterations.
    Returns:
        The trainer (its ``state`` tells where the run is).
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} is not one of {', '.join(STAGES)}")
    if stage != "all" and not save_data_file:
        raise ValueError(f"stage {stage!r} needs save_data_file (the experience MindRecord)")
    width, prompts = prompt_source(dataset_dir, cfg, rank_id, rank_size)
    models = build_ppo_models(
        cfg.model.model_config,
        cfg.ppo,
        reward,
        critic_cfg,
        sft_checkpoint,
        reward_checkpoint,
        critic_checkpoint,
        rank_id,
        cfg.recompute_config.recompute,
        cfg.seed,
        cfg.lora,
    )
    trainer = PPOTrainer(cfg, models, width, prompts, resume, rank_id, rank_size, progress)
    data_file = experience_file(save_data_file, rank_id, rank_size) if save_data_file else ""
    if stage == "all":
        trainer.fit(stop_after, data_file)
    elif stage == "experience":
        run_experience_stage(trainer, data_file)
    else:
        run_train_stage(trainer, data_file)
    return trainer


def run_experience_stage(trainer: PPOTrainer, data_file: str) -> str:
    """Make the next iteration's experience with the current policy and write it (with the KL coefficient and
    score statistics it leaves behind, which the train stage adopts)."""
    iteration = trainer.state.iteration
    if iteration >= trainer.ppo.epochs:
        raise ValueError(f"all {trainer.ppo.epochs} PPO iterations are done; nothing to make experience for")
    experience, stats = trainer.maker.make_experience(trainer.prompts(iteration), iteration, trainer.cfg.seed)
    trainer.monitor.close()
    return save_experience(experience, stats, data_file, trainer.state.state_dict())


def run_train_stage(trainer: PPOTrainer, data_file: str) -> IterationResult:
    """Train one iteration on an experience file written by :func:`run_experience_stage`."""
    from mindrlhf.train.experience import load_experience

    experience, stats, state = load_experience(data_file)
    if int(state.get("iteration", -1)) != trainer.state.iteration:
        raise ValueError(
            f"{data_file} holds the experience of iteration {int(state.get('iteration', -1))}, but the "
            f"run is at "
            f"iteration {trainer.state.iteration}: make experience again with the current checkpoint"
        )
    if experience.query_tensors.shape[1] != trainer.prompt_width:
        raise ValueError(
            f"{data_file}: prompt width {experience.query_tensors.shape[1]} differs from the prompt "
            f"data's {trainer.prompt_width}"
        )
    trainer.state.load_state_dict({**trainer.state.state_dict(), **state})
    try:
        tick = time.perf_counter()
        result = trainer.train_on(experience, trainer.state.iteration)
        result.metrics = {**rollout_metrics(stats), **result.metrics}
        result.rollout, result.timings = stats, {"update": time.perf_counter() - tick}
        trainer.finish_iteration(result)
    finally:
        trainer.monitor.close()
    return result
