"""Bad inputs to every command: recipes, checkpoints, data files, converters, tokenizers, rank tables, reward
functions and command lines. Each case runs the ``mindrlhf`` command (in this process, through the same entry as
the console script) and asserts one ``error: ...`` line that names the culprit, a non-zero exit, no traceback, and
nothing partial written (no checkpoint, no MindRecord, no output folder). A few cases run through a real subprocess
to cover the console entry itself and ``--log_level DEBUG``."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from dataclasses import dataclass
from typing import Callable, List, Tuple

import pytest

from mindrlhf.cli.main import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = os.path.join(ROOT, "model_configs")
SFT_RECIPE = os.path.join(CONFIGS, "gpt2_config", "run_gpt2_tiny_sft.yaml")
RM_RECIPE = os.path.join(CONFIGS, "gpt2_config", "run_gpt2_tiny_rm.yaml")
PPO_RECIPE = os.path.join(CONFIGS, "gpt2_config", "run_gpt2_tiny_ppo.yaml")
GRPO_RECIPE = os.path.join(CONFIGS, "gpt2_config", "run_gpt2_tiny_grpo.yaml")
DPO_RECIPE = os.path.join(CONFIGS, "gpt2_config", "run_gpt2_tiny_dpo.yaml")
TINY = os.path.join(CONFIGS, "gpt2_config", "run_gpt2_tiny.yaml")
DATA = os.path.join(ROOT, "tests", "data")
OASST = os.path.join(DATA, "oasst_sft_zh_sample6.json")
PAIRS = os.path.join(DATA, "cvalues_comparison_sample8.jsonl")
PROMPTS = os.path.join(DATA, "cvalues_prompts_sample8.jsonl")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Bad (and a few good) input files, made once: ``name -> path``."""
    import mindspore as ms

    from mindrlhf.config import load_config
    from mindrlhf.data.convert_prompts import convert_prompts
    from mindrlhf.data.convert_sft import convert_sft
    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import save_ckpt

    work = tmp_path_factory.mktemp("bad_inputs")
    paths = {"work": str(work)}

    def write(name: str, text: str) -> str:
        paths[name] = str(work / name)
        with open(paths[name], "w", encoding="utf-8") as f:
            f.write(text)
        return paths[name]

    write("syntax.yaml", f"base_config: {TINY}\nrunner_config:\n  epochs: [1, 2\n")
    write("python_tag.yaml", "seed: !!python/object/apply:os.system ['echo owned']\n")
    write("misspelt.yaml", f"base_config: {RM_RECIPE}\nrunner_config:\n  epohcs: 1\n")
    write("list.yaml", "- 1\n- 2\n")
    write("cycle_a.yaml", "base_config: cycle_b.yaml\n")
    write("sft_with_ppo.yaml", f"base_config: {SFT_RECIPE}\nppo:\n  kl_coef: 0.1\n")
    write(
        "lr_twice.yaml", f"base_config: {PPO_RECIPE}\noptimizer:\n  learning_rate: 1.0e-4\nppo:\n  start_lr: 1.0e-4\n"
    )
    write("cycle_b.yaml", "base_config: cycle_a.yaml\n")
    write("not_json.jsonl", '{"prompt": "hi", "pos_resp": "a"\nnot json at all\n')
    write("no_prompt.jsonl", json.dumps({"question": "hi", "response": "a"}) + "\n")
    write("scores.txt", "prompt,response\n")
    write("sft_missing_field.jsonl", json.dumps({"instruction": "hi"}) + "\n")
    write("pairs_missing_field.jsonl", json.dumps({"prompt": "hi", "pos_resp": "a"}) + "\n")
    write("prompts_bad_json.jsonl", '{"prompt": "hi"}\n{broken\n')
    write("tokenizer.json", '{"this is": "not a tokenizer"}\n')
    write("rank_table.json", '{"server_count": "1"\n')
    write("text.ckpt", "a text file, not a checkpoint\n")
    os.makedirs(work / "bad_hf")
    write("bad_hf/config.json", "{broken")
    paths["pickle.ckpt"] = str(work / "pickle.ckpt")
    with open(paths["pickle.ckpt"], "wb") as f:
        pickle.dump({"backbone.wte.embedding_table": [1.0, 2.0]}, f)
    paths["model.pt"] = str(work / "model.pt")
    with open(paths["model.pt"], "wb") as f:
        pickle.dump({"weight": 1}, f)
    os.makedirs(work / "empty_ckpts" / "rank_0")
    paths["empty_ckpts"] = str(work / "empty_ckpts")

    ms.set_context(mode=ms.PYNATIVE_MODE)
    good = save_ckpt(CausalLM(load_config(TINY).model.model_config), str(work / "tiny.ckpt"))
    with open(good, "rb") as f:
        blob = f.read()
    paths["truncated.ckpt"] = str(work / "truncated.ckpt")
    with open(paths["truncated.ckpt"], "wb") as f:
        f.write(blob[: len(blob) // 3])
    wide = load_config(TINY, ["model.model_config.hidden_size=32"]).model.model_config
    paths["wide.ckpt"] = save_ckpt(CausalLM(wide), str(work / "wide.ckpt"))
    paths["sft.mindrecord"] = str(work / "sft.mindrecord")
    convert_sft(OASST, paths["sft.mindrecord"], "gpt2", 160, progress=False)
    paths["prompts.mindrecord"] = str(work / "prompts.mindrecord")
    convert_prompts(PROMPTS, paths["prompts.mindrecord"], "gpt2", 64, 257, 50256, "qa", progress=False)
    return paths


@dataclass
class Case:
    """One bad input: ``argv(files, out)`` for the command, and a text the error line must contain."""

    name: str
    argv: Callable[[dict, str], List[str]]
    expect: Callable[[dict], str]


def text(value: str) -> Callable[[dict], str]:
    return lambda f: value


def path_of(name: str) -> Callable[[dict], str]:
    return lambda f: f[name]


def load_in_generate(name: str) -> Callable[[dict, str], List[str]]:
    """``mindrlhf generate`` on the tiny recipe with the file ``name`` as its checkpoint."""
    return lambda f, o: ["generate", "--config", TINY, "--load_checkpoint", f[name], "--set", f"output_dir={o}"]


CASES = [
    # recipes
    Case(
        "sft_misspelt_override",
        lambda f, o: ["sft", "--config", SFT_RECIPE, "--output_dir", o, "--set", "model.model_config.hidden_sizee=8"],
        text("model.model_config.hidden_sizee: unknown key; did you mean 'hidden_size'?"),
    ),
    Case(
        "sft_yaml_syntax",
        lambda f, o: ["sft", "--config", f["syntax.yaml"], "--output_dir", o],
        lambda f: f"{f['syntax.yaml']}:4: not valid YAML: expected ',' or ']'",
    ),
    Case(
        "sft_python_tag",
        lambda f, o: ["sft", "--config", f["python_tag.yaml"], "--output_dir", o],
        lambda f: (
            f"{f['python_tag.yaml']}:1: not valid YAML: could not determine a constructor for the tag "
            "'tag:yaml.org,2002:python/object/apply:os.system'"
        ),
    ),
    Case(
        "sft_missing_recipe",
        lambda f, o: ["sft", "--config", os.path.join(o, "nope.yaml")],
        text("config file not found"),
    ),
    Case(
        "rm_misspelt_yaml_key",
        lambda f, o: ["rm", "train", "--config", f["misspelt.yaml"], "--output_dir", o],
        text("runner_config.epohcs: unknown key; did you mean 'epochs'?"),
    ),
    Case(
        "generate_bad_value",
        lambda f, o: [
            "generate",
            "--config",
            TINY,
            "--set",
            "model.model_config.num_heads=x",
            "--set",
            f"output_dir={o}",
        ],
        text("model.model_config.num_heads"),
    ),
    Case(
        "generate_top_level_list",
        lambda f, o: ["generate", "--config", f["list.yaml"]],
        text("the top level must be a mapping"),
    ),
    Case(
        "rm_eval_base_cycle",
        lambda f, o: ["rm", "eval", "--config", f["cycle_a.yaml"], "--distributed_ckpt_path", o],
        text("base_config cycle"),
    ),
    Case(
        "sft_override_without_equals",
        lambda f, o: ["sft", "--config", SFT_RECIPE, "--set", "seed"],
        text("override 'seed' is not of the form key.path=value"),
    ),
    Case(
        "sft_recipe_with_a_ppo_section",
        lambda f, o: ["sft", "--config", f["sft_with_ppo.yaml"], "--output_dir", o],
        lambda f: f"{f['sft_with_ppo.yaml']}: section 'ppo' is not read by the sft stage",
    ),
    Case(
        "ppo_learning_rate_under_both_names",
        lambda f, o: [
            "ppo",
            "--dataset_dir",
            "x",
            "--sft_model_path",
            f["lr_twice.yaml"],
            "--reward_model_path",
            RM_RECIPE,
            "--output_dir",
            o,
        ],
        lambda f: f"{f['lr_twice.yaml']}: ppo.start_lr and optimizer.learning_rate both set optimizer.learning_rate",
    ),
    Case(
        "ppo_missing_policy_recipe",
        lambda f, o: [
            "ppo",
            "--dataset_dir",
            "x",
            "--sft_model_path",
            os.path.join(o, "policy.yaml"),
            "--reward_model_path",
            RM_RECIPE,
        ],
        text("policy.yaml"),
    ),
    Case(
        "ppo_misspelt_reward_override",
        lambda f, o: [
            "ppo",
            "--dataset_dir",
            "x",
            "--sft_model_path",
            PPO_RECIPE,
            "--reward_model_path",
            RM_RECIPE,
            "--output_dir",
            o,
            "--set_reward",
            "model.model_config.num_layer=1",
        ],
        text("model.model_config.num_layer: unknown key; did you mean 'num_layers'?"),
    ),
    Case(
        "grpo_misspelt_key",
        lambda f, o: [
            "grpo",
            "--config",
            GRPO_RECIPE,
            "--dataset_dir",
            "x",
            "--output_dir",
            o,
            "--set",
            "grpo.num_generation=2",
        ],
        text("grpo.num_generation: unknown key; did you mean 'num_generations'?"),
    ),
    # checkpoints
    Case(
        "sft_truncated_ckpt",
        lambda f, o: [
            "sft",
            "--config",
            SFT_RECIPE,
            "--output_dir",
            o,
            "--train_dataset",
            f["sft.mindrecord"],
            "--load_checkpoint",
            f["truncated.ckpt"],
        ],
        path_of("truncated.ckpt"),
    ),
    Case("generate_truncated_ckpt", load_in_generate("truncated.ckpt"), path_of("truncated.ckpt")),
    Case(
        "generate_missing_ckpt",
        lambda f, o: [
            "generate",
            "--config",
            TINY,
            "--load_checkpoint",
            os.path.join(o, "gone.ckpt"),
            "--set",
            f"output_dir={o}",
        ],
        text("gone.ckpt"),
    ),
    Case("generate_pickle_ckpt", load_in_generate("pickle.ckpt"), path_of("pickle.ckpt")),
    Case("generate_text_ckpt", load_in_generate("text.ckpt"), path_of("text.ckpt")),
    Case(
        "generate_torch_pickle",
        load_in_generate("model.pt"),
        text("not a Hugging Face folder (config.json) or a MindSpore .ckpt file"),
    ),
    Case("generate_wrong_shape_ckpt", load_in_generate("wide.ckpt"), path_of("wide.ckpt")),
    Case(
        "generate_broken_hf_config",
        lambda f, o: ["generate", "--load_checkpoint", os.path.join(f["work"], "bad_hf"), "--set", f"output_dir={o}"],
        text("config.json"),
    ),
    Case(
        "export_truncated_ckpt",
        lambda f, o: [
            "export-hf",
            "--config",
            TINY,
            "--load_checkpoint",
            f["truncated.ckpt"],
            "--output_dir",
            os.path.join(o, "hf"),
        ],
        path_of("truncated.ckpt"),
    ),
    Case(
        "rm_eval_missing_ckpt_path",
        lambda f, o: ["rm", "eval", "--config", RM_RECIPE, "--distributed_ckpt_path", os.path.join(o, "nothing")],
        text("nothing"),
    ),
    Case(
        "rm_eval_empty_ckpt_root",
        lambda f, o: [
            "rm",
            "eval",
            "--config",
            RM_RECIPE,
            "--set",
            f"output_dir={o}",
            "--distributed_ckpt_path",
            f["empty_ckpts"],
        ],
        path_of("empty_ckpts"),
    ),
    Case(
        "ppo_missing_sft_ckpt",
        lambda f, o: [
            "ppo",
            "--dataset_dir",
            f["prompts.mindrecord"],
            "--sft_model_path",
            PPO_RECIPE,
            "--reward_model_path",
            RM_RECIPE,
            "--output_dir",
            o,
            "--sft_checkpoint",
            os.path.join(o, "sft.ckpt"),
        ],
        text("sft.ckpt"),
    ),
    # data
    Case(
        "sft_missing_dataset",
        lambda f, o: [
            "sft",
            "--config",
            SFT_RECIPE,
            "--output_dir",
            o,
            "--train_dataset",
            os.path.join(o, "train.mindrecord"),
        ],
        text("train.mindrecord"),
    ),
    Case(
        "sft_dataset_not_mindrecord",
        lambda f, o: ["sft", "--config", SFT_RECIPE, "--output_dir", o, "--train_dataset", f["scores.txt"]],
        path_of("scores.txt"),
    ),
    Case(
        "sft_no_dataset",
        lambda f, o: ["sft", "--config", SFT_RECIPE, "--output_dir", o],
        text("no training data: pass --train_dataset"),
    ),
    Case(
        "rm_train_on_sft_records",
        lambda f, o: ["rm", "train", "--config", RM_RECIPE, "--output_dir", o, "--train_dataset", f["sft.mindrecord"]],
        path_of("sft.mindrecord"),
    ),
    Case(
        "ppo_missing_prompts",
        lambda f, o: [
            "ppo",
            "--dataset_dir",
            os.path.join(o, "p.mindrecord"),
            "--sft_model_path",
            PPO_RECIPE,
            "--reward_model_path",
            RM_RECIPE,
            "--output_dir",
            o,
        ],
        text("p.mindrecord"),
    ),
    Case(
        "grpo_missing_prompts",
        lambda f, o: [
            "grpo",
            "--config",
            GRPO_RECIPE,
            "--dataset_dir",
            os.path.join(o, "g.mindrecord"),
            "--output_dir",
            o,
        ],
        text("g.mindrecord"),
    ),
    Case(
        "rm_infer_missing_data",
        lambda f, o: [
            "rm",
            "infer",
            "--config",
            RM_RECIPE,
            "--tokenizer",
            "gpt2",
            "--set",
            f"output_dir={o}",
            "--data_file",
            os.path.join(o, "d.jsonl"),
        ],
        text("d.jsonl"),
    ),
    Case(
        "rm_infer_record_without_prompt",
        lambda f, o: [
            "rm",
            "infer",
            "--config",
            RM_RECIPE,
            "--tokenizer",
            "gpt2",
            "--set",
            f"output_dir={o}",
            "--data_file",
            f["no_prompt.jsonl"],
        ],
        lambda f: f"{f['no_prompt.jsonl']}:1",
    ),
    Case(
        "rm_infer_not_json",
        lambda f, o: [
            "rm",
            "infer",
            "--config",
            RM_RECIPE,
            "--tokenizer",
            "gpt2",
            "--set",
            f"output_dir={o}",
            "--data_file",
            f["not_json.jsonl"],
        ],
        lambda f: f"{f['not_json.jsonl']}:",
    ),
    Case(
        "rm_infer_wrong_suffix",
        lambda f, o: [
            "rm",
            "infer",
            "--config",
            RM_RECIPE,
            "--tokenizer",
            "gpt2",
            "--set",
            f"output_dir={o}",
            "--data_file",
            f["scores.txt"],
        ],
        text("data_file must be .json or .jsonl"),
    ),
    # converters
    Case(
        "convert_sft_missing_source",
        lambda f, o: [
            "convert-sft",
            "--model",
            "gpt2",
            "--src_file",
            os.path.join(o, "in.json"),
            "--dst_file",
            os.path.join(o, "sft.mindrecord"),
        ],
        text("in.json"),
    ),
    Case(
        "convert_sft_missing_field",
        lambda f, o: [
            "convert-sft",
            "--model",
            "gpt2",
            "--src_file",
            f["sft_missing_field.jsonl"],
            "--dst_file",
            os.path.join(o, "sft.mindrecord"),
        ],
        lambda f: f"{f['sft_missing_field.jsonl']}:1",
    ),
    Case(
        "convert_sft_tiny_seq_length",
        lambda f, o: [
            "convert-sft",
            "--model",
            "gpt2",
            "--src_file",
            OASST,
            "--dst_file",
            os.path.join(o, "sft.mindrecord"),
            "--seq_length",
            "1",
        ],
        text("seq_length"),
    ),
    Case(
        "convert_preference_missing_field",
        lambda f, o: [
            "convert-preference",
            "--model",
            "gpt2",
            "--src_file",
            f["pairs_missing_field.jsonl"],
            "--dst_file",
            os.path.join(o, "p.mindrecord"),
            "--seq_length",
            "64",
        ],
        lambda f: f"{f['pairs_missing_field.jsonl']}:1",
    ),
    Case(
        "convert_prompts_bad_json",
        lambda f, o: [
            "convert-prompts",
            "--tokenizer_name_or_path",
            "gpt2",
            "--file_path",
            f["prompts_bad_json.jsonl"],
            "--output_path",
            os.path.join(o, "p.mindrecord"),
            "--max_prompt_length",
            "16",
            "--seq_length",
            "33",
        ],
        lambda f: f"{f['prompts_bad_json.jsonl']}:2",
    ),
    # tokenizers
    Case(
        "generate_missing_tokenizer",
        lambda f, o: [
            "generate",
            "--config",
            TINY,
            "--tokenizer",
            os.path.join(o, "tok.json"),
            "--set",
            f"output_dir={o}",
        ],
        text("tok.json"),
    ),
    Case(
        "rm_infer_bad_tokenizer_file",
        lambda f, o: [
            "rm",
            "infer",
            "--config",
            RM_RECIPE,
            "--tokenizer",
            f["tokenizer.json"],
            "--set",
            f"output_dir={o}",
            "--data_file",
            PAIRS,
        ],
        path_of("tokenizer.json"),
    ),
    Case(
        "convert_preference_unknown_tokenizer",
        lambda f, o: [
            "convert-preference",
            "--model",
            "gpt5",
            "--src_file",
            PAIRS,
            "--dst_file",
            os.path.join(o, "p.mindrecord"),
            "--seq_length",
            "64",
        ],
        text("gpt5"),
    ),
    # rank tables
    Case("rank_table_bad_range", lambda f, o: ["rank-table", "--device_num", "[0,9", "--output_dir", o], text("[0,9")),
    Case(
        "rank_table_validate_broken_json",
        lambda f, o: ["rank-table", "--validate", f["rank_table.json"]],
        path_of("rank_table.json"),
    ),
    Case(
        "loss_plot_missing_log",
        lambda f, o: ["loss-plot", "--log_file", os.path.join(o, "info.log"), "--output_file_dir", o, "--timeout", "0"],
        text("log file not found"),
    ),
    # reward functions
    Case(
        "grpo_unknown_reward_module",
        lambda f, o: [
            "grpo",
            "--config",
            GRPO_RECIPE,
            "--dataset_dir",
            "x",
            "--output_dir",
            o,
            "--set",
            "grpo.reward_funcs=[{name: 'no_such_module:score'}]",
        ],
        text("no_such_module"),
    ),
    Case(
        "grpo_reward_not_callable",
        lambda f, o: [
            "grpo",
            "--config",
            GRPO_RECIPE,
            "--dataset_dir",
            "x",
            "--output_dir",
            o,
            "--set",
            "grpo.reward_funcs=[{name: 'tests.reward_helpers:NOT_CALLABLE'}]",
        ],
        text("tests.reward_helpers:NOT_CALLABLE"),
    ),
    Case(
        "grpo_reward_wrong_signature",
        lambda f, o: [
            "grpo",
            "--config",
            GRPO_RECIPE,
            "--dataset_dir",
            "x",
            "--output_dir",
            o,
            "--set",
            "grpo.reward_funcs=[{name: 'tests.reward_helpers:two_arguments'}]",
        ],
        text("tests.reward_helpers:two_arguments"),
    ),
    # command lines
    Case(
        "ppo_stage_without_stages",
        lambda f, o: [
            "ppo",
            "--dataset_dir",
            "x",
            "--sft_model_path",
            PPO_RECIPE,
            "--reward_model_path",
            RM_RECIPE,
            "--stage",
            "experience",
        ],
        text("--stage experience needs --align_type rlhf_stages"),
    ),
    Case(
        "grpo_reward_model_without_recipe",
        lambda f, o: [
            "grpo",
            "--config",
            GRPO_RECIPE,
            "--dataset_dir",
            "x",
            "--output_dir",
            o,
            "--set",
            "grpo.use_reward_model=True",
        ],
        text("give --reward_model_path"),
    ),
    Case(
        "generate_without_config",
        lambda f, o: ["generate", "--load_checkpoint", f["truncated.ckpt"]],
        text("--config is needed"),
    ),
    Case(
        "export_without_checkpoint",
        lambda f, o: ["export-hf", "--config", TINY, "--output_dir", o],
        text("export-hf needs --load_checkpoint"),
    ),
    Case(
        "demo_setting_of_another_task",
        lambda f, o: ["demo", "--task", "stories", "--output_dir", o, "--sft_samples", "3"],
        text("--task stories has no setting --sft_samples"),
    ),
    Case(
        "dpo_beta_not_positive",
        lambda f, o: ["dpo", "--config", DPO_RECIPE, "--train_dataset", "x", "--output_dir", o, "--set", "dpo.beta=0"],
        text("dpo.beta must be > 0"),
    ),
    Case(
        "eval_unknown_question_set",
        lambda f, o: [
            "eval",
            "--baseline",
            "tinystories",
            "--candidate",
            "tinystories",
            "--question_set",
            os.path.join(o, "nope.jsonl"),
            "--reward_funcs",
            "sentiment",
            "--output_dir",
            o,
        ],
        text("is neither a built-in (mt_bench, cvalues) nor a file"),
    ),
    Case(
        "dpo_missing_pairs",
        lambda f, o: [
            "dpo",
            "--config",
            DPO_RECIPE,
            "--output_dir",
            o,
            "--train_dataset",
            os.path.join(o, "pairs.mindrecord"),
        ],
        text("pairs.mindrecord"),
    ),
    Case(
        "dpo_misspelt_key",
        lambda f, o: ["dpo", "--config", DPO_RECIPE, "--output_dir", o, "--set", "dpo.bta=0.2"],
        text("dpo.bta: unknown key; did you mean 'beta'?"),
    ),
    Case(
        "eval_missing_baseline",
        lambda f, o: [
            "eval",
            "--baseline",
            os.path.join(o, "start"),
            "--candidate",
            "tinystories",
            "--reward_funcs",
            "length",
            "--output_dir",
            o,
        ],
        text("start: not found"),
    ),
    Case(
        "plan_memory_unparsable_size",
        lambda f, o: ["plan-memory", "--config", TINY, "--device_memory", "lots"],
        text("--device_memory 'lots': expected a size such as 32GB"),
    ),
    Case(
        "eval_unknown_reward_function",
        lambda f, o: [
            "eval",
            "--baseline",
            "tinystories",
            "--candidate",
            "tinystories",
            "--reward_funcs",
            "lenght",
            "--output_dir",
            o,
        ],
        text("lenght"),
    ),
]


class _Names(dict):
    """Stands in for the ``files`` fixture: every file's path is its name."""

    def __missing__(self, key):
        return key


def _commands() -> set:
    from mindrlhf.cli.main import build_parser

    return set(build_parser()._subparsers._group_actions[0].choices)


def outputs_under(folder: str) -> List[str]:
    """Checkpoints and MindRecord files anywhere under ``folder`` (a failed command must leave none)."""
    found = []
    for dirpath, _, names in os.walk(folder):
        found += [
            os.path.join(dirpath, n) for n in names if n.endswith((".ckpt", ".mindrecord", ".db", ".safetensors"))
        ]
    return found


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_bad_input_is_one_error_line_naming_the_culprit(case: Case, files, tmp_path, capsys):
    out = str(tmp_path / "out")
    status = main(case.argv(files, out))
    err = capsys.readouterr().err
    assert status == 2, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: ") and case.expect(files) in last, err[-3000:]
    assert outputs_under(str(tmp_path)) == []


def test_the_suite_covers_every_subcommand_and_forty_cases():
    tried = {c.argv(_Names(), "out")[0] for c in CASES}
    assert _commands() <= tried, _commands() - tried
    assert len(CASES) >= 40


def run_cli(*args: str) -> Tuple[int, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-m", "mindrlhf.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    return proc.returncode, proc.stderr


def test_console_entry_prints_one_line_and_debug_shows_the_traceback(files):
    status, err = run_cli("sft", "--config", files["python_tag.yaml"])
    assert status == 2 and "Traceback" not in err and err.strip().startswith("error: "), err
    status, err = run_cli("--log_level", "DEBUG", "sft", "--config", files["python_tag.yaml"])
    assert status == 2 and "Traceback" in err and err.strip().splitlines()[-1].startswith("error: "), err
