"""RL arithmetic of PPO's experience phase as pure numpy functions: per-token KL-penalised rewards, generalised
advantage estimation, whitening, reward scaling and the KL controllers; and GRPO's group advantages (GRPO,
Dr. GRPO, RLOO, REINFORCE++ with baseline), DAPO's dynamic-sampling filter and soft overlong penalty.

GRPO shapes: ``B = P * G`` rollouts, ``P`` prompts with ``G`` completions each (the group size); the rows of one
group are consecutive: rows ``[g G, (g + 1) G)`` are the completions of prompt ``g``.

Shapes: ``B`` rollouts, ``N`` response slots (``max_new_tokens``). ``mask (B, N)`` is 1 on the tokens a row
generated (its eos included) and 0 on the padding after them; every row has at least one token.

Statistics over a batch (:func:`masked_moments`, :func:`whiten`, :func:`explained_variance`,
:meth:`RunningMoments.update`) take ``reduce``, a function that sums an array over the data-parallel ranks
(:class:`mindrlhf.train.distributed.AllReduceSum`; the default sums over this process only). They are computed
from summed moments, two passes (sum and count, then the sum of squared deviations from the global mean), so the
result on every rank equals the single-process statistic of the ranks' concatenated data.
"""

from __future__ import annotations

import math
from typing import Callable, Optional, Tuple

import numpy as np

from mindrlhf.config import ADVANTAGE_ESTIMATORS

Reduce = Callable[[np.ndarray], np.ndarray]  # values -> float64 sum of every rank's values (same shape)


def local_sum(values) -> np.ndarray:
    """The single-process ``reduce``: ``values`` as float64."""
    return np.array(values, np.float64)


def masked_moments(
    values: np.ndarray, mask: Optional[np.ndarray] = None, reduce: Reduce = local_sum, ddof: int = 0
) -> Tuple[float, float, float]:
    """Mean and variance of the masked entries of ``values`` over every rank.

    ``mean = sum(m x) / n``, ``var = sum(m (x - mean)^2) / (n - ddof)``, ``n = sum(m)``, each sum over all ranks
    (``reduce``); ``var`` is nan when ``n <= ddof``.

    Args:
        values: any shape; mask: the same shape (None = every entry).
        reduce: sums an array over the ranks.
        ddof: 0 for the population variance, 1 for the unbiased one.
    Returns:
        (mean, var, n) as floats.
    """
    values = np.asarray(values, np.float64)
    mask = np.ones_like(values) if mask is None else np.asarray(mask, np.float64)
    total, count = reduce(np.array([(values * mask).sum(), mask.sum()]))
    mean = total / count if count > 0 else 0.0
    squares = reduce(np.array([(np.square(values - mean) * mask).sum()]))[0]
    var = squares / (count - ddof) if count > ddof else float("nan")
    return float(mean), float(var), float(count)


def last_token_index(mask: np.ndarray) -> np.ndarray:
    """``(B, N)`` mask -> ``(B,)`` index of each row's last 1 (0 for an all-zero row)."""
    mask = np.asarray(mask) != 0
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(axis=1), last, 0)


def kl_penalised_rewards(
    scores: np.ndarray, logprobs: np.ndarray, ref_logprobs: np.ndarray, mask: np.ndarray, kl_coef: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Per-token rewards ``r_t = -kl_coef * (logp_t - ref_logp_t)``, plus the sequence score on each row's own
    last generated token (InstructGPT / trlx; the predecessor added the KL term with the wrong sign).

    Args:
        scores: ``(B,)`` reward-model (or reward-function) score of each response.
        logprobs, ref_logprobs: ``(B, N)`` log-probs of the generated tokens under the policy and the reference.
        mask: ``(B, N)``.
        kl_coef: KL penalty weight (>= 0).
    Returns:
        (rewards ``(B, N)`` float32, zero where the mask is 0; kl ``(B, N)`` = ``logp - ref_logp`` masked).
    """
    mask = np.asarray(mask, np.float32)
    kl = (np.asarray(logprobs, np.float32) - np.asarray(ref_logprobs, np.float32)) * mask
    rewards = -kl_coef * kl
    rows = np.arange(len(mask))
    rewards[rows, last_token_index(mask)] += np.asarray(scores, np.float32)
    return rewards.astype(np.float32), kl.astype(np.float32)


def gae(
    rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float, lam: float
) -> Tuple[np.ndarray, np.ndarray]:
    """Generalised advantage estimation over the generated tokens, backwards in time:

    ``delta_t = r_t + gamma * V_{t+1} * m_{t+1} - V_t``; ``A_t = delta_t + gamma * lam * m_{t+1} * A_{t+1}``;
    ``returns_t = A_t + V_t``; the episode ends after a row's last token (``m_{t+1} = 0``), and ``A``, ``returns``
    are 0 where the mask is 0.

    Args:
        rewards, values, mask: ``(B, N)``; values at position ``t`` estimate the return from token ``t`` on.
        gamma: discount; lam: GAE lambda.
    Returns:
        (advantages ``(B, N)``, returns ``(B, N)``), float32.
    """
    mask = np.asarray(mask, np.float32)
    rewards = np.asarray(rewards, np.float32) * mask
    values = np.asarray(values, np.float32) * mask
    steps = rewards.shape[1]
    advantages = np.zeros_like(rewards)
    next_value = np.zeros(len(rewards), np.float32)
    next_advantage = np.zeros(len(rewards), np.float32)
    next_mask = np.zeros(len(rewards), np.float32)
    for t in range(steps - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_value * next_mask - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_mask * next_advantage) * mask[:, t]
        next_value, next_advantage, next_mask = values[:, t], advantages[:, t], mask[:, t]
    returns = (advantages + values) * mask
    return advantages.astype(np.float32), returns.astype(np.float32)


def whiten(
    values: np.ndarray, mask: np.ndarray, shift_mean: bool = True, eps: float = 1e-8, reduce: Reduce = local_sum
) -> np.ndarray:
    """``(x - mean) / sqrt(var + eps)`` over the masked entries of every rank (mean added back when ``shift_mean``
    is False); 0 where the mask is 0. Uses the unbiased variance, as trlx and TRL do; with fewer than two masked
    entries in all the values come back masked, unchanged.

    Args:
        values, mask: ``(B, N)``.
        reduce: sums over the ranks (:func:`masked_moments`).
    Returns:
        ``(B, N)`` float32.
    """
    mask = np.asarray(mask, np.float64)
    values = np.asarray(values, np.float64)
    mean, var, count = masked_moments(values, mask, reduce, ddof=1)
    if count < 2:
        return (values * mask).astype(np.float32)
    out = (values - mean) / math.sqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return (out * mask).astype(np.float32)


def explained_variance(values: np.ndarray, returns: np.ndarray, mask: np.ndarray, reduce: Reduce = local_sum) -> float:
    """``1 - Var(R - V) / Var(R)`` over the masked entries of every rank, population variances (nan when the
    returns do not vary); inputs ``(B, N)``."""
    returns, values = np.asarray(returns, np.float64), np.asarray(values, np.float64)
    var = masked_moments(returns, mask, reduce)[1]
    residual = masked_moments(returns - values, mask, reduce)[1]
    return float("nan") if var == 0 else float(1.0 - residual / var)


class RunningMoments:
    """Running mean and standard deviation of every score seen (Chan et al. parallel update), for
    ``reward_scaling: running`` (scores divided by the running std, as trlx does)."""

    def __init__(self, mean: float = 0.0, var: float = 1.0, count: float = 1e-24):
        self.mean, self.var, self.count = mean, var, count

    @property
    def std(self) -> float:
        return math.sqrt(self.var)

    def update(self, x: np.ndarray, reduce: Reduce = local_sum) -> None:
        """Add the batch ``x`` (any shape; every rank's, summed by ``reduce``)."""
        batch_mean, batch_var, n = masked_moments(np.asarray(x, np.float64).ravel(), None, reduce)
        self.update_from_moments(batch_mean, batch_var, n)

    def update_from_moments(self, batch_mean: float, batch_var: float, n: float) -> None:
        """Merge a batch given by its mean, population variance and size (Chan et al.)."""
        if n == 0:
            return
        delta = batch_mean - self.mean
        total = self.count + n
        m2 = self.var * self.count + batch_var * n + delta**2 * self.count * n / total
        self.mean += delta * n / total
        self.var = m2 / total
        self.count = total


class FixedKLController:
    """A constant KL coefficient."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        del current_kl, n_steps


class AdaptiveKLController:
    """Ziegler et al. (2019): move the coefficient towards a target KL.

    ``e = clip(KL / target - 1, -0.2, 0.2)``; ``beta <- beta * (1 + e * n_steps / horizon)``.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"adaptive KL needs target > 0 and horizon > 0, got {target} and {horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon


# ---------------------------------------------------------------------------------------------------------------
# GRPO: advantages of groups of completions of one prompt


def _groups(scores: np.ndarray, group_size: int) -> np.ndarray:
    """``(B,)`` scores -> ``(B / G, G)`` float64, one row per group; ValueError unless ``G >= 1`` divides ``B``."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 1:
        raise ValueError(f"scores must be one score per rollout, shape (B,), got shape {scores.shape}")
    if group_size < 1 or len(scores) % group_size:
        raise ValueError(
            f"{len(scores)} scores do not split into groups of {group_size} (group_size must be >= 1 "
            f"and divide the number of rollouts)"
        )
    return scores.reshape(-1, group_size)


def group_advantages(scores: np.ndarray, group_size: int, scale_std: bool = True, eps: float = 1e-4) -> np.ndarray:
    """GRPO's group-relative advantage of each completion (Shao et al. 2024, as TRL's GRPOTrainer):

    ``A_i = (r_i - mean_g) / (std_g + eps)`` with ``mean_g``, ``std_g`` the mean and the unbiased standard
    deviation (``ddof = 1``) of the scores of the completion's group; ``std_g = 0`` for groups of one.
    ``scale_std=False`` is Dr. GRPO (Liu et al. 2025): ``A_i = r_i - mean_g``, no division. A group whose scores
    are all equal gets advantage 0.

    Args:
        scores: ``(B,)`` score of each rollout, groups of ``group_size`` consecutive rows.
        group_size: ``G``.
        scale_std: divide by the group's standard deviation (GRPO) or not (Dr. GRPO).
        eps: added to the standard deviation.
    Returns:
        ``(B,)`` float32.
    """
    groups = _groups(scores, group_size)
    centred = groups - groups.mean(axis=1, keepdims=True)
    if scale_std:
        std = groups.std(axis=1, ddof=1, keepdims=True) if group_size > 1 else np.zeros_like(centred)
        centred = centred / (std + eps)
    return centred.reshape(-1).astype(np.float32)


def rloo_advantages(scores: np.ndarray, group_size: int) -> np.ndarray:
    """REINFORCE leave-one-out (Ahmadian et al. 2024): each completion's score minus the mean of the OTHER scores
    of its group, ``A_i = r_i - (sum_g - r_i) / (G - 1)``.

    Args:
        scores: ``(B,)``, groups of ``group_size`` consecutive rows.
        group_size: ``G >= 2`` (a group of one has no other completion to compare with).
    Returns:
        ``(B,)`` float32.
    """
    if group_size < 2:
        raise ValueError(
            f"rloo advantages need a group size >= 2 (a baseline from the other completions of "
            f"the prompt), got {group_size}"
        )
    groups = _groups(scores, group_size)
    others = (groups.sum(axis=1, keepdims=True) - groups) / (group_size - 1)
    return (groups - others).reshape(-1).astype(np.float32)


def reinforce_baseline_advantages(
    scores: np.ndarray, group_size: int, reduce: Reduce = local_sum, eps: float = 1e-8
) -> np.ndarray:
    """REINFORCE++ with baseline (OpenRLHF's ``reinforce_baseline``): the group mean is subtracted, then the
    centred scores are divided by their standard deviation over the whole batch of every rank:

    ``c_i = r_i - mean_g``; ``A_i = c_i / sqrt(var(c) + eps)``, ``var(c)`` the population variance of ``c`` over
    all rollouts of all ranks (:func:`masked_moments` with ``reduce``). The batch mean of ``c`` is 0 (every
    group's ``c`` sum to 0), so this is whitening; it is not subtracted again, which keeps an all-equal group's
    advantages exactly 0. Groups never straddle ranks.

    Args:
        scores: ``(B,)`` this rank's scores, groups of ``group_size`` consecutive rows.
        group_size: ``G``.
        reduce: sums over the ranks.
        eps: added to the variance.
    Returns:
        ``(B,)`` float32.
    """
    groups = _groups(scores, group_size)
    centred = (groups - groups.mean(axis=1, keepdims=True)).reshape(-1)
    var = masked_moments(centred, None, reduce)[1]
    return (centred / math.sqrt(var + eps)).astype(np.float32)


def grpo_advantages(
    scores: np.ndarray, group_size: int, estimator: str, scale_rewards: bool = True, reduce: Reduce = local_sum
) -> np.ndarray:
    """The advantages of ``grpo.advantage_estimator``: ``grpo`` (:func:`group_advantages`, divided by the group
    std when ``scale_rewards``), ``dr_grpo`` (:func:`group_advantages` without the std, whatever
    ``scale_rewards``), ``rloo`` (:func:`rloo_advantages`) or ``reinforce_baseline``
    (:func:`reinforce_baseline_advantages`, global over the ranks via ``reduce``). ``(B,)`` -> ``(B,)`` float32."""
    if estimator == "grpo":
        return group_advantages(scores, group_size, scale_std=scale_rewards)
    if estimator == "dr_grpo":
        return group_advantages(scores, group_size, scale_std=False)
    if estimator == "rloo":
        return rloo_advantages(scores, group_size)
    if estimator == "reinforce_baseline":
        return reinforce_baseline_advantages(scores, group_size, reduce)
    raise ValueError(f"unknown advantage estimator {estimator!r}; one of {', '.join(ADVANTAGE_ESTIMATORS)}")


def dynamic_sampling_keep(scores: np.ndarray, group_size: int) -> np.ndarray:
    """DAPO's dynamic sampling filter (Yu et al. 2025): False on every row of a group whose scores are all equal
    (all right or all wrong: a zero group-relative advantage, so no policy gradient), True elsewhere.

    Args:
        scores: ``(B,)``, groups of ``group_size`` consecutive rows.
        group_size: ``G``.
    Returns:
        ``(B,)`` bool.
    """
    groups = _groups(scores, group_size)
    varied = groups.max(axis=1) != groups.min(axis=1)
    return np.repeat(varied, group_size)


def overlong_penalty(lengths: np.ndarray, max_new_tokens: int, buffer: int, factor: float) -> np.ndarray:
    """DAPO's soft overlong punishment, added to the score of each rollout:

    ``p = 0`` for ``L <= L_max - buffer``, else ``p = -factor * (L - (L_max - buffer)) / buffer``, falling linearly
    to ``-factor`` at ``L = L_max`` (``L_max = max_new_tokens``). ``buffer = 0`` turns it off (all zeros).

    Args:
        lengths: ``(B,)`` generated tokens of each rollout (at most ``max_new_tokens``).
        max_new_tokens: ``L_max``.
        buffer: the length of the punished range at the end, ``0 <= buffer <= max_new_tokens``.
        factor: the penalty at ``L_max`` (>= 0).
    Returns:
        ``(B,)`` float32, <= 0.
    """
    lengths = np.asarray(lengths, np.float64)
    if not 0 <= buffer <= max_new_tokens:
        raise ValueError(f"overlong buffer must be in [0, max_new_tokens = {max_new_tokens}], got {buffer}")
    if buffer == 0:
        return np.zeros(lengths.shape, np.float32)
    exceed = np.maximum(lengths - (max_new_tokens - buffer), 0.0)
    return (-factor * exceed / buffer).astype(np.float32)
