"""PPO's separate critic takes its own LoRA settings (DeepSpeed-Chat's ``--critic_lora_dim`` and
``--critic_lora_module_name``): ``lora.critic_r``, ``critic_alpha`` and ``critic_target_modules`` default to the
policy's, ``critic_r: 0`` trains the critic in full, and the memory planner costs the critic the same way."""

from __future__ import annotations

import os

import numpy as np
import pytest

from mindrlhf.config import ConfigError, PPOConfig, load_config
from mindrlhf.models.lora import lora_layers
from mindrlhf.tools import memory_plan as mp
from mindrlhf.train.ppo import build_ppo_models
from tests.helpers import tiny_gpt2_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny.yaml")
POLICY = ("lora.r=4", "lora.alpha=8.0", "lora.target_modules=[c_attn]")


def lora(*flags):
    return load_config(RECIPE, list(flags)).lora


def test_critic_settings_default_to_the_policy_and_override_each_field():
    same = lora(*POLICY)
    assert same.for_critic() is same
    own = lora(*POLICY, "lora.critic_r=2", "lora.critic_target_modules=[mlp.c_fc, mlp.c_proj]")
    critic = own.for_critic()
    assert (critic.r, critic.alpha, critic.target_modules) == (2, 8.0, ["mlp.c_fc", "mlp.c_proj"])
    assert not lora(*POLICY, "lora.critic_r=0").for_critic().enabled
    only_critic = lora("lora.critic_r=8", "lora.critic_alpha=1.0", "lora.critic_target_modules=[c_attn]")
    assert not only_critic.enabled and (only_critic.for_critic().r, only_critic.for_critic().alpha) == (8, 1.0)


@pytest.mark.parametrize(
    "flags,message",
    [
        (("lora.critic_r=4",), "lora.critic_r / critic_alpha / critic_target_modules: lora.target_modules: name"),
        ((*POLICY, "lora.critic_r=-1"), "lora.critic_r .*must be >= 1"),
        ((*POLICY, "lora.critic_alpha=0"), "lora.critic_r .*alpha must be > 0"),
    ],
)
def test_bad_critic_settings_are_config_errors(flags, message):
    with pytest.raises(ConfigError, match=message):
        lora(*flags)


def adapted(cell):
    """``{layer name: rank}`` of a cell's adapters, the critic's name prefix dropped."""
    return {
        name.split(".", 1)[1] if name.startswith("critic.") else name: layer.r
        for name, layer in lora_layers(cell).items()
    }


def test_ppo_critic_gets_its_own_adapters_or_trains_in_full():
    cfg = tiny_gpt2_config()
    ppo = PPOConfig(is_shared_backbone=False)
    models = build_ppo_models(
        cfg, ppo, cfg, lora=lora(*POLICY, "lora.critic_r=2", "lora.critic_target_modules=[mlp.c_fc]")
    )
    assert set(adapted(models.policy).values()) == {4} and len(adapted(models.policy)) == 2
    assert adapted(models.critic) == {"backbone.h.0.mlp.c_fc": 2, "backbone.h.1.mlp.c_fc": 2}
    assert all(".lora_" in p.name or ".score." in p.name for p in models.critic.trainable_params())
    full = build_ppo_models(cfg, ppo, cfg, lora=lora(*POLICY, "lora.critic_r=0")).critic
    assert not lora_layers(full) and len(full.trainable_params()) == len(list(full.get_parameters()))
    with pytest.raises(ConfigError, match="ppo.is_shared_backbone: false"):
        build_ppo_models(cfg, PPOConfig(), cfg, lora=lora(*POLICY, "lora.critic_r=2"))


def test_planner_costs_the_critic_with_its_own_settings():
    base = ("ppo.is_shared_backbone=false", *POLICY)
    same, own, full = (
        mp.plan("ppo", load_config(RECIPE, [*base, *extra]), mp.Layout(1, False))["lora"]
        for extra in ((), ("lora.critic_r=8", "lora.critic_target_modules=[c_attn, mlp.c_fc]"), ("lora.critic_r=0",))
    )
    roles = [m.role for m in same]
    critic = roles.index("critic")
    assert [m.trainable for m in own][:critic] == [m.trainable for m in same][:critic]  # the policy as before
    assert own[critic].trainable > same[critic].trainable
    cfg = load_config(RECIPE).model.model_config
    assert full[critic].trainable == sum(int(np.prod(s)) for _, s in mp.parameter_shapes(cfg, "scalar"))
    config = load_config(RECIPE, [*base, "lora.critic_r=0"])
    assert mp.critic_note("ppo", config, config.lora) == ", critic trained in full"
    config = load_config(RECIPE, list(base))
    assert mp.critic_note("ppo", config, config.lora) == ""
