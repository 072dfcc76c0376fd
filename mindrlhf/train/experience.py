"""PPO's experience phase: prompts -> generation (KV cache) -> reward score -> policy / reference log-probs and
values -> KL-penalised rewards -> GAE -> :class:`Experience`.

Layout of one rollout (``P`` prompt width, ``N = max_new_tokens``, ``L = P + N``)::

    response_tensors  [pad .. pad | prompt | r_0 r_1 .. r_{n-1} | pad .. pad]     (L,)
    attention_mask    [ 0  ..  0  |  1..1  |  1   1  ..    1    |  0  ..  0 ]     (L,)
    window t = 0..N-1: logprobs[t] = log p_T(r_t | tokens before it), values[t] = V(state before r_t)

The prompt is left-padded to ``P`` so every response starts at column ``P``; positions count real tokens only, the
rule generation used, and the policy and reference log-probs are those of ``p_T = softmax(logits / T)``, ``T`` the
sampling temperature, so they are the log-probs of the sampling distribution (the predecessor scored a re-padded
layout with shifted positions, bug B15; top-k / top-p sampling is refused by :class:`PPOConfig`). The reward model
scores each full sequence at its own last real token, an eos (a response cut at ``max_new_tokens`` is scored with an
eos appended, :func:`mindrlhf.data.contract.close_with_eos`, where every preference row was trained); the score,
minus ``missing_eos_penalty`` when the response was cut without eos, lands on that row's last response token (not
on a pad, bug B14), with no constant subtracted (bug B12).

Data parallel: each rank makes its own rollouts, but every statistic over them (score scaling, advantage
whitening, the adaptive KL controller's mean KL, the logged rollout statistics) is summed over all ranks
(``reduce``, :class:`mindrlhf.train.distributed.AllReduceSum`), as one process on the global batch would compute it.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from dataclasses import dataclass
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
from mindspore import nn

from mindrlhf.config import PPOConfig
from mindrlhf.data.schemas import EXPERIENCE_SCHEMA
from mindrlhf.models import CausalLM, RewardModel
from mindrlhf import rl
from mindrlhf.train.rollout import RewardFunction, RolloutMaker
from mindrlhf.train.rollout import RolloutScorer, ends_with_eos, left_align_prompts  # noqa: F401 (re-exported)

logger = logging.getLogger(__name__)


@dataclass
class Experience:
    """A batch of ``B`` rollouts (numpy). The fields are those of the experience MindRecord, in its order
    (:data:`mindrlhf.data.schemas.EXPERIENCE_SCHEMA`); the PPO step reads some of them in its own
    order (:data:`mindrlhf.train.ppo.TRAIN_COLUMNS`). Names and meanings follow the predecessor's experience
    MindRecord (its floats were float16)."""

    query_tensors: np.ndarray  # (B, P) int32 left-padded prompt
    response_tensors: np.ndarray  # (B, L) int32 prompt + response (see the module docstring)
    logprobs: np.ndarray  # (B, N) float32 log-probs of the response tokens under the policy that sampled them
    values: np.ndarray  # (B, N) float32 value estimates before each response token
    rewards: np.ndarray  # (B, N) float32 KL penalty per token + the score on the last token
    advantages: np.ndarray  # (B, N) float32 GAE advantages (whitened when configured)
    returns: np.ndarray  # (B, N) float32 advantage + value (the value target)
    pretrain_ids: np.ndarray  # (B, T) int32 prompt + reference answer, for the ptx loss
    loss_mask: np.ndarray  # (B, T) int32 1 on the reference answer tokens of pretrain_ids
    attention_mask: np.ndarray  # (B, L) int32 1 on real prompt and response tokens

    def __len__(self) -> int:
        return len(self.response_tensors)

    @property
    def response_mask(self) -> np.ndarray:
        """``(B, N)`` 1 on generated tokens: ``attention_mask[:, P:]``."""
        return self.attention_mask[:, self.query_tensors.shape[1] :]

    def select(self, rows: Union[np.ndarray, slice]) -> "Experience":
        return Experience(**{f.name: getattr(self, f.name)[rows] for f in dataclasses.fields(self)})

    def as_dict(self) -> Dict[str, np.ndarray]:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @staticmethod
    def concat(parts: Sequence["Experience"]) -> "Experience":
        return Experience(
            **{f.name: np.concatenate([getattr(p, f.name) for p in parts]) for f in dataclasses.fields(Experience)}
        )


@dataclass
class RolloutStats:
    """Per-iteration statistics of the experience phase, over the rollouts of every data-parallel rank (``scores``
    excepted)."""

    score_mean: float  # raw reward-model / reward-function score
    score_std: float
    kl: float  # mean over rollouts of sum_t (logp - ref_logp); the adaptive KL controller's input
    response_length: float  # mean generated tokens (eos included)
    kl_coef: float  # the coefficient used for these rewards
    explained_variance: float  # of the old values for the returns
    scores: np.ndarray  # (B,) this rank's raw scores
    no_eos_rate: float = 0.0  # share of rollouts cut at max_new_tokens without eos


def scale_scores(
    scores: np.ndarray,
    has_eos: np.ndarray,
    ppo: PPOConfig,
    moments: rl.RunningMoments,
    reduce: rl.Reduce = rl.local_sum,
) -> np.ndarray:
    """Raw scores ``(B,)`` -> the scores the rewards use ``(B,)`` float32, in this order: minus
    ``ppo.missing_eos_penalty`` where ``has_eos`` is False; ``reward_scaling`` (``running``: ``moments`` take the
    batch of every rank, then divide by their std; ``whiten``: ``(s - mean) / std`` with the mean and population
    std of every rank's scores); clipped to ``[-reward_clip, reward_clip]``."""
    scores = np.asarray(scores, np.float64)
    if ppo.missing_eos_penalty is not None:
        scores = scores - ppo.missing_eos_penalty * (~np.asarray(has_eos, bool))
    if ppo.reward_scaling == "running":
        moments.update(scores, reduce)
        scores = scores / max(moments.std, 1e-8)
    elif ppo.reward_scaling == "whiten":
        mean, var, _ = rl.masked_moments(scores, None, reduce)
        scores = (scores - mean) / max(math.sqrt(var), 1e-8)
    if ppo.reward_clip is not None:
        scores = np.clip(scores, -ppo.reward_clip, ppo.reward_clip)
    return scores.astype(np.float32)


def rollout_stats(
    raw: Dict[str, np.ndarray],
    kl: np.ndarray,
    values: np.ndarray,
    returns: np.ndarray,
    kl_coef: float,
    reduce: rl.Reduce = rl.local_sum,
) -> Tuple[RolloutStats, float]:
    """The :class:`RolloutStats` of every rank's rollouts and their number (the adaptive controller's step count).

    Args:
        raw: the rank's rollouts (:meth:`ExperienceMaker.rollouts`); kl, values, returns: ``(B, N)``, masked.
    """
    mask = raw["response_mask"]
    kl_sum, tokens, no_eos, count = reduce(
        np.array([kl.sum(dtype=np.float64), mask.sum(dtype=np.float64), (~raw["ends_with_eos"]).sum(), len(mask)])
    )
    score_mean, score_var, _ = rl.masked_moments(raw["scores"], None, reduce)
    stats = RolloutStats(
        score_mean=score_mean,
        score_std=math.sqrt(score_var),
        kl=float(kl_sum / count),
        response_length=float(tokens / count),
        kl_coef=kl_coef,
        explained_variance=rl.explained_variance(values, returns, mask, reduce),
        scores=raw["scores"],
        no_eos_rate=float(no_eos / count),
    )
    return stats, float(count)


def build_experience(
    raw: Dict[str, np.ndarray],
    ppo: PPOConfig,
    kl_controller,
    moments: rl.RunningMoments,
    reduce: rl.Reduce = rl.local_sum,
) -> Tuple[Experience, RolloutStats]:
    """Rewards, GAE, whitening and statistics of one iteration's rollouts; then the KL controller moves.

    Every statistic (score scaling, advantage whitening, the controller's mean KL and rollout count, the logged
    statistics) is over the rollouts of every rank (``reduce``), so data-parallel ranks compute what one process
    would on their concatenated rollouts.

    Args:
        raw: this rank's ``B`` rollouts from :meth:`ExperienceMaker.rollouts`.
        kl_controller: :class:`rl.FixedKLController` or :class:`rl.AdaptiveKLController` (updated).
        moments: the running score moments (updated with ``reward_scaling: running``).
    Returns:
        (:class:`Experience` of ``B`` rollouts, :class:`RolloutStats`).
    """
    mask = raw["response_mask"]
    kl_coef = kl_controller.value
    scores = scale_scores(raw["scores"], raw["ends_with_eos"], ppo, moments, reduce)
    rewards, kl = rl.kl_penalised_rewards(scores, raw["logprobs"], raw["ref_logprobs"], mask, kl_coef)
    values = raw["values"] * mask
    advantages, returns = rl.gae(rewards, values, mask, ppo.gamma, ppo.lam)
    if ppo.whiten_advantages:
        advantages = rl.whiten(advantages, mask, reduce=reduce)
    experience = Experience(
        query_tensors=raw["query_tensors"],
        response_tensors=raw["response_tensors"],
        logprobs=(raw["logprobs"] * mask).astype(np.float32),
        values=values,
        rewards=rewards,
        advantages=advantages,
        returns=returns,
        pretrain_ids=raw["pretrain_ids"],
        loss_mask=raw["loss_mask"],
        attention_mask=raw["attention_mask"],
    )
    stats, count = rollout_stats(raw, kl, values, returns, kl_coef, reduce)
    kl_controller.update(stats.kl, count)
    return experience, stats


class ExperienceMaker(RolloutMaker):
    """Runs the experience phase for one PPO iteration: the shared rollouts (:class:`RolloutMaker`, with values),
    then PPO's rewards, advantages and returns (:func:`build_experience`).

    Args:
        policy: the actor (with a value head when the backbone is shared).
        ref: the frozen reference (the SFT model).
        reward: a :class:`RewardModel`, or a :data:`RewardFunction` of token lists.
        critic: the separate value network, or None with a shared backbone.
        ppo: the PPO settings (generation, KL, GAE, scaling, whitening).
        prompt_width: ``P``.
        pad_token_id, eos_token_id: of the policy's tokenizer.
        rank_id: this rank (sampling seeds differ per rank).
        reduce: sums statistics over the data-parallel ranks (:class:`mindrlhf.train.distributed.AllReduceSum`).
    """

    def __init__(
        self,
        policy: CausalLM,
        ref: CausalLM,
        reward: Union[RewardModel, RewardFunction],
        critic: Optional[nn.Cell],
        ppo: PPOConfig,
        prompt_width: int,
        pad_token_id: int,
        eos_token_id: Optional[int],
        rank_id: int = 0,
        reduce: rl.Reduce = rl.local_sum,
    ):
        ppo.check_sampling()  # again: the generation section may have been replaced after validation
        super().__init__(
            policy,
            ref,
            reward,
            ppo.generation,
            prompt_width,
            pad_token_id,
            eos_token_id,
            chunk_size=ppo.chunk_size,
            with_values=True,
            critic=critic,
            rank_id=rank_id,
        )
        self.ppo = ppo
        self.reduce = reduce
        self.kl_controller = (
            rl.AdaptiveKLController(ppo.kl_coef, ppo.target, ppo.horizon)
            if ppo.adaptive_kl
            else rl.FixedKLController(ppo.kl_coef)
        )
        self.score_moments = rl.RunningMoments()

    def make_experience(self, prompts: Dict[str, np.ndarray], iteration: int, seed: int = 0):
        """All rollouts of one iteration: :meth:`rollouts`, then :func:`build_experience` with this maker's KL
        controller, score moments and ``reduce``.

        Returns:
            (:class:`Experience` of ``R`` rollouts, :class:`RolloutStats`).
        """
        self.timings = {}
        raw = self.rollouts(prompts, iteration, seed)
        return build_experience(raw, self.ppo, self.kl_controller, self.score_moments, self.reduce)


# ---------------------------------------------------------------------------------------------------------------
# The experience MindRecord (``save_data_file``) for the stages mode


def save_experience(experience: Experience, stats: RolloutStats, path: str, state: Optional[dict] = None) -> str:
    """Write ``experience`` as a MindRecord (:data:`EXPERIENCE_SCHEMA`, one record per rollout) and its rollout
    statistics plus ``state`` as ``<path>.json``; both atomically, the JSON last."""
    from mindrlhf.atomic import write_json
    from mindrlhf.data.records import atomic_mindrecord

    data = experience.as_dict()
    records = [{name: data[name][i] for name in EXPERIENCE_SCHEMA} for i in range(len(experience))]
    with atomic_mindrecord(path, EXPERIENCE_SCHEMA, "ppo experience") as writer:
        writer.write_raw_data(records)
    meta = {
        "rows": len(experience),
        "prompt_width": int(experience.query_tensors.shape[1]),
        "stats": {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in dataclasses.asdict(stats).items()},
        "state": state or {},
    }
    write_json(path + ".json", meta)
    logger.info("ppo element saved! Output file refer: %s (%d rollouts)", path, len(experience))
    return path


def load_experience(path: str):
    """Read what :func:`save_experience` wrote: ``(Experience, RolloutStats, state dict)``."""
    import json
    import os

    from mindrlhf.data.datasets import record_count

    count = record_count(path, tuple(EXPERIENCE_SCHEMA))
    if not os.path.isfile(path + ".json"):
        raise FileNotFoundError(f"{path}.json: missing (the rollout statistics written with the experience)")
    with open(path + ".json", encoding="utf-8") as f:
        meta = json.load(f)
    from mindspore.mindrecord import FileReader

    reader = FileReader(path)
    try:
        rows = list(reader.get_next())
    finally:
        reader.close()
    if len(rows) != count:
        raise ValueError(f"{path}: read {len(rows)} of {count} records")
    width = meta["prompt_width"]
    fields = {}
    for name, spec in EXPERIENCE_SCHEMA.items():
        dtype = np.int32 if spec["type"] == "int32" else np.float32
        fields[name] = np.stack([np.asarray(r[name], dtype) for r in rows])
    fields["query_tensors"] = fields["query_tensors"].reshape(count, width)
    stats = dict(meta["stats"])
    stats["scores"] = np.asarray(stats["scores"], np.float32)
    return Experience(**fields), RolloutStats(**stats), meta.get("state", {})
