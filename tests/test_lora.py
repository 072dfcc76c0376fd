"""LoRA adapters: full rank reproduces full fine-tuning's first step, merged == unmerged, adapters off == base, only
adapter parameters train, and bad inputs are clear errors."""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np
import mindspore as ms
import pytest
import yaml
from mindspore import Tensor, nn

from mindrlhf.config import ConfigError, LoRAConfig, LossScaleConfig, LrScheduleConfig, OptimizerConfig, from_dict
from mindrlhf.models.lora import apply_lora, lora_layers, merge_lora, merged_weight, set_adapters_enabled
from mindrlhf.models.policy import CausalLM
from mindrlhf.train.optim import build_optimizer
from mindrlhf.train.sft import SFTLoss
from mindrlhf.train.step import TrainStep
from tests.helpers import TINY_CONFIGS, padded_batch, tiny_gpt2_config

TARGETS = {"gpt2": ["c_attn", "mlp.c_fc"], "llama": ["q_proj", "v_proj", "down_proj"]}


class Logits(nn.Cell):
    """A fresh compiled forward (graph mode compiles a cell once: after the layers change, wrap again)."""

    def __init__(self, model):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, attention_mask):
        return self.model(input_ids, attention_mask)


def logits(model, batch):
    return Logits(model)(*(Tensor(a) for a in batch)).asnumpy()


def sft_batch(cfg):
    ids, mask = padded_batch(cfg)
    return ids, mask, mask.copy()


def randomize_adapters(model, seed=1):
    rng = np.random.default_rng(seed)
    for layer in lora_layers(model).values():
        layer.lora_B.set_data(Tensor(rng.normal(0, 0.2, layer.lora_B.shape).astype(np.float32)))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_merged_equals_unmerged_and_adapters_off_is_the_base(ms_mode, family):
    cfg = TINY_CONFIGS[family]()
    model = CausalLM(cfg)
    batch = padded_batch(cfg)
    base = logits(model, batch)
    apply_lora(model, LoRAConfig(r=4, alpha=8.0, target_modules=TARGETS[family]))
    assert np.allclose(logits(model, batch), base, atol=1e-6)  # B = 0: the adapted model starts as its base
    randomize_adapters(model)
    forward = Logits(model)
    adapted = forward(*(Tensor(a) for a in batch)).asnumpy()
    assert np.abs(adapted - base).max() > 1e-2
    set_adapters_enabled(model, False)
    assert np.allclose(forward(*(Tensor(a) for a in batch)).asnumpy(), base, atol=1e-6)  # same compiled graph
    set_adapters_enabled(model, True)
    merged = merge_lora(model)
    assert merged and not lora_layers(model)
    assert np.allclose(logits(model, batch), adapted, atol=1e-5)
    assert "lora" not in " ".join(p.name for p in model.get_parameters())


def one_sgd_step(model, batch, lr):
    """One step of plain SGD (no loss scaling, clipping on) on ``model``'s trainable parameters."""
    net = SFTLoss(model)
    step = TrainStep(
        net,
        nn.SGD(net.trainable_params(), learning_rate=lr),
        LossScaleConfig(loss_scale_value=1.0, use_clip_grad=True, max_grad_norm=1.0),
    )
    loss, overflow, _ = step(*(Tensor(a) for a in batch))
    assert not overflow.asnumpy()
    return float(loss.asnumpy())


def test_full_rank_reproduces_full_finetuning_first_step():
    """With ``r = in_features``, ``alpha = r`` and an orthonormal ``A``, one SGD step moves ``W + B A`` by exactly
    the full-fine-tuning step ``-lr dL/dW`` (``B`` starts at 0, so ``dL/dA = 0`` and ``dB = -lr (dL/dW) A^T``;
    the gradient norms are equal, so clipping agrees too)."""
    cfg = tiny_gpt2_config()
    batch = sft_batch(cfg)
    ms.set_seed(3)
    full = CausalLM(cfg)
    ms.set_seed(3)
    adapted = CausalLM(cfg)
    target = LoRAConfig(r=cfg.hidden_size, alpha=float(cfg.hidden_size), target_modules=["c_attn"])
    apply_lora(adapted, target)
    for name, param in full.parameters_and_names():  # full fine-tuning of the same weights
        param.requires_grad = name.endswith("c_attn.weight")
    rng = np.random.default_rng(0)
    for layer in lora_layers(adapted).values():
        q, _ = np.linalg.qr(rng.normal(size=(cfg.hidden_size, cfg.hidden_size)))
        layer.lora_A.set_data(Tensor(q.astype(np.float32)))
    loss_full = one_sgd_step(full, batch, lr=0.5)
    loss_lora = one_sgd_step(adapted, batch, lr=0.5)
    assert loss_full == pytest.approx(loss_lora, rel=1e-6)
    full_weights = dict(full.parameters_and_names())
    for name, layer in lora_layers(adapted).items():
        before = layer.weight.asnumpy()
        after_full = full_weights[f"{name}.weight"].asnumpy()
        assert np.abs(after_full - before).max() > 1e-3  # the step moved the weights
        np.testing.assert_allclose(merged_weight(layer), after_full, atol=2e-6)
    np.testing.assert_allclose(logits(adapted, batch[:2]), logits(full, batch[:2]), atol=1e-4)


def test_only_adapter_parameters_train(ms_mode):
    cfg = tiny_gpt2_config()
    model = CausalLM(cfg)
    adapted = apply_lora(model, LoRAConfig(r=2, alpha=4.0, target_modules=["c_attn", "c_proj"]))
    assert len(adapted) == 6  # per block c_attn, and attn.c_proj and mlp.c_proj (both end with c_proj)
    net = SFTLoss(model)
    opt = build_optimizer(net.trainable_params(), OptimizerConfig(learning_rate=1e-2), LrScheduleConfig(), 10)
    step = TrainStep(net, opt, LossScaleConfig(loss_scale_value=1.0))
    assert {p.name.rsplit(".", 1)[1] for p in step.weights} == {"lora_A", "lora_B"}
    assert len(step.weights) == 2 * len(adapted)  # the all-reduce and optimizer see only these
    before = {p.name: p.asnumpy().copy() for p in model.get_parameters()}
    batch = [Tensor(a) for a in sft_batch(cfg)]
    losses = [float(step(*batch)[0].asnumpy()) for _ in range(3)]
    assert losses[-1] < losses[0]
    for param in model.get_parameters():
        changed = not np.array_equal(before[param.name], param.asnumpy())
        assert changed == (param.name.rsplit(".", 1)[1] in ("lora_A", "lora_B")), param.name


def test_extra_trainable_head():
    model = CausalLM(tiny_gpt2_config(), with_value_head=True)
    apply_lora(model, LoRAConfig(r=2, target_modules=["c_attn"], trainable=["v_head"]))
    names = {p.name for p in model.trainable_params()}
    assert {"v_head.weight", "v_head.bias"} <= names
    assert all(n.startswith("v_head.") or "lora_" in n for n in names)


def test_bad_inputs_are_clear_errors():
    model = CausalLM(tiny_gpt2_config())
    with pytest.raises(
        ConfigError,
        match=r"'c_atn' matches no dense layer; did you mean 'c_attn'\? the model has: "
        r"backbone.h.<i>.attn.c_attn, backbone.h.<i>.attn.c_proj, "
        r"backbone.h.<i>.mlp.c_fc, backbone.h.<i>.mlp.c_proj$",
    ):
        apply_lora(model, LoRAConfig(r=2, target_modules=["c_proj", "c_atn"]))
    assert not lora_layers(model)  # nothing was changed
    with pytest.raises(ConfigError, match=r"rank 33 is larger than layer 'backbone.h.0.attn.c_attn' \(32 -> 96\)"):
        apply_lora(model, LoRAConfig(r=33, target_modules=["c_attn"]))
    with pytest.raises(ConfigError, match="lora.r must be >= 1"):
        LoRAConfig(r=0, target_modules=["c_attn"])
    with pytest.raises(ConfigError, match="lora.r must be >= 1"):
        LoRAConfig(r=-1, target_modules=["c_attn"])
    with pytest.raises(ConfigError, match="lora.target_modules: name the dense layers"):
        LoRAConfig(r=4)
    with pytest.raises(ConfigError, match="lora.adapter brings its own rank"):
        LoRAConfig(r=4, target_modules=["c_attn"], adapter="some/folder")


def yaml_blocks(path):
    with open(path, encoding="utf-8") as f:
        return [yaml.safe_load(block) for block in re.findall(r"```yaml\n(.*?)```", f.read(), re.S)]


def test_tutorial_maps_the_deepspeed_chat_flags_onto_a_working_section():
    """docs/lora.md: each DeepSpeed-Chat LoRA flag of the seed's script is mapped, and its Llama-2-7B section
    (``--actor_lora_dim 64 --actor_lora_module_name layers. --only_optimize_lora``) adapts every dense layer of
    every block and nothing else (at a rank the tiny Llama allows)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "lora.md")
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for flag in (
        "--lora_dim",
        "--lora_module_name",
        "--only_optimize_lora",
        "--actor_lora_dim",
        "--critic_lora_module_name",
    ):
        assert f"`{flag}" in text, flag
    reference, seed_run = yaml_blocks(path)
    from_dict(LoRAConfig, reference["lora"], "lora")  # the documented section is a valid one
    lora = from_dict(LoRAConfig, seed_run["lora"], "lora")
    assert (lora.r, lora.alpha) == (64, 1.0)
    cfg = TINY_CONFIGS["llama"]()
    model = CausalLM(cfg)
    adapted = apply_lora(model, dataclasses.replace(lora, r=4))
    per_block = {
        "self_attn.q_proj",
        "self_attn.k_proj",
        "self_attn.v_proj",
        "self_attn.o_proj",
        "mlp.gate_proj",
        "mlp.up_proj",
        "mlp.down_proj",
    }
    assert set(adapted) == {f"backbone.layers.{i}.{n}" for i in range(cfg.num_layers) for n in per_block}


def test_reward_model_and_critic_train_adapters_and_their_score_head():
    from mindrlhf.config import PPOConfig
    from mindrlhf.models import RewardModel
    from mindrlhf.models.lora import prepare_lora
    from mindrlhf.train.ppo import build_ppo_models

    cfg = tiny_gpt2_config()
    reward = RewardModel(cfg)
    prepare_lora(reward, LoRAConfig(r=2, target_modules=["c_attn"]), heads=("score",))
    assert {p.name for p in reward.trainable_params() if "lora_" not in p.name} == {"score.weight"}
    lora = LoRAConfig(r=2, target_modules=["c_attn"])
    models = build_ppo_models(cfg, PPOConfig(is_shared_backbone=False), cfg, lora=lora)
    assert models.ref is models.policy and not models.policy.with_value_head
    critic = {p.name for p in models.critic.trainable_params()}
    assert "critic.score.weight" in critic and all(".lora_" in n for n in critic - {"critic.score.weight"})
    assert len(critic) == 1 + 2 * cfg.num_layers
