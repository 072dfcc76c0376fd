"""PPO statistics against numpy: the missing-eos penalty and score scaling, and data-parallel statistics computed
from summed moments. Two ranks are simulated by two threads whose ``reduce`` adds both ranks' arrays in rank order
(what :class:`mindrlhf.train.distributed.AllReduceSum` does across processes); every global statistic must equal
the single-process one on the ranks' concatenated data, and the rank-local one must differ (so each check can
fail). The PPO loss with a global token count is checked the same way: the mean over two ranks of their losses and
gradients equals one process on the concatenated minibatch."""

from __future__ import annotations

import math

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from mindrlhf import rl
from mindrlhf.config import PPOConfig
from mindrlhf.models import CausalLM
from mindrlhf.train.distributed import AllReduceSum
from mindrlhf.train.experience import Experience, build_experience, ends_with_eos, scale_scores
from mindrlhf.train.ppo import PPOLoss, token_counts
from tests.helpers import ThreadRanks, mask_from_lengths, randomize_parameters, tiny_gpt2_config


def split(x, at):
    return [x[:at], x[at:]]


# ---------------------------------------------------------------------------------------------- moments, whitening


def test_global_whitening_is_whitening_of_the_concatenation():
    rng = np.random.default_rng(0)
    parts = [rng.normal(1.0, 2.0, (3, 6)), rng.normal(-2.0, 0.5, (5, 6))]  # ranks with different statistics
    masks = [mask_from_lengths([6, 1, 4], 6), mask_from_lengths([2, 6, 3, 1, 5], 6)]
    expected = rl.whiten(np.concatenate(parts), np.concatenate(masks))
    got = ThreadRanks().run(lambda rank, reduce: rl.whiten(parts[rank], masks[rank], reduce=reduce))
    np.testing.assert_allclose(np.concatenate(got), expected, rtol=1e-6, atol=1e-6)
    local = [rl.whiten(p, m) for p, m in zip(parts, masks)]
    assert np.abs(np.concatenate(local) - expected).max() > 0.1
    # unshifted whitening, the moments themselves, and the textbook formula
    unshifted = ThreadRanks().run(lambda r, reduce: rl.whiten(parts[r], masks[r], shift_mean=False, reduce=reduce))
    np.testing.assert_allclose(
        np.concatenate(unshifted), rl.whiten(np.concatenate(parts), np.concatenate(masks), shift_mean=False), atol=1e-6
    )
    values = np.concatenate(parts)[np.concatenate(masks) == 1]
    for ddof in (0, 1):
        moments = ThreadRanks().run(lambda r, reduce, ddof=ddof: rl.masked_moments(parts[r], masks[r], reduce, ddof))
        assert moments[0] == moments[1]  # every rank gets the same numbers
        np.testing.assert_allclose(moments[0], (values.mean(), values.var(ddof=ddof), values.size), rtol=1e-12)


def test_global_running_moments_and_explained_variance():
    rng = np.random.default_rng(1)
    batches = [[rng.normal(3.0, 1.0, 4), rng.normal(-1.0, 4.0, 6)] for _ in range(3)]
    expected = rl.RunningMoments()
    for batch in batches:
        expected.update(np.concatenate(batch))

    def ranks(rank, reduce):
        moments = rl.RunningMoments()
        for batch in batches:
            moments.update(batch[rank], reduce)
        return moments

    for moments in ThreadRanks().run(ranks):
        np.testing.assert_allclose(
            [moments.mean, moments.var, moments.count], [expected.mean, expected.var, expected.count], rtol=1e-12
        )
    everything = np.concatenate([np.concatenate(b) for b in batches])
    np.testing.assert_allclose([expected.mean, expected.var], [everything.mean(), everything.var()], rtol=1e-12)

    values, returns = rng.normal(size=(7, 5)), rng.normal(size=(7, 5)) * 2
    mask = mask_from_lengths([5, 1, 3, 2, 5, 4, 1], 5)
    expected_ev = rl.explained_variance(values, returns, mask)
    got = ThreadRanks().run(
        lambda r, reduce: rl.explained_variance(split(values, 3)[r], split(returns, 3)[r], split(mask, 3)[r], reduce)
    )
    np.testing.assert_allclose(got, [expected_ev] * 2, rtol=1e-12)
    kept = mask == 1
    assert expected_ev == pytest.approx(1 - (returns - values)[kept].var() / returns[kept].var(), rel=1e-12)


def test_all_reduce_sum_is_the_identity_on_one_process():
    values = np.array([[1.5, -2.0], [3.0, 1e-300]])
    out = AllReduceSum(1)(values)
    assert out.dtype == np.float64 and np.array_equal(out, values) and out is not values


# ----------------------------------------------------------------------------- missing-eos penalty, score scaling


def test_ends_with_eos():
    ids = np.array([[5, 2, 0, 0], [5, 6, 7, 8], [2, 0, 0, 0], [5, 6, 7, 2]])
    lengths = np.array([2, 4, 1, 4])
    assert ends_with_eos(ids, lengths, 2).tolist() == [True, False, True, True]
    assert ends_with_eos(ids, lengths, None).tolist() == [False] * 4


@pytest.mark.parametrize("scaling", ["none", "running", "whiten"])
def test_missing_eos_penalty_comes_off_the_score_before_scaling(scaling):
    rng = np.random.default_rng(2)
    scores = rng.normal(1.0, 2.0, 6).astype(np.float32)
    has_eos = np.array([True, False, True, True, False, False])
    ppo = PPOConfig(missing_eos_penalty=0.75, reward_scaling=scaling, reward_clip=1.5)
    moments = rl.RunningMoments(mean=0.5, var=2.0, count=4.0)
    got = scale_scores(scores, has_eos, ppo, moments)
    penalised = scores.astype(np.float64) - 0.75 * np.array([0, 1, 0, 0, 1, 1])
    if scaling == "running":  # the running std over the 4 earlier scores (mean 0.5, var 2) and these 6
        everything_mean = (4 * 0.5 + penalised.sum()) / 10
        m2 = 4 * 2.0 + 4 * (0.5 - everything_mean) ** 2 + ((penalised - everything_mean) ** 2).sum()
        expected = penalised / math.sqrt(m2 / 10)
        assert moments.count == 10 and moments.mean == pytest.approx(everything_mean)
    elif scaling == "whiten":
        expected = (penalised - penalised.mean()) / penalised.std()
    else:
        expected = penalised
    np.testing.assert_allclose(got, np.clip(expected, -1.5, 1.5), rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32
    off = scale_scores(scores, has_eos, PPOConfig(reward_scaling="none"), rl.RunningMoments())
    np.testing.assert_array_equal(off, scores)  # None: no penalty


def test_missing_eos_penalty_is_validated():
    from mindrlhf.config import ConfigError

    with pytest.raises(ConfigError, match="missing_eos_penalty"):
        PPOConfig(missing_eos_penalty=-1.0)


# ------------------------------------------------------------------------------------ the whole experience phase


def raw_rollouts(rng, lengths, eos, n=5, width=3, pretrain=4):
    """Synthetic rollouts of one rank, the arrays :meth:`ExperienceMaker.rollouts` returns."""
    b = len(lengths)
    response_mask = mask_from_lengths(lengths, n)
    attention_mask = np.concatenate([np.ones((b, width), np.int32), response_mask.astype(np.int32)], 1)
    logprobs = rng.normal(-2.0, 0.5, (b, n)).astype(np.float32)
    return {
        "query_tensors": rng.integers(3, 50, (b, width)).astype(np.int32),
        "response_tensors": rng.integers(3, 50, (b, width + n)).astype(np.int32) * attention_mask,
        "attention_mask": attention_mask,
        "response_mask": response_mask,
        "scores": rng.normal(0.5, 1.5, b).astype(np.float32),
        "ends_with_eos": np.asarray(eos, bool),
        "logprobs": logprobs,
        "values": rng.normal(size=(b, n)).astype(np.float32),
        "ref_logprobs": (logprobs - rng.normal(0.3, 0.5, (b, n))).astype(np.float32),
        "pretrain_ids": rng.integers(3, 50, (b, pretrain)).astype(np.int32),
        "loss_mask": rng.integers(0, 2, (b, pretrain)).astype(np.int32),
    }


@pytest.mark.parametrize("scaling", ["running", "whiten"])
def test_two_ranks_build_the_experience_of_one_process(scaling):
    """Adaptive KL, advantage whitening, reward scaling and the missing-eos penalty on two ranks with different
    response lengths and KL: each rank's experience and statistics equal the single-process ones on the
    concatenation, for two iterations (running moments and the KL coefficient carry over)."""
    rng = np.random.default_rng(3)
    iterations = [
        [
            raw_rollouts(rng, [5, 2, 4], [False, True, True]),
            raw_rollouts(rng, [1, 5, 3, 5, 2], [True, False, True, False, True]),
        ]
        for _ in range(2)
    ]
    for parts in iterations:  # rank 1's KL per response is 4x rank 0's: local controllers would disagree
        parts[1]["ref_logprobs"] = parts[1]["logprobs"] - 4 * (parts[1]["logprobs"] - parts[1]["ref_logprobs"])
    concat = [{k: np.concatenate([p[k] for p in parts]) for k in parts[0]} for parts in iterations]
    kl = float(((concat[0]["logprobs"] - concat[0]["ref_logprobs"]) * concat[0]["response_mask"]).sum(1).mean())
    ppo = PPOConfig(
        adaptive_kl=True,
        kl_coef=0.1,
        target=1.1 * kl,
        horizon=16,
        whiten_advantages=True,
        reward_scaling=scaling,
        missing_eos_penalty=0.5,
        gamma=0.9,
        lam=0.8,
    )
    # target near the global KL: the controller's error is not clipped, so its input matters
    one = [rl.AdaptiveKLController(ppo.kl_coef, ppo.target, ppo.horizon), rl.RunningMoments()]
    expected = [build_experience(raw, ppo, *one) for raw in concat]

    def rank(r, reduce):
        state = [rl.AdaptiveKLController(ppo.kl_coef, ppo.target, ppo.horizon), rl.RunningMoments()]
        out = [build_experience(parts[r], ppo, *state, reduce) for parts in iterations]
        return out, state

    results = ThreadRanks().run(rank)
    for i, (experience, stats) in enumerate(expected):
        got = Experience.concat([results[r][0][i][0] for r in range(2)])
        for name, value in experience.as_dict().items():
            np.testing.assert_allclose(getattr(got, name), value, rtol=1e-5, atol=1e-6, err_msg=name)
        for r in range(2):
            got_stats = results[r][0][i][1]
            for name in (
                "score_mean",
                "score_std",
                "kl",
                "response_length",
                "kl_coef",
                "explained_variance",
                "no_eos_rate",
            ):
                assert getattr(got_stats, name) == pytest.approx(getattr(stats, name), rel=1e-9), name
    for r in range(2):
        controller, moments = results[r][1]
        assert controller.value == pytest.approx(one[0].value, rel=1e-12)
        assert (moments.mean, moments.var, moments.count) == pytest.approx((one[1].mean, one[1].var, one[1].count))
    last = concat[-1]
    assert expected[-1][1].no_eos_rate == pytest.approx((~last["ends_with_eos"]).mean())
    assert expected[-1][1].kl == pytest.approx(
        ((last["logprobs"] - last["ref_logprobs"]) * last["response_mask"]).sum(1).mean(), rel=1e-6
    )

    # rank-local statistics (the old behaviour) give other advantages and another KL coefficient
    local = [rl.AdaptiveKLController(ppo.kl_coef, ppo.target, ppo.horizon), rl.RunningMoments()]
    local_experience, _ = build_experience(iterations[0][0], ppo, *local)
    assert np.abs(local_experience.advantages - expected[0][0].advantages[:3]).max() > 1e-2
    assert abs(local[0].value - results[0][1][0].value) > 1e-4


# ------------------------------------------------------------------------------ the loss with a global token count


def loss_inputs(rng, lengths, width=4, n=4, pretrain=6, vocab=64):
    b = len(lengths)
    response_mask = mask_from_lengths(lengths, n).astype(np.int32)
    attention_mask = np.concatenate([np.ones((b, width), np.int32), response_mask], 1)
    floats = lambda mean, std: (rng.normal(mean, std, (b, n)) * response_mask).astype(np.float32)  # noqa: E731
    return {
        "response_tensors": rng.integers(3, vocab, (b, width + n)).astype(np.int32) * attention_mask,
        "attention_mask": attention_mask,
        "logprobs": floats(-4.0, 0.3),
        "values": floats(0.0, 1.0),
        "advantages": floats(0.0, 1.0),
        "returns": floats(0.0, 1.0),
        "pretrain_ids": rng.integers(3, vocab, (b, pretrain)).astype(np.int32),
        "loss_mask": (rng.random((b, pretrain)) < 0.6).astype(np.int32),
    }


def loss_and_grads(loss_net, data, counts):
    weights = loss_net.trainable_params()
    names = (
        "response_tensors",
        "attention_mask",
        "logprobs",
        "values",
        "advantages",
        "returns",
        "pretrain_ids",
        "loss_mask",
    )

    def forward(*inputs):
        return loss_net(*inputs)

    grad_fn = ms.value_and_grad(forward, None, weights, has_aux=True)
    (loss, metrics), grads = grad_fn(*[Tensor(data[k]) for k in names], Tensor(np.asarray(counts, np.float32)))
    return float(loss.asnumpy()), metrics.asnumpy(), [g.asnumpy() for g in grads]


def test_mean_over_ranks_of_the_loss_with_a_global_count_is_the_global_token_mean():
    """Rank r's loss is ``sum_r(terms) / (G / W)``: averaged over the W ranks (as the train step averages
    gradients) it is ``sum(terms) / G``, the loss of one process on the concatenated minibatch, even when the ranks'
    token counts differ (3 + 8 = 11 generated tokens here, not two means of equal weight)."""
    cfg = tiny_gpt2_config(vocab_size=64, seq_length=16)
    policy = CausalLM(cfg, with_value_head=True)
    randomize_parameters(policy, seed=4, scale=0.1)
    ppo = PPOConfig(pretrain_coef=0.5, cliprange=0.1)
    ppo.generation.temperature = 0.8
    rng = np.random.default_rng(5)
    parts = [loss_inputs(rng, [1, 2]), loss_inputs(rng, [4, 4])]
    whole = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    counts = token_counts(whole, np.arange(4), 4)
    assert counts[0] == 11 and counts[1] == whole["loss_mask"][:, 1:].sum()
    single = loss_and_grads(PPOLoss(policy, None, ppo, 4, rank_size=1), whole, counts)
    ranked = PPOLoss(policy, None, ppo, 4, rank_size=2)
    per_rank = [loss_and_grads(ranked, part, counts) for part in parts]
    assert np.mean([r[0] for r in per_rank]) == pytest.approx(single[0], rel=1e-5)
    np.testing.assert_allclose(np.mean([r[1] for r in per_rank], 0), single[1], rtol=1e-5, atol=1e-6)
    for i, grad in enumerate(single[2]):
        np.testing.assert_allclose((per_rank[0][2][i] + per_rank[1][2][i]) / 2, grad, rtol=1e-4, atol=1e-7)
    # each rank's own token mean (the old normaliser) weights rank 0's 3 tokens like rank 1's 8: another loss
    local = [loss_and_grads(PPOLoss(policy, None, ppo, 4), part, token_counts(part, np.arange(2), 4)) for part in parts]
    assert abs(np.mean([r[0] for r in local]) - single[0]) > 1e-3
