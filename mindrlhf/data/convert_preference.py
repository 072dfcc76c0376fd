"""Preference data -> MindRecord for reward-model training (the seed's ``cvalues_comparison.py``).

    python -m mindrlhf.data.convert_preference --model gpt2 --src_file train.jsonl \\
        --dst_file data/train_1024.mindrecord --seq_length 1024 --pad_token_id 50256

Input formats (``--format``, auto-detected from the keys of the first record by default):

- ``cvalues``: JSONL ``{prompt, pos_resp, neg_resp}`` (CValues-Comparison; ``pos_type``/``neg_type`` unused).
- ``pairwise``: JSONL ``{prompt, chosen, rejected}``.
- ``hh``: JSONL ``{chosen, rejected}`` full Anthropic-HH transcripts ``"\\n\\nHuman: ...\\n\\nAssistant: ..."``. The
  prompt is the chosen transcript up to and including its last ``"\\n\\nAssistant:"``; the rejected transcript must
  start with the same prompt; the responses are what follows it.
- ``oasst``: ``{instruction, input, output: [best, ..., worst], history: [[q, a], ...]}`` as a JSON array or JSONL.
  Pairs are best-vs-each-worse: ``(output[0], output[k])`` for ``k = 1..n-1`` (n-1 pairs per row; every pair
  is a ranking the annotators made against the top answer). The prompt is ``instruction`` (then ``"\\n" + input``
  when ``input`` is not empty), preceded by the history turns written in the template's own markup
  (:data:`HISTORY_TURN`), so the templated text reads as one multi-turn ``### 问题`` / ``### 回答`` transcript.
- ``chat``: conversational pairs as TRL writes them: ``chosen`` and ``rejected`` are message lists
  (``{role, content}``), either whole conversations that share everything before their last assistant turn, or
  with the shared turns apart in a ``prompt`` message list.
- ``sharegpt``: LLaMA-Factory's preference format: ``conversations`` (``{from, value}`` turns, optional ``system``
  field) followed by the ``chosen`` and ``rejected`` assistant turns (``{from, value}`` objects).

  Both conversational formats become one prompt as SFT's ShareGPT reader makes it
  (:func:`mindrlhf.data.convert_sft.prompt_text`: system text, earlier turns in :data:`HISTORY_TURN`, the last
  user turn) and the two last assistant turns as the responses.

Each pair is encoded under the tokenization contract (:mod:`mindrlhf.data.contract`,
:func:`~mindrlhf.data.contract.encode_for_reward`): the prompt text ``format_prompt(prompt.strip())`` and each
response ``.strip()`` are tokenized separately, without special tokens; the prompt gets bos in front iff the
tokenizer's rule says so (``Tokenizer.add_bos``: not for GPT-2 BPE, yes for SentencePiece Llama-style models), and
each response gets eos appended: ``chosen = prompt_ids + chosen_ids + [eos]``, the same for rejected. Every stored
sequence ends in eos, the token a reward model is trained and read at (PPO reads the reward at the eos of each
rollout). Truncation to ``seq_length``: a prompt keeps at most its last ``seq_length - 1`` tokens (bos back in
front), and a response that does not fit is cut from the right one token early so that the eos is KEPT as the last
token. A prompt that fills ``seq_length - 1`` tokens leaves both responses only their eos: the pair is skipped
(``skipped_no_response``).

The stored fields: the reward model's seven (``S = seq_length``, ``Lc``/``Lr`` = real tokens of chosen/rejected, eos
included, ``d`` = first index where they differ, or ``min(Lc, Lr)`` when one is a prefix of the other; computed from
lengths, never by searching for the pad id, which may equal eos):

- ``chosen_input_ids``, ``chosen_attention_mask``, ``rejected_input_ids``, ``rejected_attention_mask``: int32 (S,).
  The last real token of each sequence (its last mask-1 column) is the eos id.
- ``position_id``: int32 (S,). Right padding: ``arange(S)``; left padding: ``clip(cumsum(mask) - 1, 0)``.
- ``loss_mask``: int32 (S,), 1 on ``[o + d, o + max(Lc, Lr))``, 0 elsewhere (``o`` = start offset, below).
- ``end_ind``: int64 scalar ``o + max(Lc, Lr)``, one past the last token (an eos) of the longer sequence.
- ``chosen_response_mask``, ``rejected_response_mask``: int32 (S,), 1 on the response tokens of each sequence
  (``[o + P, o + L)``, ``P`` = prompt tokens, bos included, the same for both sides; the eos included): the
  prompt/response boundary DPO sums its log-probs over. Files written before these two fields existed still train
  reward models; DPO refuses them (:func:`mindrlhf.data.datasets.check_dpo_file`).

``padding_side="right"``: both sequences start at ``o = 0``. ``padding_side="left"``: the PAIR is left-padded as
a unit, both sequences start at ``o = S - max(Lc, Lr)`` (the longer one ends at S, the shorter one is followed by
pad). Aligned starts keep the shared prompt at the same positions in both rows, so one ``position_id`` and one
``loss_mask`` serve both (with each sequence right-aligned on its own they could not).

Files written before this contract end their sequences in the last response token, not eos; the reward trainer,
``rm eval`` and :func:`mindrlhf.data.datasets.check_preference_ends` refuse them (reconvert with
``mindrlhf convert-preference``).

Skipped and counted (never a crash, unlike the predecessor's bug B1): pairs whose token ids are identical after
encoding and truncation (``skipped_identical``), pairs with an empty response after ``strip()`` (``skipped_empty``)
and pairs where truncation left a response no text token, only its eos (``skipped_no_response``: a prompt that fills
the sequence; nothing of the responses would be compared). Bad records (malformed JSON line, missing/null or
non-string field, undetectable format) raise :class:`ConversionError` naming ``file:line`` and the field, or with
``skip_bad_lines`` are skipped and counted (``skipped_bad``); a syntax error inside a JSON array is always fatal
(there is no next line to resume at). Reading, checking and writing are :mod:`mindrlhf.data.records`; the stored
fields are :data:`mindrlhf.data.schemas.FILE_SCHEMA`.

The MindRecord (and its ``.db`` index) is written to a fresh temporary folder inside the destination folder under
its final name (MindRecord headers store the file name, so a renamed file would not open), then both files are
moved into place; on any error nothing new is left behind and an existing destination is untouched.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np

from mindrlhf.data.contract import EncodedText, encode_for_reward
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
    text_field,
    write_in_chunks,
)
from mindrlhf.data.records import read_records  # noqa: F401 (re-exported for the rm infer command)
from mindrlhf.data.schemas import FILE_SCHEMA, PREFERENCE_SCHEMA
from mindrlhf.data.templates import format_prompt
from mindrlhf.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

FORMATS = ("cvalues", "pairwise", "hh", "oasst", "chat", "sharegpt")
PADDING_SIDES = ("right", "left")
HH_ASSISTANT = "\n\nAssistant:"
# One earlier oasst turn; the current question follows the last one (the template supplies the first "### 问题").
HISTORY_TURN = "{question}\n\n### 回答：\n{answer}\n\n### 问题：\n"


@dataclass(frozen=True)
class PreferencePair:
    """One comparison read from a source file (texts as read, before strip and template)."""

    prompt: str
    chosen: str
    rejected: str
    line: int  # 1-based line of the record in the source file


@dataclass
class ConversionStats:
    """Counters and raw-text token counts (each capped at seq_length, as the predecessor measured them)."""

    skipped_identical: int = 0  # pairs whose token ids were identical after encoding and truncation
    skipped_empty: int = 0  # pairs with an empty chosen or rejected response after strip()
    skipped_bad: int = 0  # bad records skipped with skip_bad_lines
    skipped_no_response: int = 0  # pairs where truncation left a response only its eos
    truncated: int = 0  # written pairs where the prompt, chosen or rejected was cut to fit seq_length
    lengths: Dict[str, List[int]] = field(default_factory=lambda: {"prompt": [], "chosen": [], "reject": []})

    def as_dict(self) -> Dict[str, Union[int, float]]:
        """``count, skipped_*, truncated`` and ``{prompt,chosen,reject}_{max,min,avg}``."""
        return {
            "count": len(self.lengths["prompt"]),
            "skipped_identical": self.skipped_identical,
            "skipped_empty": self.skipped_empty,
            "skipped_bad": self.skipped_bad,
            "skipped_no_response": self.skipped_no_response,
            "truncated": self.truncated,
            **length_summary(self.lengths),
        }


# ---------------------------------------------------------------------------------------------------------------
# Reading: records with line numbers, then (prompt, chosen, rejected) per format


# what a record may look like, told with an error about a field of the wrong type
ACCEPTED_FORMS = (
    "accepted records: cvalues {prompt, pos_resp, neg_resp}; pairwise {prompt, chosen, rejected} "
    "(strings); hh {chosen, rejected} as Human/Assistant transcripts; oasst {instruction, input, "
    "output: [best, ..., worst], history}; chat {[prompt,] chosen, rejected} as message lists "
    "([{role, content}, ...]); sharegpt {conversations, chosen, rejected} (LLaMA-Factory)"
)


def _text(record: dict, name: str, where: str) -> str:
    """:func:`text_field`, its error for a value of the wrong type followed by the accepted record forms."""
    try:
        return text_field(record, name, where)
    except ConversionError as err:
        if record.get(name) is None:
            raise
        raise ConversionError(f"{err}; {ACCEPTED_FORMS}") from None


def _pairs_cvalues(record: dict, where: str) -> List[Tuple[str, str, str]]:
    return [(_text(record, "prompt", where), _text(record, "pos_resp", where), _text(record, "neg_resp", where))]


def _pairs_pairwise(record: dict, where: str) -> List[Tuple[str, str, str]]:
    return [(_text(record, "prompt", where), _text(record, "chosen", where), _text(record, "rejected", where))]


def _pairs_hh(record: dict, where: str) -> List[Tuple[str, str, str]]:
    chosen, rejected = _text(record, "chosen", where), _text(record, "rejected", where)
    cut = chosen.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ConversionError(f"{where}: field 'chosen': no {HH_ASSISTANT!r} turn in the transcript")
    prompt = chosen[: cut + len(HH_ASSISTANT)]
    if not rejected.startswith(prompt):
        raise ConversionError(
            f"{where}: field 'rejected': does not start with the chosen transcript's prompt "
            f"(everything up to its last {HH_ASSISTANT!r})"
        )
    return [(prompt, chosen[len(prompt) :], rejected[len(prompt) :])]


def _pairs_oasst(record: dict, where: str) -> List[Tuple[str, str, str]]:
    prompt = instruction_text(record, where, _text)
    history = history_field(record, where)
    prompt = "".join(HISTORY_TURN.format(question=q.strip(), answer=a.strip()) for q, a in history) + prompt
    answers = record.get("output")
    if not isinstance(answers, list) or len(answers) < 2 or not all(isinstance(a, str) for a in answers):
        raise ConversionError(f"{where}: field 'output': expected a list of at least 2 ranked answer strings")
    return [(prompt, answers[0], worse) for worse in answers[1:]]


def _message_list(record: dict, name: str, where: str) -> list:
    value = record.get(name)
    if not isinstance(value, list) or not value:
        raise ConversionError(f"{where}: field '{name}': expected a non-empty list of messages")
    return value


def _conversation_prompt(turns: list, key: str, where: str) -> Tuple[str, str]:
    """``(prompt text, last assistant text)`` of a turn list, as SFT's ShareGPT reader reads it; the last turn must
    be the assistant's."""
    from mindrlhf.data.convert_sft import _read_sharegpt, prompt_text

    last = turns[-1]
    role = last.get("role", last.get("from")) if isinstance(last, dict) else None
    if role not in ("assistant", "gpt"):
        raise ConversionError(
            f"{where}: field '{key}': the last message must be the assistant's response, got role {role!r}"
        )
    try:
        example = _read_sharegpt({"messages": turns}, where)
    except ConversionError as err:
        raise ConversionError(str(err).replace("'messages", f"'{key}")) from err
    return prompt_text(example, template="none"), example.response


def _pairs_from_turns(chosen: list, rejected: list, names: Tuple[str, str], where: str) -> List[Tuple[str, str, str]]:
    """One pair from two conversations that must agree on everything before their last (assistant) turn."""
    (prompt, chosen_text), (other, rejected_text) = (
        _conversation_prompt(turns, name, where) for turns, name in zip((chosen, rejected), names)
    )
    if prompt != other:
        raise ConversionError(
            f"{where}: field '{names[1]}': its turns before the last differ from those of "
            f"'{names[0]}' (a pair answers one prompt)"
        )
    return [(prompt, chosen_text, rejected_text)]


def _pairs_chat(record: dict, where: str) -> List[Tuple[str, str, str]]:
    chosen, rejected = _message_list(record, "chosen", where), _message_list(record, "rejected", where)
    if "prompt" in record:
        prompt = _message_list(record, "prompt", where)
        chosen, rejected = prompt + chosen, prompt + rejected
    return _pairs_from_turns(chosen, rejected, ("chosen", "rejected"), where)


def _pairs_sharegpt(record: dict, where: str) -> List[Tuple[str, str, str]]:
    turns = _message_list(record, "conversations", where)
    system = record.get("system")
    if system is not None:
        turns = [{"from": "system", "value": text_field(record, "system", where)}] + turns
    answers = []
    for name in ("chosen", "rejected"):
        if not isinstance(record.get(name), dict):
            raise ConversionError(f"{where}: field '{name}': expected an assistant turn {{from, value}}")
        answers.append(turns + [record[name]])
    return _pairs_from_turns(*answers, ("chosen", "rejected"), where)


READERS: Dict[str, Callable[[dict, str], List[Tuple[str, str, str]]]] = {
    "cvalues": _pairs_cvalues,
    "pairwise": _pairs_pairwise,
    "hh": _pairs_hh,
    "oasst": _pairs_oasst,
    "chat": _pairs_chat,
    "sharegpt": _pairs_sharegpt,
}
# Keys that identify each format, most specific first (pairwise before hh: both have chosen/rejected).
SIGNATURES = (
    ("cvalues", {"prompt", "pos_resp", "neg_resp"}),
    ("pairwise", {"prompt", "chosen", "rejected"}),
    ("hh", {"chosen", "rejected"}),
    ("oasst", {"instruction", "output"}),
)


def detect_format(record: dict, where: str) -> str:
    """The format whose keys the record has (conversational when ``chosen`` is a message list or one turn object);
    :class:`ConversionError` when none matches."""
    if isinstance(record.get("chosen"), dict) and "conversations" in record:
        return "sharegpt"
    if isinstance(record.get("chosen"), list):
        return "chat"
    return format_from_keys(record, SIGNATURES, where)


def read_pairs(
    path: str,
    fmt: str = "auto",
    skip_bad_lines: bool = False,
    stats: Optional[ConversionStats] = None,
    progress: bool = False,
) -> Iterator[PreferencePair]:
    """The comparisons of ``path``; bad records raise, or are skipped and counted in ``stats.skipped_bad``.

    The file is read (and an empty or unparsable JSON array rejected) at once; records are checked as iterated.
    """
    check_format(fmt, FORMATS)
    records = parsed_records(path, _Reader(fmt), skip_bad_lines, stats, progress)
    return (
        PreferencePair(prompt, chosen, rejected, line)
        for line, triples in records
        for prompt, chosen, rejected in triples
    )


class _Reader:
    """``(record, where) -> [(prompt, chosen, rejected), ...]`` in format ``fmt``; ``auto`` detects the format
    from the first record that is an object and keeps it for the rest of the file."""

    def __init__(self, fmt: str):
        self.reader = None if fmt == "auto" else READERS[fmt]

    def __call__(self, record: Any, where: str) -> List[Tuple[str, str, str]]:
        record = expect_object(record, where)
        if self.reader is None:
            fmt = detect_format(record, where)
            self.reader = READERS[fmt]
            logger.info("format %s (detected at %s)", fmt, where)
        return self.reader(record, where)


# ---------------------------------------------------------------------------------------------------------------
# Encoding one pair into the seven fields


def pair_fields(
    chosen: Sequence[int],
    rejected: Sequence[int],
    seq_length: int,
    pad_token_id: int,
    padding_side: str = "right",
    prompt_length: Optional[int] = None,
) -> Optional[Dict[str, Union[np.ndarray, int]]]:
    """The fields of one pair of token lists (each already at most ``seq_length`` long); None if identical.

    See the module docstring for the definitions. Everything derives from the lengths, not from pad ids. With
    ``prompt_length`` (the tokens both sequences share as their prompt) the two response masks are added.
    """
    len_c, len_r = len(chosen), len(rejected)
    common = min(len_c, len_r)
    differs = np.flatnonzero(np.asarray(chosen[:common]) != np.asarray(rejected[:common]))
    divergence = int(differs[0]) if differs.size else common
    if divergence == len_c == len_r:
        return None
    end = max(len_c, len_r)
    start = 0 if padding_side == "right" else seq_length - end
    fields: Dict[str, Union[np.ndarray, int]] = {}
    for name, ids in (("chosen", chosen), ("rejected", rejected)):
        padded = np.full(seq_length, pad_token_id, np.int32)
        padded[start : start + len(ids)] = ids
        mask = np.zeros(seq_length, np.int32)
        mask[start : start + len(ids)] = 1
        fields[f"{name}_input_ids"], fields[f"{name}_attention_mask"] = padded, mask
    if padding_side == "right":
        fields["position_id"] = np.arange(seq_length, dtype=np.int32)
    else:
        either = fields["chosen_attention_mask"] | fields["rejected_attention_mask"]
        fields["position_id"] = np.maximum(np.cumsum(either) - 1, 0).astype(np.int32)
    loss_mask = np.zeros(seq_length, np.int32)
    loss_mask[start + divergence : start + end] = 1
    fields["loss_mask"] = loss_mask
    fields["end_ind"] = int(start + end)
    if prompt_length is None:
        return {name: fields[name] for name in PREFERENCE_SCHEMA}
    for name, ids in (("chosen", chosen), ("rejected", rejected)):
        response = np.zeros(seq_length, np.int32)
        response[start + prompt_length : start + len(ids)] = 1
        fields[f"{name}_response_mask"] = response
    return {name: fields[name] for name in FILE_SCHEMA}


def encode_pair(
    tokenizer: Tokenizer, pair: PreferencePair, seq_length: int
) -> Tuple[List[EncodedText], Tuple[int, int, int]]:
    """``([chosen, rejected] encoded, raw token counts)`` under the tokenization contract: each sequence is
    ``prompt_ids + response_ids + [eos]``, at most ``seq_length`` long, ending in eos (see the module docstring);
    both share one ``prompt_ids``."""
    prompt, chosen, rejected = pair.prompt.strip(), pair.chosen.strip(), pair.rejected.strip()
    encoded = [
        encode_for_reward(tokenizer, format_prompt(prompt), response, seq_length) for response in (chosen, rejected)
    ]
    raw = tuple(min(len(tokenizer.encode(text)), seq_length) for text in (prompt, chosen, rejected))
    return encoded, raw


def encode_pairs(
    pairs: Iterator[PreferencePair],
    tokenizer: Tokenizer,
    seq_length: int,
    pad_token_id: int,
    padding_side: str,
    stats: ConversionStats,
) -> Iterator[Dict[str, Union[np.ndarray, int]]]:
    """Samples for every pair that is kept; skipped pairs are counted in ``stats``."""
    for pair in pairs:
        if not pair.chosen.strip() or not pair.rejected.strip():
            stats.skipped_empty += 1
            continue
        encoded, raw = encode_pair(tokenizer, pair, seq_length)
        if any(len(e.response_ids) < 2 for e in encoded):  # the eos alone: the prompt left the text no room
            stats.skipped_no_response += 1
            continue
        sample = pair_fields(
            encoded[0].ids, encoded[1].ids, seq_length, pad_token_id, padding_side, len(encoded[0].prompt_ids)
        )
        if sample is None:
            stats.skipped_identical += 1
            continue
        stats.truncated += any(e.truncated for e in encoded)
        for name, count in zip(("prompt", "chosen", "reject"), raw):
            stats.lengths[name].append(count)
        yield sample


# ---------------------------------------------------------------------------------------------------------------
# Writing


def check_arguments(src_file: str, dst_file: str, seq_length: int, padding_side: str, fmt: str) -> None:
    """Raise :class:`ConversionError` for an argument that cannot work, before anything is read or written."""
    check_seq_length(seq_length)
    check_choice("--padding_side", padding_side, PADDING_SIDES)
    check_format(fmt, FORMATS)
    check_paths("--src_file", src_file, "--dst_file", dst_file)


def convert_preference(
    src_file: str,
    dst_file: str,
    tokenizer: Union[str, Tokenizer],
    seq_length: int = 1024,
    pad_token_id: Optional[int] = None,
    padding_side: str = "right",
    fmt: str = "auto",
    skip_bad_lines: bool = False,
    progress: bool = True,
) -> Dict[str, Union[int, float]]:
    """Convert ``src_file`` to the MindRecord ``dst_file`` (see the module docstring); return the statistics.

    Args:
        tokenizer: a :class:`Tokenizer` or anything :func:`load_tokenizer` takes (path or ``gpt2``/``llama``).
        pad_token_id: padding id; None = the tokenizer's pad id, or its eos id when it has none.
        fmt: ``auto`` or one of :data:`FORMATS`.
    Raises:
        ConversionError: bad arguments, a bad record (unless ``skip_bad_lines``) or no pair left to write.
    """
    check_arguments(src_file, dst_file, seq_length, padding_side, fmt)
    tok, pad = converter_tokenizer(tokenizer, pad_token_id)
    stats = ConversionStats()
    pairs = read_pairs(src_file, fmt, skip_bad_lines, stats, progress)
    with atomic_mindrecord(dst_file, FILE_SCHEMA) as writer:
        write_in_chunks(writer, encode_pairs(pairs, tok, seq_length, pad, padding_side, stats), WRITE_CHUNK)
        summary = stats.as_dict()
        if summary["count"] == 0:
            raise ConversionError(
                f"{src_file}: no pairs to write (skipped: {summary['skipped_identical']} identical, "
                f"{summary['skipped_empty']} empty, {summary['skipped_no_response']} cut to no "
                f"response, {summary['skipped_bad']} bad)"
            )
    return summary


def format_stats(stats: Dict[str, Union[int, float]]) -> str:
    """The statistics as two small Markdown tables (counts, then raw-text token lengths)."""
    return stats_table(
        stats,
        ("count", "skipped_identical", "skipped_empty", "skipped_no_response", "skipped_bad", "truncated"),
        ("prompt", "chosen", "reject"),
    )


def build_parser() -> argparse.ArgumentParser:
    """The seed's flags plus ``--format`` and ``--skip_bad_lines``."""
    parser = argparse.ArgumentParser(description="Preference JSONL/JSON -> MindRecord for reward-model training.")
    parser.add_argument("--model", required=True, help=TOKENIZER_HELP)
    parser.add_argument("--padding_side", default="right", help="right (default) or left")
    add_file_arguments(parser, "source file (JSONL, or a JSON array for oasst)")
    parser.add_argument("--format", default="auto", help=f"auto (default) or one of {', '.join(FORMATS)}")
    parser.add_argument("--skip_bad_lines", action="store_true", help="skip and count bad records instead of failing")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: convert, print the statistics and the closing line; 0 on success, 1 on a conversion error."""
    args = build_parser().parse_args(argv)
    return run_converter(
        lambda: convert_preference(
            args.src_file,
            args.dst_file,
            args.model,
            args.seq_length,
            args.pad_token_id,
            args.padding_side,
            args.format,
            args.skip_bad_lines,
        ),
        args.dst_file,
        format_stats,
    )


if __name__ == "__main__":
    sys.exit(main())
