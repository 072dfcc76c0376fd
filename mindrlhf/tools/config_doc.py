"""The configuration reference (``docs/configuration.md``), generated from the config dataclasses.

    python -m mindrlhf.tools.config_doc --output docs/configuration.md     # write it
    python -m mindrlhf.tools.config_doc --check                            # exit 1 when it is out of date

For every YAML section of :class:`mindrlhf.config.RunConfig` (in field order, nested sections such as
``model.model_config``, ``train_dataset.data_loader`` and ``ppo.generation`` included) the page has the first
paragraph of the section class's docstring and a table ``key | type | default | meaning``:

- ``meaning`` is the field's trailing source comment (``name: type = default  # meaning``). A comment continues on
  the following comment-only lines whose ``#`` stands in the same column as the first one, or whose text is
  indented past its ``#`` by two or more spaces (aligned under the first line's text); a blank line, code or a
  plain ``# comment`` line ends it. A field inherited from a base dataclass keeps the base's comment. A field
  whose type is a section needs no comment: its meaning is its class's docstring.
- ``default`` is the value of ``RunConfig()`` at that key, as YAML writes it, so ``eval_dataset`` shows its own
  defaults, not those of ``DatasetConfig``; a value the section's ``__post_init__`` derives from others (such as
  ``num_kv_heads``) shows the declared default instead (``null``), since that is what a recipe would write.

A field without a meaning comment, or a section class without a docstring, is an error
(:class:`ConfigDocError`, exit status 1): every config field carries its one-line doc.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import os
import re
import sys
import textwrap
import tokenize
import typing
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from mindrlhf import config as config_module
from mindrlhf.atomic import write_text
from mindrlhf.config import RunConfig

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_OUTPUT = os.path.join(REPO_ROOT, "docs", "configuration.md")
COMMAND = "python -m mindrlhf.tools.config_doc --output docs/configuration.md"


class ConfigDocError(ValueError):
    """A config dataclass the reference cannot document (a field without a comment, a class without a docstring)."""


# ---------------------------------------------------------------------------------------------------------------
# Reading the source


def _comment_tokens(source: str) -> Tuple[Dict[int, Tuple[int, str]], set]:
    """``({row: (column of '#', text)}, rows that hold code)`` of ``source``."""
    comments, code_rows = {}, set()
    skip = (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER)
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = (tok.start[1], tok.string)
        elif tok.type not in skip:
            code_rows.update(range(tok.start[0], tok.end[0] + 1))
    return comments, code_rows


def _continues(first_col: int, col: int, text: str) -> bool:
    """Whether a comment-only line at ``col`` continues a trailing comment whose ``#`` is at ``first_col``."""
    if col == first_col:
        return True
    body = text[1:]
    return len(body) - len(body.lstrip(" ")) >= 2 and bool(body.strip())


def field_comments(cls: type) -> Dict[str, str]:
    """``{field name: trailing comment}`` of the fields a dataclass declares in its own body ("" when none)."""
    source = textwrap.dedent(inspect.getsource(cls))
    comments, code_rows = _comment_tokens(source)
    class_node = ast.parse(source).body[0]
    out = {}
    for node in class_node.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        rows = range(node.lineno, node.end_lineno + 1)
        parts = [comments[r] for r in rows if r in comments and r in code_rows]
        if parts:
            first_col = parts[-1][0]
            row = node.end_lineno + 1
            while row in comments and row not in code_rows and _continues(first_col, *comments[row]):
                parts.append(comments[row])
                row += 1
        out[node.target.id] = rst_to_markdown(" ".join(text.lstrip("#").strip() for _, text in parts).strip())
    return out


def inherited_comments(cls: type) -> Dict[str, str]:
    """:func:`field_comments` of ``cls`` and of the dataclasses it derives from (a field's own class wins)."""
    out: Dict[str, str] = {}
    for base in reversed(cls.__mro__):
        if dataclasses.is_dataclass(base) and base is not object:
            out.update({k: v for k, v in field_comments(base).items() if v or k not in out})
    return out


def rst_to_markdown(text: str) -> str:
    """Docstring markup to Markdown: ``:func:`a.b``` and ````x```` become single-backtick code."""
    text = re.sub(r":\w+:`~?([^`]+)`", r"`\1`", text)
    return text.replace("``", "`")


def class_summary(cls: type) -> str:
    """First paragraph of the docstring written in ``cls``'s source, in Markdown ("" when it has none; dataclasses
    make up a signature docstring, which does not count)."""
    node = ast.parse(textwrap.dedent(inspect.getsource(cls))).body[0]
    doc = ast.get_docstring(node) or ""
    return rst_to_markdown(" ".join(doc.split("\n\n")[0].split()))


# ---------------------------------------------------------------------------------------------------------------
# Rendering


def type_name(tp: Any) -> str:
    """A field annotation in YAML words: ``int``, ``float or null``, ``list of str``, ``section``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:
        names = [type_name(a) for a in args if a is not type(None)]
        return " or ".join(names + (["null"] if type(None) in args else []))
    if origin is typing.Literal:
        return " or ".join(yaml_value(a) for a in args)
    if origin in (list, typing.List):
        return f"list of {type_name(args[0])}" if args else "list"
    if origin in (dict, typing.Dict):
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def yaml_value(value: Any) -> str:
    """``value`` as it appears in a YAML file (the dumper ``save_config`` uses)."""
    text = yaml.dump(value, Dumper=config_module._Dumper, default_flow_style=True, allow_unicode=True, width=10**6)
    text = text.strip()
    return text[:-3].strip() if text.endswith("\n...") or text.endswith("...") else text


def markdown_cell(text: str) -> str:
    """Escape a table cell: ``|`` everywhere; ``<``, ``>`` and ``*`` outside code spans."""
    pieces = re.split(r"(`[^`]*`)", text)
    for i, piece in enumerate(pieces):
        if not piece.startswith("`"):
            pieces[i] = piece.replace("*", r"\*").replace("<", "&lt;").replace(">", "&gt;")
    return "".join(pieces).replace("|", r"\|")


def anchor(title: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation other than ``-``/``_`` dropped, spaces to ``-``."""
    return re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")


@dataclasses.dataclass
class Section:
    """One YAML section: its dotted path, class, default instance and the rows of its table."""

    path: str
    cls: type
    value: Any
    rows: List[Tuple[str, str, str, str]]


def collect_sections(missing: List[str], root: type = RunConfig) -> List[Section]:
    """Every section of ``root`` (a dataclass whose fields all have defaults) depth-first in field order, the top
    level first with path ""; missing comments and docstrings are appended to ``missing``."""
    sections: List[Section] = []

    def visit(path: str, cls: type, value: Any) -> None:
        hints = typing.get_type_hints(cls)
        comments = inherited_comments(cls)
        if not class_summary(cls):
            missing.append(f"{cls.__name__}: no class docstring")
        fresh = cls()
        section = Section(path, cls, value, [])
        sections.append(section)
        children = []
        for f in dataclasses.fields(cls):
            key = f"{path}.{f.name}" if path else f.name
            current = getattr(value, f.name)
            if dataclasses.is_dataclass(hints[f.name]):
                meaning = comments.get(f.name) or class_summary(hints[f.name])
                link = f"[`{key}`](#{anchor(key)})"
                section.rows.append((f.name, "section", link, meaning))
                children.append((key, hints[f.name], current))
                continue
            if not comments.get(f.name):
                missing.append(f"{cls.__name__}.{f.name} ({key}): no meaning comment")
            if f.default is not dataclasses.MISSING and current == getattr(fresh, f.name):
                current = f.default  # not set by the parent's default; shown before __post_init__ derives it
            section.rows.append(
                (f.name, type_name(hints[f.name]), f"`{yaml_value(current)}`", comments.get(f.name, ""))
            )
        for child in children:
            visit(*child)

    visit("", root, root())
    return sections


def missing_comments(root: type = RunConfig) -> List[str]:
    """Fields without a meaning comment and section classes without a docstring: those of ``root`` and its
    sections, and (for the default root) of every other dataclass defined in :mod:`mindrlhf.config`."""
    missing: List[str] = []
    seen = {section.cls for section in collect_sections(missing, root)}
    if root is RunConfig:
        for cls in vars(config_module).values():
            if dataclasses.is_dataclass(cls) and cls.__module__ == config_module.__name__ and cls not in seen:
                hints, comments = typing.get_type_hints(cls), inherited_comments(cls)
                missing += [
                    f"{cls.__name__}.{f.name}: no meaning comment"
                    for f in dataclasses.fields(cls)
                    if not comments.get(f.name) and not dataclasses.is_dataclass(hints[f.name])
                ]
    return list(dict.fromkeys(missing))


def _loading_rules() -> str:
    """The "Loading rules" bullets of :mod:`mindrlhf.config`'s docstring, in Markdown."""
    doc = config_module.__doc__ or ""
    rules = doc.split("Loading rules:", 1)[1] if "Loading rules:" in doc else ""
    items = [" ".join(item.split()) for item in re.split(r"\n- ", "\n" + rules.strip()) if item.strip()]
    return "\n".join(f"- {item.replace('``', '`')}" for item in items)


INTRO = """\
A run reads one YAML recipe (`model_configs/*/run_*.yaml`, the mindformers layout) into the typed dataclasses of
`mindrlhf/config.py`. Every key below has a default, so a recipe names only what it changes.

{rules}

**Inheritance.** A recipe names the files it builds on with `base_config` (a path or a list of paths, relative to
the recipe). Mappings merge key by key, so `run_gpt2_tiny.yaml` is `base_config: run_gpt2_124m.yaml` plus the few
`model.model_config` keys it shrinks; with a list, later files win over earlier ones and the recipe's own keys
win over all of them.

**Overrides.** Every command that takes `--config` (and `mindrlhf ppo`, whose policy recipe is `--sft_model_path`)
accepts `--set key.path=value`, repeatable, applied after the files:
`--set ppo.kl_coef=0.05 --set model.model_config.compute_dtype=float16`. Values are YAML scalars (`3`, `1e-4`,
`true`, `null`).

**Checks.** A misspelt key is refused before anything runs, with the file, the dotted key and the nearest valid
name, for example `run_gpt2_tiny.yaml: model.model_config.hiden_size: unknown key; did you mean 'hidden_size'?`.
A value of the wrong type is refused naming its key, and impossible combinations (`hidden_size` not a multiple of
`num_heads`, `ppo.num_rollouts` not a multiple of `ppo.chunk_size`, ...) are refused with what to change. The
config a run actually used, every override applied, is written to `<output_dir>/resolved_config.yaml`.

**PPO and GRPO** read the policy recipe's `model`, `context`, `parallel_config` and `recompute_config` sections,
their own `ppo` / `grpo` section, and, like SFT, the reward model and DPO, the optimizer, learning-rate schedule
and loss scale from `optimizer`, `lr_schedule` and `runner_wrapper`.

## Seed names

MindRLHF's `PPOConfig` named the optimizer settings itself. Those names are accepted in a recipe's `ppo` and
`grpo` sections and moved, as each file is read, to the keys below; a name of the learning-rate schedule also sets
`lr_schedule.type: cosine` and `lr_schedule.warmup_ratio: 0.0` (MindRLHF's cosine after linear warmup steps)
unless the same file sets them. A file (or the `--set` list) that sets one value under both names, or one seed
name in both `ppo` and `grpo`, is refused naming both keys.

{seed_names}
"""


def seed_name_table() -> str:
    """The Markdown table of :data:`mindrlhf.config.SEED_NAMES`."""
    rows = [
        f"| `{name}` | {', '.join(f'`{t}`' for t in targets)} |" for name, targets in config_module.SEED_NAMES.items()
    ]
    return "\n".join(["| seed name (`ppo.` / `grpo.`) | sets |", "|---|---|", *rows])


def render(sections: Sequence[Section]) -> str:
    """The Markdown page."""
    lines = [
        "# Configuration reference",
        "",
        f"<!-- Generated from mindrlhf/config.py by `{COMMAND}`; do not edit by hand. -->",
        "",
        INTRO.format(rules=_loading_rules(), seed_names=seed_name_table()),
        "## Sections",
        "",
    ]
    for section in sections:
        title = section.path or "top level"
        lines.append(
            f"- [`{title}`](#{anchor(title)}): {markdown_cell(class_summary(section.cls))}"
            if section.path
            else f"- [top level](#top-level): {markdown_cell(class_summary(section.cls))}"
        )
    for section in sections:
        lines += [
            "",
            f"## {section.path}" if section.path else "## top level",
            "",
            markdown_cell(class_summary(section.cls)),
            "",
            "| key | type | default | meaning |",
            "|---|---|---|---|",
        ]
        for key, tp, default, meaning in section.rows:
            default = default if default.startswith("[") else markdown_cell(default)
            lines.append(f"| `{key}` | {markdown_cell(tp)} | {default} | {markdown_cell(meaning)} |")
    return "\n".join(lines) + "\n"


def generate(allow_missing: bool = False) -> str:
    """The page; raises :class:`ConfigDocError` listing every undocumented field unless ``allow_missing``."""
    missing = missing_comments()
    if missing and not allow_missing:
        raise ConfigDocError(
            "config fields need a trailing '# meaning' comment (and sections a docstring):\n  " + "\n  ".join(missing)
        )
    return render(collect_sections([]))


def write_atomic(path: str, text: str) -> None:
    """Write ``text`` with ``\\n`` line ends under a temporary name and rename it into place."""
    write_text(path, text, newline="\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Write (or ``--check``) the configuration reference; 0 on success, 1 when it is stale or a field is
    undocumented."""
    parser = argparse.ArgumentParser(prog="python -m mindrlhf.tools.config_doc", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--output", default=DEFAULT_OUTPUT, help="the Markdown file (default: docs/configuration.md of this checkout)"
    )
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if --output differs from what would be generated"
    )
    args = parser.parse_args(argv)
    try:
        text = generate()
    except ConfigDocError as err:
        print(f"config_doc: {err}", file=sys.stderr)
        return 1
    if args.check:
        try:
            with open(args.output, encoding="utf-8") as f:
                current = f.read()
        except FileNotFoundError:
            current = None
        if current != text:
            state = "is missing" if current is None else "is out of date"
            print(f"config_doc: {args.output} {state}; regenerate it with `{COMMAND}`", file=sys.stderr)
            return 1
        print(f"config_doc: {args.output} is up to date")
        return 0
    write_atomic(args.output, text)
    print(f"config_doc: wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
