"""GRPO arithmetic against naive numpy loops written from the papers' definitions: the group advantages of
``mindrlhf.rl`` (GRPO, Dr. GRPO, RLOO, REINFORCE++ with baseline over two simulated ranks), DAPO's dynamic-sampling
filter and soft overlong penalty, and ``mindrlhf.losses.grpo_policy_loss`` (each aggregation, clip-higher, the k3 KL
term, its gradient) compiled in GRAPH mode and run in PYNATIVE mode.

Groups are ``G`` consecutive rows: rollouts ``[g G, (g + 1) G)`` are the completions of prompt ``g``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import mindspore as ms
from mindspore import nn

from mindrlhf import rl
from mindrlhf.losses import grpo_policy_loss
from tests.helpers import ThreadRanks, mask_from_lengths, t32

RTOL, ATOL = 1e-5, 1e-5


# ------------------------------------------------------------------------------------------- naive references


def naive_group_advantages(scores, g, scale_std, eps=1e-4):
    out = []
    for start in range(0, len(scores), g):
        group = [float(x) for x in scores[start : start + g]]
        mean = sum(group) / g
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / (g - 1))  # unbiased
        out += [(x - mean) / (std + eps) if scale_std else x - mean for x in group]
    return np.array(out)


def naive_rloo(scores, g):
    out = []
    for start in range(0, len(scores), g):
        group = [float(x) for x in scores[start : start + g]]
        for i, x in enumerate(group):
            others = [y for j, y in enumerate(group) if j != i]
            out.append(x - sum(others) / len(others))
    return np.array(out)


def naive_reinforce_baseline(scores, g, eps=1e-8):
    centred = []
    for start in range(0, len(scores), g):
        group = [float(x) for x in scores[start : start + g]]
        mean = sum(group) / g
        centred += [x - mean for x in group]
    mean = sum(centred) / len(centred)  # 0 up to rounding
    var = sum((c - mean) ** 2 for c in centred) / len(centred)  # population variance over the whole batch
    return np.array([c / math.sqrt(var + eps) for c in centred])


def naive_grpo_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, loss_type, max_len, count=None):
    """(loss, clipfrac, kl, d loss / d logp), float64, one token at a time."""
    batch, n = logp.shape
    tokens = sum(int(mask[b, t]) for b in range(batch) for t in range(n))
    norm = tokens if count is None else count
    loss = clipped_count = kl_total = 0.0
    grad = np.zeros((batch, n))
    for b in range(batch):
        row_tokens = sum(int(mask[b, t]) for t in range(n))
        weight = {"grpo": 1.0 / (batch * row_tokens), "token": 1.0 / norm, "dr_grpo": 1.0 / (batch * max_len)}[
            loss_type
        ]
        for t in range(n):
            if not mask[b, t]:
                continue
            r = math.exp(float(logp[b, t]) - float(old[b, t]))
            a = float(adv[b])
            unclipped = -a * r
            clipped = -a * min(max(r, 1.0 - eps_low), 1.0 + eps_high)
            term, d_term = max(unclipped, clipped), (0.0 if clipped > unclipped else -a * r)
            clipped_count += clipped > unclipped
            if beta > 0:
                d = float(ref[b, t]) - float(logp[b, t])
                k3 = math.exp(d) - d - 1.0
                term += beta * k3
                d_term += beta * (1.0 - math.exp(d))  # d k3 / d logp
                kl_total += k3
            loss += weight * term
            grad[b, t] = weight * d_term
    return loss, clipped_count / norm, kl_total / norm, grad


# ------------------------------------------------------------------------------------------------ advantages


@pytest.mark.parametrize("scale_std", [True, False])
def test_group_advantages_match_the_loop(scale_std):
    rng = np.random.default_rng(0)
    scores = rng.normal(0.5, 2.0, 12).astype(np.float32)
    scores[4:8] = 0.75  # a group of equal rewards: advantage 0, not 0/0
    got = rl.group_advantages(scores, 4, scale_std=scale_std)
    assert got.dtype == np.float32 and got.shape == (12,)
    np.testing.assert_allclose(got, naive_group_advantages(scores, 4, scale_std), rtol=RTOL, atol=ATOL)
    assert np.all(got[4:8] == 0.0)
    for start in (0, 8):  # advantages sum to 0 in every group
        assert abs(got[start : start + 4].sum()) < 1e-5


def test_group_advantages_use_the_unbiased_std():
    scores = np.array([1.0, 0.0, 0.0, 0.0], np.float32)  # mean 0.25, unbiased std 0.5, population std 0.433
    got = rl.group_advantages(scores, 4)
    np.testing.assert_allclose(got, np.array([0.75, -0.25, -0.25, -0.25]) / (0.5 + 1e-4), rtol=1e-6)
    population = (scores - scores.mean()) / (scores.std() + 1e-4)
    assert np.abs(got - population).max() > 0.1


def test_group_advantages_of_single_completions_are_zero():
    np.testing.assert_array_equal(rl.group_advantages(np.array([3.0, -1.0]), 1), [0.0, 0.0])


def test_rloo_advantages_match_the_loop():
    rng = np.random.default_rng(1)
    for g in (2, 3, 5):
        scores = rng.normal(size=4 * g)
        got = rl.rloo_advantages(scores, g)
        assert got.dtype == np.float32
        np.testing.assert_allclose(got, naive_rloo(scores, g), rtol=RTOL, atol=ATOL)
    # RLOO is the Dr. GRPO advantage scaled by G / (G - 1)
    scores = rng.normal(size=12)
    np.testing.assert_allclose(rl.rloo_advantages(scores, 4), rl.group_advantages(scores, 4, False) * 4 / 3, rtol=1e-5)


@pytest.mark.parametrize("fn", [rl.rloo_advantages, lambda s, g: rl.group_advantages(s, g)])
def test_bad_group_sizes_are_refused(fn):
    with pytest.raises(ValueError, match="groups of 4"):
        fn(np.zeros(6), 4)
    with pytest.raises(ValueError, match="shape"):
        fn(np.zeros((2, 4)), 4)


def test_rloo_needs_two_completions_per_group():
    with pytest.raises(ValueError, match="group size >= 2"):
        rl.rloo_advantages(np.zeros(4), 1)


def test_reinforce_baseline_advantages_match_the_loop_and_are_global_over_ranks():
    rng = np.random.default_rng(2)
    parts = [rng.normal(0.0, 0.3, 8), rng.normal(1.0, 3.0, 4)]  # rank 0: 2 groups of 4, rank 1: 1 group
    parts[0][4:] = 2.0  # an all-equal group: advantage 0
    whole = np.concatenate(parts)
    expected = naive_reinforce_baseline(whole, 4)
    single = rl.reinforce_baseline_advantages(whole, 4)
    assert single.dtype == np.float32
    np.testing.assert_allclose(single, expected, rtol=RTOL, atol=ATOL)
    assert np.all(single[4:8] == 0.0)
    got = ThreadRanks().run(lambda rank, reduce: rl.reinforce_baseline_advantages(parts[rank], 4, reduce))
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=RTOL, atol=ATOL)
    local = [rl.reinforce_baseline_advantages(p, 4) for p in parts]  # each rank's own std: other advantages
    assert np.abs(np.concatenate(local) - expected).max() > 0.1


@pytest.mark.parametrize("estimator", ["grpo", "dr_grpo", "rloo", "reinforce_baseline"])
def test_grpo_advantages_dispatches_on_the_estimator(estimator):
    scores = np.random.default_rng(3).normal(size=8)
    expected = {
        "grpo": naive_group_advantages(scores, 4, True),
        "dr_grpo": naive_group_advantages(scores, 4, False),
        "rloo": naive_rloo(scores, 4),
        "reinforce_baseline": naive_reinforce_baseline(scores, 4),
    }[estimator]
    np.testing.assert_allclose(rl.grpo_advantages(scores, 4, estimator), expected, rtol=RTOL, atol=ATOL)
    # scale_rewards=False turns the grpo estimator into Dr. GRPO's; the others ignore it
    unscaled = naive_group_advantages(scores, 4, False) if estimator == "grpo" else expected
    np.testing.assert_allclose(
        rl.grpo_advantages(scores, 4, estimator, scale_rewards=False), unscaled, rtol=RTOL, atol=ATOL
    )


def test_grpo_advantages_refuses_an_unknown_estimator():
    with pytest.raises(ValueError, match="unknown advantage estimator 'ppo'.*reinforce_baseline"):
        rl.grpo_advantages(np.zeros(4), 2, "ppo")


# --------------------------------------------------------------------------------- dynamic sampling, overlong


def test_dynamic_sampling_keeps_groups_whose_scores_differ():
    scores = np.array([1, 1, 1, 1, 0, 0, 1, 0, 0.5, 0.5, 0.5, 0.5, 2, 2, 2, 2 + 1e-6], np.float32)
    expected = []
    for start in range(0, len(scores), 4):
        group = list(scores[start : start + 4])
        expected += [any(x != group[0] for x in group)] * 4
    got = rl.dynamic_sampling_keep(scores, 4)
    assert got.dtype == bool and got.tolist() == expected
    assert got.tolist() == [False] * 4 + [True] * 4 + [False] * 4 + [True] * 4


def test_overlong_penalty_matches_the_loop():
    max_new, buffer, factor = 16, 4, 1.5
    lengths = np.arange(1, max_new + 1)
    expected = [0.0 if n <= max_new - buffer else -factor * (n - (max_new - buffer)) / buffer for n in lengths]
    got = rl.overlong_penalty(lengths, max_new, buffer, factor)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert got[max_new - buffer - 1] == 0.0 and got[max_new - buffer] == pytest.approx(-factor / buffer)
    assert got[-1] == pytest.approx(-factor)  # -factor at max_new_tokens
    np.testing.assert_array_equal(rl.overlong_penalty(lengths, max_new, 0, factor), np.zeros(max_new))  # off
    with pytest.raises(ValueError, match="overlong buffer"):
        rl.overlong_penalty(lengths, max_new, max_new + 1, factor)


# ------------------------------------------------------------------------------------------------- policy loss


class GRPOLoss(nn.Cell):
    """``grpo_policy_loss`` with its Python settings fixed at construction, so GRAPH mode compiles it."""

    def __init__(self, epsilon_low, epsilon_high, beta, loss_type, max_len):
        super().__init__()
        self.settings = (epsilon_low, epsilon_high, beta, loss_type, max_len)

    def construct(self, logp, old, ref, adv, mask):
        eps_low, eps_high, beta, loss_type, max_len = self.settings
        return grpo_policy_loss(logp, old, ref, adv, mask, eps_low, eps_high, beta, loss_type, max_len)


class GRPOLossAndGrad(nn.Cell):
    """The loss, its metrics and ``d loss / d logprobs``."""

    def __init__(self, loss):
        super().__init__()
        self.loss = loss
        self.grad = ms.value_and_grad(self.loss, grad_position=0, has_aux=True)

    def construct(self, logp, old, ref, adv, mask):
        return self.grad(logp, old, ref, adv, mask)


def loss_inputs(seed=0, spread=0.3):
    rng = np.random.default_rng(seed)
    mask = mask_from_lengths([1, 6, 3, 5], 6)
    old = rng.normal(-2.0, 0.5, mask.shape).astype(np.float32)
    logp = (old + rng.normal(0.0, spread, mask.shape)).astype(np.float32)
    ref = (logp + rng.normal(0.0, 0.5, mask.shape)).astype(np.float32)
    adv = np.array([1.2, -0.7, 0.4, -1.5], np.float32)
    return logp, old, ref, adv, mask


def run_loss(inputs, *settings):
    out = GRPOLoss(*settings)(*[t32(x) for x in inputs])
    return [float(x.asnumpy()) for x in out]


@pytest.mark.parametrize("loss_type", ["grpo", "token", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.1])
def test_grpo_loss_matches_the_loop(ms_mode, loss_type, beta):
    inputs = loss_inputs(seed=1)
    settings = (0.1, 0.25, beta, loss_type, 8)  # clip-higher: [0.9, 1.25]
    got = run_loss(inputs, *settings)
    exp_loss, exp_clipfrac, exp_kl, _ = naive_grpo_loss(*inputs, *settings)
    assert 0.0 < exp_clipfrac < 1.0  # the data mixes clipped and unclipped tokens
    np.testing.assert_allclose(got, [exp_loss, exp_clipfrac, exp_kl], rtol=RTOL, atol=ATOL)
    assert (got[2] > 0.0) == (beta > 0)  # k3 >= 0; kl is 0 without the KL term


def test_loss_types_aggregate_differently():
    # ratio 1, no KL: per-token term -A. Row 0: 1 token with A = 3; row 1: 3 tokens with A = 1.
    logp = np.full((2, 4), -1.0, np.float32)
    mask = np.array([[1, 0, 0, 0], [1, 1, 1, 0]], np.float32)
    inputs = (logp, logp, logp, np.array([3.0, 1.0], np.float32), mask)
    expected = {
        "grpo": -(3.0 + 1.0) / 2,  # mean of the sequences' token means
        "token": -(3.0 + 3.0) / 4,  # mean over the 4 tokens
        "dr_grpo": -(3.0 + 3.0) / (2 * 5),
    }  # token sum / (B * max_completion_length 5)
    for loss_type, value in expected.items():
        loss, clipfrac, kl = run_loss(inputs, 0.2, 0.2, 0.0, loss_type, 5)
        assert loss == pytest.approx(value, abs=1e-6), loss_type
        assert clipfrac == 0.0 and kl == 0.0


def test_clip_higher_leaves_ratios_below_one_plus_epsilon_high_unclipped():
    # one token per column: (log ratio, advantage)
    cases = [
        (math.log(1.25), 1.0),  # in (1 + eps_low, 1 + eps_high), A > 0: NOT clipped with clip-higher
        (math.log(1.35), 1.0),  # above 1 + eps_high, A > 0: clipped at 1.28
        (math.log(0.75), -1.0),  # below 1 - eps_low, A < 0: clipped at 0.8
        (math.log(1.25), -1.0),
    ]  # A < 0: the pessimistic unclipped term
    diff = np.array([[d for d, _ in cases]], np.float32).T  # (4, 1): one sequence per case
    old = np.full_like(diff, -1.0)
    logp, mask = old + diff, np.ones_like(diff)
    adv = np.array([a for _, a in cases], np.float32)
    inputs = (logp, old, logp, adv, mask)
    for eps_high, clipped in ((0.28, [False, True, True, False]), (0.2, [True, True, True, False])):
        loss, clipfrac, _ = run_loss(inputs, 0.2, eps_high, 0.0, "token", 1)
        r = np.exp(diff[:, 0].astype(np.float64))
        terms = [-a * (min(max(rt, 0.8), 1.0 + eps_high) if c else rt) for rt, (_, a), c in zip(r, cases, clipped)]
        assert loss == pytest.approx(np.mean(terms), rel=1e-5)
        assert clipfrac == pytest.approx(np.mean(clipped))
        _, grad = GRPOLossAndGrad(GRPOLoss(0.2, eps_high, 0.0, "token", 1))(*[t32(x) for x in inputs])
        grad = grad.asnumpy()[:, 0]
        assert (grad[0] != 0.0) == (eps_high == 0.28)  # the 1.25 ratio still pushes up under clip-higher
        assert grad[1] == 0.0 and grad[2] == 0.0


def test_masked_tokens_and_the_unused_reference_are_ignored():
    logp, old, ref, adv, mask = loss_inputs(seed=3)
    pad = mask == 0
    settings = (0.2, 0.3, 0.05, "grpo", 6)
    expected = run_loss((logp, old, ref, adv, mask), *settings)
    logp2, old2, ref2 = logp.copy(), old.copy(), ref.copy()
    logp2[pad], old2[pad], ref2[pad] = 50.0, -50.0, 80.0  # exp(100) overflows float32 if a pad entered
    got = run_loss((logp2, old2, ref2, adv, mask), *settings)
    assert all(np.isfinite(got))
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    # beta 0: the reference log-probs are not read
    no_kl = run_loss((logp, old, ref, adv, mask), 0.2, 0.3, 0.0, "grpo", 6)
    assert run_loss((logp, old, np.full_like(ref, np.nan), adv, mask), 0.2, 0.3, 0.0, "grpo", 6) == no_kl


def test_a_given_count_replaces_the_token_count():
    logp, old, ref, adv, mask = loss_inputs(seed=4)
    count = 2.5 * mask.sum()
    tensors = [t32(x) for x in (logp, old, ref, adv, mask)]
    for loss_type in ("grpo", "token", "dr_grpo"):
        plain = [float(x.asnumpy()) for x in grpo_policy_loss(*tensors, 0.2, 0.2, 0.1, loss_type, 6)]
        scaled = [float(x.asnumpy()) for x in grpo_policy_loss(*tensors, 0.2, 0.2, 0.1, loss_type, 6, t32(count))]
        expected = naive_grpo_loss(logp, old, ref, adv, mask, 0.2, 0.2, 0.1, loss_type, 6, count)[:3]
        np.testing.assert_allclose(scaled, expected, rtol=RTOL, atol=1e-7)
        shrink = mask.sum() / count  # clipfrac and kl are token means; so is the token loss
        np.testing.assert_allclose(scaled[1:], np.array(plain[1:]) * shrink, rtol=RTOL, atol=1e-7)
        assert scaled[0] == pytest.approx(plain[0] * (shrink if loss_type == "token" else 1.0), rel=RTOL)


def test_unknown_loss_type_is_refused():
    tensors = [t32(x) for x in loss_inputs()]
    with pytest.raises(ValueError, match="unknown loss_type 'seq'"):
        grpo_policy_loss(*tensors, 0.2, 0.2, 0.0, "seq", 6)


@pytest.mark.parametrize("loss_type", ["grpo", "token", "dr_grpo"])
def test_grpo_loss_gradient_matches_analytic_and_finite_difference(ms_mode, loss_type):
    inputs = loss_inputs(seed=5)
    settings = (0.1, 0.25, 0.2, loss_type, 7)
    (loss, _, _), grad = GRPOLossAndGrad(GRPOLoss(*settings))(*[t32(x) for x in inputs])
    grad = grad.asnumpy()
    exp_loss, exp_clipfrac, _, exp_grad = naive_grpo_loss(*inputs, *settings)
    assert 0.0 < exp_clipfrac < 1.0  # clipped tokens contribute only their KL gradient
    np.testing.assert_allclose(float(loss.asnumpy()), exp_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, exp_grad, rtol=1e-5, atol=1e-6)
    assert np.all(grad[inputs[-1] == 0] == 0)
    logp = inputs[0].astype(np.float64)
    h = 1e-6
    for b, t in zip(*np.nonzero(inputs[-1])):  # central finite difference of the float64 loop, token by token
        up, down = logp.copy(), logp.copy()
        up[b, t] += h
        down[b, t] -= h
        fd = (naive_grpo_loss(up, *inputs[1:], *settings)[0] - naive_grpo_loss(down, *inputs[1:], *settings)[0]) / (
            2 * h
        )
        assert grad[b, t] == pytest.approx(fd, rel=1e-4, abs=1e-6), (b, t)
