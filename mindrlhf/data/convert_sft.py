"""Instruction data -> MindRecord for supervised fine-tuning (stage 1).

    python -m mindrlhf.data.convert_sft --model gpt2 --src_file oasst_sft_zh.json \\
        --dst_file data/sft_1024.mindrecord --seq_length 1024

Input formats (``--format``; ``auto``, the default, detects the format of every record from its keys), JSON Lines
or a JSON array:

- ``alpaca``: ``{instruction, input, output}`` with an optional ``history: [[question, answer], ...]`` (oasst
  style). The query is ``instruction`` (then ``"\\n" + input`` when ``input`` is not empty), the response ``output``.
- ``sharegpt``: ``{"conversations": [{"from": "human" | "user" | "system", "value": ...}, {"from": "gpt" |
  "assistant", "value": ...}, ...]}``, or ``{"messages": [{"role": ..., "content": ...}, ...]}``. The LAST assistant
  turn is the response (turns after it are ignored), the user turn right before it is the query, and the earlier
  user/assistant turns, which must alternate starting with a user turn, are the history. EVERY assistant turn is
  trained on (the loss mask covers the history's answers too, as chat SFT does). System turns before the response
  are joined with ``"\\n\\n"`` and kept apart from the question: they go in front of the template, followed by
  ``"\\n\\n"``.
- ``prompt_response``: ``{prompt, response}``; the prompt is the query, there is no history.

Prompt text: the history turns are written in the template's own markup (:data:`HISTORY_TURN`, exactly as
:mod:`mindrlhf.data.convert_preference` writes oasst history) in front of the query. With ``--template qa``
(default) the result is stripped and filled into the QA template, ``format_prompt(text)``, and the response is
stripped; with ``--template none`` the prompt text and the response are used verbatim. A system text comes first,
outside the template. An alpaca ``history`` is context only (its answers are not trained on); a conversation's
earlier answers are trained on: the text is cut into pieces at each answer (:func:`conversation_segments`), each
piece tokenized on its own, so every answer's tokens are exactly its own.

Prompt and response follow the tokenization contract (:mod:`mindrlhf.data.contract`): they are tokenized
SEPARATELY (without special tokens) and concatenated, so the boundary is exact; the prompt gets the tokenizer's bos
in front iff ``Tokenizer.add_bos`` (not for GPT-2 BPE, yes for SentencePiece Llama-style models), and the
tokenizer's eos id is appended after the response. The same (prompt, response) gives the same ids here, in a
preference row and in a PPO rollout. Stored fields (``S = seq_length``, ``P`` = prompt tokens including any bos,
``R`` = response tokens including the eos, after truncation), all int32 of shape ``(S,)``:

- ``input_ids``: ``[bos] + prompt + response + eos``, right-padded with ``pad_token_id``.
- ``attention_mask``: 1 on ``[0, P + R)``, 0 on padding.
- ``loss_mask``: 1 exactly on the response tokens and the appended eos, ``[P, P + R)``; 0 on prompt and padding.
  The trainer shifts: logits at positions ``0..S-2`` predict ``input_ids[1..S-1]`` weighted by ``loss_mask[1..S-1]``.

Length contract: ``P + R <= S``. A sample that does not fit keeps its whole prompt and the first ``S - P`` tokens
of ``response + eos`` (the eos is the first to go, so a cut response has no eos: an eos after a cut text would
teach the policy to stop in mid-answer; counted in ``truncated``; preference rows keep their eos instead). A
prompt of ``P >= S`` tokens leaves no room for one response token: the sample is skipped (``skipped_long``). An
empty response (or prompt) after the template's stripping is skipped (``skipped_empty``). Bad records (malformed
JSON line, not an object, missing/null or non-string field, a conversation that does not alternate) raise
:class:`ConversionError` naming ``file:line`` and the field, or with ``skip_bad_lines`` are skipped and counted
(``skipped_bad``). The output is written atomically (:func:`mindrlhf.data.records.atomic_mindrecord`): on any
error nothing is left.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from mindrlhf.data.contract import tokenize_prompt, tokenize_response
from mindrlhf.data.convert_preference import HISTORY_TURN
from mindrlhf.data.records import (
    TOKENIZER_HELP,
    WRITE_CHUNK,
    add_file_arguments,
    atomic_mindrecord,
    check_choice,
    check_format,
    check_paths,
    check_seq_length,
    ConversionError,
    converter_tokenizer,
    expect_object,
    format_from_keys,
    history_field,
    instruction_text,
    length_summary,
    parsed_records,
    run_converter,
    stats_table,
    string_value,
    text_field,
    write_in_chunks,
)
from mindrlhf.data.schemas import SFT_SCHEMA
from mindrlhf.data.templates import format_prompt
from mindrlhf.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

FORMATS = ("alpaca", "sharegpt", "prompt_response")
TEMPLATES = ("qa", "none")
# ShareGPT "from" / OpenAI "role" values -> the three roles of a conversation
ROLES = {"human": "user", "user": "user", "system": "system", "gpt": "assistant", "assistant": "assistant"}


@dataclass(frozen=True)
class SFTExample:
    """One instruction example as read (texts before strip and template)."""

    query: str  # the current question (alpaca: instruction [+ "\n" + input])
    response: str
    history: Tuple[Tuple[str, str], ...] = ()  # earlier (question, answer) turns, oldest first
    system: str = ""  # system text put in front of the prompt, outside the template
    line: int = 0  # 1-based line of the record in the source file
    train_history: bool = False  # the history's answers are trained on too (conversations); alpaca: context only


@dataclass
class SFTStats:
    """Counters and the stored token counts of every written sample."""

    skipped_empty: int = 0  # empty response (or prompt) after stripping
    skipped_long: int = 0  # prompt of seq_length tokens or more
    skipped_bad: int = 0  # bad records skipped with skip_bad_lines
    truncated: int = 0  # written samples whose response + eos was cut at seq_length
    lengths: Dict[str, List[int]] = field(default_factory=lambda: {"prompt": [], "response": []})

    def as_dict(self) -> Dict[str, Union[int, float]]:
        """``count, skipped_*, truncated`` and ``{prompt,response}_{max,min,avg}`` (response counts include eos)."""
        return {
            "count": len(self.lengths["prompt"]),
            "skipped_empty": self.skipped_empty,
            "skipped_long": self.skipped_long,
            "skipped_bad": self.skipped_bad,
            "truncated": self.truncated,
            **length_summary(self.lengths),
        }


# ---------------------------------------------------------------------------------------------------------------
# Reading: one SFTExample per record


def _read_alpaca(record: dict, where: str) -> SFTExample:
    query = instruction_text(record, where)
    return SFTExample(query, text_field(record, "output", where), tuple(history_field(record, where)))


def _read_prompt_response(record: dict, where: str) -> SFTExample:
    return SFTExample(text_field(record, "prompt", where), text_field(record, "response", where))


def _conversation(record: dict, where: str) -> List[Tuple[int, str, str]]:
    """``[(index, role, text), ...]`` of a ``conversations`` (from/value) or ``messages`` (role/content) list."""
    key = "conversations" if "conversations" in record else "messages"
    turns = record.get(key)
    if not isinstance(turns, list) or not turns:
        raise ConversionError(f"{where}: field '{key}': expected a non-empty list of turns")
    out = []
    for k, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise ConversionError(
                f"{where}: field '{key}[{k}]': turn is a JSON {type(turn).__name__}, expected an object"
            )
        role_key, text_key = ("from", "value") if "from" in turn else ("role", "content")
        role = ROLES.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            raise ConversionError(
                f"{where}: field '{key}[{k}].{role_key}': expected one of {', '.join(ROLES)}, "
                f"got {turn.get(role_key)!r}"
            )
        out.append((k, role, string_value(turn.get(text_key), f"{key}[{k}].{text_key}", where)))
    return out


def _read_sharegpt(record: dict, where: str) -> SFTExample:
    key = "conversations" if "conversations" in record else "messages"
    turns = _conversation(record, where)
    answers = [i for i, (_, role, _) in enumerate(turns) if role == "assistant"]
    if not answers:
        raise ConversionError(f"{where}: field '{key}': no assistant turn to train on")
    last = answers[-1]
    system = "\n\n".join(text for _, role, text in turns[:last] if role == "system")
    dialog = [turn for turn in turns[:last] if turn[1] != "system"]
    for position, (k, role, _) in enumerate(dialog):
        expected = "user" if position % 2 == 0 else "assistant"
        if role != expected:
            raise ConversionError(
                f"{where}: field '{key}[{k}]': expected role '{expected}' (user and assistant "
                f"turns alternate, starting with the user), got '{role}'"
            )
    if len(dialog) % 2 == 0:
        raise ConversionError(f"{where}: field '{key}[{turns[last][0]}]': the last assistant turn answers no user turn")
    texts = [text for _, _, text in dialog]
    return SFTExample(texts[-1], turns[last][2], tuple(zip(texts[0:-1:2], texts[1:-1:2])), system, train_history=True)


READERS: Dict[str, Callable[[dict, str], SFTExample]] = {
    "alpaca": _read_alpaca,
    "sharegpt": _read_sharegpt,
    "prompt_response": _read_prompt_response,
}
# keys that identify each format, checked in this order
SIGNATURES = (
    ("sharegpt", {"conversations"}),
    ("sharegpt", {"messages"}),
    ("alpaca", {"instruction", "output"}),
    ("prompt_response", {"prompt", "response"}),
)


def detect_format(record: dict, where: str) -> str:
    """The format whose keys the record has; :class:`ConversionError` when none matches."""
    return format_from_keys(record, SIGNATURES, where)


def read_examples(
    path: str, fmt: str = "auto", skip_bad_lines: bool = False, stats: Optional[SFTStats] = None, progress: bool = False
) -> Iterator[SFTExample]:
    """The examples of ``path``; bad records raise, or are skipped and counted in ``stats.skipped_bad``.

    The file is read (and an empty or unparsable JSON array rejected) at once; records are checked as iterated.
    """
    check_format(fmt, FORMATS)

    def parse(record: Any, where: str) -> SFTExample:
        record = expect_object(record, where)
        return READERS[detect_format(record, where) if fmt == "auto" else fmt](record, where)

    records = parsed_records(path, parse, skip_bad_lines, stats, progress)
    return (dataclasses.replace(example, line=line) for line, example in records)


# ---------------------------------------------------------------------------------------------------------------
# Encoding


def prompt_text(example: SFTExample, template: str = "qa") -> str:
    """System text, then the history turns (:data:`HISTORY_TURN`) and the query, those filled into the QA template
    for ``qa``."""
    return "".join(text for text, _ in conversation_segments(example, template)[:-1])


def conversation_segments(example: SFTExample, template: str = "qa") -> List[Tuple[str, bool]]:
    """The sample's text as ``(text, trained)`` pieces, prompt text and answers in turn, the response last: their
    concatenation is ``prompt_text + response``. The history's answers are pieces of their own, trained on iff
    ``example.train_history``; adjacent untrained pieces are joined."""
    before_answer, after_answer = HISTORY_TURN.split("{answer}")
    pieces: List[Tuple[str, bool]] = []
    for question, answer in example.history:
        pieces += [
            (before_answer.format(question=question.strip()), False),
            (answer.strip(), example.train_history),
            (after_answer, False),
        ]
    pieces.append((example.query, False))
    if template == "qa":  # the instruction (history + query) stripped and filled into the template
        head, tail = format_prompt("\0").split("\0")
        pieces[0] = (pieces[0][0].lstrip(), pieces[0][1])  # (the query itself when there is no history)
        pieces[-1] = (pieces[-1][0].rstrip(), pieces[-1][1])
        pieces = [(head, False)] + pieces + [(tail, False)]
    if example.system:
        pieces.insert(0, (f"{example.system.strip()}\n\n", False))
    merged: List[Tuple[str, bool]] = []
    for text, trained in pieces:
        if merged and not trained and not merged[-1][1]:
            merged[-1] = (merged[-1][0] + text, False)
        else:
            merged.append((text, trained))
    response = example.response.strip() if template == "qa" else example.response
    return merged + [(response, True)]


def encode_segments(
    tokenizer: Tokenizer, segments: List[Tuple[str, bool]], seq_length: int
) -> Tuple[List[int], List[int], bool]:
    """``(ids, loss_mask, cut)`` of :func:`conversation_segments` under the tokenization contract: the first piece
    is the prompt (bos in front iff the tokenizer's rule), each later piece tokenized on its own, the response
    followed by eos; cut to ``seq_length`` from the right (the eos goes first, the SFT rule)."""
    ids = tokenize_prompt(tokenizer, segments[0][0])
    mask = [int(segments[0][1])] * len(ids)
    for text, trained in segments[1:-1]:
        tokens = tokenizer.encode(text)
        ids, mask = ids + tokens, mask + [int(trained)] * len(tokens)
    response = tokenize_response(tokenizer, segments[-1][0])
    ids, mask = ids + response, mask + [1] * len(response)
    return ids[:seq_length], mask[:seq_length], len(ids) > seq_length


def sample_fields(
    ids: Sequence[int], loss_mask: Sequence[int], seq_length: int, pad_token_id: int
) -> Dict[str, np.ndarray]:
    """The three ``(S,)`` int32 fields of one sample of ``len(ids) <= seq_length`` tokens whose ``loss_mask`` is 1
    on the trained tokens (answers, the response and its eos)."""
    end = len(ids)
    input_ids = np.full(seq_length, pad_token_id, np.int32)
    input_ids[:end] = list(ids)
    attention_mask = np.zeros(seq_length, np.int32)
    attention_mask[:end] = 1
    mask = np.zeros(seq_length, np.int32)
    mask[:end] = list(loss_mask)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": mask}


def encode_examples(
    examples: Iterator[SFTExample],
    tokenizer: Tokenizer,
    seq_length: int,
    pad_token_id: int,
    template: str,
    stats: SFTStats,
) -> Iterator[Dict[str, np.ndarray]]:
    """Samples for every example that is kept; skipped and truncated ones are counted in ``stats``."""
    for example in examples:
        segments = conversation_segments(example, template)
        prompt, response = "".join(text for text, _ in segments[:-1]), segments[-1][0]
        if not prompt.strip() or not response.strip():
            stats.skipped_empty += 1
            continue
        ids, mask, cut = encode_segments(tokenizer, segments, seq_length)
        if 1 not in mask:  # the prompt fills seq_length: no token to train on
            stats.skipped_long += 1
            continue
        stats.truncated += cut
        stats.lengths["prompt"].append(mask.index(1))
        stats.lengths["response"].append(len(ids) - mask.index(1))
        yield sample_fields(ids, mask, seq_length, pad_token_id)


# ---------------------------------------------------------------------------------------------------------------
# Converting


def check_arguments(src_file: str, dst_file: str, seq_length: int, fmt: str, template: str) -> None:
    """Raise :class:`ConversionError` for an argument that cannot work, before anything is read or written."""
    check_seq_length(seq_length)
    check_format(fmt, FORMATS)
    check_choice("--template", template, TEMPLATES)
    check_paths("--src_file", src_file, "--dst_file", dst_file)


def convert_sft(
    src_file: str,
    dst_file: str,
    tokenizer: Union[str, Tokenizer],
    seq_length: int = 1024,
    pad_token_id: Optional[int] = None,
    fmt: str = "auto",
    template: str = "qa",
    skip_bad_lines: bool = False,
    progress: bool = True,
) -> Dict[str, Union[int, float]]:
    """Convert ``src_file`` to the MindRecord ``dst_file`` (see the module docstring); return the statistics.

    Args:
        tokenizer: a :class:`Tokenizer` or anything :func:`load_tokenizer` takes (path or ``gpt2``/``llama``).
        seq_length: ``S``, the length of every stored row.
        pad_token_id: padding id; None = the tokenizer's pad id, or its eos id when it has none.
        fmt: ``auto`` (per record) or one of :data:`FORMATS`.
        template: ``qa`` (the QA template) or ``none`` (raw prompt text).
    Returns:
        :meth:`SFTStats.as_dict`.
    Raises:
        ConversionError: bad arguments, a bad record (unless ``skip_bad_lines``) or no sample left to write.
    """
    check_arguments(src_file, dst_file, seq_length, fmt, template)
    tok, pad = converter_tokenizer(tokenizer, pad_token_id, ends="responses")
    stats = SFTStats()
    examples = read_examples(src_file, fmt, skip_bad_lines, stats, progress)
    with atomic_mindrecord(dst_file, SFT_SCHEMA, desc="sft") as writer:
        write_in_chunks(writer, encode_examples(examples, tok, seq_length, pad, template, stats), WRITE_CHUNK)
        summary = stats.as_dict()
        if summary["count"] == 0:
            raise ConversionError(
                f"{src_file}: no samples to write (skipped: {summary['skipped_empty']} empty, "
                f"{summary['skipped_long']} too long, {summary['skipped_bad']} bad)"
            )
    return summary


def format_stats(stats: Dict[str, Union[int, float]]) -> str:
    """The statistics as two small Markdown tables (counts, then stored token lengths)."""
    return stats_table(
        stats, ("count", "skipped_empty", "skipped_long", "skipped_bad", "truncated"), ("prompt", "response")
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Instruction JSONL/JSON -> MindRecord for supervised fine-tuning.")
    parser.add_argument("--model", "--tokenizer_name_or_path", dest="model", required=True, help=TOKENIZER_HELP)
    add_file_arguments(parser, "source file (JSONL or a JSON array)")
    parser.add_argument("--format", default="auto", help=f"auto (default, per record) or one of {', '.join(FORMATS)}")
    parser.add_argument("--template", default="qa", help="qa (default): the QA prompt template; none: raw prompt")
    parser.add_argument("--skip_bad_lines", action="store_true", help="skip and count bad records instead of failing")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: convert, print the statistics and the closing line; 0 on success, 1 on a conversion error."""
    args = build_parser().parse_args(argv)
    return run_converter(
        lambda: convert_sft(
            args.src_file,
            args.dst_file,
            args.model,
            args.seq_length,
            args.pad_token_id,
            args.format,
            args.template,
            args.skip_bad_lines,
        ),
        args.dst_file,
        format_stats,
    )


if __name__ == "__main__":
    sys.exit(main())
