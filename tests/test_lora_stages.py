"""LoRA in the training stages (graph mode, CPU, tiny models): SFT trains adapters only and its checkpoint loads
into a plain model merged; PPO trains the policy's adapters and value head against a reference that is the same
weights with adapters off, saves the adapters alone and resumes exactly; GRPO's reference is the policy itself;
DPO's reference is the base, precomputed or scored on the fly with the adapters off."""

from __future__ import annotations

import dataclasses
import math
import os

import numpy as np
import pytest
from mindspore import Tensor

from mindrlhf.cli import main as cli_main
from mindrlhf.config import LoRAConfig, save_config
from mindrlhf.models import CausalLM
from mindrlhf.models.convert import load_ckpt, save_ckpt
from mindrlhf.models.lora import lora_layers
from mindrlhf.train.checkpoint import latest_checkpoint, read_ckpt
from mindrlhf.train.dpo import train_dpo
from mindrlhf.train.grpo import build_policy_and_ref
from mindrlhf.train.ppo import train_ppo
from mindrlhf.train.sft import train_sft
from tests.helpers import load_transformers, parameter_arrays, set_mode, torch_forward
from tests.test_dpo import config as dpo_config
from tests.test_dpo import pairs  # noqa: F401  (the preference MindRecord fixture)
from tests.test_ppo import metrics, run_config, target_reward, write_prompts
from tests.test_sft import sft_config, train_file  # noqa: F401  (the SFT MindRecord fixture)

LORA = LoRAConfig(r=4, alpha=8.0, target_modules=["c_attn", "mlp.c_fc"])
LORA_FLAGS = ("lora.r=4", "lora.alpha=8.0", "lora.target_modules=[c_attn, mlp.c_fc]")


def test_lora_sft_trains_adapters_only_and_its_checkpoint_loads_merged(train_file, tmp_dir):  # noqa: F811
    set_mode("graph")
    cfg = sft_config(
        tmp_dir,
        train_file,
        "runner_config.epochs=2",
        "optimizer.learning_rate=2.0e-2",
        "lr_schedule.learning_rate=2.0e-2",
        *LORA_FLAGS,
    )
    base = CausalLM(cfg.model.model_config)
    before = parameter_arrays(base)
    start = save_ckpt(base, os.path.join(tmp_dir, "base.ckpt"))
    model, result = train_sft(dataclasses.replace(cfg, load_checkpoint=start))
    assert np.mean(result.losses[-2:]) < np.mean(result.losses[:2])
    after = parameter_arrays(model)
    assert sorted(set(after) - set(before)) == sorted(
        f"{layer}.{kind}" for layer in lora_layers(model) for kind in ("lora_A", "lora_B", "lora_scale")
    )
    changed = sorted(n for n in after if n not in before or not np.array_equal(before[n], after[n]))
    assert changed == sorted(n for n in after if n.endswith((".lora_A", ".lora_B", ".lora_scale")))
    assert len(lora_layers(model)) == 4
    # the training checkpoint (adapters alone, with its base record) loads into a model without adapters, folded in
    plain = CausalLM(cfg.model.model_config)
    load_ckpt(plain, latest_checkpoint(os.path.join(tmp_dir, "checkpoint", "rank_0")))
    ids = Tensor(np.array([[5, 9, 300, 7, 1000, 42, 8, 11]], np.int32))
    model.set_train(False)
    np.testing.assert_allclose(plain(ids).asnumpy(), model(ids).asnumpy(), atol=1e-4)


def lora_ppo_config(out, epochs=3):
    cfg = run_config(out, epochs=epochs, lr=2e-2)
    return dataclasses.replace(cfg, lora=LORA)


def test_lora_ppo_trains_against_the_base_and_resumes_exactly_from_adapters_alone(tmp_dir):
    """... and ``mindrlhf export-hf`` puts the adapter-only checkpoint over its base: merged, or in PEFT's layout."""
    set_mode("graph")
    prompts_file = write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"))
    straight = os.path.join(tmp_dir, "straight")
    base = save_ckpt(CausalLM(lora_ppo_config(straight).model.model_config), os.path.join(tmp_dir, "base.ckpt"))
    trainer = train_ppo(lora_ppo_config(straight), prompts_file, target_reward, sft_checkpoint=base)
    models = trainer.models
    assert models.ref is models.policy  # no second copy of the base
    trained = {p.name for p in trainer.step.weights}
    assert trained and all(".lora_" in n or n.startswith("v_head.") for n in trained)
    kl = [m["kl"] for m in metrics(straight)]
    assert abs(kl[0]) < 1e-5 and kl[-1] > 1e-4, kl  # the reference is the base, not the moving policy

    parts = os.path.join(tmp_dir, "parts")
    assert (
        train_ppo(
            lora_ppo_config(parts), prompts_file, target_reward, sft_checkpoint=base, stop_after=2
        ).state.iteration
        == 2
    )
    train_ppo(
        lora_ppo_config(parts),
        prompts_file,
        target_reward,
        sft_checkpoint=base,
        resume=os.path.join(parts, "checkpoint"),
    )

    final = "checkpoint/rank_0/policy_model_epoch_2.ckpt"
    reference, resumed = read_ckpt(os.path.join(straight, final)), read_ckpt(os.path.join(parts, final))
    assert set(resumed) == set(reference)
    assert all(".lora_" in n or n.startswith("v_head.") for n in reference)  # adapters (and head) alone
    assert max(float(np.abs(resumed[k] - reference[k]).max()) for k in reference) <= 1e-6
    full = sum(a.size for a in parameter_arrays(models.policy).values())
    assert sum(a.size for a in reference.values()) < 0.2 * full
    assert [m["reward_mean"] for m in metrics(parts)] == [m["reward_mean"] for m in metrics(straight)]
    export_and_compare(trainer, base, os.path.join(straight, final), tmp_dir)


def test_grpo_reference_is_the_policy_with_adapters():
    set_mode("graph")
    policy, ref = build_policy_and_ref(run_config("unused").model.model_config, lora=LORA)
    assert ref is policy and len(lora_layers(policy)) == 4
    assert all(".lora_" in p.name for p in policy.trainable_params())


def test_lora_dpo_reference_is_the_base_precomputed_or_on_the_fly(pairs, tmp_dir):  # noqa: F811
    """The precomputed reference is scored before any step (adapters at zero); the on-the-fly one while the
    adapters train, with them switched off: the two runs agree only if that really is the base."""
    set_mode("graph")
    runs = {}
    for name, extra in (("precomputed", ()), ("on_the_fly", ("dpo.precompute_ref_log_probs=False",))):
        policy, result = train_dpo(dpo_config(os.path.join(tmp_dir, name), *LORA_FLAGS, *extra), pairs)
        runs[name] = (parameter_arrays(policy), result)
    (weights, result), (fly_weights, fly) = runs["precomputed"], runs["on_the_fly"]
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-6) and result.losses[-1] < result.losses[0]
    np.testing.assert_allclose(fly.losses, result.losses, atol=1e-5)
    assert max(float(np.abs(weights[n] - fly_weights[n]).max()) for n in weights) <= 1e-5


def export_and_compare(trainer, base, adapters, tmp_dir):
    """``export-hf`` of base + adapters, merged and as PEFT, against the trained policy's logits in
    ``transformers`` (``peft`` for the adapter folder)."""
    from peft import PeftModel

    recipe = os.path.join(tmp_dir, "recipe.yaml")
    save_config(trainer.cfg, recipe)
    common = ["export-hf", "--config", recipe, "--load_checkpoint", base, "--adapter", adapters, "--tokenizer", "none"]
    merged, peft_dir, hf_base = (os.path.join(tmp_dir, n) for n in ("merged", "peft", "hf_base"))
    assert cli_main.main([*common, "--output_dir", merged]) == 0
    assert cli_main.main([*common, "--peft", "--output_dir", peft_dir]) == 0
    assert (
        cli_main.main(
            ["export-hf", "--config", recipe, "--load_checkpoint", base, "--tokenizer", "none", "--output_dir", hf_base]
        )
        == 0
    )
    policy = trainer.models.policy
    policy.set_train(False)
    ids = np.array([[5, 9, 30, 7, 10, 42, 8, 11]], np.int32)
    mask = np.ones_like(ids)
    ours = policy(Tensor(ids), Tensor(mask)).asnumpy()
    for hf_model in (load_transformers(merged), PeftModel.from_pretrained(load_transformers(hf_base), peft_dir)):
        np.testing.assert_allclose(torch_forward(hf_model.eval(), ids, mask).logits.numpy(), ours, atol=1e-4)


def test_lora_reference_log_probs_come_from_the_policy_scorer_with_adapters_off():
    """Under LoRA the rollout's reference log-probs reuse the policy's compiled scorer (no second graph of the same
    model) with the adapters switched off: they equal a plain copy of the base's, not the adapted policy's."""
    from mindrlhf.config import GenerationConfig
    from mindrlhf.models.convert import assign_parameters
    from mindrlhf.models.lora import apply_lora
    from mindrlhf.train.rollout import FirstOutput, RolloutMaker, RolloutScorer
    from tests.helpers import EOS, PAD, tiny_gpt2_config

    set_mode("graph")
    cfg = tiny_gpt2_config()
    policy, plain = CausalLM(cfg, with_value_head=True), CausalLM(cfg)
    base = parameter_arrays(policy)
    assign_parameters(plain, {n: a for n, a in base.items() if not n.startswith("v_head.")}, "policy")
    apply_lora(policy, LORA)
    rng = np.random.default_rng(0)
    for layer in lora_layers(policy).values():
        layer.lora_B.set_data(Tensor(rng.normal(0, 0.3, layer.lora_B.shape).astype(np.float32)))
    maker = RolloutMaker(
        policy,
        policy,
        lambda prompts, responses: [0.0] * len(responses),
        GenerationConfig(max_new_tokens=4),
        4,
        PAD,
        EOS,
        2,
        with_values=True,
    )
    assert isinstance(maker.ref_scorer, FirstOutput)
    policy.set_train(False)
    plain.set_train(False)
    tokens = Tensor(rng.integers(3, cfg.vocab_size, (2, 8)).astype(np.int32))
    mask = Tensor(np.ones((2, 8), np.int32))
    ref = maker.ref_scorer(tokens, mask).asnumpy()
    np.testing.assert_allclose(ref, RolloutScorer(plain, 4, with_values=False)(tokens, mask).asnumpy(), atol=1e-5)
    assert np.abs(maker.policy_scorer(tokens, mask)[0].asnumpy() - ref).max() > 1e-3  # the adapters are back on
