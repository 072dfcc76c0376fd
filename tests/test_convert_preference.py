"""Preference converter: fields against an independent reference, the four input formats, skips, truncation,
left padding, bad inputs (message names file:line:field, nothing left behind), the CLI and the example script."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import numpy as np
import mindspore.dataset as ds
import pytest

from mindrlhf.data import convert_preference as cp
from mindrlhf.data.convert_preference import ConversionError, convert_preference, read_pairs
from mindrlhf.data.tokenizer import load_tokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
CVALUES = os.path.join(DATA, "cvalues_comparison_sample8.jsonl")
OASST = os.path.join(DATA, "oasst_rm_zh_sample5.json")
# The seed template, spelled out here rather than imported, so a template change shows up as a failure.
SEED_TEMPLATE = "根据以下问题，写一个合适的回答。\n\n### 问题：\n{instruction}\n\n### 回答：\n{response}"
COLUMNS = [
    "chosen_input_ids",
    "chosen_attention_mask",
    "rejected_input_ids",
    "rejected_attention_mask",
    "position_id",
    "loss_mask",
    "end_ind",
    "chosen_response_mask",
    "rejected_response_mask",
]
TOKENIZERS = {"gpt2": 50256, "llama": 2}  # bundled name -> pad id of the seed commands (eos)
# The contract's special tokens, spelled out: GPT-2 BPE starts sequences without bos, the SentencePiece Llama-style
# tokenizer with bos 1; both end every preference sequence in their eos.
BOS = {"gpt2": [], "llama": [1]}
EOS = {"gpt2": 50256, "llama": 2}
# (chosen length, rejected length, first differing index) of the CValues sample row, bos and eos included. The
# prompt is 107 GPT-2 tokens, 57 Llama tokens with bos; a separately encoded SentencePiece response starts with a
# word-boundary token "▁" common to both answers, so the Llama pair differs one token later.
CVALUES_LENGTHS = {"gpt2": (301, 421, 107), "llama": (162, 214, 58)}


@pytest.fixture(scope="module")
def tokenizers():
    return {name: load_tokenizer(name) for name in TOKENIZERS}


def cvalues_rows():
    with open(CVALUES, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def read_back(path):
    """Every record of a MindRecord, in file order, as numpy arrays."""
    dataset = ds.MindDataset(path, columns_list=COLUMNS, shuffle=False)
    return list(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))


def contract_ids(name, tok, prompt, response, seq_length):
    """``[bos] + prompt + response + [eos]`` with plain loops: prompt text and response tokenized separately, the
    prompt keeping its last ``seq_length - 1`` tokens, the response cut one token early so the eos stays last."""
    prompt_ids = tok.encode(SEED_TEMPLATE.format(instruction=prompt.strip(), response=""))
    budget = seq_length - 1 - len(BOS[name])
    while len(prompt_ids) > budget:
        prompt_ids = prompt_ids[1:]
    prompt_ids = BOS[name] + prompt_ids
    response_ids = tok.encode(response.strip())
    while len(prompt_ids) + len(response_ids) + 1 > seq_length:
        response_ids = response_ids[:-1]
    return prompt_ids + response_ids + [EOS[name]]


def reference(name, tok, prompt, chosen, rejected, seq_length, pad, side="right"):
    """The seven fields computed with plain loops, independently of the converter."""
    c = contract_ids(name, tok, prompt, chosen, seq_length)
    r = contract_ids(name, tok, prompt, rejected, seq_length)
    div = 0
    while div < min(len(c), len(r)) and c[div] == r[div]:
        div += 1
    end = max(len(c), len(r))
    start = 0 if side == "right" else seq_length - end

    def place(ids):
        out_ids, out_mask = [pad] * seq_length, [0] * seq_length
        for k, token in enumerate(ids):
            out_ids[start + k], out_mask[start + k] = token, 1
        return out_ids, out_mask

    (c_ids, c_mask), (r_ids, r_mask) = place(c), place(r)
    prompt_len = len(contract_ids(name, tok, prompt, "", seq_length)) - 1
    return {
        "chosen_response_mask": [int(start + prompt_len <= t < start + len(c)) for t in range(seq_length)],
        "rejected_response_mask": [int(start + prompt_len <= t < start + len(r)) for t in range(seq_length)],
        "chosen_input_ids": c_ids,
        "chosen_attention_mask": c_mask,
        "rejected_input_ids": r_ids,
        "rejected_attention_mask": r_mask,
        "position_id": [max(t - start, 0) for t in range(seq_length)],
        "loss_mask": [1 if start + div <= t < start + end else 0 for t in range(seq_length)],
        "end_ind": start + end,
        "_lengths": (len(c), len(r), div),
        "_prompt_len": prompt_len,
    }


def assert_ends_in_eos(record, eos):
    """The last real token (last mask-1 column) of both sequences is the eos."""
    for side in ("chosen", "rejected"):
        last = int(np.flatnonzero(record[f"{side}_attention_mask"])[-1])
        assert record[f"{side}_input_ids"][last] == eos, side


def assert_record(record, expected):
    for name in (c for c in COLUMNS if c != "end_ind"):
        assert record[name].dtype == np.int32, name
        np.testing.assert_array_equal(record[name], np.array(expected[name]), err_msg=name)
    assert record["end_ind"].dtype == np.int64 and record["end_ind"].shape == ()
    assert int(record["end_ind"]) == expected["end_ind"]


def leftovers(folder):
    """Files or folders left in ``folder`` (temporary folders included); [] when it does not exist."""
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# ---------------------------------------------------------------------------------------------------------------
# The real CValues rows


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_cvalues_fields_match_reference(name, tokenizers, tmp_path):
    tok, pad, seq = tokenizers[name], TOKENIZERS[name], 512
    dst = str(tmp_path / "out" / "cvalues.mindrecord")  # the folder does not exist yet: created
    stats = convert_preference(CVALUES, dst, tok, seq, pad, progress=False)
    records, rows = read_back(dst), cvalues_rows()
    assert len(records) == len(rows) == 8
    assert sorted(os.listdir(tmp_path / "out")) == ["cvalues.mindrecord", "cvalues.mindrecord.db"]
    for k in (0, 3):
        row = rows[k]
        expected = reference(name, tok, row["prompt"], row["pos_resp"], row["neg_resp"], seq, pad)
        assert expected["_lengths"] == CVALUES_LENGTHS[name]
        assert_record(records[k], expected)
        assert_ends_in_eos(records[k], EOS[name])
        # bos (Llama) + the templated prompt, then the response, then the eos: each part decodes to its own text
        chosen, prompt_len = records[k]["chosen_input_ids"], expected["_prompt_len"]
        assert chosen[: len(BOS[name])].tolist() == BOS[name]
        assert tok.decode(chosen[len(BOS[name]) : prompt_len]) == SEED_TEMPLATE.format(
            instruction=row["prompt"].strip(), response=""
        )
        assert tok.decode(chosen[prompt_len : CVALUES_LENGTHS[name][0] - 1]) == row["pos_resp"].strip()
    c_len, r_len, div = CVALUES_LENGTHS[name]
    assert [int(r["end_ind"]) for r in records] == [max(c_len, r_len)] * 8
    assert [int(r["loss_mask"].sum()) for r in records] == [max(c_len, r_len) - div] * 8
    raw = [len(tok.encode(rows[0][key].strip())) for key in ("prompt", "pos_resp", "neg_resp")]
    assert stats == {
        "count": 8,
        "skipped_identical": 0,
        "skipped_empty": 0,
        "skipped_bad": 0,
        "truncated": 0,
        "skipped_no_response": 0,
        "prompt_max": raw[0],
        "prompt_min": raw[0],
        "prompt_avg": float(raw[0]),
        "chosen_max": raw[1],
        "chosen_min": raw[1],
        "chosen_avg": float(raw[1]),
        "reject_max": raw[2],
        "reject_min": raw[2],
        "reject_avg": float(raw[2]),
    }


def test_read_back_equals_written(tokenizers, tmp_path):
    tok, dst = tokenizers["llama"], str(tmp_path / "cv.mindrecord")
    convert_preference(CVALUES, dst, tok, 256, 2, progress=False)
    stats = cp.ConversionStats()
    written = list(cp.encode_pairs(read_pairs(CVALUES), tok, 256, 2, "right", stats))
    records = read_back(dst)
    assert len(records) == len(written) == 8
    for record, sample in zip(records, written):
        assert set(record) == set(sample) == set(COLUMNS)
        for name in COLUMNS:
            np.testing.assert_array_equal(record[name], sample[name])
        assert_ends_in_eos(record, 2)


def test_truncation_counted(tokenizers, tmp_path):
    tok, seq = tokenizers["gpt2"], 256  # full lengths 301 / 421 (prompt 107): both cut
    dst = str(tmp_path / "cut.mindrecord")
    stats = convert_preference(CVALUES, dst, tok, seq, 50256, progress=False)
    assert stats["count"] == 8 and stats["truncated"] == 8
    assert stats["chosen_max"] == 193 and stats["reject_max"] == 256  # raw counts are capped at seq_length
    row = cvalues_rows()[0]
    expected = reference("gpt2", tok, row["prompt"], row["pos_resp"], row["neg_resp"], seq, 50256)
    record = read_back(dst)[0]
    assert_record(record, expected)
    assert record["chosen_attention_mask"].all() and int(record["end_ind"]) == seq
    assert int(record["loss_mask"].sum()) == seq - 107
    # the eos is kept: each response lost its tail one token early, so the row still ends in eos
    assert_ends_in_eos(record, 50256)
    chosen = tok.encode(row["pos_resp"].strip())
    assert record["chosen_input_ids"][107:].tolist() == chosen[: seq - 107 - 1] + [50256]


def test_left_padding(tokenizers, tmp_path):
    tok, seq = tokenizers["gpt2"], 512
    dst = str(tmp_path / "left.mindrecord")
    convert_preference(CVALUES, dst, tok, seq, 50256, padding_side="left", progress=False)
    row, record = cvalues_rows()[0], read_back(dst)[0]
    expected = reference("gpt2", tok, row["prompt"], row["pos_resp"], row["neg_resp"], seq, 50256, side="left")
    assert_record(record, expected)
    assert_ends_in_eos(record, 50256)
    start = seq - 421  # the pair starts where the longer (rejected) sequence must start to end at seq
    assert record["rejected_attention_mask"][start:].all() and not record["rejected_attention_mask"][:start].any()
    assert record["chosen_attention_mask"][start : start + 301].all() and record["chosen_attention_mask"].sum() == 301
    np.testing.assert_array_equal(record["position_id"][start:], np.arange(421))
    assert int(record["end_ind"]) == seq and np.flatnonzero(record["loss_mask"])[0] == start + 107


def test_pad_equal_to_eos_inside_text(tokenizers, tmp_path):
    """Predecessor bug B3: a pad id inside the text must not end the sequence early."""
    tok, seq = tokenizers["gpt2"], 96  # nothing cut (the templated prompt alone is 61 tokens)
    rows = [{"prompt": "Say it twice.", "chosen": "one<|endoftext|>two", "rejected": "one<|endoftext|>"}]
    dst = str(tmp_path / "b3.mindrecord")
    convert_preference(write_jsonl(tmp_path / "b3.jsonl", rows), dst, tok, seq, 50256, progress=False)
    record = read_back(dst)[0]
    expected = reference("gpt2", tok, rows[0]["prompt"], rows[0]["chosen"], rows[0]["rejected"], seq, 50256)
    c_len, r_len, div = expected["_lengths"]
    # chosen [.., one, eos, two, eos], rejected [.., one, eos, eos]: they differ at "two", the last two chosen tokens
    assert c_len == r_len + 1 and div == r_len - 1 and c_len < seq
    assert_record(record, expected)
    assert int(record["chosen_attention_mask"].sum()) == c_len and int(record["rejected_attention_mask"].sum()) == r_len
    assert record["rejected_input_ids"][r_len - 2 : r_len].tolist() == [50256, 50256]
    assert int(record["loss_mask"].sum()) == 2


# ---------------------------------------------------------------------------------------------------------------
# Other formats


def test_hh_transcripts(tokenizers, tmp_path):
    rows = [
        {"chosen": "\n\nHuman: What is 2+2?\n\nAssistant: 4.", "rejected": "\n\nHuman: What is 2+2?\n\nAssistant: 5."},
        {
            "chosen": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: Blue.",
            "rejected": "\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant: I won't.",
        },
    ]
    src = write_jsonl(tmp_path / "hh.jsonl", rows)
    pairs = list(read_pairs(src))
    assert [(p.prompt, p.chosen, p.rejected, p.line) for p in pairs] == [
        ("\n\nHuman: What is 2+2?\n\nAssistant:", " 4.", " 5.", 1),
        ("\n\nHuman: Hi\n\nAssistant: Hello!\n\nHuman: Name a colour.\n\nAssistant:", " Blue.", " I won't.", 2),
    ]
    dst = str(tmp_path / "hh.mindrecord")
    assert convert_preference(src, dst, tokenizers["gpt2"], 128, 50256, progress=False)["count"] == 2
    expected = reference("gpt2", tokenizers["gpt2"], pairs[1].prompt, pairs[1].chosen, pairs[1].rejected, 128, 50256)
    assert max(expected["_lengths"][:2]) < 128  # nothing cut
    assert_record(read_back(dst)[1], expected)


def test_prompt_chosen_rejected(tokenizers, tmp_path):
    rows = [{"prompt": f"Question {i}?", "chosen": "A good answer.", "rejected": "Bad."} for i in range(3)]
    src, dst = write_jsonl(tmp_path / "p.jsonl", rows), str(tmp_path / "p.mindrecord")
    stats = convert_preference(src, dst, tokenizers["llama"], 48, 2, fmt="pairwise", progress=False)
    assert stats["count"] == 3
    expected = reference("llama", tokenizers["llama"], "Question 2?", "A good answer.", "Bad.", 48, 2)
    assert_record(read_back(dst)[2], expected)
    assert read_back(dst)[2]["chosen_input_ids"][0] == 1  # SentencePiece: bos in front


CHAT_PAIR = {
    "system": "Be brief.",
    "history": [("Hi", "Hello!")],
    "question": "Name a colour.",
    "chosen": "Blue.",
    "rejected": "I won't.",
}


def chat_records():
    """The same two-turn pair in TRL's two conversational shapes and in LLaMA-Factory's ShareGPT shape."""
    p = CHAT_PAIR
    turns = [
        {"role": "system", "content": p["system"]},
        {"role": "user", "content": p["history"][0][0]},
        {"role": "assistant", "content": p["history"][0][1]},
        {"role": "user", "content": p["question"]},
    ]
    answer = {name: [{"role": "assistant", "content": p[name]}] for name in ("chosen", "rejected")}
    implicit = {name: turns + answer[name] for name in ("chosen", "rejected")}
    explicit = {"prompt": turns, **answer}
    sharegpt = {
        "system": p["system"],
        "conversations": [
            {"from": "human", "value": p["history"][0][0]},
            {"from": "gpt", "value": p["history"][0][1]},
            {"from": "human", "value": p["question"]},
        ],
        "chosen": {"from": "gpt", "value": p["chosen"]},
        "rejected": {"from": "gpt", "value": p["rejected"]},
    }
    return {"chat_implicit": implicit, "chat_explicit": explicit, "sharegpt": sharegpt}


@pytest.mark.parametrize("shape", ["chat_implicit", "chat_explicit", "sharegpt"])
def test_conversational_pairs(shape, tokenizers, tmp_path):
    """A conversational pair gives the prompt SFT's ShareGPT reader gives (system, earlier turns in the template's
    markup, the last question) and stores exactly what the same pair in the plain prompt/chosen/rejected format
    stores."""
    p = CHAT_PAIR
    src = write_jsonl(tmp_path / f"{shape}.jsonl", [chat_records()[shape]])
    (pair,) = read_pairs(src)
    prompt = f"{p['system']}\n\n{p['history'][0][0]}\n\n### 回答：\n{p['history'][0][1]}\n\n### 问题：\n{p['question']}"
    assert (pair.prompt, pair.chosen, pair.rejected) == (prompt, p["chosen"], p["rejected"])
    plain = write_jsonl(
        tmp_path / "plain.jsonl", [{"prompt": prompt, "chosen": p["chosen"], "rejected": p["rejected"]}]
    )
    for path, name in ((src, "conv"), (plain, "plain")):
        convert_preference(path, str(tmp_path / f"{name}.mindrecord"), tokenizers["gpt2"], 96, 50256, progress=False)
    conv, ref = read_back(str(tmp_path / "conv.mindrecord"))[0], read_back(str(tmp_path / "plain.mindrecord"))[0]
    for name in COLUMNS:
        np.testing.assert_array_equal(conv[name], ref[name], err_msg=name)
    expected = reference("gpt2", tokenizers["gpt2"], prompt, p["chosen"], p["rejected"], 96, 50256)
    assert_record(conv, expected)


@pytest.mark.parametrize(
    "record,message",
    [
        (
            {
                "chosen": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}],
                "rejected": [{"role": "user", "content": "other q"}, {"role": "assistant", "content": "b"}],
            },
            "field 'rejected': its turns before the last differ",
        ),
        (
            {
                "prompt": [{"role": "user", "content": "q"}],
                "chosen": [{"role": "user", "content": "a"}],
                "rejected": [{"role": "assistant", "content": "b"}],
            },
            "field 'chosen': the last message must be the assistant's response",
        ),
        (
            {"chosen": [], "rejected": [{"role": "assistant", "content": "b"}]},
            "field 'chosen': expected a non-empty list",
        ),
        (
            {
                "conversations": [{"from": "human", "value": "q"}],
                "chosen": {"from": "gpt", "value": "a"},
                "rejected": "b",
            },
            "field 'rejected': expected an assistant turn",
        ),
    ],
)
def test_bad_conversational_pairs(record, message, tmp_path):
    src = write_jsonl(tmp_path / "bad.jsonl", [record])
    with pytest.raises(ConversionError, match="bad.jsonl:1: " + message):
        list(read_pairs(src))


def test_oasst_best_vs_each_worse(tokenizers, tmp_path):
    with open(OASST, encoding="utf-8") as f:
        rows = json.load(f)
    pairs = list(read_pairs(OASST))
    assert len(pairs) == sum(len(r["output"]) - 1 for r in rows) == 11
    assert [(p.chosen, p.rejected) for p in pairs[:3]] == [(rows[0]["output"][0], w) for w in rows[0]["output"][1:]]
    assert [p.line for p in pairs] == [2] * 3 + [13] * 2 + [28] + [42] * 4 + [54]  # each record's opening line
    ((question, answer),) = rows[2]["history"]
    assert pairs[5].prompt == f"{question}\n\n### 回答：\n{answer}\n\n### 问题：\n{rows[2]['instruction']}"
    jsonl = write_jsonl(tmp_path / "oasst.jsonl", rows)  # the same rows as JSON Lines give the same pairs
    assert [(p.prompt, p.chosen, p.rejected) for p in read_pairs(jsonl)] == [
        (p.prompt, p.chosen, p.rejected) for p in pairs
    ]
    stats = convert_preference(OASST, str(tmp_path / "o.mindrecord"), tokenizers["llama"], 512, 2, progress=False)
    assert stats["count"] == 11 and stats["skipped_identical"] == 0


# ---------------------------------------------------------------------------------------------------------------
# Skips


def test_identical_and_empty_pairs_skipped_and_counted(tokenizers, tmp_path):
    long_prompt = "Please repeat. " * 40
    rows = [
        {"prompt": "p", "chosen": "same answer", "rejected": "same answer"},
        {"prompt": "p", "chosen": "good", "rejected": "bad"},
        {"prompt": "p", "chosen": "  ", "rejected": "bad"},
        {"prompt": long_prompt, "chosen": "good", "rejected": "bad"},
    ]  # responses cut to their eos at 96 tokens
    dst = str(tmp_path / "s.mindrecord")
    stats = convert_preference(
        write_jsonl(tmp_path / "s.jsonl", rows), dst, tokenizers["gpt2"], 96, 50256, progress=False
    )
    assert (stats["count"], stats["skipped_identical"], stats["skipped_empty"], stats["skipped_no_response"]) == (
        1,
        1,
        1,
        1,
    )
    assert len(read_back(dst)) == 1


def test_skip_bad_lines_counts(tokenizers, tmp_path):
    good = {"prompt": "p", "pos_resp": "good", "neg_resp": "bad"}
    src = tmp_path / "bad.jsonl"
    src.write_text(
        "\n".join(
            [
                json.dumps(good),
                "{not json",
                json.dumps({"prompt": "p", "pos_resp": "x"}),
                json.dumps({**good, "neg_resp": 3}),
                "",
                json.dumps(good),
            ]
        )
        + "\n",
        encoding="utf-8",
    )
    stats = convert_preference(
        str(src), str(tmp_path / "b.mindrecord"), tokenizers["gpt2"], 96, 50256, skip_bad_lines=True, progress=False
    )
    assert (stats["count"], stats["skipped_bad"]) == (2, 3)


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs: a clear error, and nothing left behind

GOOD = json.dumps({"prompt": "p", "pos_resp": "good", "neg_resp": "bad"})
BAD_INPUTS = {
    # name: (source text or None for a missing file, keyword overrides, substrings the message must contain)
    "malformed_json_line": (GOOD + '\n{"prompt": \n', {}, ["src.jsonl:2:", "malformed JSON"]),
    "missing_field": (
        GOOD + "\n" + GOOD + "\n" + json.dumps({"prompt": "p", "pos_resp": "x"}) + "\n",
        {},
        ["src.jsonl:3:", "field 'neg_resp'", "missing"],
    ),
    "non_string_field": (
        json.dumps({"prompt": 5, "pos_resp": "a", "neg_resp": "b"}) + "\n",
        {},
        ["src.jsonl:1:", "field 'prompt'", "expected a string, got int"],
    ),
    "empty_file": ("\n  \n", {}, ["src.jsonl", "empty file"]),
    "unknown_format_name": (GOOD + "\n", {"fmt": "alpaca"}, ["--format", "alpaca"]),
    "undetectable_keys": (
        json.dumps({"question": "q", "answer": "a"}) + "\n",
        {},
        ["src.jsonl:1:", "cannot detect the format", "--format"],
    ),
    "missing_src": (None, {}, ["--src_file", "no such file"]),
    "seq_length_too_small": (GOOD + "\n", {"seq_length": 1}, ["--seq_length", ">= 2"]),
    "bad_padding_side": (GOOD + "\n", {"padding_side": "middle"}, ["--padding_side", "middle"]),
    "array_not_of_objects": ('[\n  "a",\n  "b"\n]\n', {}, ["src.jsonl:2:", "expected an object"]),
    "malformed_json_array": ('[\n  {"prompt": "p",\n   "chosen": }\n]\n', {}, ["src.jsonl:3:", "malformed JSON"]),
    "all_rows_identical": (
        json.dumps({"prompt": "p", "pos_resp": "same", "neg_resp": "same"}) + "\n",
        {},
        ["no pairs to write", "1 identical"],
    ),
    "hh_prompt_mismatch": (
        json.dumps({"chosen": "\n\nHuman: a\n\nAssistant: b", "rejected": "\n\nHuman: c\n\nAssistant: d"}) + "\n",
        {},
        ["src.jsonl:1:", "field 'rejected'"],
    ),
    "oasst_single_answer": (
        json.dumps([{"instruction": "q", "input": "", "output": ["only"], "history": []}]),
        {},
        ["src.jsonl:1:", "field 'output'"],
    ),
    "pad_outside_vocab": (GOOD + "\n", {"pad_token_id": 50257}, ["--pad_token_id", "50257"]),
    "missing_tokenizer": (GOOD + "\n", {"tokenizer": "/nonexistent/tokenizer.json"}, ["--model", "not found"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_raises_and_leaves_nothing(case, tokenizers, tmp_path):
    text, overrides, needles = BAD_INPUTS[case]
    src = tmp_path / "src.jsonl"
    if text is not None:
        src.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    kwargs = dict(
        src_file=str(src),
        dst_file=str(out / "x.mindrecord"),
        tokenizer=tokenizers["gpt2"],
        seq_length=96,
        pad_token_id=50256,
        progress=False,
    )
    kwargs.update(overrides)
    with pytest.raises(ConversionError) as err:
        convert_preference(**kwargs)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    assert not out.exists(), leftovers(out)  # no file, no .db, no temporary folder, not even the created folder


def test_existing_output_survives_a_failed_conversion(tokenizers, tmp_path, monkeypatch):
    dst = str(tmp_path / "keep.mindrecord")
    convert_preference(CVALUES, dst, tokenizers["gpt2"], 512, 50256, progress=False)
    digests = {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in (dst, dst + ".db")}
    monkeypatch.setattr(cp, "WRITE_CHUNK", 2)  # some samples reach the temporary file before the bad line
    src = tmp_path / "late_error.jsonl"
    src.write_text("\n".join([GOOD] * 5 + ["{broken"]) + "\n", encoding="utf-8")
    with pytest.raises(ConversionError, match="late_error.jsonl:6:"):
        convert_preference(str(src), dst, tokenizers["gpt2"], 96, 50256, progress=False)
    assert leftovers(tmp_path) == ["keep.mindrecord", "keep.mindrecord.db", "late_error.jsonl"]
    assert {p: hashlib.sha256(open(p, "rb").read()).hexdigest() for p in digests} == digests
    assert len(read_back(dst)) == 8


# ---------------------------------------------------------------------------------------------------------------
# CLI and the example script


def test_main_reports_errors_and_stats(tmp_path, capsys):
    dst = str(tmp_path / "m.mindrecord")
    assert cp.main(["--model", "gpt2", "--src_file", CVALUES, "--dst_file", dst, "--seq_length", "1"]) == 1
    assert "--seq_length" in capsys.readouterr().err
    assert cp.main(["--model", "gpt2", "--src_file", CVALUES, "--dst_file", dst, "--seq_length", "512"]) == 0
    out = capsys.readouterr().out
    assert "| 8 | 0 | 0 | 0 | 0 |" in out  # default pad id is the tokenizer's eos
    assert out.rstrip().endswith(f"Transformation finished! Output file refer: {dst}")


def test_example_script_subprocess(tmp_path):
    script = os.path.join(ROOT, "examples", "reward_model_train_tutorial", "cvalues_comparison.py")
    dst = str(tmp_path / "mindrecord" / "train_512.mindrecord")
    proc = subprocess.run(
        [
            sys.executable,
            script,
            "--model",
            "gpt2",
            "--src_file",
            CVALUES,
            "--dst_file",
            dst,
            "--seq_length",
            "512",
            "--pad_token_id",
            "50256",
        ],
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == f"Transformation finished! Output file refer: {dst}"
    assert len(read_back(dst)) == 8
