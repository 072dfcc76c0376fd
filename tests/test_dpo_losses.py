"""The offline preference losses of ``mindrlhf.losses`` (DPO, conservative DPO, IPO, hinge, SimPO, ORPO) and TRL's
``rewards/*`` / ``logps/*`` metrics against plain numpy formulas written from the papers (and TRL's choices:
IPO on per-token log-ratios, SimPO and ORPO on per-token means), in GRAPH and PYNATIVE mode, plus the DPO gradient
with respect to the policy log-probs."""

from __future__ import annotations

import numpy as np
import pytest
from mindspore import nn, ops

from mindrlhf.config import DPO_LOSS_TYPES
from mindrlhf.losses import PREFERENCE_METRICS, preference_loss, preference_metrics
from tests.helpers import t32

RTOL, ATOL = 1e-5, 1e-5
BETA, SMOOTHING, GAMMA = 0.3, 0.1, 0.4


def log_sigmoid(x):
    return -np.log1p(np.exp(-x))


def naive_loss(loss_type, pc, pr, nc, nr, rc, rr, beta=BETA, eps=0.0, gamma=GAMMA):
    """(loss, chosen rewards, rejected rewards), float64, one pair at a time."""
    losses, chosen_rewards, rejected_rewards = [], [], []
    for b in range(len(pc)):
        if loss_type in ("simpo", "orpo"):
            ac, ar = pc[b] / nc[b], pr[b] / nr[b]
            if loss_type == "simpo":
                m = beta * (ac - ar) - gamma
                losses.append(-(1 - eps) * log_sigmoid(m) - eps * log_sigmoid(-m))
            else:
                odds = (ac - np.log(1 - np.exp(ac))) - (ar - np.log(1 - np.exp(ar)))
                losses.append(-beta * log_sigmoid(odds))
            chosen_rewards.append(beta * ac)
            rejected_rewards.append(beta * ar)
            continue
        h = (pc[b] - rc[b]) - (pr[b] - rr[b])
        if loss_type == "sigmoid":
            losses.append(-(1 - eps) * log_sigmoid(beta * h) - eps * log_sigmoid(-beta * h))
        elif loss_type == "hinge":
            losses.append(max(0.0, 1 - beta * h))
        else:
            ipo = (pc[b] - rc[b]) / nc[b] - (pr[b] - rr[b]) / nr[b]
            losses.append((ipo - 1 / (2 * beta)) ** 2)
        chosen_rewards.append(beta * (pc[b] - rc[b]))
        rejected_rewards.append(beta * (pr[b] - rr[b]))
    loss = float(np.mean(losses))
    if loss_type == "orpo":
        loss += -float(np.sum(pc)) / float(np.sum(nc))
    return loss, np.array(chosen_rewards), np.array(rejected_rewards)


def batch(seed=0, pairs=5):
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, (2, pairs)).astype(np.float64)
    logps = -rng.uniform(0.2, 3.0, (2, pairs)) * lengths  # summed log-probs, per-token means in (-3, -0.2)
    ref = logps + rng.normal(0, 1.0, (2, pairs))
    return logps[0], logps[1], lengths[0], lengths[1], ref[0], ref[1]


class LossCell(nn.Cell):
    def __init__(self, loss_type, beta, eps, gamma):
        super().__init__()
        self.loss_type, self.beta, self.eps, self.gamma = loss_type, beta, eps, gamma

    def construct(self, pc, pr, nc, nr, rc, rr):
        loss, chosen, rejected = preference_loss(
            pc, pr, nc, nr, rc, rr, self.loss_type, self.beta, self.eps, self.gamma
        )
        return loss, chosen, rejected, preference_metrics(chosen, rejected, pc, pr)


CASES = [
    ("sigmoid", 0.0),
    ("sigmoid", SMOOTHING),
    ("ipo", 0.0),
    ("hinge", 0.0),
    ("simpo", 0.0),
    ("simpo", SMOOTHING),
    ("orpo", 0.0),
]


@pytest.mark.parametrize("loss_type,eps", CASES)
def test_preference_losses_match_numpy(ms_mode, loss_type, eps):
    data = batch()
    loss, chosen, rejected, metrics = LossCell(loss_type, BETA, eps, GAMMA)(*(t32(x) for x in data))
    want, want_chosen, want_rejected = naive_loss(loss_type, *data, eps=eps)
    np.testing.assert_allclose(float(loss.asnumpy()), want, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(chosen.asnumpy(), want_chosen, rtol=RTOL, atol=ATOL)
    np.testing.assert_allclose(rejected.asnumpy(), want_rejected, rtol=RTOL, atol=ATOL)
    expected = {
        "rewards/chosen": want_chosen.mean(),
        "rewards/rejected": want_rejected.mean(),
        "rewards/margins": (want_chosen - want_rejected).mean(),
        "rewards/accuracies": (want_chosen > want_rejected).mean(),
        "logps/chosen": data[0].mean(),
        "logps/rejected": data[1].mean(),
    }
    np.testing.assert_allclose(metrics.asnumpy(), [expected[k] for k in PREFERENCE_METRICS], rtol=RTOL, atol=ATOL)


def test_every_loss_type_is_tested():
    assert {loss_type for loss_type, _ in CASES} == set(DPO_LOSS_TYPES)


def test_reference_free_losses_ignore_the_reference():
    data = list(batch(seed=1))
    for loss_type in ("simpo", "orpo"):
        first = preference_loss(*(t32(x) for x in data), loss_type, BETA)[0]
        data[4], data[5] = data[4] + 5.0, data[5] - 7.0
        second = preference_loss(*(t32(x) for x in data), loss_type, BETA)[0]
        assert float(first.asnumpy()) == float(second.asnumpy())


def test_dpo_gradient_matches_formula():
    """d/d logp_c of mean_b -log sigmoid(beta h_b) = -beta sigmoid(-beta h_b) / B (and the opposite for logp_r)."""
    pc, pr, nc, nr, rc, rr = batch(seed=2)

    def loss_of(chosen, rejected):
        return preference_loss(chosen, rejected, t32(nc), t32(nr), t32(rc), t32(rr), "sigmoid", BETA)[0]

    grad_c, grad_r = ops.grad(loss_of, grad_position=(0, 1))(t32(pc), t32(pr))
    h = (pc - rc) - (pr - rr)
    want = -BETA / (1 + np.exp(BETA * h)) / len(pc)
    np.testing.assert_allclose(grad_c.asnumpy(), want, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(grad_r.asnumpy(), -want, rtol=1e-4, atol=1e-6)


def test_unknown_loss_type_is_refused():
    with pytest.raises(ValueError, match="unknown loss_type 'kto'"):
        preference_loss(*(t32(x) for x in batch()), "kto", BETA)
