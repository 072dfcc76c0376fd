"""Documentation checks: the generated configuration reference is current, every config field carries its
meaning comment, and every relative link in the Markdown docs points at a file that exists."""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import shutil
from typing import Optional

import pytest

from mindrlhf.tools import config_doc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG_DOC = os.path.join(ROOT, "docs", "configuration.md")
MARKDOWN = sorted(
    [os.path.join(ROOT, "README.md")]
    + glob.glob(os.path.join(ROOT, "docs", "*.md"))
    + glob.glob(os.path.join(ROOT, "examples", "*", "README.md"))
)


def test_configuration_reference_is_up_to_date(capsys):
    assert config_doc.main(["--check", "--output", CONFIG_DOC]) == 0, (
        f"{capsys.readouterr().err}docs/configuration.md is stale: run `{config_doc.COMMAND}`"
    )


def test_check_fails_on_a_stale_or_missing_file(tmp_path, capsys):
    stale = tmp_path / "configuration.md"
    shutil.copy(CONFIG_DOC, stale)
    stale.write_text(stale.read_text(encoding="utf-8").replace("| `seed` |", "| `sead` |"), encoding="utf-8")
    assert config_doc.main(["--check", "--output", str(stale)]) == 1
    assert "out of date" in capsys.readouterr().err
    assert config_doc.main(["--check", "--output", str(tmp_path / "absent.md")]) == 1
    assert config_doc.main(["--output", str(stale)]) == 0
    assert config_doc.main(["--check", "--output", str(stale)]) == 0


def test_every_config_field_has_a_meaning_comment():
    missing = config_doc.missing_comments()
    assert not missing, "add a trailing '# meaning' comment in mindrlhf/config.py to:\n  " + "\n  ".join(missing)


def test_every_config_field_is_in_the_reference():
    text = open(CONFIG_DOC, encoding="utf-8").read()
    for section in config_doc.collect_sections([]):
        heading = f"## {section.path}" if section.path else "## top level"
        assert heading in text.splitlines(), heading
        for f in dataclasses.fields(section.cls):
            assert f"| `{f.name}` |" in text, f"{section.path}.{f.name}"


# A dataclass written the way mindrlhf/config.py writes them, with each kind of comment the reader must handle.
@dataclasses.dataclass
class _Inner:
    """Inner section."""

    depth: int = 2  # how deep


@dataclasses.dataclass
class _Sample:
    """A sample config.

    Second paragraph, not in the summary.
    """

    # The layouts the comment reader must handle, kept as hand-written code may have them:
    # fmt: off
    plain: int = 1  # one line
    wrapped: str = "a|b"  # first line of a long comment,
    #                       continued with the text aligned
    #                       and once more
    aligned: float = 0.5  # a comment whose next line
                          # has its '#' in the same column
    # a plain comment line: not part of `aligned`, and not a comment of `bare`
    bare: Optional[int] = None
    multi: dict = dataclasses.field(default_factory=lambda: {
        "k": 1})  # trailing comment on the last line of a multi-line field
    inner: _Inner = dataclasses.field(default_factory=_Inner)
    # fmt: on


@dataclasses.dataclass
class _Derived(_Sample):
    """A config on a shared base."""

    extra: bool = True  # a field of the derived class


def test_comment_reader_handles_continuations_and_reports_missing():
    comments = config_doc.field_comments(_Sample)
    assert comments["plain"] == "one line"
    assert comments["wrapped"] == "first line of a long comment, continued with the text aligned and once more"
    assert comments["aligned"] == "a comment whose next line has its '#' in the same column"
    assert comments["bare"] == ""
    assert comments["multi"] == "trailing comment on the last line of a multi-line field"
    assert config_doc.class_summary(_Sample) == "A sample config."
    assert config_doc.missing_comments(_Sample) == ["_Sample.bare (bare): no meaning comment"]


def test_inherited_fields_keep_their_base_class_comments():
    comments = config_doc.inherited_comments(_Derived)
    assert comments["plain"] == "one line" and comments["extra"] == "a field of the derived class"
    assert config_doc.missing_comments(_Derived) == ["_Derived.bare (bare): no meaning comment"]


def test_rendered_rows_escape_pipes_and_show_yaml_defaults():
    sections = config_doc.collect_sections([], _Sample)
    assert [s.path for s in sections] == ["", "inner"]
    page = config_doc.render(sections)
    assert "| `wrapped` | str | `a\\|b` | first line of a long comment," in page
    assert "| `bare` | int or null | `null` |" in page
    assert "| `inner` | section | [`inner`](#inner) | Inner section. |" in page


# ---------------------------------------------------------------------------------------------------------------
# Links

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.S | re.M)
_CODE = re.compile(r"`[^`\n]*`")
_INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REFERENCE = re.compile(r"^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)


def relative_links(text: str):
    """Targets of the inline and reference links of a Markdown text that are relative paths, outside code."""
    text = _CODE.sub("", _FENCE.sub("", text))
    for target in _INLINE_LINK.findall(text) + _REFERENCE.findall(text):
        if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) or target.startswith(("#", "//")):
            continue  # http:, https:, mailto:, in-page anchors
        yield target


def test_link_reader_finds_relative_links_only():
    text = (
        '[a](docs/a.md) [b](https://x.org/b.md) [c](#anchor) ![d](img/d.png "t") [e](e.md#part)\n'
        "`[f](code.md)`\n```\n[g](fenced.md)\n```\n[h]: ref/h.md\n"
    )
    assert list(relative_links(text)) == ["docs/a.md", "img/d.png", "e.md#part", "ref/h.md"]


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: os.path.relpath(p, ROOT))
def test_relative_links_point_at_existing_files(path):
    text = open(path, encoding="utf-8").read()
    broken = []
    for target in relative_links(text):
        file_part = re.split(r"[#?]", target, maxsplit=1)[0]
        resolved = os.path.normpath(os.path.join(os.path.dirname(path), file_part))
        if not os.path.exists(resolved):
            broken.append(target)
    assert not broken, f"{os.path.relpath(path, ROOT)}: links to missing files: {', '.join(broken)}"
