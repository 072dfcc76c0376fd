"""The CLI has no cycle: a command module (``mindrlhf/cli/<command>.py``) imports from ``cli/common.py`` and the
library, never from another command, ``common`` imports no command, and nothing imports ``cli/main.py`` back. A
command may be split into parts named after it (``demo.py`` with ``demo_stories.py``, ``demo_cvalues.py``).

The imports are read from the source (``ast``), top-level and function-level alike, so a lazy import counts."""

from __future__ import annotations

import ast
import os
from typing import Dict, Set

import pytest

from tests.test_cli import ROOT

CLI = os.path.join(ROOT, "mindrlhf", "cli")
PACKAGE = "mindrlhf.cli"
SHARED = "common"  # the one module every command may import
TOP = "main"  # the command table: imports the commands, imported by none of them


def cli_imports(source: str) -> Set[str]:
    """The ``mindrlhf.cli`` modules ``source`` imports, by short name (``mindrlhf.cli.reward`` -> ``reward``;
    ``from mindrlhf.cli import sft`` -> ``sft``; relative imports resolved against the package)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # inside mindrlhf/cli: level 1 is the package itself
                base = ".".join(filter(None, [PACKAGE if node.level == 1 else "mindrlhf", base]))
            modules = [f"{base}.{alias.name}" for alias in node.names] if base == PACKAGE else [base]
        else:
            continue
        for module in modules:
            if module.startswith(PACKAGE + "."):
                names.add(module[len(PACKAGE) + 1 :].split(".")[0])
    return names


def command_of(module: str) -> str:
    """The command a module belongs to: ``demo_stories`` -> ``demo`` (parts are named after their command)."""
    return module.split("_")[0]


def import_graph() -> Dict[str, Set[str]]:
    graph = {}
    for name in sorted(os.listdir(CLI)):
        if name.endswith(".py") and name != "__init__.py":
            with open(os.path.join(CLI, name), encoding="utf-8") as f:
                graph[name[:-3]] = cli_imports(f.read())
    return graph


def violations(graph: Dict[str, Set[str]]) -> list:
    """``"a imports b"`` for every import the rules forbid."""
    bad = []
    for module, imported in graph.items():
        for other in sorted(imported - {module}):
            if other == TOP:
                bad.append(f"{module} imports {TOP} (nothing imports the command table back)")
            elif module == TOP:
                continue  # the table imports every command
            elif module == SHARED:
                bad.append(f"{SHARED} imports {other} (the shared module imports no command)")
            elif other != SHARED and command_of(other) != command_of(module):
                bad.append(f"{module} imports {other} (commands share code through {SHARED} only)")
    return bad


def test_no_command_imports_another_or_main():
    graph = import_graph()
    assert {"main", "common", "sft", "reward", "ppo", "grpo", "dpo", "generate", "evaluate", "demo"} <= set(graph)
    assert violations(graph) == []


def test_nothing_in_the_package_imports_main():
    importers = []
    for folder, _, names in os.walk(os.path.join(ROOT, "mindrlhf")):
        for name in names:
            path = os.path.join(folder, name)
            if name.endswith(".py") and path != os.path.join(CLI, f"{TOP}.py"):
                with open(path, encoding="utf-8") as f:
                    if TOP in cli_imports(f.read()):
                        importers.append(os.path.relpath(path, ROOT))
    assert importers == []


def test_every_command_uses_the_shared_module():
    graph = import_graph()
    for command in ("sft", "reward", "ppo", "grpo", "dpo", "generate", "evaluate"):
        assert SHARED in graph[command], command


@pytest.mark.parametrize(
    "source, broken",
    [
        ("from mindrlhf.cli.reward import run_training\n", "sft imports reward"),
        ("def main():\n    from mindrlhf.cli.main import setup_logging\n", "sft imports main"),
        ("from mindrlhf.cli import generate as g\n", "sft imports generate"),
        ("from . import dpo\n", "sft imports dpo"),
        ("import mindrlhf.cli.ppo\n", "sft imports ppo"),
    ],
)
def test_the_check_catches_each_form_of_import(source, broken):
    graph = {"sft": cli_imports(source), "common": set(), "main": {"sft"}}
    assert [v for v in violations(graph) if v.startswith(broken)], source


def test_the_check_allows_common_the_library_and_a_commands_own_parts():
    graph = {
        "demo": cli_imports(
            "from mindrlhf.cli.common import setup_logging\nfrom mindrlhf.config import "
            "load_config\nfrom mindrlhf.cli.demo_stories import run_story_demo\n"
        ),
        "demo_stories": cli_imports("from .common import write_json\n"),
        "common": cli_imports("from mindrlhf.context import init_context\n"),
        "main": cli_imports("from mindrlhf.cli import demo\n"),
    }
    assert violations(graph) == []
    assert violations({**graph, "common": cli_imports("from mindrlhf.cli.demo import run_demo\n")}) == [
        "common imports demo (the shared module imports no command)"
    ]
