"""PPO experience-phase arithmetic (``mindrlhf.rl``) against naive numpy references written from the textbook
definitions: GAE, KL-penalised rewards, whitening, explained variance, running moments and the KL controllers.

Masks are "left to right": each row has ``L >= 1`` ones followed by zeros (padding after the generated tokens).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from mindrlhf.rl import (
    AdaptiveKLController,
    FixedKLController,
    RunningMoments,
    explained_variance,
    gae,
    kl_penalised_rewards,
    last_token_index,
    masked_moments,
    whiten,
)
from tests.helpers import mask_from_lengths

RTOL, ATOL = 1e-5, 1e-5


def random_lengths(rng, batch, n):
    """Random row lengths in ``[1, n]`` that always include a length-1 row and a full-length row."""
    lengths = list(rng.integers(1, n + 1, batch - 2))
    return [1, n] + lengths


# ----------------------------------------------------------------------------------------------------------- GAE


def naive_gae(rewards, values, lengths, gamma, lam):
    """Per row, per token, straight from the definition (float64):

    ``delta_t = r_t + gamma V_{t+1} - V_t`` inside the episode (``V_L = 0``), ``A_t = sum_l (gamma lam)^l
    delta_{t+l}`` over the rest of the episode, ``returns = A + V``; both 0 beyond the row's length."""
    batch, n = rewards.shape
    adv = np.zeros((batch, n))
    ret = np.zeros((batch, n))
    for b in range(batch):
        length = lengths[b]
        deltas = []
        for t in range(length):
            next_value = float(values[b, t + 1]) if t + 1 < length else 0.0
            deltas.append(float(rewards[b, t]) + gamma * next_value - float(values[b, t]))
        for t in range(length):
            total = 0.0
            for k in range(length - t):
                total += (gamma * lam) ** k * deltas[t + k]
            adv[b, t] = total
            ret[b, t] = total + float(values[b, t])
    return adv, ret


@pytest.mark.parametrize("gamma,lam", [(1.0, 0.95), (0.99, 1.0), (1.0, 0.0), (0.9, 0.8), (1.0, 1.0)])
def test_gae_matches_naive_loop(gamma, lam):
    rng = np.random.default_rng(1)
    batch, n = 7, 9
    lengths = random_lengths(rng, batch, n)
    mask = mask_from_lengths(lengths, n)
    rewards = rng.normal(size=(batch, n)).astype(np.float32)
    values = rng.normal(size=(batch, n)).astype(np.float32)
    adv, ret = gae(rewards, values, mask, gamma, lam)
    exp_adv, exp_ret = naive_gae(rewards, values, lengths, gamma, lam)
    assert adv.shape == ret.shape == (batch, n)
    assert adv.dtype == np.float32 and ret.dtype == np.float32
    np.testing.assert_allclose(adv, exp_adv, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ret, exp_ret, rtol=RTOL, atol=ATOL)
    # zero beyond each row's length
    assert np.all(adv[mask == 0] == 0) and np.all(ret[mask == 0] == 0)


def test_gae_small_hand_computed():
    # one row of length 3 padded to 4; gamma 0.5, lam 0.5
    rewards = np.array([[1.0, 0.0, 2.0, 9.0]], np.float32)
    values = np.array([[0.5, 1.0, -1.0, 7.0]], np.float32)
    mask = np.array([[1, 1, 1, 0]], np.float32)
    adv, ret = gae(rewards, values, mask, 0.5, 0.5)
    d2 = 2.0 - (-1.0)  # last token: no bootstrap
    d1 = 0.0 + 0.5 * (-1.0) - 1.0
    d0 = 1.0 + 0.5 * 1.0 - 0.5
    a2, a1 = d2, d1 + 0.25 * d2
    a0 = d0 + 0.25 * a1
    np.testing.assert_allclose(adv, [[a0, a1, a2, 0.0]], rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(ret, [[a0 + 0.5, a1 + 1.0, a2 - 1.0, 0.0]], rtol=RTOL, atol=ATOL)


def test_gae_ignores_rewards_and_values_beyond_each_row():
    rng = np.random.default_rng(2)
    batch, n = 6, 8
    lengths = random_lengths(rng, batch, n)
    mask = mask_from_lengths(lengths, n)
    rewards = rng.normal(size=(batch, n)).astype(np.float32)
    values = rng.normal(size=(batch, n)).astype(np.float32)
    rewards2, values2 = rewards.copy(), values.copy()
    pad = mask == 0
    rewards2[pad] = rng.normal(scale=100.0, size=pad.sum())
    values2[pad] = rng.normal(scale=100.0, size=pad.sum())
    for gamma, lam in [(1.0, 0.95), (0.99, 1.0), (1.0, 0.0)]:
        adv, ret = gae(rewards, values, mask, gamma, lam)
        adv2, ret2 = gae(rewards2, values2, mask, gamma, lam)
        np.testing.assert_array_equal(adv, adv2)
        np.testing.assert_array_equal(ret, ret2)


def test_gae_uses_gamma_and_lambda():
    rng = np.random.default_rng(3)
    mask = mask_from_lengths([5, 3], 5)
    rewards = rng.normal(size=(2, 5)).astype(np.float32)
    values = rng.normal(size=(2, 5)).astype(np.float32)
    a1, _ = gae(rewards, values, mask, 1.0, 0.95)
    a2, _ = gae(rewards, values, mask, 0.5, 0.95)
    a3, _ = gae(rewards, values, mask, 1.0, 0.3)
    assert np.abs(a1 - a2).max() > 1e-3
    assert np.abs(a1 - a3).max() > 1e-3
    # lam = 0: A_t is the one-step TD error
    a0, _ = gae(rewards, values, mask, 0.9, 0.0)
    td = np.zeros((2, 5))
    for b, length in enumerate([5, 3]):
        for t in range(length):
            nxt = values[b, t + 1] if t + 1 < length else 0.0
            td[b, t] = rewards[b, t] + 0.9 * nxt - values[b, t]
    np.testing.assert_allclose(a0, td, rtol=RTOL, atol=ATOL)
    # gamma = lam = 1: returns are the undiscounted reward-to-go
    _, ret = gae(rewards, values, mask, 1.0, 1.0)
    for b, length in enumerate([5, 3]):
        for t in range(length):
            assert ret[b, t] == pytest.approx(float(rewards[b, t:length].sum()), abs=1e-5)


# -------------------------------------------------------------------------------------------- rewards and KL


def test_last_token_index():
    mask = np.array([[1, 0, 0, 0], [1, 1, 1, 1], [1, 1, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(last_token_index(mask), [0, 3, 1, 0])


def test_kl_penalised_rewards_matches_naive_loop():
    rng = np.random.default_rng(4)
    batch, n = 6, 7
    lengths = random_lengths(rng, batch, n)
    mask = mask_from_lengths(lengths, n)
    scores = rng.normal(size=batch).astype(np.float32)
    logp = rng.normal(size=(batch, n)).astype(np.float32)
    ref = rng.normal(size=(batch, n)).astype(np.float32)
    kl_coef = 0.2
    rewards, kl = kl_penalised_rewards(scores, logp, ref, mask, kl_coef)
    assert rewards.dtype == np.float32 and kl.dtype == np.float32
    exp_rewards = np.zeros((batch, n))
    exp_kl = np.zeros((batch, n))
    for b in range(batch):
        for t in range(lengths[b]):
            exp_kl[b, t] = float(logp[b, t]) - float(ref[b, t])
            exp_rewards[b, t] = -kl_coef * exp_kl[b, t]
        exp_rewards[b, lengths[b] - 1] += float(scores[b])
    np.testing.assert_allclose(rewards, exp_rewards, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(kl, exp_kl, rtol=RTOL, atol=ATOL)


def test_kl_term_is_a_penalty():
    # logp > ref_logp everywhere: the KL part of every reward is negative
    n = 5
    mask = mask_from_lengths([5, 3], n)
    ref = np.full((2, n), -2.0, np.float32)
    logp = np.full((2, n), -1.0, np.float32)
    rewards, kl = kl_penalised_rewards(np.zeros(2, np.float32), logp, ref, mask, 0.1)
    assert np.all(kl[mask == 1] > 0)
    assert np.all(rewards[mask == 1] < 0)
    np.testing.assert_allclose(rewards[mask == 1], -0.1, rtol=RTOL)
    assert np.all(rewards[mask == 0] == 0) and np.all(kl[mask == 0] == 0)
    # and with a score, the KL penalty still lowers the last token's reward below the score
    rewards, _ = kl_penalised_rewards(np.array([1.0, 1.0], np.float32), logp, ref, mask, 0.1)
    np.testing.assert_allclose(rewards[[0, 1], [4, 2]], [0.9, 0.9], rtol=RTOL)


def test_zero_kl_coef_puts_score_on_each_rows_last_token_only():
    n = 6
    lengths = [1, 6, 3, 5]  # a row ending at slot 0, one ending at N-1, two in between
    mask = mask_from_lengths(lengths, n)
    rng = np.random.default_rng(5)
    scores = np.array([2.5, -1.0, 0.75, 4.0], np.float32)
    logp = rng.normal(size=(4, n)).astype(np.float32)
    ref = rng.normal(size=(4, n)).astype(np.float32)
    rewards, _ = kl_penalised_rewards(scores, logp, ref, mask, 0.0)
    expected = np.zeros((4, n), np.float32)
    for b, length in enumerate(lengths):
        expected[b, length - 1] = scores[b]
    np.testing.assert_array_equal(rewards, expected)


# ------------------------------------------------------------------------------------------------- whitening


def naive_whiten(values, mask, shift_mean=True, eps=1e-8):
    picked = [float(values[b, t]) for b in range(values.shape[0]) for t in range(values.shape[1]) if mask[b, t]]
    mean = sum(picked) / len(picked)
    var = sum((x - mean) ** 2 for x in picked) / (len(picked) - 1)
    out = np.zeros(values.shape)
    for b in range(values.shape[0]):
        for t in range(values.shape[1]):
            if mask[b, t]:
                out[b, t] = (float(values[b, t]) - mean) / math.sqrt(var + eps) + (0.0 if shift_mean else mean)
    return out


@pytest.mark.parametrize("shift_mean", [True, False])
def test_whiten_matches_numpy(shift_mean):
    rng = np.random.default_rng(6)
    batch, n = 5, 8
    mask = mask_from_lengths(random_lengths(rng, batch, n), n)
    values = (rng.normal(size=(batch, n)) * 3.0 + 2.0).astype(np.float32)
    values[mask == 0] = 1e3  # must not enter the statistics
    out = whiten(values, mask, shift_mean=shift_mean)
    np.testing.assert_allclose(out, naive_whiten(values, mask, shift_mean), rtol=RTOL, atol=ATOL)
    assert np.all(out[mask == 0] == 0)
    kept = out[mask == 1].astype(np.float64)
    np.testing.assert_allclose(kept.std(ddof=1), 1.0, rtol=1e-5)
    expected_mean = 0.0 if shift_mean else values[mask == 1].astype(np.float64).mean()
    np.testing.assert_allclose(kept.mean(), expected_mean, atol=1e-5)


def test_whiten_with_fewer_than_two_entries_returns_masked_values():
    values = np.array([[3.0, 4.0], [5.0, 6.0]], np.float32)
    mask = np.array([[1, 0], [0, 0]], np.float32)
    np.testing.assert_array_equal(whiten(values, mask), [[3.0, 0.0], [0.0, 0.0]])


def test_explained_variance_matches_numpy():
    rng = np.random.default_rng(7)
    batch, n = 5, 8
    mask = mask_from_lengths(random_lengths(rng, batch, n), n)
    returns = rng.normal(size=(batch, n)).astype(np.float32)
    values = (returns + rng.normal(scale=0.5, size=(batch, n))).astype(np.float32)
    values[mask == 0] = 50.0
    r = [float(returns[b, t]) for b in range(batch) for t in range(n) if mask[b, t]]
    v = [float(values[b, t]) for b in range(batch) for t in range(n) if mask[b, t]]
    diff = [ri - vi for ri, vi in zip(r, v)]

    def var(xs):
        m = sum(xs) / len(xs)
        return sum((x - m) ** 2 for x in xs) / len(xs)

    expected = 1.0 - var(diff) / var(r)
    assert explained_variance(values, returns, mask) == pytest.approx(expected, rel=1e-6, abs=1e-6)
    assert explained_variance(returns, returns, mask) == pytest.approx(1.0)
    assert math.isnan(explained_variance(values, np.ones_like(returns), mask))


# -------------------------------------------------------------------------------------- running moments / KL


def test_running_moments_match_all_data_seen():
    rng = np.random.default_rng(8)
    moments = RunningMoments()
    seen = []
    for size, loc, scale in [(5, 1.0, 2.0), (1, -3.0, 1.0), (17, 4.0, 0.5), (8, 0.0, 3.0)]:
        batch = rng.normal(loc, scale, size)
        moments.update(batch)
        seen.append(batch)
        data = np.concatenate(seen)
        assert moments.mean == pytest.approx(float(np.mean(data)), rel=1e-9, abs=1e-9)
        assert moments.std == pytest.approx(float(np.std(data)), rel=1e-9, abs=1e-9)
    moments.update(np.array([]))
    data = np.concatenate(seen)
    assert moments.mean == pytest.approx(float(np.mean(data)), rel=1e-9)
    assert moments.std == pytest.approx(float(np.std(data)), rel=1e-9)


def test_fixed_kl_controller_is_constant():
    ctl = FixedKLController(0.05)
    for kl in [0.0, 1.0, 100.0, -5.0]:
        ctl.update(kl, 256)
        assert ctl.value == 0.05


def test_adaptive_kl_controller_formula():
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    # KL twice the target: error clipped at +0.2 -> 0.1 * (1 + 0.2 * 256 / 10000)
    ctl.update(12.0, 256)
    assert ctl.value == pytest.approx(0.100512, rel=1e-12)
    # KL below target: 3/6 - 1 = -0.5 clipped at -0.2 -> * (1 - 0.00512)
    ctl.update(3.0, 256)
    assert ctl.value == pytest.approx(0.100512 * 0.99488, rel=1e-12)
    # inside the clip: 6.6 / 6 - 1 = 0.1 -> * (1 + 0.1 * 100 / 10000)
    ctl.update(6.6, 100)
    assert ctl.value == pytest.approx(0.100512 * 0.99488 * 1.001, rel=1e-12)
    # 5.4 / 6 - 1 = -0.1 -> * (1 - 0.1 * 1000 / 10000)
    ctl.update(5.4, 1000)
    assert ctl.value == pytest.approx(0.100512 * 0.99488 * 1.001 * 0.99, rel=1e-12)
    # on target: unchanged
    before = ctl.value
    ctl.update(6.0, 500)
    assert ctl.value == pytest.approx(before, rel=1e-12)


def test_adaptive_kl_controller_direction():
    up = AdaptiveKLController(0.2, target=1.0, horizon=100)
    up.update(1.5, 10)
    assert up.value > 0.2
    down = AdaptiveKLController(0.2, target=1.0, horizon=100)
    down.update(0.5, 10)
    assert down.value < 0.2
    # both hit the +-20% clip: 0.2 * (1 +- 0.2 * 10 / 100)
    assert up.value == pytest.approx(0.204) and down.value == pytest.approx(0.196)


@pytest.mark.parametrize("target,horizon", [(0.0, 10), (-1.0, 10), (1.0, 0)])
def test_adaptive_kl_controller_rejects_bad_settings(target, horizon):
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target, horizon)


def test_masked_moments_match_numpy():
    rng = np.random.default_rng(12)
    values = rng.normal(2.0, 3.0, (4, 6))
    mask = mask_from_lengths([6, 1, 3, 4], 6)
    kept = values[mask == 1]
    for ddof in (0, 1):
        mean, var, count = masked_moments(values, mask, ddof=ddof)
        np.testing.assert_allclose([mean, var, count], [kept.mean(), kept.var(ddof=ddof), kept.size], rtol=1e-12)
    assert masked_moments(values[0], None) == pytest.approx((values[0].mean(), values[0].var(), 6.0))
    assert math.isnan(masked_moments(np.ones(3), np.array([0, 1, 0]), ddof=1)[1])  # n <= ddof


def test_running_moments_merge_batch_moments_like_the_data():
    rng = np.random.default_rng(13)
    first, second = rng.normal(1.0, 2.0, 5), rng.normal(-3.0, 0.5, 7)
    merged = RunningMoments()
    merged.update_from_moments(first.mean(), first.var(), first.size)
    merged.update_from_moments(second.mean(), second.var(), second.size)
    both = np.concatenate([first, second])
    np.testing.assert_allclose([merged.mean, merged.var], [both.mean(), both.var()], rtol=1e-9)
    merged.update_from_moments(0.0, float("nan"), 0)  # an empty batch changes nothing
    np.testing.assert_allclose([merged.mean, merged.var, merged.count], [both.mean(), both.var(), 12], rtol=1e-9)
