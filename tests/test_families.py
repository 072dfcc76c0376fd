"""The model families beside GPT-2 and Llama (Qwen2, GPT-J, BLOOM) against Hugging Face ``transformers`` on tiny random
configs: logits on left- and right-padded batches in GRAPH and PYNATIVE mode, cached greedy generation against
uncached and ``transformers`` greedy, checkpoints in both directions (tied and untied), the reward model, and one
PPO iteration.

One randomised model per family is built, exported and loaded into ``transformers`` once per module; its weights
are large (scale 0.3) so that greedy argmaxes are clear and fp32 rounding never flips one.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import torch
import transformers

from mindrlhf.config import GenerationConfig
from mindrlhf.models import CausalLM, Critic, RewardModel
from mindrlhf.models.convert import load_hf_checkpoint, model_config_from_hf_folder, save_hf_checkpoint
from mindrlhf.models.generation import Generator
from mindrlhf.train.ppo import PPOTrainer, build_ppo_models, prompt_source
from tests.helpers import (
    EOS,
    NEW_FAMILY_CONFIGS,
    PAD,
    load_transformers,
    max_abs_diff,
    ms_numpy,
    padded_batch,
    parameter_arrays,
    positions_from_mask,
    randomize_parameters,
    set_mode,
    torch_forward,
)
from tests import test_grpo
from tests.test_grpo import METRIC_KEYS, cli
from tests.test_ppo import run_config, target_reward, write_prompts

RECIPES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "model_configs")
TOL = 1e-4
FAMILIES = sorted(NEW_FAMILY_CONFIGS)
NEW_TOKENS, PROMPT_LEN = 32, 8
gsm8k_prompts = test_grpo.gsm8k_prompts  # the GRPO tests' converted GSM8K-style prompts (a module fixture)


def hf_config(family: str, tied: bool):
    """The ``transformers`` config of the tiny model of ``family`` (written independently of our exporter)."""
    common = dict(vocab_size=100, pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS, tie_word_embeddings=tied)
    if family == "qwen2":
        return transformers.Qwen2Config(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=64,
            rope_theta=1e6,
            **common,
        )
    if family == "gptj":
        return transformers.GPTJConfig(
            n_embd=32, n_layer=2, n_head=4, rotary_dim=4, n_inner=64, n_positions=64, **common
        )
    return transformers.BloomConfig(hidden_size=48, n_layer=2, n_head=6, **common)


@pytest.fixture(scope="module", params=FAMILIES)
def family_model(request, tmp_path_factory):
    """``(family, our CausalLM, transformers model loaded from our export)``."""
    family = request.param
    set_mode("pynative")
    cfg = NEW_FAMILY_CONFIGS[family]()
    lm = CausalLM(cfg)
    randomize_parameters(lm, seed=1, scale=0.3)
    folder = str(tmp_path_factory.mktemp(f"{family}_hf"))
    save_hf_checkpoint(lm, cfg, folder)
    return family, lm, load_transformers(folder)


@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers_on_padded_batches(family_model, side, ms_mode):
    family, lm, hf = family_model
    ids, mask = padded_batch(lm.config, side=side)
    ours = ms_numpy(lm, ids, mask)
    # transformers' default positions are arange, right for right padding; left padding needs the mask's positions
    ref = torch_forward(hf, ids, mask, None if side == "right" else positions_from_mask(mask)).logits.numpy()
    assert ours.shape == ref.shape == (*ids.shape, lm.config.vocab_size)
    assert max_abs_diff(ours, ref, mask) <= TOL, f"{family} {side} padding, {ms_mode}"


def test_float16_compute_is_close_to_float32(family_model):
    family, lm, _ = family_model
    set_mode("pynative")
    half = CausalLM(dataclasses.replace(lm.config, compute_dtype="float16"))
    for src, dst in zip(lm.get_parameters(), half.get_parameters()):
        assert src.name == dst.name
        dst.set_data(src.data)
    ids, mask = padded_batch(lm.config, side="left")
    full, low = ms_numpy(lm, ids, mask), ms_numpy(half, ids, mask)
    assert low.dtype == np.float32  # logits leave the head in float32 whatever the compute dtype
    diff = max_abs_diff(full, low, mask)
    assert 0 < diff < 1e-2 * np.abs(full).max(), (family, diff)


def test_cached_greedy_equals_uncached_and_transformers(family_model):
    family, lm, hf = family_model
    set_mode("graph")
    ids, mask = padded_batch(lm.config, lengths=(8, 5, 2), seq_len=PROMPT_LEN, side="left", seed=3)
    out = {}
    for use_cache in (True, False):
        gen = Generator(
            lm,
            GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False, use_cache=use_cache),
            eos_token_id=EOS,
            pad_token_id=PAD,
        )
        out[use_cache] = gen.generate(ids, mask)
    np.testing.assert_array_equal(out[True].response_ids, out[False].response_ids)
    with torch.no_grad():
        ref = hf.generate(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            do_sample=False,
            max_new_tokens=NEW_TOKENS,
            pad_token_id=PAD,
            eos_token_id=EOS,
        )
    ref = ref[:, PROMPT_LEN:].numpy()
    ref = np.pad(ref, ((0, 0), (0, NEW_TOKENS - ref.shape[1])), constant_values=PAD)
    np.testing.assert_array_equal(out[True].response_ids, ref, err_msg=family)
    assert out[True].response_lengths.max() == NEW_TOKENS  # at least one row compared over all 32 tokens
    assert all(len(set(row)) > 1 for row in out[True].response_ids)


@pytest.mark.parametrize("tied", [False, True], ids=["untied", "tied"])
def test_transformers_checkpoint_loads_into_ours(family_model, tied, tmp_dir):
    family = family_model[0]
    torch.manual_seed(0)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config(family, tied), attn_implementation="eager")
    with torch.no_grad():
        for param in hf.parameters():  # not HF's init, whose zero biases and unit norms would hide a mapping slip
            param.add_(torch.randn_like(param) * 0.2)
    hf.eval().save_pretrained(tmp_dir)
    cfg = model_config_from_hf_folder(tmp_dir)
    assert (cfg.type, cfg.tie_word_embeddings) == (family, tied)
    assert cfg.num_kv_heads == NEW_FAMILY_CONFIGS[family]().num_kv_heads
    lm = CausalLM(cfg)
    assert load_hf_checkpoint(lm, tmp_dir, cfg) == []
    assert ("lm_head.weight" in parameter_arrays(lm)) != tied
    ids, mask = padded_batch(cfg, side="left")
    ref = torch_forward(hf, ids, mask, positions_from_mask(mask)).logits.numpy()
    assert max_abs_diff(ms_numpy(lm, ids, mask), ref, mask) <= TOL


def test_sharded_and_head_only_tied_checkpoints_load(family_model, tmp_dir):
    """A tied checkpoint in shards with an index, and one storing the shared matrix only as ``lm_head.weight``."""
    from safetensors.numpy import save_file

    family = family_model[0]
    torch.manual_seed(1)
    hf = transformers.AutoModelForCausalLM.from_config(hf_config(family, True), attn_implementation="eager").eval()
    sharded, head_only = os.path.join(tmp_dir, "sharded"), os.path.join(tmp_dir, "head_only")
    hf.save_pretrained(sharded, max_shard_size="20KB")
    assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
    hf.config.save_pretrained(head_only)
    tables = ("embed_tokens.weight", "wte.weight", "word_embeddings.weight")
    table = next(n for n in hf.state_dict() if n.endswith(tables))
    tensors = {n: t.detach().numpy().copy() for n, t in hf.state_dict().items() if n != table}
    tensors["lm_head.weight"] = hf.state_dict()[table].numpy().copy()
    save_file(tensors, os.path.join(head_only, "model.safetensors"), metadata={"format": "pt"})
    ids, mask = padded_batch(NEW_FAMILY_CONFIGS[family](), side="left")
    ref = torch_forward(hf, ids, mask, positions_from_mask(mask)).logits.numpy()
    for folder in (sharded, head_only):
        cfg = model_config_from_hf_folder(folder)
        lm = CausalLM(cfg)
        assert load_hf_checkpoint(lm, folder, cfg) == []
        assert max_abs_diff(ms_numpy(lm, ids, mask), ref, mask) <= TOL, folder


def test_reward_model_and_critic_match_transformers(family_model, tmp_dir):
    family, lm, _ = family_model
    cfg = lm.config
    reward_model = RewardModel(cfg)
    randomize_parameters(reward_model, seed=2)
    save_hf_checkpoint(reward_model, cfg, tmp_dir)
    hf = load_transformers(tmp_dir, reward=True)
    critic = Critic(cfg)
    load_hf_checkpoint(critic, tmp_dir, cfg)
    for side in ("right", "left"):
        ids, mask = padded_batch(cfg, side=side)
        rewards = ms_numpy(reward_model, ids, mask)
        ref = torch_forward(hf, ids, mask, None if side == "right" else positions_from_mask(mask)).logits.numpy()
        assert np.abs(rewards - ref[:, 0]).max() <= TOL, f"{family} {side} padding"
        last = np.array([np.flatnonzero(row).max() for row in mask])
        np.testing.assert_allclose(ms_numpy(critic, ids, mask)[np.arange(3), last], rewards, atol=1e-6)


def test_one_ppo_iteration_trains_every_parameter(family_model, tmp_dir):
    family = family_model[0]
    set_mode("graph")
    prompts_file = write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"), count=8)
    cfg = run_config(os.path.join(tmp_dir, "out"), family=NEW_FAMILY_CONFIGS[family], width=48, epochs=1)
    width, prompts = prompt_source(prompts_file, cfg, 0, 1)
    models = build_ppo_models(cfg.model.model_config, cfg.ppo, target_reward)
    before = {name: value.copy() for name, value in parameter_arrays(models.policy).items()}
    trainer = PPOTrainer(cfg, models, width, prompts)
    experience, stats = trainer.maker.make_experience(prompts(0), 0, cfg.seed)
    assert stats.kl == pytest.approx(0.0, abs=1e-5)  # the first rollouts come from the reference itself
    trainer.train_on(experience, 0)
    after = parameter_arrays(models.policy)
    unchanged = [n for n in before if np.array_equal(before[n], after[n])]
    assert not unchanged, unchanged
    assert all(np.isfinite(a).all() for a in after.values())


# ---------------------------------------------------------------------------------------------------------------
# the registry: one entry per family decides the tokenizer, the bos rule, the chat template and config.json


def test_each_family_is_one_registry_entry():
    from mindrlhf.models import list_backbones
    from mindrlhf.models.registry import family

    assert set(list_backbones()) == {"bloom", "gpt2", "gptj", "llama", "qwen2"}
    rules = {
        name: (family(name).tokenizer, family(name).add_bos, family(name).chat_template, family(name).tied_default)
        for name in list_backbones()
    }
    assert rules == {
        "gpt2": ("gpt2", False, None, True),
        "llama": ("llama", True, None, False),
        "qwen2": (None, False, "chatml", False),
        "gptj": ("gpt2", False, None, False),
        "bloom": (None, False, None, True),
    }


def test_generate_takes_tokenizer_bos_and_template_from_the_family():
    from mindrlhf.cli.common import choose_tokenizer
    from mindrlhf.cli.generate import prompt_bos, prompt_template

    with pytest.raises(SystemExit, match="model family 'qwen2' ships no bundled tokenizer.*--tokenizer"):
        choose_tokenizer(None, [""], "qwen2")
    gpt2_tokenizer, _ = choose_tokenizer(None, [""], "gptj")  # GPT-J uses GPT-2's vocabulary
    assert gpt2_tokenizer.eos_token_id == 50256
    bare = type("Bare", (), {"bos_token_id": 7})()  # a tokenizer without its own add_bos rule
    cfg = NEW_FAMILY_CONFIGS["qwen2"]()
    assert prompt_bos(bare, None, cfg) is None  # Qwen2 prompts carry no bos
    assert prompt_bos(bare, None, dataclasses.replace(cfg, type="llama")) == 7
    assert prompt_template("qwen2") == "chatml" and prompt_template("bloom") == "qa"


@pytest.mark.parametrize(
    "recipe,flags",
    [("gptj_config/run_gptj_tiny.yaml", []), ("bloom_config/run_bloom_tiny.yaml", ["--tokenizer", "gpt2"])],
    ids=["gptj_bundled_tokenizer", "bloom_explicit_tokenizer"],
)
def test_generate_command_runs_the_tiny_recipes(recipe, flags, tmp_dir):
    out = os.path.join(tmp_dir, "samples.jsonl")
    proc = cli(
        "generate",
        "--config",
        os.path.join(RECIPES, recipe),
        *flags,
        "--prompt",
        "Hello",
        "--set",
        "generation.max_new_tokens=4",
        "--set",
        f"output_dir={tmp_dir}",
        "--output_file",
        out,
        cwd=tmp_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(out, encoding="utf-8") as f:
        (record,) = [json.loads(line) for line in f]
    assert record["prompt"] == "Hello" and 1 <= record["response_tokens"] <= 4


def write_config(folder: str, **fields) -> str:
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as f:
        json.dump(fields, f)
    return os.path.join(folder, "config.json")


def test_bad_config_json_names_the_file_and_the_field(tmp_dir):
    from mindrlhf.models.convert import CheckpointError

    path = write_config(tmp_dir, model_type="mamba")
    with pytest.raises(
        CheckpointError,
        match=r"model_type 'mamba' is not supported \(supported: bloom, gpt2, "
        r"gptj, llama, qwen2\)",
    ) as err:
        model_config_from_hf_folder(tmp_dir)
    assert path in str(err.value)
    qwen = dict(
        model_type="qwen2",
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
    )
    write_config(tmp_dir, **qwen, rope_scaling={"rope_type": "yarn", "factor": 4.0})
    with pytest.raises(CheckpointError, match=r"config.json: field 'rope_scaling' of type 'yarn' is not supported"):
        model_config_from_hf_folder(tmp_dir)
    write_config(tmp_dir, **{k: v for k, v in qwen.items() if k != "hidden_size"})
    with pytest.raises(CheckpointError, match=r"config.json: field 'hidden_size' is missing"):
        model_config_from_hf_folder(tmp_dir)
    write_config(tmp_dir, **qwen, rope_parameters={"rope_type": "default", "rope_theta": 1e6})
    assert model_config_from_hf_folder(tmp_dir).rope_theta == 1e6  # transformers 5 writes rope_parameters


def test_weights_that_disagree_with_config_json_are_refused(family_model, tmp_dir):
    from mindrlhf.models.convert import CheckpointError

    family, lm, _ = family_model
    save_hf_checkpoint(lm, lm.config, tmp_dir)
    with open(os.path.join(tmp_dir, "config.json"), encoding="utf-8") as f:
        hf = json.load(f)
    hf["vocab_size"] = 120
    write_config(tmp_dir, **hf)
    cfg = model_config_from_hf_folder(tmp_dir)
    with pytest.raises(
        CheckpointError,
        match=r"config.json: field 'vocab_size' is 120 but the weights' token "
        r"table has 100 rows",
    ) as err:
        load_hf_checkpoint(CausalLM(cfg), tmp_dir, cfg)
    assert tmp_dir in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# recipes


def test_qwen2_5_7b_grpo_recipe_mirrors_the_predecessor_settings():
    from mindrlhf.config import load_config

    cfg = load_config(os.path.join(RECIPES, "qwen2_config", "run_qwen2_5_7b_grpo.yaml"))
    grpo = cfg.grpo
    assert (grpo.num_generations, grpo.num_prompts, grpo.beta, grpo.epsilon_low, grpo.epsilon_high) == (
        8,
        4,
        0.01,
        0.2,
        0.2,
    )
    opt, sched = cfg.optimizer, cfg.lr_schedule
    assert (opt.learning_rate, sched.lr_end, sched.warmup_steps, opt.weight_decay) == (5e-7, 1e-10, 10, 0.01)
    assert (sched.type, sched.learning_rate, sched.total_steps, cfg.runner_wrapper.loss_scale_value) == (
        "cosine",
        5e-7,
        200000,
        1.0,
    )
    assert (grpo.generation.max_new_tokens, grpo.generation.temperature) == (512, 0.8)
    assert [(f["name"], f["weight"]) for f in grpo.reward_funcs] == [("accuracy", 1.0), ("format", 1.0)]
    assert cfg.model.model_config.type == "qwen2" and cfg.model.model_config.seq_length == 8192


def test_tiny_qwen2_grpo_recipe_runs_one_iteration(gsm8k_prompts):
    work, data = gsm8k_prompts  # GSM8K-style prompts converted with the GPT-2 tokenizer, the tiny Qwen2's vocabulary
    out = os.path.join(work, "qwen2_out")
    proc = cli(
        "grpo",
        "--config",
        os.path.join(RECIPES, "qwen2_config", "run_qwen2_tiny_grpo.yaml"),
        "--tokenizer",
        "gpt2",
        "--dataset_dir",
        data,
        "--output_dir",
        out,
        "--set",
        "grpo.epochs=1",
        "--set",
        "grpo.num_prompts=2",
        "--set",
        "grpo.num_generations=2",
        "--set",
        "grpo.batch_size=4",
        "--set",
        "grpo.generation.max_new_tokens=8",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (row,) = test_grpo.metrics(out)
    assert METRIC_KEYS <= set(row) and row["iteration"] == 0 and np.isfinite(row["loss"])
