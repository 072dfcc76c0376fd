"""Graph-kernel fusion (``context.enable_graph_kernel``): MindSpore's AKG compiles the elementwise chains, norms,
GELU and the optimizer into fused CPU kernels. A reward-model training step with fusion must train the same model
as without it (same losses, same weights after the updates), and the fused GELU must match torch's."""

from __future__ import annotations

import os

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor

from mindrlhf.config import ContextConfig, LossScaleConfig, LrScheduleConfig, ModelConfig, OptimizerConfig
from mindrlhf.context import graph_kernel_settings, init_context
from mindrlhf.models import RewardModel
from mindrlhf.models.layers import FUSED_MAX_ROWS, activation, gelu_tanh, gelu_tanh_fused
from mindrlhf.train.optim import build_optimizer
from mindrlhf.train.reward import RewardLoss
from mindrlhf.train.step import TrainStep

PAIRS, SEQ, STEPS = 4, 64, 3  # 2 * 4 * 64 = 512 rows: above FUSED_MAX_ROWS, the training-sized path
LR = 1e-5  # Adam moves every weight by up to lr whatever its gradient's size, so the rounding of near-zero
# gradients (fused or not) can flip a whole update: the training comparison allows that, the gradient one does not


@pytest.fixture
def kernel_dirs(tmp_path, monkeypatch):
    """Compiled kernels and the compiler's log file in this test's folder; fusion off again afterwards."""
    monkeypatch.chdir(tmp_path)  # MindSpore's AKG compiler writes a log file into the working directory
    monkeypatch.setenv("MS_COMPILER_CACHE_PATH", str(tmp_path / "kernels"))
    monkeypatch.delenv("AKG_WHITE_LIST_PATH", raising=False)
    yield tmp_path
    init_context(ContextConfig(mode=0, enable_graph_kernel=False))


def reward_batch(seed: int = 0) -> list:
    """One right-padded batch of ``PAIRS`` pairs in the reward trainer's layout (chosen rows first)."""
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 500, (2 * PAIRS, SEQ)).astype(np.int32)
    lengths = rng.integers(SEQ // 2, SEQ + 1, 2 * PAIRS)
    mask = (np.arange(SEQ)[None, :] < lengths[:, None]).astype(np.int32)
    loss_mask = np.zeros((PAIRS, SEQ), np.float32)
    for i in range(PAIRS):
        loss_mask[i, SEQ // 4 : max(lengths[i], lengths[PAIRS + i])] = 1.0
    return [Tensor(ids), Tensor(mask), Tensor(loss_mask), Tensor(lengths.astype(np.int32))]


def reward_loss_net(graph_kernel: bool) -> RewardLoss:
    """The seeded tiny GPT-2 reward model's loss cell, built in graph mode with fusion on or off."""
    init_context(ContextConfig(mode=0, enable_graph_kernel=graph_kernel), seed=0)
    cfg = ModelConfig(type="gpt2", vocab_size=512, hidden_size=64, num_layers=2, num_heads=4, seq_length=SEQ)
    return RewardLoss(RewardModel(cfg), "end")


class LossAndGrads(ms.nn.Cell):
    def __init__(self, loss_net):
        super().__init__()
        self.loss_net = loss_net
        self.weights = ms.ParameterTuple(loss_net.trainable_params())
        self.grad = ms.ops.GradOperation(get_by_list=True)

    def construct(self, input_ids, attention_mask, loss_mask, end_ind):
        args = (input_ids, attention_mask, loss_mask, end_ind)
        return self.loss_net(*args), self.grad(self.loss_net, self.weights)(*args)


def test_reward_gradients_with_fusion_match_without(kernel_dirs):
    results = {}
    for fused in (False, True):
        loss_net = reward_loss_net(fused)
        loss, grads = LossAndGrads(loss_net)(*reward_batch(0))
        results[fused] = (float(loss.asnumpy()), [g.asnumpy() for g in grads], loss_net.trainable_params())
    (plain_loss, plain, params), (fused_loss, fused, _) = results[False], results[True]
    assert fused_loss == pytest.approx(plain_loss, rel=1e-5)
    for param, a, b in zip(params, plain, fused):
        assert np.abs(a - b).max() <= 1e-4 * max(np.abs(a).max(), 1e-3), param.name


def train_reward_model(graph_kernel: bool):
    """``STEPS`` AdamW steps of a seeded tiny GPT-2 reward model in graph mode; (losses, final weights)."""
    loss_net = reward_loss_net(graph_kernel)
    optimizer = build_optimizer(
        loss_net.trainable_params(), OptimizerConfig(learning_rate=LR), LrScheduleConfig(), STEPS
    )
    step = TrainStep(loss_net, optimizer, LossScaleConfig(loss_scale_value=1.0, use_clip_grad=True, max_grad_norm=1.0))
    step.set_train(True)
    losses = [float(step(*reward_batch(i))[0].asnumpy()) for i in range(STEPS)]
    return losses, {p.name: p.asnumpy() for p in loss_net.trainable_params()}


def test_reward_training_with_fusion_matches_without(kernel_dirs):
    plain_losses, plain_weights = train_reward_model(graph_kernel=False)
    fused_losses, fused_weights = train_reward_model(graph_kernel=True)
    assert ms.get_context("enable_graph_kernel")
    np.testing.assert_allclose(fused_losses, plain_losses, rtol=1e-3)
    assert plain_losses[-1] != plain_losses[0]  # it trained
    assert fused_weights.keys() == plain_weights.keys()
    for name, value in plain_weights.items():
        np.testing.assert_allclose(fused_weights[name], value, atol=2 * STEPS * LR, err_msg=name)
    assert list((kernel_dirs / "kernels").iterdir())  # the fused kernels went to the cache folder


def test_fused_gelu_matches_torch_under_fusion(kernel_dirs):
    import torch

    init_context(ContextConfig(mode=0, enable_graph_kernel=True), seed=0)
    assert activation("gelu") is gelu_tanh_fused  # the model picks the op the fusion expands
    x = np.random.default_rng(5).normal(0.0, 3.0, (2 * FUSED_MAX_ROWS, 16)).astype(np.float32)
    dout = np.random.default_rng(6).normal(size=x.shape).astype(np.float32)

    class Weighted(ms.nn.Cell):
        def construct(self, v, d):
            return (gelu_tanh_fused(v) * d).sum()

    ours_grad = ms.grad(Weighted(), grad_position=0)(Tensor(x), Tensor(dout)).asnumpy()
    ref_x = torch.tensor(x, requires_grad=True)
    (torch.nn.functional.gelu(ref_x, approximate="tanh") * torch.tensor(dout)).sum().backward()
    np.testing.assert_allclose(ours_grad, ref_x.grad.numpy(), atol=2e-4)


def test_fusion_settings_follow_the_mode_and_the_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("MS_COMPILER_CACHE_PATH", raising=False)
    monkeypatch.delenv("AKG_WHITE_LIST_PATH", raising=False)
    cache = tmp_path / "cache"
    on = ContextConfig(mode=0, enable_graph_kernel=True, kernel_cache_dir=str(cache))
    assert graph_kernel_settings(on) == {"enable_graph_kernel": True}
    assert cache.is_dir()
    assert os.environ["MS_COMPILER_CACHE_PATH"] == str(cache)
    assert os.path.isdir(os.path.join(os.environ["AKG_WHITE_LIST_PATH"], "config"))  # AKG's tiling repository
    assert graph_kernel_settings(ContextConfig(mode=0)) == {"enable_graph_kernel": False}
    assert graph_kernel_settings(ContextConfig(mode=1, enable_graph_kernel=True)) == {}  # graph mode only
    assert activation("gelu") is gelu_tanh  # fusion off: the elementwise / decode-sized fused form
