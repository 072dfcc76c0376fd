"""What ``mindrlhf --help`` and each command's ``--help`` tell: the version, a description per stage, flags that
say what they set, ``--set`` examples that fit their command and one parsing of ``--use_parallel``."""

from __future__ import annotations

import pytest

from mindrlhf import __version__
from mindrlhf.cli.main import build_parser, main
from mindrlhf.config import load_config
from tests.test_cli import ROOT
from tests.test_device_target import subcommands

RECIPES = {
    "rm train": "model_configs/gpt2_config/run_gpt2_tiny_rm.yaml",
    "rm eval": "model_configs/gpt2_config/run_gpt2_tiny_rm.yaml",
    "rm infer": "model_configs/gpt2_config/run_gpt2_tiny_rm.yaml",
    "sft": "model_configs/gpt2_config/run_gpt2_tiny_sft.yaml",
    "generate": "model_configs/gpt2_config/run_gpt2_tiny.yaml",
    "ppo": "model_configs/gpt2_config/run_gpt2_tiny_ppo.yaml",
    "grpo": "model_configs/gpt2_config/run_gpt2_tiny_grpo.yaml",
}


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.strip() == f"mindrlhf {__version__}"


def test_stage_commands_have_a_description():
    commands = {action.dest: action for action in build_parser()._subparsers._group_actions}["command"].choices
    for name in ("sft", "rm", "ppo"):
        assert commands[name].description and commands[name].description.startswith("Stage "), name


def test_use_parallel_is_parsed_the_same_everywhere():
    commands = subcommands(build_parser())
    with_flag = {name: sub for name, sub in commands.items() if "--use_parallel" in sub._option_string_actions}
    assert {"sft", "rm train", "ppo", "grpo"} <= set(with_flag)
    for name, sub in with_flag.items():
        parse = sub._option_string_actions["--use_parallel"].type
        assert [parse(v) for v in ("auto", "True", "false", "1", "no")] == [None, True, False, True, False], name


def test_set_examples_fit_their_command():
    """The key of each ``--set`` help example is a key of the recipe the command reads."""
    for name, sub in subcommands(build_parser()).items():
        action = sub._option_string_actions.get("--set")
        if action is None or name not in RECIPES:
            continue
        example = action.help.split("--set ", 1)[1].split()[0]
        load_config(f"{ROOT}/{RECIPES[name]}", [example])  # a key that does not fit is a ConfigError


def test_demo_flags_say_what_they_set():
    demo = subcommands(build_parser())["demo"]
    for action in demo._actions:
        if action.dest in ("help", "task", "no_progress"):
            continue
        text = action.help.split(" (default")[0]
        assert text and text != action.dest.replace("_", " "), f"--{action.dest}: {action.help}"
