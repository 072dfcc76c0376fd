"""The memory planner: parameter bytes against the MindSpore cells, formulas against hand computation and
published parameter counts, and ``mindrlhf plan-memory`` through its real entry point."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import pytest

from mindrlhf.config import ConfigError, LoRAConfig, ModelConfig, load_config
from mindrlhf.tools import memory_plan as mp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {
    "gpt2": "gpt2_config/run_gpt2_tiny.yaml",
    "llama": "llama2_config/run_llama2_tiny.yaml",
    "qwen2": "qwen2_config/run_qwen2_tiny.yaml",
    "gptj": "gptj_config/run_gptj_tiny.yaml",
    "bloom": "bloom_config/run_bloom_tiny.yaml",
    "tinystories": "llama2_config/run_tinystories_656k.yaml",
}
FULL = mp.Layout(data_parallel=1, optimizer_shard=False)


def recipe(name: str) -> str:
    return os.path.join(ROOT, "model_configs", RECIPES.get(name, name))


def cell_bytes(cell, trainable_only: bool = False) -> int:
    """Bytes of the Parameters of a MindSpore cell (only those with requires_grad when asked)."""
    return sum(
        p.size * p.itemsize
        for p in cell.get_parameters()
        if p.requires_grad or not trainable_only
        if not p.name.startswith("kv_cache")
    )


@pytest.mark.parametrize("name", list(RECIPES))
@pytest.mark.parametrize("kind", ["lm_value", "scalar"])
def test_parameter_bytes_equal_the_cells(name, kind):
    """Full and LoRA: weights and trainable bytes of the plan == those of the built model, to the byte."""
    from mindrlhf.models.lora import prepare_lora
    from mindrlhf.models.policy import CausalLM
    from mindrlhf.models.reward import RewardModel

    cfg = load_config(recipe(name)).model.model_config
    build = (lambda: CausalLM(cfg, with_value_head=True)) if kind == "lm_value" else (lambda: RewardModel(cfg))
    head = ("v_head",) if kind == "lm_value" else ("score",)
    spec = mp.ModelSpec("policy", cfg, kind, train_batch=1, heads=head)
    full = mp.model_memory(spec, None, FULL)
    model = build()
    assert full.weights == cell_bytes(model)
    assert full.gradients == cell_bytes(model, trainable_only=True)
    lora = mp.default_lora(cfg, LoRAConfig())
    planned = mp.model_memory(spec, lora, FULL)
    prepare_lora(model, lora, head)
    assert planned.weights == cell_bytes(model)
    assert planned.gradients == cell_bytes(model, trainable_only=True)
    assert planned.optimizer == 2 * planned.gradients  # two float32 moments of float32 parameters


def test_published_parameter_counts():
    """GPT-2 124M and Llama-2-7B from their recipes: the counts Hugging Face reports for the same shapes."""
    gpt2 = load_config(recipe("gpt2_config/run_gpt2_124m.yaml")).model.model_config
    llama = load_config(recipe("llama2_config/run_llama2_7b.yaml")).model.model_config
    assert sum(mp.numel(s) for _, s in mp.parameter_shapes(gpt2, "lm")) == 124_439_808
    assert sum(mp.numel(s) for _, s in mp.parameter_shapes(llama, "lm")) == 6_738_415_616


def test_activation_and_cache_formulas_by_hand():
    cfg = ModelConfig(
        type="llama",
        vocab_size=100,
        hidden_size=8,
        num_layers=3,
        num_heads=2,
        num_kv_heads=1,
        intermediate_size=24,
        seq_length=5,
        hidden_act="silu",
        compute_dtype="float16",
    )
    b, s, h, kv, i, a = 2, 5, 8, 4, 24, 2
    layer = s * b * (6 * h + 2 * kv + 4 * i) + a * s * s * b  # 10 * 152 + 100 = 1620 elements
    assert mp.layer_activation_elements(cfg, b, s) == layer == 1620
    logits = 2 * s * b * 100 * 4
    assert mp.activation_bytes(cfg, b, s, recompute=False) == 3 * layer * 2 + logits
    assert mp.activation_bytes(cfg, b, s, recompute=True) == (3 * s * b * h + layer) * 2 + logits
    assert (
        mp.activation_bytes(cfg, b, s, False, with_logits=False, lora_rank=2, adapted_per_layer=2)
        == 3 * (layer + 2 * 2 * s * b * 2) * 2
    )
    assert mp.kv_cache_bytes(cfg, batch=3, length=5) == 2 * 3 * 3 * 1 * 5 * 4 * 2
    gpt2 = dataclasses.replace(cfg, type="gpt2", hidden_act="gelu", intermediate_size=None, num_kv_heads=2)
    assert mp.layer_activation_elements(gpt2, b, s) == s * b * (6 * h + 2 * h + 2 * 4 * h) + a * s * s * b


def test_llama_7b_ppo_stage_sharding_and_lora_reference():
    """Optimizer states divide by the data-parallel degree when sharded; the LoRA reference holds nothing; the
    rollout cache is 2 * 32 layers * chunk 2 * 32 heads * 4096 * 128 * 2 bytes = 4 GiB."""
    config = load_config(recipe("llama2_config/run_llama2_7b_ppo.yaml"))
    result = mp.plan("ppo", config, mp.Layout(8, True))
    policy, reference, reward = result["full"]
    assert [m.role for m in result["full"]] == ["policy", "reference", "reward"]
    assert policy.optimizer == -(-8 * policy.trainable // 8) and policy.gradients == 4 * policy.params
    assert policy.kv_cache == 4 * mp.GIB and reference.weights == policy.weights - 4 * (4096 + 1)
    assert result["lora"][1].weights == 0 and result["lora"][2].weights == reward.weights
    assert mp.plan("ppo", config, mp.Layout(8, False))["full"][0].optimizer == 8 * policy.trainable


@pytest.mark.parametrize(
    "text,expected", [("64GB", 64 << 30), ("31.5GiB", int(31.5 * (1 << 30))), ("500MB", 500 << 20), ("32", 32 << 30)]
)
def test_parse_memory(text, expected):
    assert mp.parse_memory(text) == expected


@pytest.mark.parametrize("text", ["sixty", "64XB", "-1GB", "0GB", ""])
def test_parse_memory_refuses(text):
    with pytest.raises(ConfigError, match="--device_memory"):
        mp.parse_memory(text)


def test_stage_from_recipe():
    assert mp.infer_stage(recipe("gpt2_config/run_gpt2_tiny_rm.yaml")) == "rm"
    assert mp.infer_stage(recipe("gpt2_config/run_gpt2_tiny_sft.yaml")) == "sft"
    assert mp.infer_stage(recipe("llama2_config/run_tinystories_656k_grpo.yaml")) == "grpo"
    assert mp.infer_stage(recipe("gpt2_config/run_gpt2_124m_ppo.yaml")) == "ppo"  # by its ppo section


def test_lora_target_that_matches_nothing():
    cfg = load_config(recipe("gpt2")).model.model_config
    with pytest.raises(ConfigError, match="'q_proj' matches no dense layer.*c_attn"):
        mp.lora_shapes(mp.parameter_shapes(cfg, "lm"), LoRAConfig(r=4, target_modules=["q_proj"]))


def mindrlhf(*args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run(
        [sys.executable, "-m", "mindrlhf.cli.main", "plan-memory", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_prints_table_and_verdicts():
    proc = mindrlhf(
        "--config",
        recipe("llama2_config/run_llama2_7b_ppo.yaml"),
        "--stage",
        "ppo",
        "--devices",
        "8",
        "--device_memory",
        "32GB",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    lines = proc.stdout.splitlines()
    assert "stage ppo, 8 device(s)" in lines[0]
    assert [line.split()[:2] for line in lines[2:8]] == [
        [mode, role] for mode in ("full", "lora") for role in ("policy", "reference", "reward")
    ]
    assert lines[-2].startswith("full: ") and lines[-2].endswith("of 32.00 GiB: does not fit")
    proc = mindrlhf("--config", recipe("gpt2_config/run_gpt2_tiny_sft.yaml"), "--device_memory", "64GB")
    assert proc.returncode == 0 and proc.stdout.splitlines()[-1].endswith("of 64.00 GiB: fits")


@pytest.mark.parametrize(
    "args,message",
    [
        (["--set", "model.model_config.hiden_size=8"], "model.model_config.hiden_size: unknown key"),
        (["--device_memory", "lots"], "--device_memory 'lots': expected a size"),
    ],
)
def test_command_bad_input_is_one_line(args, message):
    proc = mindrlhf("--config", recipe("gpt2_config/run_gpt2_tiny_sft.yaml"), *args)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and message in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    "stage,overrides,roles",
    [
        ("sft", [], ["policy"]),
        ("rm", [], ["reward"]),
        ("dpo", [], ["policy"]),  # reference log-probs precomputed: no reference in memory
        ("dpo", ["dpo.precompute_ref_log_probs=false"], ["policy", "reference"]),
        ("ppo", ["ppo.is_shared_backbone=false"], ["policy", "reference", "critic", "reward"]),
        ("grpo", ["grpo.beta=0.0"], ["policy"]),
        ("grpo", ["grpo.use_reward_model=true"], ["policy", "reference", "reward"]),
    ],
)
def test_stage_models(stage, overrides, roles):
    """Which models each stage holds; trained models have gradients, frozen ones only weights; pairs double the
    batch; GRPO decodes num_prompts * num_generations rollouts at once."""
    config = load_config(recipe("gpt2"), overrides)
    specs = mp.stage_models(stage, config)
    assert [s.role for s in specs] == roles
    full = mp.plan(stage, config, FULL)["full"]
    assert all((m.gradients > 0) == (s.train_batch > 0) for m, s in zip(full, specs))
    if stage in ("rm", "dpo"):
        assert specs[0].train_batch == 2 * config.runner_config.batch_size
    if stage == "grpo":
        assert specs[0].kv_batch == config.grpo.num_prompts * config.grpo.num_generations
