"""RL arithmetic of PPO's experience phase as pure numpy functions: per-token KL-penalised rewards, generalised
advantage estimation, whitening, reward scaling and the KL controllers.

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

Reduce = Callable[[np.ndarray], np.ndarray]  # values -> float64 sum of every rank's values (same shape)


def local_sum(values) -> np.ndarray:
    """The single-process ``reduce``: ``values`` as float64."""
    return np.array(values, np.float64)


def masked_moments(values: np.ndarray, mask: Optional[np.ndarray] = None, reduce: Reduce = local_sum,
                   ddof: int = 0) -> Tuple[float, float, float]:
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


def kl_penalised_rewards(scores: np.ndarray, logprobs: np.ndarray, ref_logprobs: np.ndarray, mask: np.ndarray,
                         kl_coef: float) -> Tuple[np.ndarray, np.ndarray]:
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


def gae(rewards: np.ndarray, values: np.ndarray, mask: np.ndarray, gamma: float, lam: float
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


def whiten(values: np.ndarray, mask: np.ndarray, shift_mean: bool = True, eps: float = 1e-8,
           reduce: Reduce = local_sum) -> np.ndarray:
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


def explained_variance(values: np.ndarray, returns: np.ndarray, mask: np.ndarray, reduce: Reduce = local_sum
                       ) -> float:
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
        m2 = self.var * self.count + batch_var * n + delta ** 2 * self.count * n / total
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
