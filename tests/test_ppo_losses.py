"""PPO / SFT losses of ``mindrlhf.losses`` (PyNative, float32) against naive per-sample, per-token numpy loops:
clipped policy surrogate (+ clipfrac, approx KL), clipped value loss, causal-LM cross-entropy, masked entropy, and
the policy-loss gradient with and without clipping."""

from __future__ import annotations

import math

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from mindrlhf.losses import causal_lm_loss, masked_entropy, masked_mean, ppo_policy_loss, ppo_value_loss
from tests.helpers import mask_from_lengths, t32

RTOL, ATOL = 1e-5, 1e-5


def scalar(x) -> float:
    return float(x.asnumpy())


# ------------------------------------------------------------------------------------------- naive references


def naive_policy(logp, old, adv, mask, eps):
    """Returns (loss, clipfrac, approx_kl, grad wrt logp), float64, one token at a time."""
    total = clipped_count = kl_total = 0.0
    count = 0
    grad = np.zeros(logp.shape)
    terms = []
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if not mask[b, t]:
                continue
            log_r = float(logp[b, t]) - float(old[b, t])
            r = math.exp(log_r)
            a = float(adv[b, t])
            unclipped = -a * r
            clipped = -a * min(max(r, 1.0 - eps), 1.0 + eps)
            total += max(unclipped, clipped)
            if clipped > unclipped:
                clipped_count += 1
                terms.append((b, t, 0.0))  # clipped branch is flat in logp
            else:
                terms.append((b, t, -a * r))  # d(-A r)/dlogp = -A r
            kl_total += r - 1.0 - log_r
            count += 1
    for b, t, g in terms:
        grad[b, t] = g / count
    return total / count, clipped_count / count, kl_total / count, grad


def naive_value(values, old, returns, mask, c):
    total = clipped_count = 0.0
    count = 0
    for b in range(values.shape[0]):
        for t in range(values.shape[1]):
            if not mask[b, t]:
                continue
            v, vo, r = float(values[b, t]), float(old[b, t]), float(returns[b, t])
            v_clip = vo + min(max(v - vo, -c), c)
            err, err_clip = (v - r) ** 2, (v_clip - r) ** 2
            total += max(err, err_clip)
            clipped_count += err_clip > err
            count += 1
    return 0.5 * total / count, clipped_count / count


def naive_log_softmax(z):
    z = [float(x) for x in z]
    top = max(z)
    log_z = top + math.log(sum(math.exp(x - top) for x in z))
    return [x - log_z for x in z]


def naive_lm_loss(logits, labels, mask):
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if mask[b, t]:
                total += -naive_log_softmax(logits[b, t])[int(labels[b, t])]
                count += 1
    return total / max(count, 1)


def naive_entropy(logits, mask):
    total, count = 0.0, 0
    for b in range(logits.shape[0]):
        for t in range(logits.shape[1]):
            if mask[b, t]:
                logp = naive_log_softmax(logits[b, t])
                total += -sum(math.exp(lp) * lp for lp in logp)
                count += 1
    return total / count


# ------------------------------------------------------------------------------------------------ policy loss


def policy_inputs(seed=0, batch=4, n=6, spread=0.3):
    rng = np.random.default_rng(seed)
    mask = mask_from_lengths([1, n, 3, 5][:batch], n)
    old = rng.normal(-2.0, 0.5, (batch, n)).astype(np.float32)
    logp = (old + rng.normal(0.0, spread, (batch, n))).astype(np.float32)
    adv = rng.normal(size=(batch, n)).astype(np.float32)
    return logp, old, adv, mask


@pytest.mark.parametrize("eps", [0.2, 0.05])
def test_policy_loss_matches_numpy(eps):
    logp, old, adv, mask = policy_inputs(seed=1)
    loss, clipfrac, approx_kl = ppo_policy_loss(t32(logp), t32(old), t32(adv), t32(mask), eps)
    exp_loss, exp_clipfrac, exp_kl, _ = naive_policy(logp, old, adv, mask, eps)
    assert 0.0 < exp_clipfrac < 1.0  # the data mixes clipped and unclipped tokens
    np.testing.assert_allclose(scalar(loss), exp_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scalar(clipfrac), exp_clipfrac, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scalar(approx_kl), exp_kl, rtol=RTOL, atol=ATOL)
    assert scalar(approx_kl) >= 0.0


def test_policy_loss_is_a_token_mean_over_the_whole_batch():
    # row 0 has 1 token with A = 3, row 1 has 3 tokens with A = 1: token mean = -(3 + 3) / 4, not -(3 + 1) / 2
    logp = np.full((2, 3), -1.0, np.float32)
    adv = np.array([[3.0, 0.0, 0.0], [1.0, 1.0, 1.0]], np.float32)
    mask = np.array([[1, 0, 0], [1, 1, 1]], np.float32)
    loss, clipfrac, approx_kl = ppo_policy_loss(t32(logp), t32(logp), t32(adv), t32(mask), 0.2)
    assert scalar(loss) == pytest.approx(-1.5, abs=1e-6)
    assert scalar(clipfrac) == 0.0
    assert scalar(approx_kl) == pytest.approx(0.0, abs=1e-7)


def test_policy_loss_at_old_logprobs_is_minus_mean_advantage():
    _, old, adv, mask = policy_inputs(seed=2)
    loss, clipfrac, approx_kl = ppo_policy_loss(t32(old), t32(old), t32(adv), t32(mask), 0.2)
    expected = -sum(float(adv[b, t]) for b in range(4) for t in range(6) if mask[b, t]) / mask.sum()
    np.testing.assert_allclose(scalar(loss), expected, rtol=RTOL, atol=ATOL)
    assert scalar(clipfrac) == 0.0
    assert scalar(approx_kl) == pytest.approx(0.0, abs=1e-7)


def test_policy_loss_ignores_masked_tokens():
    logp, old, adv, mask = policy_inputs(seed=3)
    pad = mask == 0
    logp2, old2, adv2 = logp.copy(), old.copy(), adv.copy()
    logp2[pad], old2[pad] = 50.0, -50.0  # exp(100) overflows float32 if the pad entered the ratio
    adv2[pad] = 1e4
    out = [scalar(x) for x in ppo_policy_loss(t32(logp), t32(old), t32(adv), t32(mask), 0.2)]
    out2 = [scalar(x) for x in ppo_policy_loss(t32(logp2), t32(old2), t32(adv2), t32(mask), 0.2)]
    assert all(np.isfinite(out2))
    np.testing.assert_allclose(out2, out, rtol=1e-6, atol=1e-7)


def test_policy_clipfrac_and_clipping_cases():
    eps = 0.2
    # one token per case: (logp - old, advantage)
    cases = [
        (0.5, 1.0),  # r > 1+eps, A > 0: clipped (flat)
        (0.5, -1.0),  # r > 1+eps, A < 0: unclipped (pessimistic)
        (-0.5, 1.0),  # r < 1-eps, A > 0: unclipped
        (-0.5, -1.0),  # r < 1-eps, A < 0: clipped
        (0.1, 1.0),
    ]  # inside the range
    diff = np.array([[d for d, _ in cases]], np.float32)
    adv = np.array([[a for _, a in cases]], np.float32)
    old = np.zeros_like(diff) - 1.0
    logp = old + diff
    mask = np.ones_like(diff)
    loss, clipfrac, _ = ppo_policy_loss(t32(logp), t32(old), t32(adv), t32(mask), eps)
    r = np.exp(diff[0].astype(np.float64))
    per_token = [-1.0 * 1.2, 1.0 * r[1], -1.0 * r[2], 1.0 * 0.8, -1.0 * r[4]]
    np.testing.assert_allclose(scalar(loss), np.mean(per_token), rtol=RTOL, atol=ATOL)
    assert scalar(clipfrac) == pytest.approx(2 / 5)


def policy_grad(logp, old, adv, mask, eps):
    def fn(x):
        return ppo_policy_loss(x, t32(old), t32(adv), t32(mask), eps)[0]

    loss, grad = ms.value_and_grad(fn)(t32(logp))
    return scalar(loss), grad.asnumpy()


def test_policy_gradient_without_clipping_matches_analytic_and_finite_difference():
    logp, old, adv, mask = policy_inputs(seed=4, spread=0.02)
    eps = 0.5  # |log r| <= ~0.06: nothing clips
    exp_loss, exp_clipfrac, _, exp_grad = naive_policy(logp, old, adv, mask, eps)
    assert exp_clipfrac == 0.0
    loss, grad = policy_grad(logp, old, adv, mask, eps)
    np.testing.assert_allclose(loss, exp_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, exp_grad, rtol=1e-5, atol=1e-6)
    assert np.all(grad[mask == 0] == 0)
    # central finite difference of the float64 naive loss, token by token
    h = 1e-6
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            up, down = logp.astype(np.float64), logp.astype(np.float64)
            up[b, t] += h
            down[b, t] -= h
            fd = (naive_policy(up, old, adv, mask, eps)[0] - naive_policy(down, old, adv, mask, eps)[0]) / (2 * h)
            assert grad[b, t] == pytest.approx(fd, rel=1e-4, abs=1e-6), (b, t)


def test_policy_gradient_is_zero_on_clipped_tokens():
    eps = 0.2
    # row 0: tokens with A > 0 and r > 1+eps (clipped), A > 0 inside the range, A < 0 with r > 1+eps (unclipped),
    # A < 0 with r < 1-eps (clipped); row 1: one valid token, then padding
    diff = np.array([[0.5, 0.05, 0.5, -0.5], [0.1, 0.7, 0.7, 0.7]], np.float32)
    adv = np.array([[2.0, 1.5, -1.0, -0.5], [0.7, 3.0, -3.0, 3.0]], np.float32)
    mask = np.array([[1, 1, 1, 1], [1, 0, 0, 0]], np.float32)
    old = np.full_like(diff, -1.5)
    logp = old + diff
    loss, grad = policy_grad(logp, old, adv, mask, eps)
    exp_loss, exp_clipfrac, _, exp_grad = naive_policy(logp, old, adv, mask, eps)
    assert exp_clipfrac == pytest.approx(2 / 5)
    np.testing.assert_allclose(loss, exp_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(grad, exp_grad, rtol=1e-5, atol=1e-6)
    assert grad[0, 0] == 0.0 and grad[0, 3] == 0.0
    assert np.all(grad[1, 1:] == 0.0)
    r = np.exp(diff.astype(np.float64))
    np.testing.assert_allclose(grad[0, 1], -1.5 * r[0, 1] / 5, rtol=1e-5)
    np.testing.assert_allclose(grad[0, 2], 1.0 * r[0, 2] / 5, rtol=1e-5)
    np.testing.assert_allclose(grad[1, 0], -0.7 * r[1, 0] / 5, rtol=1e-5)


# ------------------------------------------------------------------------------------------------- value loss


def test_value_loss_matches_numpy_on_random_data():
    rng = np.random.default_rng(5)
    batch, n = 4, 7
    mask = mask_from_lengths([1, n, 4, 2], n)
    old = rng.normal(size=(batch, n)).astype(np.float32)
    values = (old + rng.normal(0.0, 0.5, (batch, n))).astype(np.float32)
    returns = rng.normal(size=(batch, n)).astype(np.float32)
    loss, clipfrac = ppo_value_loss(t32(values), t32(old), t32(returns), t32(mask), 0.2)
    exp_loss, exp_clipfrac = naive_value(values, old, returns, mask, 0.2)
    assert 0.0 < exp_clipfrac < 1.0
    np.testing.assert_allclose(scalar(loss), exp_loss, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(scalar(clipfrac), exp_clipfrac, rtol=RTOL, atol=ATOL)


def test_value_loss_clips_in_both_directions():
    c = 0.2
    old = np.zeros((1, 6), np.float32)
    values = np.array([[1.0, 1.0, -1.0, -1.0, 0.1, 0.5]], np.float32)
    returns = np.array([[0.5, 2.0, -2.0, 0.0, 1.0, 7.0]], np.float32)
    mask = np.array([[1, 1, 1, 1, 1, 0]], np.float32)
    loss, clipfrac = ppo_value_loss(t32(values), t32(old), t32(returns), t32(mask), c)
    # up-clip: V_clip = 0.2 -> errs (0.25 vs 0.09) unclipped, (1 vs 3.24) clipped;
    # down-clip: V_clip = -0.2 -> (1 vs 3.24) clipped, (1 vs 0.04) unclipped; inside: 0.81 (equal, not counted)
    per_token = [0.25, 3.24, 3.24, 1.0, 0.81]
    np.testing.assert_allclose(scalar(loss), 0.5 * np.mean(per_token), rtol=RTOL, atol=ATOL)
    assert scalar(clipfrac) == pytest.approx(2 / 5)


def test_value_loss_ignores_masked_tokens():
    rng = np.random.default_rng(6)
    mask = mask_from_lengths([2, 5, 3], 5)
    old = rng.normal(size=(3, 5)).astype(np.float32)
    values = (old + rng.normal(0.0, 0.5, (3, 5))).astype(np.float32)
    returns = rng.normal(size=(3, 5)).astype(np.float32)
    out = [scalar(x) for x in ppo_value_loss(t32(values), t32(old), t32(returns), t32(mask), 0.2)]
    pad = mask == 0
    values[pad], old[pad], returns[pad] = 1e3, -1e3, 5e2
    out2 = [scalar(x) for x in ppo_value_loss(t32(values), t32(old), t32(returns), t32(mask), 0.2)]
    np.testing.assert_allclose(out2, out, rtol=1e-6, atol=1e-7)


# ----------------------------------------------------------------------------------------- LM loss and entropy


def test_causal_lm_loss_matches_numpy_with_ignored_labels():
    rng = np.random.default_rng(7)
    batch, steps, vocab = 3, 5, 11
    logits = rng.normal(0.0, 2.0, (batch, steps, vocab)).astype(np.float32)
    labels = rng.integers(0, vocab, (batch, steps)).astype(np.int32)
    mask = mask_from_lengths([5, 2, 1], steps)
    labels[mask == 0] = -100
    loss = causal_lm_loss(t32(logits), Tensor(labels), t32(mask))
    expected = naive_lm_loss(logits, labels, mask)
    assert np.isfinite(scalar(loss))
    np.testing.assert_allclose(scalar(loss), expected, rtol=RTOL, atol=ATOL)
    # the masked positions' logits do not matter
    logits2 = logits.copy()
    logits2[mask == 0] = rng.normal(0.0, 30.0, (int((mask == 0).sum()), vocab))
    np.testing.assert_allclose(
        scalar(causal_lm_loss(t32(logits2), Tensor(labels), t32(mask))), expected, rtol=RTOL, atol=ATOL
    )


def test_causal_lm_loss_of_uniform_logits_is_log_vocab():
    vocab = 13
    logits = np.full((2, 4, vocab), 0.7, np.float32)
    labels = np.array([[1, 5, 12, -100], [0, -100, -100, -100]], np.int32)
    mask = (labels != -100).astype(np.float32)
    np.testing.assert_allclose(
        scalar(causal_lm_loss(t32(logits), Tensor(labels), t32(mask))), math.log(vocab), rtol=RTOL
    )


def test_causal_lm_loss_is_stable_for_large_logits():
    logits = np.array([[[100.0, 0.0, -100.0], [0.0, 80.0, 0.0]]], np.float32)
    labels = np.array([[0, 2]], np.int32)
    mask = np.ones((1, 2), np.float32)
    expected = naive_lm_loss(logits, labels, mask)
    np.testing.assert_allclose(
        scalar(causal_lm_loss(t32(logits), Tensor(labels), t32(mask))), expected, rtol=RTOL, atol=ATOL
    )


def test_masked_entropy_matches_numpy():
    rng = np.random.default_rng(8)
    batch, steps, vocab = 3, 4, 9
    logits = rng.normal(0.0, 2.0, (batch, steps, vocab)).astype(np.float32)
    mask = mask_from_lengths([4, 1, 2], steps)
    expected = naive_entropy(logits, mask)
    np.testing.assert_allclose(scalar(masked_entropy(t32(logits), t32(mask))), expected, rtol=RTOL, atol=ATOL)
    logits[mask == 0] = 0.0  # masked positions do not count (uniform would raise the mean)
    np.testing.assert_allclose(scalar(masked_entropy(t32(logits), t32(mask))), expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("vocab", [2, 7, 100])
def test_entropy_of_uniform_logits_is_log_vocab(vocab):
    logits = np.full((2, 3, vocab), -4.2, np.float32)
    mask = mask_from_lengths([3, 1], 3)
    np.testing.assert_allclose(scalar(masked_entropy(t32(logits), t32(mask))), math.log(vocab), rtol=RTOL)


def test_masked_mean_over_all_tokens():
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.float32)
    np.testing.assert_allclose(scalar(masked_mean(t32(values), t32(mask))), 7.0 / 3.0, rtol=RTOL)
    np.testing.assert_allclose(masked_mean(t32(values), t32(mask), axis=1).asnumpy(), [1.5, 4.0], rtol=RTOL)


def test_a_given_count_replaces_the_token_count_of_every_token_mean():
    """Data-parallel PPO divides each rank's token sums by the global count over the ranks: with ``count`` every
    token mean is ``sum(mask * x) / count``, the plain masked mean times ``sum(mask) / count``."""
    logp, old, adv, mask = policy_inputs(seed=9)
    count = 2.5 * mask.sum()
    shrink = mask.sum() / count
    plain = [scalar(x) for x in ppo_policy_loss(t32(logp), t32(old), t32(adv), t32(mask), 0.2)]
    scaled = [scalar(x) for x in ppo_policy_loss(t32(logp), t32(old), t32(adv), t32(mask), 0.2, t32(count))]
    np.testing.assert_allclose(scaled, np.array(plain) * shrink, rtol=RTOL, atol=1e-7)
    values = old + 0.3
    plain = [scalar(x) for x in ppo_value_loss(t32(values), t32(old), t32(adv), t32(mask), 0.2)]
    scaled = [scalar(x) for x in ppo_value_loss(t32(values), t32(old), t32(adv), t32(mask), 0.2, t32(count))]
    np.testing.assert_allclose(scaled, np.array(plain) * shrink, rtol=RTOL, atol=1e-7)
    logits = np.random.default_rng(10).normal(size=mask.shape + (5,)).astype(np.float32)
    np.testing.assert_allclose(
        scalar(masked_entropy(t32(logits), t32(mask), t32(count))), naive_entropy(logits, mask) * shrink, rtol=RTOL
    )
    labels = np.random.default_rng(11).integers(0, 5, mask.shape).astype(np.int32)
    np.testing.assert_allclose(
        scalar(causal_lm_loss(t32(logits), Tensor(labels), t32(mask), t32(count))),
        naive_lm_loss(logits, labels, mask) * shrink,
        rtol=RTOL,
    )
    values = np.arange(12, dtype=np.float32).reshape(3, 4)
    assert scalar(masked_mean(t32(values), t32(np.ones((3, 4))), count=t32(0.0))) == values.sum()  # max(count, 1)
