"""RLHF prompt data -> MindRecord for PPO and GRPO (the seed's ``examples/rlhf_train_tutorial/rlhf_data.py``).

    python examples/rlhf_train_tutorial/rlhf_data.py --tokenizer_name_or_path gpt2 \\
        --file_path prompts.jsonl --output_path data/ppo_prompts.mindrecord \\
        --max_prompt_length 64 --seq_length 129 --pad_token_id 50256

Input: JSONL (or a JSON array) of records in one of these forms (the form is told by the keys of each record):

- ``{prompt, pos_resp}``: ``pos_resp`` (a reference answer, used only by the optional ptx loss) may be absent, as in
  prompt-only sets such as the CValues responsibility prompts.
- ``{prompt, solution}`` (or ``{prompt, answer}``): a verifiable task; the solution is the reference answer the
  reward functions judge completions against (:mod:`mindrlhf.rewards`).
- ``{question, answer}``: GSM8K; ``answer`` (required) is the worked solution ending in ``#### <number>``, or a
  plain answer.

A reference answer may be a string or a JSON number; it is stored stripped, and is not a ptx target (give
``pos_resp`` for that, in any form). With ``--template qa`` the prompt is wrapped in the reward model's QA template,
with ``--template chatml`` in the ChatML chat template of Qwen2 / Qwen2.5 instruct models
(:mod:`mindrlhf.data.templates`; a tokenizer whose vocabulary has ``<|im_start|>`` and ``<|im_end|>`` as added
tokens, as Qwen's ``tokenizer.json`` does, encodes them as those single ids, any other as plain text);
``--template none`` (the seed's behaviour) uses it as is.

Prompt and response follow the tokenization contract (:mod:`mindrlhf.data.contract`), as the SFT and preference
converters do: they are tokenized separately (without special tokens) and joined, so the boundary is exact; the
prompt starts with the tokenizer's bos iff ``Tokenizer.add_bos`` (not for GPT-2 BPE, yes for SentencePiece
Llama-style models) and the response is followed by eos. With ``--template qa`` or ``chatml`` the response is
stripped, as the SFT converter strips it. Fields (``P = max_prompt_length``, ``T = seq_length``):

- ``prompt_ids``: int64 ``(P,)``, the prompt (bos included) right-padded with ``pad_token_id``. A longer prompt keeps
  its LAST tokens (the end holds the question and the template's answer cue), with the bos back in front, and is
  counted as truncated. PPO left-aligns these ids and generates the response after them.
- ``prompt_length``: int64 scalar, the number of real tokens in ``prompt_ids`` (the predecessor had no such field
  and counted non-pad tokens, which fails when the pad id occurs in text; files without it are still read).
- ``pretrain_ids``: int64 ``(T,)``, prompt then response (+eos), cut to ``T`` (a cut response loses its eos first,
  the SFT rule) and right-padded.
- ``loss_mask``: int64 ``(T,)``, 1 on the response tokens of ``pretrain_ids`` and 0 on the prompt and the padding
  (padded with 0; the predecessor padded it with the pad id, bug B8).
- ``answer``: string, the reference answer, ``""`` when the record has none (``datasets.read_prompts`` returns it
  and reads files without the field, the predecessor's, as all ``""``).

Length contract with PPO: ``P`` is the prompt width PPO generates from and the policy needs
``seq_length >= P + max_new_tokens``; the ptx loss reads ``pretrain_ids[:, :-1]`` against ``pretrain_ids[:, 1:]``
weighted by ``loss_mask[:, 1:]``, so ``T - 1`` must not exceed the policy's ``seq_length`` (``T = seq_length + 1``
uses it fully, as in the predecessor's tutorials).
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass
from typing import Any, Dict, Iterator, Optional, Sequence, Tuple, Union

import numpy as np

from mindrlhf.data.contract import tokenize_prompt, tokenize_response
from mindrlhf.data.records import (
    TOKENIZER_HELP,
    WRITE_CHUNK,
    atomic_mindrecord,
    check_choice,
    check_paths,
    ConversionError,
    converter_tokenizer,
    parsed_records,
    run_converter,
    text_field,
    write_in_chunks,
)
from mindrlhf.data.schemas import PROMPT_ANSWER_SCHEMA, PROMPT_SCHEMA  # noqa: F401 (PROMPT_SCHEMA re-exported)
from mindrlhf.data.templates import TEMPLATE_NAMES, apply_template
from mindrlhf.data.tokenizer import Tokenizer

logger = logging.getLogger(__name__)

TEMPLATES = TEMPLATE_NAMES  # ("none", "qa", "chatml")
ANSWER_KEYS = ("solution", "answer")  # the reference answer of a {prompt, ...} record


@dataclass
class PromptStats:
    """What the conversion wrote and skipped."""

    count: int = 0
    with_response: int = 0  # records whose pos_resp gave ptx tokens
    with_answer: int = 0  # records with a reference answer (answer / solution)
    truncated_prompts: int = 0  # prompts longer than max_prompt_length (their last tokens kept)
    prompt_tokens: int = 0  # tokens of all written prompts before truncation (bos and template included)
    prompt_tokens_lost: int = 0  # of those, the tokens truncation cut off
    longest_prompt: int = 0  # tokens of the longest prompt before truncation: the --max_prompt_length that cuts none
    skipped_empty: int = 0  # empty prompt after strip()
    skipped_bad: int = 0  # bad records skipped with skip_bad_lines

    def as_dict(self) -> Dict[str, int]:
        return dict(self.__dict__)

    def add_prompt(self, full_length: int, kept_length: int) -> None:
        """Count one written prompt of ``full_length`` tokens of which truncation kept ``kept_length``."""
        self.count += 1
        self.prompt_tokens += full_length
        self.prompt_tokens_lost += full_length - kept_length
        self.longest_prompt = max(self.longest_prompt, full_length)
        self.truncated_prompts += int(kept_length < full_length)

    @property
    def truncated_share(self) -> float:
        """The share of the written prompts that truncation cut."""
        return self.truncated_prompts / max(self.count, 1)


def encode_prompt(
    tokenizer: Tokenizer, prompt: str, response: str, max_prompt_length: int, seq_length: int, pad_token_id: int
) -> Dict[str, np.ndarray]:
    """One record's four fields (see the module docstring); ``prompt`` is already templated, an empty ``response``
    gives no ptx tokens (not even an eos)."""
    prompt_tokens = tokenize_prompt(tokenizer, prompt, max_prompt_length, whole_characters=True)
    response_tokens = tokenize_response(tokenizer, response) if response else []
    full = (prompt_tokens + response_tokens)[:seq_length]
    prompt_ids = np.full(max_prompt_length, pad_token_id, np.int64)
    prompt_ids[: len(prompt_tokens)] = prompt_tokens
    pretrain_ids = np.full(seq_length, pad_token_id, np.int64)
    pretrain_ids[: len(full)] = full
    loss_mask = np.zeros(seq_length, np.int64)
    loss_mask[min(len(prompt_tokens), seq_length) : len(full)] = 1
    return {
        "prompt_ids": prompt_ids,
        "prompt_length": np.int64(len(prompt_tokens)),
        "pretrain_ids": pretrain_ids,
        "loss_mask": loss_mask,
    }


def answer_field(record: dict, name: str, where: str) -> str:
    """``record[name]`` as stripped text (a JSON number is written out: ``42`` -> ``"42"``); ``""`` when absent.
    Raises :class:`ConversionError` naming ``where`` and the field for another type or an empty text."""
    value = record.get(name)
    if value is None:
        return ""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConversionError(f"{where}: field '{name}': expected a string or a number, got {type(value).__name__}")
    text = str(value).strip()
    if not text:
        raise ConversionError(f"{where}: field '{name}': empty reference answer")
    return text


def parse_record(record: Any, where: str) -> Tuple[str, str, str]:
    """``(prompt, pos_resp, answer)`` of one input record (the forms in the module docstring; ``""`` for an absent
    ``pos_resp`` or answer); raises :class:`ConversionError` naming ``where`` and the field."""
    if not isinstance(record, dict):
        raise ConversionError(f"{where}: expected a JSON object, got {type(record).__name__}")
    response = text_field(record, "pos_resp", where) if record.get("pos_resp") is not None else ""
    if "question" in record:  # GSM8K
        if "prompt" in record:
            raise ConversionError(f"{where}: both 'prompt' and 'question': give one")
        answer = answer_field(record, "answer", where)
        if not answer:
            raise ConversionError(f"{where}: field 'answer': missing (a {{question, answer}} record needs it)")
        return text_field(record, "question", where), response, answer
    if record.get("prompt") is None:
        raise ConversionError(
            f"{where}: field 'prompt': missing (records are {{prompt[, pos_resp][, solution]}} or {{question, answer}})"
        )
    given = [key for key in ANSWER_KEYS if record.get(key) is not None]
    if len(given) > 1:
        raise ConversionError(f"{where}: both 'solution' and 'answer': give one reference answer")
    answer = answer_field(record, given[0], where) if given else ""
    return text_field(record, "prompt", where), response, answer


def _samples(
    src_file: str,
    tokenizer: Tokenizer,
    max_prompt_length: int,
    seq_length: int,
    pad_token_id: int,
    template: str,
    skip_bad_lines: bool,
    stats: PromptStats,
    progress: bool,
) -> Iterator[dict]:
    for _, (prompt, response, answer) in parsed_records(
        src_file, parse_record, skip_bad_lines, stats, progress, desc="prompts"
    ):
        if not prompt.strip():
            stats.skipped_empty += 1
            continue
        text = apply_template(template, prompt)
        response = response if template == "none" else response.strip()
        sample = encode_prompt(tokenizer, text, response, max_prompt_length, seq_length, pad_token_id)
        sample["answer"] = answer
        stats.add_prompt(len(tokenize_prompt(tokenizer, text)), int(sample["prompt_length"]))
        stats.with_response += int(sample["loss_mask"].any())
        stats.with_answer += int(bool(answer))
        yield sample


def truncation_report(stats: PromptStats, max_prompt_length: int, template_tokens: int, template: str) -> str:
    """One line on what truncation cut: how many prompts, how much of their text, and the length that cuts none."""
    lost = stats.prompt_tokens_lost / max(stats.prompt_tokens, 1)
    template_note = f"; the {template} template alone is {template_tokens} tokens" if template != "none" else ""
    return (
        f"{stats.truncated_prompts} of {stats.count} prompts ({stats.truncated_share:.0%}) are longer than "
        f"--max_prompt_length {max_prompt_length} and lost their first tokens ({lost:.0%} of all prompt "
        f"tokens){template_note}; the longest prompt is {stats.longest_prompt} tokens: a --max_prompt_length "
        f"of {stats.longest_prompt} cuts none (the policy's seq_length must hold it plus max_new_tokens)"
    )


def check_truncation(
    stats: PromptStats,
    max_prompt_length: int,
    template_tokens: int,
    template: str,
    max_truncated_share: float,
    level: int = logging.WARNING,
) -> None:
    """Log (at ``level``) when truncation cut any prompt; raise :class:`ConversionError` when it cut more than
    ``max_truncated_share`` of them."""
    if stats.truncated_prompts == 0:
        return
    report = truncation_report(stats, max_prompt_length, template_tokens, template)
    if stats.truncated_share > max_truncated_share:
        raise ConversionError(
            f"{report}. Nothing written: more than {max_truncated_share:.0%} of the prompts would "
            f"be cut; raise --max_prompt_length, or pass --allow_truncation to keep each "
            f"prompt's last tokens anyway"
        )
    logger.log(level, "prompt truncation: %s", report)


def check_arguments(file_path: str, output_path: str, max_prompt_length: int, seq_length: int, template: str) -> None:
    """Raise :class:`ConversionError` for arguments that cannot work, before anything is read or written."""
    if max_prompt_length < 1 or seq_length < 2:
        raise ConversionError(
            f"--max_prompt_length must be >= 1 and --seq_length >= 2, got {max_prompt_length} and {seq_length}"
        )
    check_choice("--template", template, TEMPLATES)
    check_paths("--file_path", file_path, "--output_path", output_path)


def convert_prompts(
    file_path: str,
    output_path: str,
    tokenizer: Union[str, Tokenizer],
    max_prompt_length: int = 2048,
    seq_length: int = 4096,
    pad_token_id: int = 0,
    template: str = "none",
    skip_bad_lines: bool = False,
    progress: bool = True,
    max_truncated_share: float = 1.0,
    truncation_level: int = logging.WARNING,
) -> Dict[str, int]:
    """Convert prompts to the PPO MindRecord ``output_path`` (written atomically); return the statistics.

    A warning names how many prompts truncation cut; over ``max_truncated_share`` of them (a share in [0, 1]; the
    command's default is 0.1, this function's 1.0 accepts any) nothing is written and :class:`ConversionError`
    says which ``max_prompt_length`` would cut none. ``truncation_level`` is the level of that line (the demo, which
    narrows prompts on purpose, logs it at INFO).
    """
    check_arguments(file_path, output_path, max_prompt_length, seq_length, template)
    tok, pad_token_id = converter_tokenizer(tokenizer, pad_token_id, "--tokenizer_name_or_path", "responses")
    stats = PromptStats()
    with atomic_mindrecord(output_path, PROMPT_ANSWER_SCHEMA, "rlhf prompts") as writer:
        write_in_chunks(
            writer,
            _samples(
                file_path, tok, max_prompt_length, seq_length, pad_token_id, template, skip_bad_lines, stats, progress
            ),
            WRITE_CHUNK,
        )
        if stats.count == 0:
            raise ConversionError(
                f"{file_path}: no prompts to write (skipped: {stats.skipped_empty} empty, {stats.skipped_bad} bad)"
            )
        template_tokens = len(tokenize_prompt(tok, apply_template(template, "")))
        check_truncation(stats, max_prompt_length, template_tokens, template, max_truncated_share, truncation_level)
    return stats.as_dict()


def build_parser() -> argparse.ArgumentParser:
    """The seed's flags (numbers parsed as int) plus ``--template`` and ``--skip_bad_lines``."""
    parser = argparse.ArgumentParser(description="RLHF prompts JSONL -> MindRecord for PPO.")
    parser.add_argument("--tokenizer_name_or_path", required=True, help=TOKENIZER_HELP)
    parser.add_argument(
        "--file_path",
        required=True,
        help="JSONL (or JSON array) of {prompt, pos_resp}, {prompt, solution} or {question, answer}",
    )
    parser.add_argument("--output_path", required=True, help="output .mindrecord path (its folder is created)")
    parser.add_argument("--max_prompt_length", type=int, default=2048, help="prompt width P (policy seq - new tokens)")
    parser.add_argument("--seq_length", type=int, default=4096, help="pretrain_ids length (policy seq_length + 1)")
    parser.add_argument("--pad_token_id", type=int, default=0, help="padding id (use the policy's pad id)")
    parser.add_argument(
        "--template",
        default="none",
        help="none (prompt as is, default), qa (the RM template) or chatml (Qwen2 chat template)",
    )
    parser.add_argument("--skip_bad_lines", action="store_true", help="skip and count bad records instead of failing")
    parser.add_argument(
        "--max_truncated_share",
        type=float,
        default=0.1,
        help="refuse (write nothing) when more than this share of the prompts is longer than "
        "--max_prompt_length (default 0.1); any cut prompt is warned about",
    )
    parser.add_argument(
        "--allow_truncation",
        action="store_true",
        help="write however many prompts are cut (each keeps its last --max_prompt_length tokens)",
    )
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: convert and print the seed's two closing lines; 0 on success, 1 on a conversion error."""
    args = build_parser().parse_args(argv)
    share = 1.0 if args.allow_truncation else args.max_truncated_share
    return run_converter(
        lambda: convert_prompts(
            args.file_path,
            args.output_path,
            args.tokenizer_name_or_path,
            args.max_prompt_length,
            args.seq_length,
            args.pad_token_id,
            args.template,
            args.skip_bad_lines,
            max_truncated_share=share,
        ),
        args.output_path,
        _report,
    )


def _report(stats: Dict[str, Any]) -> str:
    """The seed's count line (the whole statistics go to the log)."""
    logger.info("prompt conversion: %s", stats)
    return f"Total number of samples: {stats['count']}"


if __name__ == "__main__":
    sys.exit(main())
