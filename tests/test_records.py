"""The shared record reading of mindrlhf.data.records (file:line errors, the skip-or-raise loop and its count) and
the one schema table (mindrlhf.data.schemas) that the converters, the datasets and the experience writer use."""

import dataclasses
import logging

import pytest

from mindrlhf.data import schemas
from mindrlhf.data.records import ConversionError, expect_object, parsed_records, text_field


@dataclasses.dataclass
class Counts:
    skipped_bad: int = 0


def write(tmp_path, text):
    path = tmp_path / "src.jsonl"
    path.write_text(text, encoding="utf-8")
    return str(path)


def prompt_of(record, where):
    return text_field(expect_object(record, where), "prompt", where)


JSONL = '{"prompt": "a"}\n\n{"prompt": 3}\nnot json\n["x"]\n{"prompt": "b"}\n'


def test_the_first_bad_record_raises_naming_file_line_and_field(tmp_path):
    path = write(tmp_path, JSONL)
    records = parsed_records(path, prompt_of)
    assert next(records) == (1, "a")
    with pytest.raises(ConversionError, match=rf"^{path}:3: field 'prompt': expected a string, got int$"):
        next(records)


def test_skip_bad_lines_logs_and_counts_every_bad_record(tmp_path, caplog):
    path, counts = write(tmp_path, JSONL), Counts()
    with caplog.at_level(logging.WARNING, logger="mindrlhf.data.records"):
        kept = list(parsed_records(path, prompt_of, skip_bad_lines=True, stats=counts))
    assert kept == [(1, "a"), (6, "b")]
    assert counts.skipped_bad == 3
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3
    assert all(m.startswith(f"skipped: {path}:{line}: ") for m, line in zip(messages, (3, 4, 5)))
    assert "malformed JSON" in messages[1] and "record is a JSON list, expected an object" in messages[2]


def test_json_array_lines_and_a_broken_array_is_fatal_at_once(tmp_path):
    path = write(tmp_path, '[\n  {"prompt": "a"},\n\n  {"prompt": "b"}\n]\n')
    assert list(parsed_records(path, prompt_of)) == [(2, "a"), (4, "b")]
    broken = write(tmp_path, '[\n  {"prompt": "a"},\n  {"prompt": \n]\n')
    with pytest.raises(ConversionError, match=rf"^{broken}:4: malformed JSON array"):
        parsed_records(broken, prompt_of, skip_bad_lines=True)  # raised before iterating


def test_experience_record_has_the_schema_fields_in_order():
    from mindrlhf.train.experience import Experience

    assert tuple(f.name for f in dataclasses.fields(Experience)) == schemas.EXPERIENCE_COLUMNS
    assert {name for name, spec in schemas.EXPERIENCE_SCHEMA.items() if spec["type"] == "int32"} == {
        "query_tensors",
        "response_tensors",
        "pretrain_ids",
        "loss_mask",
        "attention_mask",
    }
    assert schemas.DPO_FILE_COLUMNS == schemas.PREFERENCE_COLUMNS + tuple(schemas.RESPONSE_SCHEMA)
