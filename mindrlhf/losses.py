"""Losses as pure functions of tensors: each maps inputs (+ masks) to a scalar loss (and, where useful, the
per-example values for metrics). None reads a config or keeps state.

Shapes: ``B`` pairs / sequences, ``S`` sequence length.

The token means of the PPO losses take an optional ``count``, the normaliser to divide the masked sum by instead of
the mask's own sum: data-parallel PPO passes the global token count of the minibatch over the number of ranks, so
the mean-reduced gradients are those of one token mean over every rank's tokens.

GRPO's loss (:func:`grpo_policy_loss`) takes one advantage per sequence and ``N`` response slots
(``max_new_tokens``) per sequence.

The offline preference losses (:func:`preference_loss`: DPO, conservative DPO, IPO, hinge, SimPO, ORPO) take, per
pair, the response log-probability SUMMED over the response tokens (``logps``) and the number of those tokens
(``lengths``), all ``(B,)`` float32, and return the per-pair implicit rewards that :func:`preference_metrics`
turns into TRL's ``rewards/*`` and ``logps/*`` metrics.
"""

from __future__ import annotations

import mindspore as ms
from mindspore import ops

from mindrlhf.config import DPO_LOSS_TYPES, GRPO_LOSS_TYPES


def log_sigmoid(x):
    """Numerically stable ``log(sigmoid(x)) = min(x, 0) - log(1 + exp(-|x|))``."""
    return ops.minimum(x, 0.0) - ops.log1p(ops.exp(-ops.abs(x)))


def masked_mean(values, mask, axis=None, count=None):
    """Mean of ``values`` where ``mask`` is 1; 0 where a reduced slice has no valid entry.

    ``count`` (a scalar, whole-tensor mean only) replaces ``sum(mask)`` as the normaliser:
    ``sum(mask * values) / max(count, 1)``.
    """
    mask = ops.cast(mask, values.dtype)
    total = ops.reduce_sum(values * mask, axis) if axis is not None else ops.reduce_sum(values * mask)
    if count is None:
        count = ops.reduce_sum(mask, axis) if axis is not None else ops.reduce_sum(mask)
    return total / ops.maximum(count, 1.0)


def pairwise_span_loss(chosen_scores, rejected_scores, loss_mask):
    """Pairwise ranking loss averaged over the span where the pair differs.

    ``L_b = mean_{t: m_bt = 1} -log sigmoid(c_bt - r_bt)``, loss ``= mean_b L_b``.

    Args:
        chosen_scores, rejected_scores: ``(B, S)`` per-token scores of the chosen / rejected sequences.
        loss_mask: ``(B, S)`` 1 on ``[first divergence, end of the longer sequence)``.
    Returns:
        (loss scalar, per-pair loss ``(B,)``).
    """
    per_token = -log_sigmoid(chosen_scores - rejected_scores)
    per_pair = masked_mean(per_token, loss_mask, axis=1)
    return ops.mean(per_pair), per_pair


def pairwise_end_loss(chosen_end, rejected_end):
    """Bradley-Terry loss on end-of-sequence scores: ``mean_b -log sigmoid(c_b - r_b)``; inputs ``(B,)``."""
    per_pair = -log_sigmoid(chosen_end - rejected_end)
    return ops.mean(per_pair), per_pair


def pairwise_accuracy(chosen_end, rejected_end):
    """Share of pairs whose chosen score is strictly higher: ``(B,), (B,) -> scalar``."""
    return ops.mean(ops.cast(chosen_end > rejected_end, ms.float32))


def causal_lm_loss(logits, labels, loss_mask, count=None):
    """Next-token cross-entropy averaged over the tokens where ``loss_mask`` is 1 (SFT loss, PPO's ptx loss).

    ``L = sum_bt m_bt * (logsumexp(z_bt) - z_bt[y_bt]) / max(sum_bt m_bt, 1)``.

    Args:
        logits: ``(B, T, V)`` scores for the token at each position's NEXT step (callers shift: logits of
            positions ``0..S-2`` against labels ``1..S-1``).
        labels: ``(B, T)`` int target ids (any value where the mask is 0, e.g. -100 or pad).
        loss_mask: ``(B, T)`` 1 on tokens that count.
        count: the normaliser instead of ``sum(loss_mask)`` (see :func:`masked_mean`).
    Returns:
        scalar loss.
    """
    logp = ops.log_softmax(ops.cast(logits, ms.float32), -1)  # fused on CPU, unlike logsumexp
    mask = ops.cast(loss_mask, ms.float32)
    safe_labels = ops.cast(ops.maximum(labels, 0), ms.int32)  # masked -100 labels would index out of range
    picked = ops.squeeze(ops.gather_elements(logp, -1, ops.expand_dims(safe_labels, -1)), -1)
    return masked_mean(-picked, mask, count=count)


def ppo_policy_loss(logprobs, old_logprobs, advantages, mask, cliprange, count=None):
    """PPO clipped surrogate over the response tokens.

    ``r = exp(logp - logp_old)``, ``L = masked_mean(max(-A r, -A clip(r, 1 - eps, 1 + eps)))``.

    Args:
        logprobs, old_logprobs, advantages, mask: ``(B, N)`` per response token (mask 1 on generated tokens).
        cliprange: ``eps``.
        count: the normaliser of the token means instead of ``sum(mask)`` (see :func:`masked_mean`).
    Returns:
        (loss, clipfrac = share of tokens where the clipped term is taken, approx_kl = masked mean of
        ``r - 1 - log r``, the non-negative k3 estimate of KL(old || new)).
    """
    log_ratio = (logprobs - old_logprobs) * ops.cast(mask, logprobs.dtype)
    ratio = ops.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ops.clip_by_value(ratio, 1.0 - cliprange, 1.0 + cliprange)
    loss = masked_mean(ops.maximum(unclipped, clipped), mask, count=count)
    clipfrac = masked_mean(ops.cast(clipped > unclipped, ms.float32), mask, count=count)
    approx_kl = masked_mean(ratio - 1.0 - log_ratio, mask, count=count)
    return loss, clipfrac, approx_kl


def grpo_policy_loss(
    logprobs,
    old_logprobs,
    ref_logprobs,
    advantages,
    mask,
    epsilon_low,
    epsilon_high,
    beta,
    loss_type,
    max_completion_length,
    count=None,
):
    """GRPO clipped surrogate with an optional KL term to the reference, aggregated as GRPO, DAPO or Dr. GRPO.

    Per token: ``r = exp(logp - logp_old)``, ``l_t = max(-A r, -A clip(r, 1 - eps_low, 1 + eps_high))
    + beta * k3``, ``k3 = exp(ref - logp) - (ref - logp) - 1`` (Schulman's non-negative estimate of
    KL(policy || reference); the term is left out when ``beta`` is 0, and ``ref_logprobs`` are then not read).
    ``eps_high > eps_low`` is DAPO's clip-higher. Aggregation (``m`` the mask, ``n_b = sum_t m_bt``):

    - ``"grpo"``: ``(1/B) sum_b (1/n_b) sum_t m_bt l_bt``, each sequence's token mean, then the mean over
      sequences (Shao et al. 2024);
    - ``"token"``: ``sum_bt m_bt l_bt / sum_bt m_bt``, one mean over all tokens (DAPO); ``count`` replaces the
      token count when given;
    - ``"dr_grpo"``: ``sum_bt m_bt l_bt / (B * max_completion_length)``, a constant normaliser (Dr. GRPO).

    Args:
        logprobs, old_logprobs, ref_logprobs, mask: ``(B, N)`` float32 per response token (mask 1 on generated
            tokens, their eos included).
        advantages: ``(B,)`` one advantage per sequence, shared by its tokens.
        epsilon_low, epsilon_high: the clip range ``[1 - epsilon_low, 1 + epsilon_high]`` of the ratio.
        beta: KL coefficient (a Python float: 0 drops the KL term at graph construction).
        loss_type: ``"grpo"``, ``"token"`` or ``"dr_grpo"`` (a Python string, fixed at graph construction).
        max_completion_length: the ``dr_grpo`` normaliser per sequence (``generation.max_new_tokens``).
        count: the normaliser of the token means (the ``token`` loss, clipfrac and kl) instead of ``sum(mask)``
            (see :func:`masked_mean`).
    Returns:
        (loss, clipfrac = token share where the clipped term is taken, kl = token mean of ``k3``; 0 when ``beta``
        is 0).
    """
    if loss_type not in GRPO_LOSS_TYPES:
        raise ValueError("grpo_policy_loss: unknown loss_type " + repr(loss_type) + "; one of grpo, token, dr_grpo")
    mask = ops.cast(mask, logprobs.dtype)
    log_ratio = (logprobs - old_logprobs) * mask
    ratio = ops.exp(log_ratio)
    adv = ops.expand_dims(advantages, -1)
    unclipped = -adv * ratio
    clipped = -adv * ops.clip_by_value(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
    per_token = ops.maximum(unclipped, clipped)
    clipfrac = masked_mean(ops.cast(clipped > unclipped, ms.float32), mask, count=count)
    kl = ops.zeros((), logprobs.dtype)
    if beta > 0:
        ref_diff = (ref_logprobs - logprobs) * mask
        k3 = ops.exp(ref_diff) - ref_diff - 1.0
        per_token = per_token + beta * k3
        kl = masked_mean(k3, mask, count=count)
    if loss_type == "grpo":
        loss = ops.mean(masked_mean(per_token, mask, axis=1))
    elif loss_type == "token":
        loss = masked_mean(per_token, mask, count=count)
    else:
        loss = ops.reduce_sum(per_token * mask) / (logprobs.shape[0] * max_completion_length)
    return loss, clipfrac, kl


def ppo_value_loss(values, old_values, returns, mask, cliprange_value, count=None):
    """Clipped value loss: ``0.5 * masked_mean(max((V - R)^2, (V_clip - R)^2))`` with
    ``V_clip = V_old + clip(V - V_old, -c, c)``; all inputs ``(B, N)``; ``count`` as in :func:`masked_mean`.

    Returns:
        (loss, vf_clipfrac = share of tokens where the clipped error is the larger).
    """
    clipped = old_values + ops.clip_by_value(values - old_values, -cliprange_value, cliprange_value)
    err = ops.square(values - returns)
    err_clipped = ops.square(clipped - returns)
    loss = 0.5 * masked_mean(ops.maximum(err, err_clipped), mask, count=count)
    return loss, masked_mean(ops.cast(err_clipped > err, ms.float32), mask, count=count)


def masked_entropy(logits, mask, count=None):
    """Mean entropy of the next-token distributions ``(B, N, V)`` over the masked positions ``(B, N)``; ``count``
    as in :func:`masked_mean`."""
    logp = ops.log_softmax(ops.cast(logits, ms.float32), -1)
    vocab = logp.shape[-1]
    # -sum_v p log p, the sum over the vocabulary as a matmul (CPU reductions over a long axis are slow)
    plogp = ops.reshape(ops.exp(logp) * logp, (-1, vocab))
    entropy = -ops.reshape(ops.matmul(plogp, ops.ones((vocab, 1), ms.float32)), logp.shape[:-1])
    return masked_mean(entropy, mask, count=count)


def dpo_sigmoid_loss(chosen_logratios, rejected_logratios, beta, label_smoothing=0.0):
    """DPO (Rafailov et al. 2023) and, with ``label_smoothing`` ``eps`` > 0, conservative DPO (labels flipped with
    probability ``eps``): ``h = chosen_logratios - rejected_logratios``,
    ``l = -(1 - eps) log sigmoid(beta h) - eps log sigmoid(-beta h)``; inputs ``(B,)``, returns ``l (B,)``."""
    margin = beta * (chosen_logratios - rejected_logratios)
    return -(1.0 - label_smoothing) * log_sigmoid(margin) - label_smoothing * log_sigmoid(-margin)


def dpo_hinge_loss(chosen_logratios, rejected_logratios, beta):
    """SLiC's hinge on the DPO margin: ``l = relu(1 - beta (chosen_logratios - rejected_logratios))``, ``(B,)``."""
    return ops.relu(1.0 - beta * (chosen_logratios - rejected_logratios))


def ipo_loss(chosen_logratios, rejected_logratios, chosen_lengths, rejected_lengths, beta):
    """IPO (Azar et al. 2023, eq. 17) on per-token log-ratios, as TRL: ``h = chosen_logratios / n_c -
    rejected_logratios / n_r``, ``l = (h - 1 / (2 beta))^2``; inputs ``(B,)``, returns ``l (B,)``."""
    margin = chosen_logratios / ops.maximum(chosen_lengths, 1.0) - rejected_logratios / ops.maximum(
        rejected_lengths, 1.0
    )
    return ops.square(margin - 0.5 / beta)


def simpo_loss(chosen_avg_logps, rejected_avg_logps, beta, gamma, label_smoothing=0.0):
    """SimPO (Meng et al. 2024), reference-free: the length-normalised log-probs ``a_c, a_r`` with a target margin
    ``gamma``: ``m = beta (a_c - a_r) - gamma``, ``l = -(1 - eps) log sigmoid(m) - eps log sigmoid(-m)``; ``(B,)``."""
    margin = beta * (chosen_avg_logps - rejected_avg_logps) - gamma
    return -(1.0 - label_smoothing) * log_sigmoid(margin) - label_smoothing * log_sigmoid(-margin)


def orpo_odds_loss(chosen_avg_logps, rejected_avg_logps, beta):
    """ORPO's odds-ratio term (Hong et al. 2024), reference-free, on the length-normalised log-probs ``a``:
    ``log odds(a) = a - log(1 - exp(a))``, ``l = -beta log sigmoid(log odds(a_c) - log odds(a_r))``; ``(B,)``.
    The full ORPO loss adds the chosen responses' NLL (:func:`preference_loss`)."""
    log_odds = (chosen_avg_logps - rejected_avg_logps) - (
        ops.log1p(-ops.exp(chosen_avg_logps)) - ops.log1p(-ops.exp(rejected_avg_logps))
    )
    return -beta * log_sigmoid(log_odds)


def preference_loss(
    chosen_logps,
    rejected_logps,
    chosen_lengths,
    rejected_lengths,
    ref_chosen_logps,
    ref_rejected_logps,
    loss_type,
    beta,
    label_smoothing=0.0,
    simpo_gamma=0.5,
):
    """One offline preference loss, chosen by ``loss_type`` (a Python string, fixed at graph construction).

    With ``r_c = chosen_logps - ref_chosen_logps`` and ``r_r = rejected_logps - ref_rejected_logps`` (summed over
    each response's tokens) and ``a = logps / lengths`` (per-token means):

    - ``"sigmoid"``: :func:`dpo_sigmoid_loss` (``label_smoothing`` > 0: conservative DPO); rewards ``beta r``;
    - ``"ipo"``: :func:`ipo_loss`; rewards ``beta r``;
    - ``"hinge"``: :func:`dpo_hinge_loss`; rewards ``beta r``;
    - ``"simpo"``: :func:`simpo_loss` on ``a`` (no reference); rewards ``beta a``;
    - ``"orpo"``: the chosen responses' NLL ``-sum_b chosen_logps / sum_b chosen_lengths`` plus the mean of
      :func:`orpo_odds_loss` on ``a`` (no reference); rewards ``beta a``.

    The reference log-probs are not read by ``simpo`` and ``orpo``.

    Args:
        chosen_logps, rejected_logps: ``(B,)`` float32 policy log-probs of each response, summed over its tokens.
        chosen_lengths, rejected_lengths: ``(B,)`` float32 response tokens (eos included).
        ref_chosen_logps, ref_rejected_logps: ``(B,)`` float32 the same under the reference model.
        loss_type: one of ``sigmoid, ipo, hinge, simpo, orpo``.
        beta: the inverse temperature (> 0).
        label_smoothing: conservative DPO's / SimPO's label-flip probability in ``[0, 0.5)``.
        simpo_gamma: SimPO's target reward margin.
    Returns:
        ``(loss scalar, chosen_rewards (B,), rejected_rewards (B,))``, the rewards without gradient.
    """
    if loss_type not in DPO_LOSS_TYPES:
        raise ValueError(
            "preference_loss: unknown loss_type " + repr(loss_type) + "; one of " + ", ".join(DPO_LOSS_TYPES)
        )
    if loss_type in ("simpo", "orpo"):
        chosen = chosen_logps / ops.maximum(chosen_lengths, 1.0)
        rejected = rejected_logps / ops.maximum(rejected_lengths, 1.0)
        if loss_type == "simpo":
            loss = ops.mean(simpo_loss(chosen, rejected, beta, simpo_gamma, label_smoothing))
        else:
            nll = -ops.reduce_sum(chosen_logps) / ops.maximum(ops.reduce_sum(chosen_lengths), 1.0)
            loss = nll + ops.mean(orpo_odds_loss(chosen, rejected, beta))
    else:
        chosen = chosen_logps - ref_chosen_logps
        rejected = rejected_logps - ref_rejected_logps
        if loss_type == "sigmoid":
            loss = ops.mean(dpo_sigmoid_loss(chosen, rejected, beta, label_smoothing))
        elif loss_type == "ipo":
            loss = ops.mean(ipo_loss(chosen, rejected, chosen_lengths, rejected_lengths, beta))
        else:
            loss = ops.mean(dpo_hinge_loss(chosen, rejected, beta))
    return loss, ops.stop_gradient(beta * chosen), ops.stop_gradient(beta * rejected)


PREFERENCE_METRICS = (
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margins",
    "rewards/accuracies",
    "logps/chosen",
    "logps/rejected",
)


def preference_metrics(chosen_rewards, rejected_rewards, chosen_logps, rejected_logps):
    """TRL's metrics of a batch of pairs, as one float32 vector in the order of :data:`PREFERENCE_METRICS`: the
    means over pairs of the chosen / rejected rewards, their margin, ``1[chosen > rejected]`` (strict), and the
    chosen / rejected summed log-probs. Inputs ``(B,)``; returns ``(6,)``."""
    values = [
        chosen_rewards,
        rejected_rewards,
        chosen_rewards - rejected_rewards,
        ops.cast(chosen_rewards > rejected_rewards, ms.float32),
        chosen_logps,
        rejected_logps,
    ]
    return ops.stack([ops.mean(ops.stop_gradient(ops.cast(v, ms.float32))) for v in values])
