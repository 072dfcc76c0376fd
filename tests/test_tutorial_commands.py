"""The tutorials (``examples/*/README.md``) name only commands, scripts and recipes that exist.

Their shell code blocks are parsed: every ``mindrlhf <command>`` (``rm <action>`` included), every ``*.py`` script
and every ``python -m mindrlhf...`` module must answer ``--help`` with exit 0; every ``model_configs/...yaml`` path
in the text must load with :func:`mindrlhf.config.load_config`, with the ``--set`` overrides of the commands that
use it. The ``--help`` calls run in this process (``main(argv)`` / :mod:`runpy`), so the whole file takes seconds.

The cheap commands of the README and the tutorials (the data converters, on the bundled files) are run as written,
from the folder each document says to run them in, in a copy of the repository's layout (links to its files) so
their outputs land in a temporary folder; identical conversions run once.
"""

from __future__ import annotations

import glob
import os
import re
import runpy
import shlex
import sys
from typing import Dict, Iterator, List, Optional, Tuple

import pytest

from mindrlhf.cli.main import main as mindrlhf_main
from mindrlhf.config import load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TUTORIALS = sorted(glob.glob(os.path.join(ROOT, "examples", "*", "README.md")))
SHELL_LANGUAGES = {"bash", "sh", "shell", "console", "zsh"}

_FENCE = re.compile(r"^```[ \t]*([\w+-]*)[^\n]*\n(.*?)^```", re.S | re.M)
_COMMENT = re.compile(r"(^|\s)#.*$", re.M)  # a shell comment: '#' at the start of a word
# `mindrlhf <command> [<action>]` where a command starts: line start, after &&, ||, ;, |, `time` or VAR=value
_MINDRLHF = re.compile(
    r"(?:^|&&|\|\||;|\|)[ \t]*(?:time[ \t]+)?(?:[A-Za-z_]\w*=\S*[ \t]+)*mindrlhf"
    r"[ \t]+([a-z][\w-]*)(?:[ \t]+([a-z][\w-]*))?",
    re.M,
)
_SCRIPT = re.compile(r"(?<![\w./-])((?:\.{0,2}/)?[\w./-]*\.py)(?![\w.])")
_MODULE = re.compile(r"\bpython3?[ \t]+-m[ \t]+(mindrlhf(?:\.\w+)+)")
_RECIPE = re.compile(r"model_configs/[\w./-]+\.ya?ml")
# launch scripts whose positional arguments name the policy recipe, which their --set flags change
_RECIPE_ARGUMENT = {"run_distribute_train.sh": 5, "run_distribute_grpo.sh": 5, "run_standalone_train.sh": 2}
_RECIPE_FLAGS = ("--config", "--sft_model_path")


def shell_blocks(text: str) -> List[str]:
    """The shell code blocks of a Markdown text, comments removed and backslash continuations joined."""
    blocks = []
    for language, body in _FENCE.findall(text):
        if language.lower() in SHELL_LANGUAGES:
            blocks.append(_COMMENT.sub(r"\1", body.replace("\\\n", " ")))
    return blocks


def mindrlhf_commands(blocks: List[str]) -> List[Tuple[str, ...]]:
    """``("sft",)``, ``("rm", "train")``, ... for every ``mindrlhf`` call in the blocks (first-seen order)."""
    found = []
    for block in blocks:
        for command, action in _MINDRLHF.findall(block):
            argv = (command, action) if command == "rm" and action else (command,)
            if argv not in found:
                found.append(argv)
    return found


def scripts(blocks: List[str]) -> List[str]:
    """Every ``*.py`` word in the blocks, as written."""
    return list(dict.fromkeys(m for block in blocks for m in _SCRIPT.findall(block)))


def modules(blocks: List[str]) -> List[str]:
    """Every module started with ``python -m mindrlhf...`` in the blocks."""
    return list(dict.fromkeys(m for block in blocks for m in _MODULE.findall(block)))


def shell_scripts(blocks: List[str]) -> List[str]:
    """Every ``*.sh`` word in the blocks, as written."""
    return list(dict.fromkeys(m for block in blocks for m in re.findall(r"[\w./-]+\.sh\b", block)))


def recipes(text: str) -> List[str]:
    """Every concrete ``model_configs/...yaml`` path in the text (prose and code), relative to the repository."""
    return list(dict.fromkeys(_RECIPE.findall(text)))


def resolve(path: str, readme: str) -> Optional[str]:
    """A path as written in a tutorial: relative to its folder (commands run there) or to the repository root."""
    for base in (os.path.dirname(readme), ROOT):
        candidate = os.path.normpath(os.path.join(base, path))
        if os.path.isfile(candidate):
            return candidate
    return None


def recipe_overrides(blocks: List[str], readme: str) -> Iterator[Tuple[str, List[str]]]:
    """``(recipe path, --set values)`` of every command line that changes a recipe with ``--set``."""
    for block in blocks:
        for line in block.splitlines():
            try:
                words = shlex.split(line)
            except ValueError:  # a quote opened on one line and closed on another (a FLAGS="..." variable)
                continue
            sets = [words[i + 1] for i, w in enumerate(words[:-1]) if w == "--set"]
            if not sets:
                continue
            recipe = None
            for i, word in enumerate(words[:-1]):
                if word in _RECIPE_FLAGS:
                    recipe = words[i + 1]
                offset = _RECIPE_ARGUMENT.get(os.path.basename(word))
                if offset is not None and i + offset < len(words):
                    recipe = words[i + offset]
            if recipe and "model_configs/" in recipe:
                yield recipe, sets


def exit_code(call) -> int:
    """Run ``call()`` (an entry point that parses ``--help``) and return its exit status."""
    try:
        code = call()
    except SystemExit as stop:
        code = stop.code
    return 0 if code is None else code if isinstance(code, int) else 1


def help_of_command(argv: Tuple[str, ...]) -> int:
    return exit_code(lambda: mindrlhf_main([*argv, "--help"]))


def help_of_script(path: str, monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [path, "--help"])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put the repository in front of sys.path
    return exit_code(lambda: runpy.run_path(path, run_name="__main__"))


def help_of_module(name: str, monkeypatch) -> int:
    monkeypatch.setattr(sys, "argv", [name, "--help"])
    return exit_code(lambda: runpy.run_module(name, run_name="__main__", alter_sys=False))


def _tutorial(readme: str) -> Tuple[str, List[str]]:
    text = open(readme, encoding="utf-8").read()
    return text, shell_blocks(text)


def _id(readme: str) -> str:
    return os.path.basename(os.path.dirname(readme))


# ---------------------------------------------------------------------------------------------------------------
# The parser


SAMPLE = """Intro naming mindrlhf nothing and model_configs/*/run_*_rm.yaml (a pattern, not a path).

```bash
source ../../scripts/setup_env.sh base
mindrlhf convert-sft --model gpt2 --src_file a.json \\
    --dst_file data/sft.mindrecord    # then: mindrlhf not-a-command
time mindrlhf rm train --config ../../model_configs/gpt2_config/run_gpt2_tiny_rm.yaml --set seed=1
cd ../.. && mindrlhf rm --help
python ../rlhf_train_tutorial/rlhf_data.py --help && python -m mindrlhf.data.convert_sft --help
bash scripts/run_distribute_train.sh d.mindrecord t.json 0 1 model_configs/gpt2_config/run_gpt2_124m.yaml \\
    model_configs/gpt2_config/run_gpt2_124m.yaml --set ppo.epochs=1
```

```text
mindrlhf log-output ignored.py model_configs/gpt2_config/run_gpt2_tiny.yaml
```
"""


def test_parser_reads_shell_blocks_only():
    blocks = shell_blocks(SAMPLE)
    assert len(blocks) == 1
    assert mindrlhf_commands(blocks) == [("convert-sft",), ("rm", "train"), ("rm",)]
    assert scripts(blocks) == ["../rlhf_train_tutorial/rlhf_data.py"]
    assert modules(blocks) == ["mindrlhf.data.convert_sft"]
    assert recipes(SAMPLE) == [
        "model_configs/gpt2_config/run_gpt2_tiny_rm.yaml",
        "model_configs/gpt2_config/run_gpt2_124m.yaml",
        "model_configs/gpt2_config/run_gpt2_tiny.yaml",
    ]
    readme = os.path.join(ROOT, "examples", "three_stage_tutorial", "README.md")
    assert list(recipe_overrides(blocks, readme)) == [
        ("../../model_configs/gpt2_config/run_gpt2_tiny_rm.yaml", ["seed=1"]),
        ("model_configs/gpt2_config/run_gpt2_124m.yaml", ["ppo.epochs=1"]),
    ]


def test_a_command_that_does_not_exist_fails(capsys, monkeypatch, tmp_path):
    assert help_of_command(("no-such-command",)) != 0
    assert help_of_command(("rm", "no-such-action")) != 0
    broken = tmp_path / "broken.py"
    broken.write_text("import no_such_module_here\n", encoding="utf-8")
    with pytest.raises(ModuleNotFoundError):
        help_of_script(str(broken), monkeypatch)
    assert resolve("no_such_script.py", os.path.join(ROOT, "examples", "x", "README.md")) is None
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------------------------
# The tutorials


def test_there_are_tutorials_and_they_name_commands():
    names = {_id(p) for p in TUTORIALS}
    assert {"gpt2_124m_train_tutorial", "three_stage_tutorial", "rlhf_train_tutorial"} <= names
    commands: Dict[str, List[Tuple[str, ...]]] = {_id(p): mindrlhf_commands(_tutorial(p)[1]) for p in TUTORIALS}
    three_stage = {c[0] for c in commands["three_stage_tutorial"]}
    assert {
        "convert-sft",
        "sft",
        "convert-preference",
        "rm",
        "convert-prompts",
        "ppo",
        "generate",
        "export-hf",
        "demo",
    } <= three_stage, three_stage
    gpt2_124m = os.path.join(ROOT, "examples", "gpt2_124m_train_tutorial", "README.md")
    assert "scripts/run_distribute_train.sh" in shell_scripts(_tutorial(gpt2_124m)[1])


@pytest.mark.parametrize("readme", TUTORIALS, ids=_id)
def test_every_mindrlhf_command_answers_help(readme, capsys):
    failed = [" ".join(argv) for argv in mindrlhf_commands(_tutorial(readme)[1]) if help_of_command(argv) != 0]
    capsys.readouterr()
    assert not failed, f"{os.path.relpath(readme, ROOT)} names commands that fail `--help`: " + ", ".join(
        f"mindrlhf {c}" for c in failed
    )


@pytest.mark.parametrize("readme", TUTORIALS, ids=_id)
def test_every_script_exists_and_answers_help(readme, capsys, monkeypatch):
    problems = []
    for name in scripts(_tutorial(readme)[1]):
        path = resolve(name, readme)
        if path is None:
            problems.append(f"{name}: no such file (from the tutorial's folder or the repository root)")
        elif os.path.relpath(path, ROOT).split(os.sep)[0] in ("examples", "scripts"):
            with monkeypatch.context() as patch:
                if help_of_script(path, patch) != 0:
                    problems.append(f"{name}: `--help` failed")
    for name in modules(_tutorial(readme)[1]):
        with monkeypatch.context() as patch:
            if help_of_module(name, patch) != 0:
                problems.append(f"python -m {name}: `--help` failed")
    capsys.readouterr()
    assert not problems, f"{os.path.relpath(readme, ROOT)}:\n  " + "\n  ".join(problems)


@pytest.mark.parametrize("readme", TUTORIALS, ids=_id)
def test_every_shell_script_exists(readme):
    missing = [s for s in shell_scripts(_tutorial(readme)[1]) if "path/to" not in s and resolve(s, readme) is None]
    assert not missing, f"{os.path.relpath(readme, ROOT)} names missing scripts: {', '.join(missing)}"


@pytest.mark.parametrize("readme", TUTORIALS, ids=_id)
def test_every_recipe_loads(readme):
    text, blocks = _tutorial(readme)
    problems = []
    for recipe in recipes(text):
        try:
            load_config(os.path.join(ROOT, recipe))
        except Exception as err:  # a missing file, a bad key or type: report them all at once
            problems.append(f"{recipe}: {type(err).__name__}: {err}")
    for recipe, sets in recipe_overrides(blocks, readme):
        path = resolve(recipe, readme)
        try:
            load_config(path or recipe, sets)
        except Exception as err:
            problems.append(f"{recipe} --set {' --set '.join(sets)}: {type(err).__name__}: {err}")
    assert not problems, f"{os.path.relpath(readme, ROOT)}:\n  " + "\n  ".join(problems)


# ---------------------------------------------------------------------------------------------------------------
# The cheap commands, run


README = os.path.join(ROOT, "README.md")
# commands that convert bundled data: seconds each, in this process
_CHEAP = re.compile(
    r"^(?:mindrlhf[ \t]+convert-(?:sft|preference|prompts)|python3?[ \t]+\S*(?:rlhf_data|"
    r"cvalues_comparison)\.py)\b"
)
_OUTPUT_FLAGS = ("--dst_file", "--output_path")
RUN_FROM_ROOT = {"README.md", "gpt2_124m_train_tutorial"}  # the others run from their own folder


def cheap_commands(blocks: List[str]) -> List[List[str]]:
    """The words of every cheap command line in the blocks."""
    return [shlex.split(line) for block in blocks for line in block.splitlines() if _CHEAP.match(line.strip())]


def mirror_repository(dst: str) -> str:
    """``dst/repo``: the repository's top-level entries linked, ``examples/<name>/`` real folders of linked files
    (so a command's outputs stay under ``dst``)."""
    repo = os.path.join(dst, "repo")
    os.makedirs(os.path.join(repo, "examples"))
    for name in os.listdir(ROOT):
        if name not in ("examples", ".git") and not name.startswith(".venv"):
            os.symlink(os.path.join(ROOT, name), os.path.join(repo, name))
    for tutorial in glob.glob(os.path.join(ROOT, "examples", "*")):
        folder = os.path.join(repo, "examples", os.path.basename(tutorial))
        os.makedirs(folder)
        for name in os.listdir(tutorial):
            if os.path.isfile(os.path.join(tutorial, name)):
                os.symlink(os.path.join(tutorial, name), os.path.join(folder, name))
    return repo


def run_words(words: List[str], monkeypatch) -> int:
    """Run ``mindrlhf ...`` or ``python script.py ...`` in this process (the current folder is the command's)."""
    if words[0] == "mindrlhf":
        return exit_code(lambda: mindrlhf_main(words[1:]))
    with monkeypatch.context() as patch:
        patch.setattr(sys, "argv", words[1:])
        patch.setattr(sys, "path", list(sys.path))
        return exit_code(lambda: runpy.run_path(words[1], run_name="__main__"))


def conversion_key(words: List[str]) -> Tuple[str, ...]:
    """A command without its output path, its input files as real paths: equal keys convert the same data."""
    key, skip = [], False
    for word in words:
        if skip or word in _OUTPUT_FLAGS:
            skip = word in _OUTPUT_FLAGS
            continue
        key.append(os.path.realpath(word) if os.path.exists(word) else word)
    return tuple(key)


def test_cheap_commands_of_the_readme_and_tutorials_run_as_written(tmp_path, monkeypatch, capsys):
    repo = mirror_repository(str(tmp_path))
    done, failed, ran = set(), [], 0
    for doc in [README] + TUTORIALS:
        name = "README.md" if doc == README else _id(doc)
        cwd = repo if name in RUN_FROM_ROOT else os.path.join(repo, "examples", name)
        monkeypatch.chdir(cwd)
        for words in cheap_commands(_tutorial(doc)[1]):
            assert not any("/path/to" in w for w in words), f"{name}: a placeholder in {' '.join(words)}"
            if conversion_key(words) in done:
                continue
            done.add(conversion_key(words))
            ran += 1
            if run_words(words, monkeypatch) != 0:
                failed.append(f"{name}: {' '.join(words)}\n{capsys.readouterr().err[-600:]}")
    capsys.readouterr()
    assert ran >= 8 and not failed, "\n".join(failed)


_WRITTEN = re.compile(
    r"(?:--output_dir|--output_file_dir|--log_dir|--dst_file|--output_path|--save_data_file|"
    r"--output_file)[ =]([\w./-]+)"
)


def test_what_the_commands_write_is_ignored_by_git():
    """Every output path named in the README's and the tutorials' commands (from the folder they run in) is
    covered by .gitignore, so following them leaves ``git status`` clean."""
    import subprocess

    paths = set()
    for doc in [README] + TUTORIALS:
        name = "README.md" if doc == README else _id(doc)
        cwd = ROOT if name in RUN_FROM_ROOT else os.path.dirname(doc)
        for block in _tutorial(doc)[1]:
            for path in _WRITTEN.findall(block):
                full = os.path.normpath(os.path.join(cwd, path))
                if "/path/to" not in path and full.startswith(ROOT + os.sep):
                    paths.add(os.path.relpath(full, ROOT) + "/f")  # a file in it: folder patterns match too
    assert len(paths) >= 10
    proc = subprocess.run(
        ["git", "check-ignore", "--no-index", "--stdin", "-v", "-n"],
        cwd=ROOT,
        text=True,
        input="\n".join(sorted(paths)) + "\n",
        capture_output=True,
        timeout=60,
    )
    not_ignored = [line.split("\t")[-1] for line in proc.stdout.splitlines() if line.startswith("::")]
    assert not not_ignored, f"not in .gitignore: {not_ignored}"


def test_readme_python_imports_work():
    """Every import line of the README's Python blocks (the Python API and the reward-function PPO) runs, and the
    documented reward function is the shape train_ppo calls: prompts and responses as token lists."""
    text = open(README, encoding="utf-8").read()
    python = [body for language, body in _FENCE.findall(text) if language == "python"]
    imports = [line for body in python for line in body.splitlines() if line.startswith(("from ", "import "))]
    assert "from mindrlhf.models import CausalLM, load_weights" in imports
    assert "from mindrlhf.train.ppo import train_ppo" in imports
    namespace: dict = {}
    exec("\n".join(imports), namespace)  # noqa: S102 - the README's own import lines
    reward_block = next(body for body in python if "def reward_fn" in body)
    exec(reward_block.split("\ncfg = ")[0], namespace)  # noqa: S102 - the function, not the training run
    assert namespace["reward_fn"]([[1, 2], [3]], [[4, 50256], [5]]) == [1.0, 0.0]
