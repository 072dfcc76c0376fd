"""Pure losses against numpy; the shared train step (loss scale, overflow skip, clipping); the lr table."""

from __future__ import annotations

import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from mindrlhf.config import LossScaleConfig, LrScheduleConfig, OptimizerConfig
from mindrlhf.losses import log_sigmoid, masked_mean, pairwise_accuracy, pairwise_end_loss, pairwise_span_loss
from mindrlhf.train.optim import build_optimizer, decay_groups, lr_table
from mindrlhf.train.step import TrainStep
from tests.helpers import set_mode


def np_log_sigmoid(x):
    return -np.logaddexp(0.0, -x)


def test_log_sigmoid_is_stable_and_exact(ms_mode):
    x = np.array([-200.0, -30.0, -1.0, 0.0, 1.0, 30.0, 200.0], np.float32)
    out = log_sigmoid(Tensor(x)).asnumpy()
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, np_log_sigmoid(x.astype(np.float64)), rtol=1e-6, atol=1e-6)


def test_pairwise_span_loss_matches_numpy(ms_mode):
    rng = np.random.default_rng(0)
    chosen, rejected = rng.normal(size=(3, 6)).astype(np.float32), rng.normal(size=(3, 6)).astype(np.float32)
    mask = np.zeros((3, 6), np.float32)
    mask[0, 2:5] = 1
    mask[1, 0:6] = 1
    mask[2, 5] = 1
    loss, per_pair = pairwise_span_loss(Tensor(chosen), Tensor(rejected), Tensor(mask))
    per_token = -np_log_sigmoid((chosen - rejected).astype(np.float64))
    expected = np.array([per_token[b][mask[b] == 1].mean() for b in range(3)])
    np.testing.assert_allclose(per_pair.asnumpy(), expected, rtol=1e-5)
    np.testing.assert_allclose(loss.asnumpy(), expected.mean(), rtol=1e-5)


def test_pairwise_end_loss_and_accuracy_match_numpy(ms_mode):
    chosen = np.array([2.0, -1.0, 0.5, 3.0], np.float32)
    rejected = np.array([1.0, 0.0, 0.5, -3.0], np.float32)
    loss, per_pair = pairwise_end_loss(Tensor(chosen), Tensor(rejected))
    expected = -np_log_sigmoid((chosen - rejected).astype(np.float64))
    np.testing.assert_allclose(per_pair.asnumpy(), expected, rtol=5e-5)  # float32 log1p near 0
    np.testing.assert_allclose(loss.asnumpy(), expected.mean(), rtol=5e-5)
    # ties do not count as correct
    assert float(pairwise_accuracy(Tensor(chosen), Tensor(rejected)).asnumpy()) == pytest.approx(0.5)


def test_masked_mean_handles_empty_rows(ms_mode):
    values = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32)
    mask = np.array([[1, 0, 1], [0, 0, 0]], np.float32)
    np.testing.assert_allclose(masked_mean(Tensor(values), Tensor(mask), axis=1).asnumpy(), [2.0, 0.0])
    np.testing.assert_allclose(masked_mean(Tensor(values), Tensor(mask)).asnumpy(), 2.0)


class _Quadratic(nn.Cell):
    """loss = sum((w - target)^2) * factor; ``factor`` = inf makes every gradient non-finite."""

    def __init__(self):
        super().__init__()
        self.w = Parameter(Tensor(np.array([1.0, -2.0, 3.0], np.float32)), name="w")
        self.target = Tensor(np.zeros(3, np.float32))

    def construct(self, factor):
        return ops.reduce_sum(ops.square(self.w - self.target)) * factor


def _step(scale=8.0, window=2, clip=False, max_norm=1.0, lr=0.1):
    net = _Quadratic()
    opt = build_optimizer(
        net.trainable_params(),
        OptimizerConfig(learning_rate=lr, weight_decay=0.0),
        LrScheduleConfig(type="constant"),
        100,
    )
    cfg = LossScaleConfig(
        loss_scale_value=scale, scale_factor=2.0, scale_window=window, use_clip_grad=clip, max_grad_norm=max_norm
    )
    return net, TrainStep(net, opt, cfg)


def test_train_step_updates_and_grows_scale_after_window():
    set_mode("graph")
    net, step = _step(scale=8.0, window=2)
    before = net.w.asnumpy().copy()
    scales = []
    for _ in range(3):
        loss, overflow, scale = step(Tensor(1.0, ms.float32))
        assert not bool(overflow.asnumpy())
        scales.append(float(scale.asnumpy()))
    assert scales == [8.0, 8.0, 16.0]  # grows after 2 clean steps; the returned scale is the one the step used
    assert float(step.loss_scale.asnumpy()) == 16.0
    assert np.abs(net.w.asnumpy()).sum() < np.abs(before).sum()  # moved toward the target


def test_train_step_skips_update_and_backs_off_on_overflow():
    set_mode("graph")
    net, step = _step(scale=8.0, window=100)
    before = net.w.asnumpy().copy()
    _, overflow, _ = step(Tensor(np.inf, ms.float32))
    assert bool(overflow.asnumpy())
    np.testing.assert_array_equal(net.w.asnumpy(), before)
    assert float(step.loss_scale.asnumpy()) == 4.0
    assert int(step.good_steps.asnumpy()) == 0
    for _ in range(5):
        step(Tensor(np.inf, ms.float32))
    assert float(step.loss_scale.asnumpy()) == 1.0  # never below 1


def test_train_step_clips_by_global_norm():
    """With Adam the update size ignores gradient scale, so compare the optimizer's first moment: it holds
    (1 - beta1) * g, and g must have global norm <= max_norm after clipping."""
    set_mode("graph")
    net, step = _step(scale=1.0, clip=True, max_norm=0.5)
    grad = 2.0 * net.w.asnumpy()  # d/dw sum(w^2)
    step(Tensor(1.0, ms.float32))
    moment = [p for p in step.optimizer.get_parameters() if p.name.startswith("moment1.")][0].asnumpy()
    clipped = moment / (1 - 0.9)
    np.testing.assert_allclose(np.linalg.norm(clipped), 0.5, rtol=1e-4)
    np.testing.assert_allclose(clipped / np.linalg.norm(clipped), grad / np.linalg.norm(grad), rtol=1e-4)


def test_lr_table_shapes():
    opt = OptimizerConfig(learning_rate=1.0)
    cosine = lr_table(LrScheduleConfig(type="cosine", learning_rate=1.0, lr_end=0.1, warmup_steps=2), opt, 10)
    np.testing.assert_allclose(cosine[:2], [0.5, 1.0])
    assert cosine[2] == pytest.approx(1.0) and cosine[-1] > 0.1 and np.all(np.diff(cosine[2:]) < 0)
    linear = lr_table(LrScheduleConfig(type="polynomial", learning_rate=1.0, lr_end=0.0), opt, 5)
    np.testing.assert_allclose(linear, [1.0, 0.8, 0.6, 0.4, 0.2], rtol=1e-6)
    constant = lr_table(LrScheduleConfig(type="constant", warmup_ratio=0.5), OptimizerConfig(learning_rate=3e-4), 4)
    np.testing.assert_allclose(constant, [1.5e-4, 3e-4, 3e-4, 3e-4], rtol=1e-6)


def test_weight_decay_skips_norms_and_biases():
    from tests.helpers import tiny_gpt2_config
    from mindrlhf.models import RewardModel

    model = RewardModel(tiny_gpt2_config())
    decayed, plain = decay_groups(model.trainable_params(), 0.1)
    names = {p.name for p in decayed["params"]}
    assert "backbone.h.0.attn.c_attn.weight" in names and "score.weight" in names
    assert not any(n.endswith(".bias") or ".ln_" in n for n in names)
    assert {p.name for p in plain["params"]} >= {"backbone.ln_f.weight", "backbone.h.0.attn.c_attn.bias"}
    assert plain["weight_decay"] == 0.0


class _TwoParams(nn.Cell):
    """A matrix (decayed) and a bias (not decayed); loss = sum(W x + b)^2."""

    def __init__(self, w, b):
        super().__init__()
        self.weight = Parameter(Tensor(w), name="layer.weight")
        self.bias = Parameter(Tensor(b), name="layer.bias")
        self.x = Tensor(np.array([0.5, -1.0, 2.0], np.float32))

    def construct(self):
        return ops.reduce_sum(ops.square(ops.mv(self.weight, self.x) + self.bias))


def test_adamw_matches_torch_adamw():
    """Bias-corrected Adam with decoupled weight decay on matrices only, under a warmup+cosine schedule."""
    import torch

    set_mode("graph")
    rng = np.random.default_rng(0)
    w, b = rng.normal(size=(2, 3)).astype(np.float32), rng.normal(size=2).astype(np.float32)
    opt_cfg = OptimizerConfig(learning_rate=0.05, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.1)
    sched = LrScheduleConfig(type="cosine", lr_end=0.005, warmup_steps=2)
    net = _TwoParams(w, b)
    step = TrainStep(
        net,
        build_optimizer(net.trainable_params(), opt_cfg, sched, 6),
        LossScaleConfig(loss_scale_value=1.0, use_clip_grad=False),
    )
    tw, tb = torch.tensor(w, requires_grad=True), torch.tensor(b, requires_grad=True)
    topt = torch.optim.AdamW(
        [{"params": [tw], "weight_decay": 0.1}, {"params": [tb], "weight_decay": 0.0}],
        lr=1.0,
        betas=(0.9, 0.999),
        eps=1e-8,
    )
    lrs = lr_table(sched, opt_cfg, 6)
    x = torch.tensor([0.5, -1.0, 2.0])
    for t in range(6):
        step()
        for group in topt.param_groups:
            group["lr"] = float(lrs[t])
        topt.zero_grad()
        ((tw @ x + tb) ** 2).sum().backward()
        topt.step()
    np.testing.assert_allclose(net.weight.asnumpy(), tw.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(net.bias.asnumpy(), tb.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(net.weight.asnumpy(), w)
