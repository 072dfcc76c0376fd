"""Config loading: recipes, base_config inheritance, overrides, key/type/value checks, save round trip (no graphs)."""

import dataclasses
import os
from pathlib import Path

import pytest

from mindrlhf import config as config_module
from mindrlhf.config import ConfigError, RunConfig, load_config, save_config
from mindrlhf.models import list_backbones

CONFIG_DIR = Path(__file__).resolve().parents[1] / "model_configs"
RECIPES = sorted(CONFIG_DIR.glob("**/*.yaml"))

# recipe -> (type, hidden_size, num_layers, num_heads, num_kv_heads, vocab_size, seq_length, compute_dtype, device)
EXPECTED_SIZES = {
    "gpt2_config/run_gpt2_124m.yaml": ("gpt2", 768, 12, 12, 12, 50257, 1024, "float16", "Ascend"),
    "gpt2_config/run_gpt2_350m.yaml": ("gpt2", 1024, 24, 16, 16, 50257, 1024, "float16", "Ascend"),
    "gpt2_config/run_gpt2_1_3b.yaml": ("gpt2", 2048, 24, 32, 32, 50257, 1024, "float16", "Ascend"),
    "gpt2_config/run_gpt2_tiny.yaml": ("gpt2", 64, 2, 4, 4, 50257, 256, "float32", "CPU"),
    "llama2_config/run_llama2_7b.yaml": ("llama", 4096, 32, 32, 32, 32000, 4096, "float16", "Ascend"),
    "llama2_config/run_llama2_tiny.yaml": ("llama", 64, 2, 4, 2, 32000, 256, "float32", "CPU"),
    "qwen2_config/run_qwen2_5_0_5b.yaml": ("qwen2", 896, 24, 14, 2, 151936, 4096, "bfloat16", "Ascend"),
    "qwen2_config/run_qwen2_5_7b.yaml": ("qwen2", 3584, 28, 28, 4, 152064, 8192, "bfloat16", "Ascend"),
    "qwen2_config/run_qwen2_tiny.yaml": ("qwen2", 64, 2, 4, 2, 50257, 256, "float32", "CPU"),
    "gptj_config/run_gptj_6b.yaml": ("gptj", 4096, 28, 16, 16, 50400, 2048, "float16", "Ascend"),
    "gptj_config/run_gptj_tiny.yaml": ("gptj", 64, 2, 4, 4, 50400, 256, "float32", "CPU"),
    "bloom_config/run_bloom_560m.yaml": ("bloom", 1024, 24, 16, 16, 250880, 2048, "float16", "Ascend"),
    "bloom_config/run_bloom_7b1.yaml": ("bloom", 4096, 30, 32, 32, 250880, 2048, "float16", "Ascend"),
    "bloom_config/run_bloom_tiny.yaml": ("bloom", 96, 2, 6, 6, 50257, 256, "float32", "CPU"),
}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------------
# recipes


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: str(p.relative_to(CONFIG_DIR)))
def test_every_recipe_loads(path):
    cfg = load_config(str(path))
    model = cfg.model.model_config
    assert model.type in list_backbones()
    assert model.hidden_size % model.num_heads == 0
    assert model.num_heads % model.num_kv_heads == 0


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_recipe_sizes(name):
    cfg = load_config(str(CONFIG_DIR / name))
    model = cfg.model.model_config
    got = (
        model.type,
        model.hidden_size,
        model.num_layers,
        model.num_heads,
        model.num_kv_heads,
        model.vocab_size,
        model.seq_length,
        model.compute_dtype,
        cfg.context.device_target,
    )
    assert got == EXPECTED_SIZES[name]


def test_recipes_inherit_instead_of_repeating():
    # House rule 14: the derived recipes name a base and carry no copy of its optimizer/schedule sections.
    for name in ("run_gpt2_350m.yaml", "run_gpt2_1_3b.yaml", "run_gpt2_tiny.yaml"):
        data = config_module.read_yaml(str(CONFIG_DIR / "gpt2_config" / name))
        assert data["base_config"] == "run_gpt2_124m.yaml"
        assert "optimizer" not in data and "lr_schedule" not in data
    data = config_module.read_yaml(str(CONFIG_DIR / "llama2_config" / "run_llama2_tiny.yaml"))
    assert data["base_config"] == "run_llama2_7b.yaml"
    assert "optimizer" not in data and "lr_schedule" not in data


def test_gpt2_124m_training_settings():
    cfg = load_config(str(CONFIG_DIR / "gpt2_config" / "run_gpt2_124m.yaml"))
    model = cfg.model.model_config
    assert (model.bos_token_id, model.eos_token_id, model.pad_token_id) == (50256, 50256, 50256)
    assert model.hidden_act == "gelu" and cfg.context.mode == 0
    opt = cfg.optimizer
    assert (opt.type, opt.beta1, opt.beta2, opt.eps, opt.weight_decay, opt.learning_rate) == (
        "FusedAdamWeightDecay",
        0.9,
        0.95,
        1e-8,
        0.1,
        1e-4,
    )
    assert (cfg.lr_schedule.type, cfg.lr_schedule.learning_rate, cfg.lr_schedule.lr_end) == ("polynomial", 1e-4, 1e-5)
    wrap = cfg.runner_wrapper
    assert (wrap.loss_scale_value, wrap.scale_factor, wrap.scale_window) == (2.0**32, 2, 1000)
    assert wrap.use_clip_grad
    assert isinstance(wrap.loss_scale_value, float)
    run = cfg.runner_config
    assert (run.epochs, run.batch_size) == (3, 4)


def test_gpt2_bigger_recipes_keep_base_training_settings():
    base = load_config(str(CONFIG_DIR / "gpt2_config" / "run_gpt2_124m.yaml"))
    for name in ("run_gpt2_350m.yaml", "run_gpt2_1_3b.yaml"):
        cfg = load_config(str(CONFIG_DIR / "gpt2_config" / name))
        assert cfg.optimizer == base.optimizer and cfg.lr_schedule == base.lr_schedule
        assert cfg.runner_wrapper == base.runner_wrapper and cfg.context == base.context


def test_llama2_7b_settings():
    cfg = load_config(str(CONFIG_DIR / "llama2_config" / "run_llama2_7b.yaml"))
    model = cfg.model.model_config
    assert (model.intermediate_size, model.rms_norm_eps, model.hidden_act) == (11008, 1e-5, "silu")
    assert (model.bos_token_id, model.eos_token_id, model.pad_token_id) == (1, 2, 0)
    assert model.tie_word_embeddings is False
    assert (cfg.parallel_config.data_parallel, cfg.parallel_config.model_parallel) == (8, 1)
    assert cfg.parallel_config.optimizer_shard
    assert cfg.optimizer.type == "FP32StateAdamWeightDecay"
    sched = cfg.lr_schedule
    assert (sched.type, sched.learning_rate, sched.lr_end, sched.warmup_ratio) == ("cosine", 3e-4, 3e-5, 0.03)


def test_tiny_recipes_run_on_one_cpu():
    for name in ("gpt2_config/run_gpt2_tiny.yaml", "llama2_config/run_llama2_tiny.yaml"):
        cfg = load_config(str(CONFIG_DIR / name))
        assert cfg.parallel_config.model_parallel == 1 and cfg.parallel_config.data_parallel == 1
        assert cfg.recompute_config.recompute is False
    llama = load_config(str(CONFIG_DIR / "llama2_config" / "run_llama2_tiny.yaml")).model.model_config
    assert (llama.intermediate_size, llama.head_dim, llama.tie_word_embeddings) == (172, 16, False)


# ---------------------------------------------------------------------------------------------------------------
# base_config


def test_base_config_inheritance(tmp_path):
    write(
        tmp_path / "base.yaml",
        "seed: 7\nmodel:\n  model_config:\n    hidden_size: 128\n    num_heads: 4\noptimizer:\n  weight_decay: 0.1\n",
    )
    child = write(
        tmp_path / "sub" / "child.yaml", "base_config: ../base.yaml\nmodel:\n  model_config:\n    num_heads: 8\n"
    )
    cfg = load_config(str(child))
    assert cfg.seed == 7  # from the base
    assert cfg.model.model_config.hidden_size == 128  # sibling key of an overridden one survives the deep merge
    assert cfg.model.model_config.num_heads == 8  # the child wins
    assert cfg.optimizer.weight_decay == 0.1


def test_base_config_list_later_base_wins(tmp_path):
    write(tmp_path / "a.yaml", "seed: 1\noutput_dir: from_a\n")
    write(tmp_path / "b.yaml", "seed: 2\n")
    child = write(tmp_path / "child.yaml", "base_config: [a.yaml, b.yaml]\n")
    cfg = load_config(str(child))
    assert (cfg.seed, cfg.output_dir) == (2, "from_a")


def test_base_config_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.yaml", "base_config: b.yaml\nseed: 1\n")
    write(tmp_path / "b.yaml", "base_config: a.yaml\nseed: 2\n")
    with pytest.raises(ConfigError, match="cycle") as err:
        load_config(str(tmp_path / "a.yaml"))
    assert "a.yaml" in str(err.value) and "b.yaml" in str(err.value)


def test_base_config_self_reference_is_a_cycle(tmp_path):
    write(tmp_path / "self.yaml", "base_config: self.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "self.yaml"))


def test_missing_base_config_names_the_base(tmp_path):
    child = write(tmp_path / "child.yaml", "base_config: nowhere.yaml\n")
    with pytest.raises(ConfigError, match="nowhere.yaml"):
        load_config(str(child))


# ---------------------------------------------------------------------------------------------------------------
# overrides


def test_overrides_parse_yaml_scalars():
    cfg = load_config(
        str(CONFIG_DIR / "gpt2_config" / "run_gpt2_tiny.yaml"),
        [
            "optimizer.learning_rate=1e-4",
            "lr_schedule.lr_end=2E-6",
            "recompute_config.recompute=true",
            "model.model_config.num_layers=3",
            "output_dir=/tmp/run 1",
            "load_checkpoint=",
        ],
    )
    assert isinstance(cfg.optimizer.learning_rate, float) and cfg.optimizer.learning_rate == 1e-4
    assert cfg.lr_schedule.lr_end == 2e-6
    assert cfg.recompute_config.recompute is True
    assert cfg.model.model_config.num_layers == 3
    assert cfg.model.model_config.hidden_size == 64  # untouched keys keep the file's value
    assert cfg.output_dir == "/tmp/run 1" and cfg.load_checkpoint == ""


def test_overrides_without_a_file_start_from_defaults():
    cfg = load_config(None, ["seed=5"])
    assert cfg.seed == 5
    assert cfg.model == RunConfig().model


def test_int_is_accepted_for_a_float_field():
    cfg = load_config(None, ["runner_wrapper.loss_scale_value=1024"])
    assert isinstance(cfg.runner_wrapper.loss_scale_value, float) and cfg.runner_wrapper.loss_scale_value == 1024.0


@pytest.mark.parametrize("override", ["seed", "=3"])
def test_malformed_override_is_an_error(override):
    with pytest.raises(ConfigError):
        load_config(None, [override])


def test_override_value_that_is_not_yaml_is_a_config_error():
    with pytest.raises(ConfigError, match="seed"):
        load_config(None, ["seed=[1,"])


def test_override_through_a_scalar_is_an_error():
    with pytest.raises(ConfigError, match="'seed' is not a section"):
        load_config(str(CONFIG_DIR / "gpt2_config" / "run_gpt2_tiny.yaml"), ["seed.value=1"])
    # not in the file: the new mapping fails the type check
    with pytest.raises(ConfigError, match="seed: expected int"):
        load_config(None, ["seed.value=1"])


# ---------------------------------------------------------------------------------------------------------------
# unknown keys


@pytest.mark.parametrize(
    "override, dotted, nearest",
    [
        ("model.model_config.hiden_size=64", "model.model_config.hiden_size", "hidden_size"),
        ("optimizer.beta_1=0.9", "optimizer.beta_1", "beta1"),
        ("runner_config.batchsize=2", "runner_config.batchsize", "batch_size"),
        ("parallel_config.model_paralel=2", "parallel_config.model_paralel", "model_parallel"),
        ("modle.model_config.hidden_size=64", "modle", "model"),  # unknown top-level section
        ("lr_scheduler.type=cosine", "lr_scheduler", "lr_schedule"),
    ],
)
def test_unknown_key_names_dotted_key_and_nearest(override, dotted, nearest):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    msg = str(err.value)
    assert f"{dotted}: unknown key" in msg
    assert f"did you mean {nearest!r}" in msg


def test_unknown_key_in_file_names_the_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "model:\n  model_config:\n    hiden_size: 64\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    msg = str(err.value)
    assert str(path) in msg and "model.model_config.hiden_size" in msg and "'hidden_size'" in msg


def test_unknown_key_far_from_any_name_lists_valid_keys():
    with pytest.raises(ConfigError, match="valid keys: epochs, batch_size") as err:
        load_config(None, ["runner_config.zzzzzz=1"])
    assert "runner_config.zzzzzz" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# wrong types


@pytest.mark.parametrize(
    "override, key",
    [
        ("model.model_config.num_layers=two", "model.model_config.num_layers"),  # str for int
        ("seed='3'", "seed"),  # quoted number is a str
        ("model.model_config.num_layers=true", "model.model_config.num_layers"),  # bool for int
        ("optimizer.learning_rate=false", "optimizer.learning_rate"),  # bool for float
        ("parallel_config.optimizer_shard=1", "parallel_config.optimizer_shard"),  # int for bool
        ("model.model_config.num_kv_heads=yes", "model.model_config.num_kv_heads"),  # bool for Optional[int]
        ("context=[1, 2]", "context"),  # list for a section
        ("model.model_config=null", "model.model_config"),  # null for a section
        ("output_dir=3", "output_dir"),  # int for str
    ],
)
def test_wrong_type_names_the_key(override, key):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert str(err.value).startswith(f"{key}: expected")


def test_wrong_type_in_file_names_file_and_key(tmp_path):
    path = write(tmp_path / "bad.yaml", "model:\n  model_config:\n    hidden_size: '768'\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(path) in str(err.value) and "model.model_config.hidden_size: expected int" in str(err.value)


def test_optional_field_accepts_null():
    cfg = load_config(None, ["model.model_config.intermediate_size=null", "model.model_config.num_kv_heads=null"])
    assert cfg.model.model_config.intermediate_size is None
    assert cfg.model.model_config.num_kv_heads == cfg.model.model_config.num_heads  # None = num_heads (derived)


# ---------------------------------------------------------------------------------------------------------------
# invalid values (__post_init__)


@pytest.mark.parametrize(
    "overrides, match",
    [
        (["model.model_config.hidden_size=100"], "hidden_size 100 must be a multiple of num_heads 12"),
        (
            [
                "model.model_config.num_heads=4",
                "model.model_config.num_kv_heads=3",
                "model.model_config.hidden_size=64",
            ],
            "num_heads 4 must be a multiple of num_kv_heads 3",
        ),
        (["model.model_config.num_heads=0"], "num_heads must be >= 1"),
        (["model.model_config.num_kv_heads=0"], "num_kv_heads must be >= 1"),
        (["model.model_config.compute_dtype=float64"], "compute_dtype: 'float64' is not one of"),
        (["model.model_config.softmax_compute_type=fp16"], "softmax_compute_type"),
        (["model.model_config.hidden_act=swiglu"], "hidden_act: .swiglu. is not one of gelu, gelu_exact, silu, relu"),
        (["context.mode=2"], "context.mode must be 0 .* or 1"),
        (["context.device_target=TPU"], "device_target"),
        (["lr_schedule.type=exponential"], "lr_schedule.type"),
        (["generation.top_p=0"], "top_p"),
        (["generation.temperature=0"], "temperature"),
    ],
)
def test_invalid_values_are_rejected(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_invalid_value_in_file_names_the_file(tmp_path):
    path = write(tmp_path / "bad.yaml", "context:\n  mode: 2\n")
    with pytest.raises(ConfigError) as err:
        load_config(str(path))
    assert str(path) in str(err.value) and "context.mode" in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# unreadable files


def test_missing_file_names_the_file(tmp_path):
    path = tmp_path / "absent.yaml"
    with pytest.raises(ConfigError, match="not found") as err:
        load_config(str(path))
    assert str(path) in str(err.value)


def test_malformed_yaml_names_the_file(tmp_path):
    path = write(tmp_path / "broken.yaml", "model:\n  model_config: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as err:
        load_config(str(path))
    assert str(path) in str(err.value)


def test_top_level_list_is_an_error(tmp_path):
    path = write(tmp_path / "list.yaml", "- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping") as err:
        load_config(str(path))
    assert str(path) in str(err.value)


def test_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as err:
        load_config(str(tmp_path))
    assert str(tmp_path) in str(err.value)


def test_empty_file_gives_defaults(tmp_path):
    path = write(tmp_path / "empty.yaml", "")
    assert load_config(str(path)) == RunConfig()


# ---------------------------------------------------------------------------------------------------------------
# save_config


@pytest.mark.parametrize("name", sorted(EXPECTED_SIZES))
def test_save_config_round_trip(tmp_path, name):
    cfg = load_config(str(CONFIG_DIR / name), ["optimizer.learning_rate=3e-5", "context.max_device_memory=31GB"])
    out_dir = tmp_path / "out" / "nested"  # created by save_config
    save_config(cfg, str(out_dir / "resolved.yaml"))
    again = load_config(str(out_dir / "resolved.yaml"))
    assert again == cfg
    assert dataclasses.asdict(again) == dataclasses.asdict(cfg)
    assert sorted(os.listdir(out_dir)) == ["resolved.yaml"]  # no temporary file left behind


def test_save_config_round_trip_keeps_float_like_strings(tmp_path):
    # "1e5" reads as a float under the config loader, so the saved file must quote it.
    cfg = load_config(None, ["output_dir='1e5'", "load_checkpoint='2E-3'"])
    save_config(cfg, str(tmp_path / "c.yaml"))
    again = load_config(str(tmp_path / "c.yaml"))
    assert (again.output_dir, again.load_checkpoint) == ("1e5", "2E-3")


def test_save_config_overwrites(tmp_path):
    path = tmp_path / "c.yaml"
    save_config(load_config(None, ["seed=1"]), str(path))
    save_config(load_config(None, ["seed=2"]), str(path))
    assert load_config(str(path)).seed == 2
    assert os.listdir(tmp_path) == ["c.yaml"]


def test_save_config_failure_leaves_no_files(tmp_path, monkeypatch):
    def broken_dump(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(config_module.yaml, "dump", broken_dump)
    with pytest.raises(OSError, match="disk full"):
        save_config(RunConfig(), str(tmp_path / "c.yaml"))
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------------------------------------------
# grpo section


GRPO_YAML = """\
grpo:
  num_prompts: 6
  num_generations: 4
  batch_size: 12
  num_iterations: 2
  advantage_estimator: rloo
  loss_type: token
  epsilon_low: 0.2
  epsilon_high: 0.28
  beta: 0
  dynamic_sampling: true
  overlong_buffer: 8
  overlong_penalty_factor: 0.5
  reward_funcs:
    - {name: accuracy, weight: 1}
    - name: format
      weight: 0.5
      kwargs: {pattern: "^<think>"}
  generation:
    max_new_tokens: 32
    temperature: 0.9
  start_lr: 2e-6
"""


def test_grpo_section_loads_from_yaml(tmp_path):
    cfg = load_config(str(write(tmp_path / "grpo.yaml", GRPO_YAML)))
    grpo = cfg.grpo
    assert isinstance(grpo, config_module.GRPOConfig)
    assert (grpo.num_prompts, grpo.num_generations, grpo.batch_size, grpo.num_iterations) == (6, 4, 12, 2)
    assert (grpo.advantage_estimator, grpo.loss_type, grpo.epsilon_high, grpo.beta) == ("rloo", "token", 0.28, 0.0)
    assert isinstance(grpo.beta, float) and grpo.dynamic_sampling and grpo.overlong_buffer == 8
    assert grpo.reward_funcs == [
        {"name": "accuracy", "weight": 1},
        {"name": "format", "weight": 0.5, "kwargs": {"pattern": "^<think>"}},
    ]
    assert (grpo.generation.max_new_tokens, grpo.generation.temperature, grpo.generation.top_k) == (32, 0.9, 0)
    assert grpo.rollouts_per_epoch == 24 and grpo.steps_per_epoch == 2 * 24 // 12
    assert cfg.optimizer.learning_rate == 2e-6  # the seed name grpo.start_lr, mapped
    assert cfg.lr_schedule.learning_rate == 2e-6 and cfg.lr_schedule.type == "cosine"
    assert cfg.ppo == RunConfig().ppo  # the other RL section keeps its defaults
    save_config(cfg, str(tmp_path / "resolved.yaml"))
    assert load_config(str(tmp_path / "resolved.yaml")) == cfg


def test_grpo_defaults_are_valid_and_need_a_reward_to_run():
    grpo = RunConfig().grpo
    assert (grpo.num_generations, grpo.batch_size, grpo.epsilon_low, grpo.epsilon_high, grpo.beta) == (
        4,
        8,
        0.2,
        0.2,
        0.04,
    )
    assert (grpo.advantage_estimator, grpo.loss_type, grpo.scale_rewards, grpo.generation.top_k) == (
        "grpo",
        "grpo",
        True,
        0,
    )
    assert grpo.steps_per_epoch == 4
    with pytest.raises(ConfigError, match="grpo.reward_funcs .*use_reward_model"):
        grpo.check_rewards()
    load_config(None, ["grpo.reward_funcs=[{name: accuracy}]"]).grpo.check_rewards()
    load_config(None, ["grpo.use_reward_model=true"]).grpo.check_rewards()


@pytest.mark.parametrize(
    "overrides, match",
    [
        (
            ["grpo.batch_size=6"],
            r"grpo.batch_size 6 must be a multiple of num_generations 4 \(an optimizer step takes "
            r"whole groups\): try batch_size 4",
        ),
        (
            ["grpo.num_prompts=3"],
            r"grpo.batch_size 8 must divide the rollouts of an iteration, num_prompts \* "
            r"num_generations = 3 \* 4 = 12",
        ),
        (["grpo.epsilon_high=0.1"], "grpo.epsilon_high 0.1 must be >= epsilon_low 0.2: clip-higher"),
        (["grpo.epsilon_low=1.0", "grpo.epsilon_high=1.5"], "grpo.epsilon_low must be < 1"),
        (
            ["grpo.advantage_estimator=grpoo"],
            "grpo.advantage_estimator 'grpoo' is not one of grpo, dr_grpo, rloo, "
            "reinforce_baseline; did you mean 'grpo'",
        ),
        (["grpo.advantage_estimator=gae"], "grpo.advantage_estimator 'gae' is not one of"),
        (["grpo.loss_type=seq_mean"], "grpo.loss_type 'seq_mean' is not one of grpo, token, dr_grpo"),
        (["grpo.advantage_estimator=rloo", "grpo.num_generations=1"], "rloo needs num_generations >= 2"),
        (["grpo.beta=-0.1"], "grpo.beta must be >= 0"),
        (["grpo.num_iterations=0"], "grpo.num_iterations must be >= 1"),
        (["grpo.overlong_buffer=65"], r"grpo.overlong_buffer must be in \[0, generation.max_new_tokens = 64\]"),
        (["grpo.generation.top_k=5"], "grpo.generation.top_k 5 / top_p 1.0 truncate the sampling distribution: GRPO's"),
        (["grpo.generation.top_p=0.9"], "grpo.generation.top_k 0 / top_p 0.9 truncate"),
        (
            ["grpo.generation.do_sample=false"],
            "grpo.generation.do_sample is False .greedy decoding.: .*another "
            "distribution. Set grpo.generation.do_sample: True",
        ),
        (["grpo.reward_funcs=[{weight: 1}]"], r"grpo.reward_funcs\[0\]: needs a name"),
        (
            ["grpo.reward_funcs=[{name: accuracy}, {name: format, wieght: 2}]"],
            r"grpo.reward_funcs\[1\]: unknown key 'wieght'; valid keys: name, weight, kwargs",
        ),
        (["grpo.reward_funcs=[{name: accuracy, weight: heavy}]"], r"grpo.reward_funcs\[0\].weight: expected a finite"),
        (["grpo.reward_funcs=[{name: accuracy, weight: true}]"], r"grpo.reward_funcs\[0\].weight"),
        (["grpo.reward_funcs=[{name: accuracy, kwargs: 3}]"], r"grpo.reward_funcs\[0\].kwargs: expected a mapping"),
        (["grpo.reward_funcs=[accuracy]"], r"grpo.reward_funcs\[0\]: expected a mapping"),
    ],
)
def test_invalid_grpo_values_are_rejected(overrides, match):
    with pytest.raises(ConfigError, match=match):
        load_config(None, overrides)


def test_grpo_clip_higher_and_other_estimators_are_accepted():
    grpo = load_config(
        None,
        [
            "grpo.epsilon_high=0.28",
            "grpo.advantage_estimator=reinforce_baseline",
            "grpo.loss_type=dr_grpo",
            "grpo.num_generations=2",
            "grpo.batch_size=2",
            "grpo.num_prompts=3",
        ],
    ).grpo
    assert (grpo.epsilon_high, grpo.steps_per_epoch) == (0.28, 3)
    assert load_config(None, ["grpo.advantage_estimator=rloo", "grpo.num_generations=2"]).grpo.num_generations == 2


# ---------------------------------------------------------------------------------------------------------------
# seed names: one source per setting

SEED_PPO = """\
ppo:
  num_rollouts: 4
  start_lr: 2e-5
  end_lr: 1e-7
  warmup_step: 5
  decay_steps: 100
  beta1: 0.8
  beta2: 0.9
  eps: 1e-6
  weight_decay: 0.05
  loss_scale_value: 256
  scale_factor: 4
  scale_window: 50
  use_clip_grad: false
  max_grad_norm: 2.0
"""


def test_every_seed_name_sets_its_section_key(tmp_path):
    write(
        tmp_path / "base.yaml",
        "lr_schedule: {type: polynomial, learning_rate: 1e-3, warmup_ratio: 0.1}\n"
        "optimizer: {learning_rate: 1e-3, beta2: 0.999}\n",
    )
    cfg = load_config(str(write(tmp_path / "ppo.yaml", "base_config: base.yaml\n" + SEED_PPO)))
    assert dataclasses.asdict(cfg.optimizer) == {
        "type": "AdamWeightDecay",
        "learning_rate": 2e-5,
        "beta1": 0.8,
        "beta2": 0.9,
        "eps": 1e-6,
        "weight_decay": 0.05,
    }
    # the schedule names select the predecessor's cosine after warmup steps over the base's polynomial and ratio
    assert dataclasses.asdict(cfg.lr_schedule) == {
        "type": "cosine",
        "learning_rate": 2e-5,
        "lr_end": 1e-7,
        "warmup_steps": 5,
        "warmup_ratio": 0.0,
        "total_steps": 100,
    }
    assert dataclasses.asdict(cfg.runner_wrapper) == {
        "loss_scale_value": 256.0,
        "scale_factor": 4.0,
        "scale_window": 50,
        "use_clip_grad": False,
        "max_grad_norm": 2.0,
    }
    names = {line.split(":")[0].strip() for line in SEED_PPO.splitlines()[2:]}
    assert cfg.ppo.num_rollouts == 4 and names == set(config_module.SEED_NAMES)  # every seed name is covered
    assert not {"start_lr", "beta1", "max_grad_norm"} & {f.name for f in dataclasses.fields(cfg.ppo)}
    save_config(cfg, str(tmp_path / "resolved.yaml"))  # the resolved config holds the sections, no seed names
    assert (
        "start_lr" not in (tmp_path / "resolved.yaml").read_text()
        and load_config(str(tmp_path / "resolved.yaml")) == cfg
    )


def test_seed_names_in_grpo_and_in_overrides(tmp_path):
    cfg = load_config(None, ["grpo.start_lr=3e-4", "grpo.warmup_step=2", "grpo.max_grad_norm=0.5"])
    assert (cfg.optimizer.learning_rate, cfg.lr_schedule.learning_rate, cfg.lr_schedule.warmup_steps) == (3e-4, 3e-4, 2)
    assert (cfg.lr_schedule.type, cfg.runner_wrapper.max_grad_norm) == ("cosine", 0.5)
    # an override's seed name wins over a file's section key (a later layer), the file's own type stays
    recipe = write(tmp_path / "r.yaml", "optimizer: {learning_rate: 1e-3}\nlr_schedule: {type: constant}\n")
    cfg = load_config(str(recipe), ["ppo.start_lr=5e-5"])
    assert (cfg.optimizer.learning_rate, cfg.lr_schedule.type) == (5e-5, "cosine")
    # a later file's section key wins over a base file's seed name
    write(tmp_path / "seed.yaml", "ppo: {start_lr: 1e-4, weight_decay: 0.0}\n")
    cfg = load_config(str(write(tmp_path / "top.yaml", "base_config: seed.yaml\noptimizer: {learning_rate: 7e-4}\n")))
    assert (cfg.optimizer.learning_rate, cfg.lr_schedule.learning_rate, cfg.optimizer.weight_decay) == (7e-4, 1e-4, 0.0)


@pytest.mark.parametrize(
    "text, both",
    [
        ("optimizer: {learning_rate: 1e-3}\nppo: {start_lr: 1e-4}\n", "ppo.start_lr and optimizer.learning_rate"),
        ("lr_schedule: {learning_rate: 1e-3}\nppo: {start_lr: 1e-4}\n", "ppo.start_lr and lr_schedule.learning_rate"),
        (
            "runner_wrapper: {max_grad_norm: 1.0}\ngrpo: {max_grad_norm: 0.5}\n",
            "grpo.max_grad_norm and runner_wrapper.max_grad_norm",
        ),
        ("ppo: {warmup_step: 3}\ngrpo: {warmup_step: 4}\n", "grpo.warmup_step and ppo.warmup_step"),
    ],
)
def test_a_setting_written_under_both_names_is_refused(tmp_path, text, both):
    path = write(tmp_path / "both.yaml", text)
    with pytest.raises(ConfigError, match=f"both.yaml: {both} both set") as err:
        load_config(str(path))
    assert "\n" not in str(err.value)


def test_a_setting_overridden_under_both_names_is_refused():
    with pytest.raises(ConfigError, match="--set: ppo.eps and optimizer.eps both set optimizer.eps"):
        load_config(None, ["optimizer.eps=1e-6", "ppo.eps=1e-7"])


def test_seed_recipes_map_as_the_predecessor_read_them():
    """The 124M PPO recipe keeps MindRLHF's PPOConfig values in its ppo section: lr 9e-6 with 3200 warmup steps,
    cosine to 1e-10 at 200000, weight decay 0.01, loss scale 4096; the base recipe's SFT settings stay its own."""
    cfg = load_config(str(CONFIG_DIR / "gpt2_config" / "run_gpt2_124m_ppo.yaml"))
    sched, opt = cfg.lr_schedule, cfg.optimizer
    assert (sched.type, sched.learning_rate, sched.lr_end, sched.warmup_steps, sched.total_steps) == (
        "cosine",
        9e-6,
        1e-10,
        3200,
        200000,
    )
    assert (opt.learning_rate, opt.beta2, opt.weight_decay, cfg.runner_wrapper.loss_scale_value) == (
        9e-6,
        0.95,
        0.01,
        4096.0,
    )
    assert (cfg.ppo.num_rollouts, cfg.ppo.batch_size, cfg.ppo.generation.max_new_tokens) == (8, 2, 512)
    sft = load_config(str(CONFIG_DIR / "gpt2_config" / "run_gpt2_124m.yaml"))
    assert (sft.optimizer.learning_rate, sft.lr_schedule.type) == (1e-4, "polynomial")


# ---------------------------------------------------------------------------------------------------------------
# mindformers settings with no effect here


def test_mindformers_only_keys_are_dropped_with_a_warning(tmp_path, caplog):
    text = (
        "runner_config:\n  epochs: 2\n  sink_mode: True\n  sink_size: 2\n"
        "parallel_config:\n  micro_batch_num: 1\n  vocab_emb_dp: False\n  gradient_aggregation_group: 4\n"
    )
    path = write(tmp_path / "mf.yaml", text)
    with caplog.at_level("WARNING", logger="mindrlhf.config"):
        cfg = load_config(str(path))
    assert cfg.runner_config.epochs == 2 and cfg.parallel_config == RunConfig().parallel_config
    warned = [r.getMessage() for r in caplog.records if r.name == "mindrlhf.config"]
    assert len(warned) == 5 and all(m.startswith(f"{path}: ") and "ignored" in m for m in warned)
    assert any("runner_config.sink_size is a mindformers setting" in m for m in warned)
    assert any("gradient_aggregation_group" in m and "allreduce_bucket_mb" in m for m in warned)
    dropped = {key for keys in config_module.MINDFORMERS_ONLY_KEYS.values() for key in keys}
    for cls in (config_module.RunnerConfig, config_module.ParallelConfig):  # not fields: nothing could read them
        assert not {f.name for f in dataclasses.fields(cls)} & dropped
    with pytest.raises(ConfigError, match="runner_config.sink_sise: unknown key"):  # only the listed names
        load_config(None, ["runner_config.sink_sise=2"])


# ---------------------------------------------------------------------------------------------------------------
# the sections a stage reads


def recipe_stages(name: str) -> tuple:
    """The stages a bundled recipe is for, by its name (a base model recipe serves SFT and the reward model)."""
    for suffix, stage in (("_sft", "sft"), ("_rm", "rm"), ("_dpo", "dpo"), ("_ppo", "ppo"), ("_grpo", "grpo")):
        if name.endswith(suffix + ".yaml"):
            return (stage,)
    return ("sft", "rm")


def test_every_recipe_loads_for_its_stages():
    recipes = sorted(CONFIG_DIR.glob("*_config/*.yaml"))
    assert len(recipes) > 30
    for path in recipes:
        for stage in recipe_stages(path.name):
            load_config(str(path), stage=stage)


@pytest.mark.parametrize(
    "text, stage, section",
    [
        ("ppo: {kl_coef: 0.1}\n", "sft", "ppo"),
        ("grpo: {beta: 0.0}\n", "ppo", "grpo"),
        ("reward: {loss_type: end}\n", "dpo", "reward"),
        ("dpo: {beta: 0.2}\n", "rm", "dpo"),
        ("train_dataset: {batch_size: 2}\n", "ppo", "train_dataset"),
        ("eval_dataset: {batch_size: 2}\n", "sft", "eval_dataset"),
    ],
)
def test_a_section_the_stage_never_reads_is_refused(tmp_path, text, stage, section):
    path = write(tmp_path / "r.yaml", text)
    with pytest.raises(ConfigError, match=f"^{path}: section '{section}' is not read by the {stage} stage$"):
        load_config(str(path), stage=stage)
    load_config(str(path))  # read for its model only: not refused


def test_stage_sections_are_checked_in_the_file_and_overrides_not_in_bases(tmp_path):
    write(tmp_path / "base.yaml", "ppo: {kl_coef: 0.1}\ngeneration: {max_new_tokens: 8}\n")
    top = write(tmp_path / "sft.yaml", "base_config: base.yaml\nrunner_config: {epochs: 2}\noptimizer: {eps: 1e-6}\n")
    assert load_config(str(top), stage="sft").ppo.kl_coef == 0.1  # inherited: a shared base carries it
    with pytest.raises(ConfigError, match="--set: section 'ppo' is not read by the sft stage"):
        load_config(str(top), ["ppo.kl_coef=0.2"], stage="sft")
    with pytest.raises(ConfigError, match="stage 'pretrain' is not one of sft, rm, dpo, ppo, grpo"):
        load_config(str(top), stage="pretrain")
