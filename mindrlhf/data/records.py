"""Record files in and MindRecord files out: what every converter (SFT, preference, prompt data) and the experience
writer share.

Reading: :func:`read_records` reads a JSON Lines file or a JSON array and numbers each record by its line;
:func:`parsed_records` turns records into the caller's values, raising the first bad record as a
:class:`ConversionError` that names ``file:line`` and the field, or, with ``skip_bad_lines``, logging it, counting
it in ``stats.skipped_bad`` and going on. A JSON Lines file is checked line by line as it is iterated; a JSON array
is parsed at once, and a syntax error inside it is always fatal (there is no next line to resume at).

Checking before anything is read: :func:`check_paths`, :func:`check_seq_length`, :func:`check_format`, and
:func:`converter_tokenizer` (the tokenizer, its eos and the padding id).

Writing: :func:`atomic_mindrecord` (a MindRecord file and its ``.db`` index appear together, or neither) and
:func:`write_in_chunks` (bounded memory). Statistics: :func:`length_summary` and :func:`stats_table`.

Command line: :func:`add_file_arguments` (the flags the SFT and preference converters share) and
:func:`run_converter` (convert, print the report and the seeds' closing line; a conversion error is one line).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from contextlib import contextmanager
from typing import AbstractSet, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, TypeVar, Union

import numpy as np
from tqdm import tqdm

from mindrlhf.atomic import atomic_files
from mindrlhf.data.tokenizer import Tokenizer, load_tokenizer
from mindrlhf.errors import UserError

logger = logging.getLogger(__name__)

WRITE_CHUNK = 1000  # samples handed to FileWriter.write_raw_data at a time
T = TypeVar("T")


class ConversionError(UserError):
    """A source file, record or argument that cannot be converted; the message names ``file:line`` and field."""


# ---------------------------------------------------------------------------------------------------------------
# Reading


def read_records(path: str) -> Tuple[int, Iterator[Tuple[int, Any]]]:
    """``(number of records, iterator of (line, record))`` for a JSON array or JSON Lines file.

    A JSONL line that does not parse is yielded as a :class:`ConversionError` (the caller raises or skips it);
    blank lines are ignored. A JSON array that does not parse raises at once.
    """
    try:
        with open(path, encoding="utf-8-sig") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise ConversionError(f"{path}: not UTF-8 text ({err})") from err
    stripped = text.lstrip()
    if not stripped:
        raise ConversionError(f"{path}: empty file, no records")
    if stripped.startswith("["):
        return _read_json_array(path, text)
    lines = [(i, line) for i, line in enumerate(text.split("\n"), 1) if line.strip()]
    return len(lines), (_parse_line(path, i, line) for i, line in lines)


def _parse_line(path: str, line_no: int, line: str) -> Tuple[int, Any]:
    try:
        return line_no, json.loads(line)
    except json.JSONDecodeError as err:
        return line_no, ConversionError(f"{path}:{line_no}: malformed JSON ({err.msg} at column {err.colno})")


def _read_json_array(path: str, text: str) -> Tuple[int, Iterator[Tuple[int, Any]]]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise ConversionError(f"{path}:{err.lineno}: malformed JSON array ({err.msg} at column {err.colno})") from err
    if not isinstance(data, list):
        raise ConversionError(f"{path}:1: top-level JSON value is a {type(data).__name__}, expected a list")
    # Each element's line: the text is valid JSON, so raw_decode walks it element by element.
    decoder, pos, seen, line, lines = json.JSONDecoder(), text.index("[") + 1, 0, 1, []
    for _ in data:
        while text[pos] in " \t\r\n,":
            pos += 1
        line, seen = line + text.count("\n", seen, pos), pos
        lines.append(line)
        pos = decoder.raw_decode(text, pos)[1]
    return len(data), iter(list(zip(lines, data)))


def parsed_records(
    path: str,
    parse: Callable[[Any, str], T],
    skip_bad_lines: bool = False,
    stats: Any = None,
    progress: bool = False,
    desc: str = "records",
) -> Iterator[Tuple[int, T]]:
    """``(line, parse(record, "file:line"))`` for every record of ``path`` that ``parse`` accepts.

    A malformed line or a record ``parse`` rejects with :class:`ConversionError` raises it, or with
    ``skip_bad_lines`` is logged, counted in ``stats.skipped_bad`` (when ``stats`` is given) and skipped. The file
    is read (and an empty or unparsable JSON array rejected) at once; records are checked as iterated.
    """
    total, records = read_records(path)
    return _parse_each(path, total, records, parse, skip_bad_lines, stats, progress, desc)


def _parse_each(
    path: str,
    total: int,
    records: Iterator[Tuple[int, Any]],
    parse: Callable[[Any, str], T],
    skip_bad_lines: bool,
    stats: Any,
    progress: bool,
    desc: str,
) -> Iterator[Tuple[int, T]]:
    for line, record in tqdm(records, total=total, desc=desc, unit="rec", disable=not progress):
        try:
            if isinstance(record, ConversionError):
                raise record
            value = parse(record, f"{path}:{line}")
        except ConversionError as err:
            if not skip_bad_lines:
                raise
            logger.warning("skipped: %s", err)
            if stats is not None:
                stats.skipped_bad += 1
            continue
        yield line, value


def expect_object(record: Any, where: str) -> dict:
    """``record`` when it is a JSON object; a :class:`ConversionError` naming ``where`` otherwise."""
    if not isinstance(record, dict):
        raise ConversionError(f"{where}: record is a JSON {type(record).__name__}, expected an object")
    return record


def string_value(value: Any, name: str, where: str) -> str:
    """``value`` (field ``name`` of a record) when it is a string; a :class:`ConversionError` naming ``where``
    (file:line) and the field when it is missing (None) or of another type."""
    if value is None:
        raise ConversionError(f"{where}: field '{name}': missing")
    if not isinstance(value, str):
        raise ConversionError(f"{where}: field '{name}': expected a string, got {type(value).__name__}")
    return value


def text_field(record: dict, name: str, where: str) -> str:
    """``record[name]`` as a string, or a :class:`ConversionError` naming ``where`` (file:line) and the field."""
    return string_value(record.get(name), name, where)


def history_field(record: dict, where: str) -> List[Tuple[str, str]]:
    """``record["history"]``, earlier ``[question, answer]`` turns (oasst / alpaca style), ``[]`` when absent."""
    history = record.get("history") or []
    if not isinstance(history, list) or not all(
        isinstance(t, (list, tuple)) and len(t) == 2 and all(isinstance(s, str) for s in t) for t in history
    ):
        raise ConversionError(f"{where}: field 'history': expected a list of [question, answer] string pairs")
    return [(q, a) for q, a in history]


def instruction_text(record: dict, where: str, text: Callable[[dict, str, str], str] = text_field) -> str:
    """``instruction``, then ``"\\n" + input`` when ``input`` is not empty (alpaca / oasst records); ``text``
    reads the ``instruction`` field (:func:`text_field` or one that adds to its error message)."""
    query = text(record, "instruction", where)
    extra = record.get("input") or ""
    if not isinstance(extra, str):
        raise ConversionError(f"{where}: field 'input': expected a string, got {type(extra).__name__}")
    return f"{query}\n{extra}" if extra else query


# ---------------------------------------------------------------------------------------------------------------
# Checking arguments


def check_paths(src_flag: str, src_file: str, dst_flag: str, dst_file: str) -> None:
    """The source must be a file and the destination must not be a folder (errors name the flags)."""
    if not os.path.isfile(src_file):
        raise ConversionError(f"{src_flag} {src_file}: no such file")
    if os.path.isdir(dst_file):
        raise ConversionError(f"{dst_flag} {dst_file}: is a folder, give a file path")


def check_seq_length(seq_length: Any) -> None:
    """``--seq_length`` must be an integer of at least 2 (one token and the eos)."""
    if not isinstance(seq_length, (int, np.integer)) or isinstance(seq_length, bool) or seq_length < 2:
        raise ConversionError(f"--seq_length must be an integer >= 2, got {seq_length!r}")


def check_format(fmt: str, formats: Sequence[str]) -> None:
    """``--format`` must be ``auto`` or one of ``formats``."""
    if fmt != "auto" and fmt not in formats:
        raise ConversionError(f"--format must be auto or one of {', '.join(formats)}, got {fmt!r}")


def check_choice(flag: str, value: str, choices: Sequence[str]) -> None:
    """``value`` (given as ``flag``) must be one of ``choices``."""
    if value not in choices:
        raise ConversionError(f"{flag} must be one of {', '.join(choices)}, got {value!r}")


def format_from_keys(record: dict, signatures: Sequence[Tuple[str, AbstractSet[str]]], where: str) -> str:
    """The first format of ``signatures`` (``(name, keys)`` pairs, most specific first) whose keys ``record`` has;
    :class:`ConversionError` listing every signature when none matches."""
    for name, keys in signatures:
        if keys <= record.keys():
            return name
    expected = "; ".join(f"{name}: {', '.join(sorted(keys))}" for name, keys in signatures)
    raise ConversionError(
        f"{where}: cannot detect the format from keys {sorted(record)} (expected {expected}); pass --format"
    )


def default_pad(tokenizer: Tokenizer) -> int:
    """The padding id when none is given: the tokenizer's pad id, or its eos id (GPT-2 and SentencePiece models
    have no pad; masks, not ids, mark padding)."""
    return tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id


def converter_tokenizer(
    tokenizer: Union[str, Tokenizer], pad_token_id: Optional[int], flag: str = "--model", ends: str = "sequences"
) -> Tuple[Tokenizer, int]:
    """``(tokenizer, padding id)`` for a converter: ``tokenizer`` loaded when it is a path or bundled name, checked
    to have an eos (it ends ``ends``), and the padding id (None: :func:`default_pad`) checked to be one of its ids.
    Errors name ``flag`` and its value."""
    try:
        tok = load_tokenizer(tokenizer) if isinstance(tokenizer, str) else tokenizer
    except (OSError, ValueError, RuntimeError) as err:
        raise ConversionError(f"{flag} {tokenizer}: {err}") from err
    if tok.eos_token_id is None:
        raise ConversionError(f"{flag} {tokenizer}: the tokenizer has no eos token to end {ends} with")
    pad = default_pad(tok) if pad_token_id is None else pad_token_id
    if not 0 <= pad < tok.vocab_size:
        raise ConversionError(f"--pad_token_id {pad} is not an id of the tokenizer (0..{tok.vocab_size - 1})")
    return tok, pad


# ---------------------------------------------------------------------------------------------------------------
# Writing


@contextmanager
def atomic_mindrecord(dst_file: str, schema: Dict[str, dict], desc: str = "preference"):
    """Yield a ``FileWriter`` whose file and ``.db`` appear at ``dst_file`` only if the block succeeds.

    The writer works in a temporary folder beside ``dst_file`` under the final base name (MindRecord headers and
    the index record that name, so a renamed file would not open); after ``commit`` the two files are moved into
    place, index first (:func:`mindrlhf.atomic.atomic_files`). On any error the temporary folder is removed, as
    is a destination folder this call created.
    """
    from mindspore.mindrecord import FileWriter

    dst_file = os.path.abspath(dst_file)
    folder = os.path.dirname(dst_file)
    created = not os.path.isdir(folder)
    try:
        with atomic_files([dst_file + ".db", dst_file]) as tmp:
            writer = FileWriter(os.path.join(tmp, os.path.basename(dst_file)), shard_num=1, overwrite=True)
            writer.add_schema(schema, desc)
            yield writer
            writer.commit()
    except BaseException:
        if created and os.path.isdir(folder) and not os.listdir(folder):
            os.rmdir(folder)
        raise


def write_in_chunks(writer, samples: Iterator[dict], chunk_size: int = WRITE_CHUNK) -> None:
    """Hand ``samples`` to a MindRecord ``FileWriter`` ``chunk_size`` at a time (memory stays bounded)."""
    chunk: List[dict] = []
    for sample in samples:
        chunk.append(sample)
        if len(chunk) == chunk_size:
            writer.write_raw_data(chunk)
            chunk = []
    if chunk:
        writer.write_raw_data(chunk)


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def length_summary(lengths: Dict[str, List[int]]) -> Dict[str, Union[int, float]]:
    """``{name}_max``, ``{name}_min`` and ``{name}_avg`` of each list of token counts (0 for an empty one)."""
    out: Dict[str, Union[int, float]] = {}
    for name, values in lengths.items():
        out[f"{name}_max"] = max(values, default=0)
        out[f"{name}_min"] = min(values, default=0)
        out[f"{name}_avg"] = float(np.mean(values)) if values else 0.0
    return out


def stats_table(stats: Dict[str, Union[int, float]], counts: Sequence[str], lengths: Sequence[str]) -> str:
    """The statistics as two small Markdown tables: the ``counts`` columns, then max / min / avg of ``lengths``."""
    rows = [
        "| " + " | ".join(counts) + " |",
        "|" + " --- |" * len(counts),
        "| " + " | ".join(str(stats[k]) for k in counts) + " |",
        "",
        "| tokens | max | min | avg |",
        "| --- | --- | --- | --- |",
    ]
    for name in lengths:
        rows.append(f"| {name} | {stats[name + '_max']} | {stats[name + '_min']} | {stats[name + '_avg']:.1f} |")
    return "\n".join(rows)


TOKENIZER_HELP = "tokenizer: tokenizer.json, GPT-2 folder, SentencePiece .model, or gpt2 / llama"


def add_file_arguments(parser: argparse.ArgumentParser, src_help: str) -> None:
    """``--src_file``, ``--dst_file``, ``--seq_length`` and ``--pad_token_id``: the SFT and preference converters'
    shared flags."""
    parser.add_argument("--src_file", required=True, help=src_help)
    parser.add_argument("--dst_file", required=True, help="output .mindrecord path (its folder is created)")
    parser.add_argument("--seq_length", type=int, default=1024, help="length of every stored sequence")
    parser.add_argument(
        "--pad_token_id", type=int, default=None, help="padding id (default: the tokenizer's pad, else its eos)"
    )


def run_converter(convert: Callable[[], Dict[str, Any]], dst_file: str, report: Callable[[Dict[str, Any]], str]) -> int:
    """A converter's command body: ``convert()``, then ``report(stats)`` and the seeds' closing line on stdout;
    0 on success, 1 (one ``error:`` line on stderr, no traceback) on a :class:`ConversionError`."""
    try:
        stats = convert()
    except ConversionError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(report(stats))
    print(f"Transformation finished! Output file refer: {dst_file}")
    return 0
