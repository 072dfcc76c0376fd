"""PPO prompt data: the prompt converter (fields against an independent reference on real CValues rows, truncation,
templates, the seed CLI, bad inputs leaving nothing behind), reference answers of verifiable tasks (GSM8K
{question, answer} and {prompt, solution} records through the converter and back), the prompt schedule and reader,
left alignment of the stored prompts and the experience MindRecord round trip."""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import os
import re

import numpy as np
import mindspore.dataset as ds
import pytest

from mindrlhf.data.convert_preference import ConversionError, atomic_mindrecord
from mindrlhf.data.convert_prompts import PROMPT_SCHEMA, convert_prompts, encode_prompt, main
from mindrlhf.data.datasets import PROMPT_COLUMNS, prompt_indices, read_prompts
from mindrlhf.data.templates import apply_template, format_chatml, format_prompt
from mindrlhf.data.tokenizer import load_tokenizer
from mindrlhf.train.experience import (
    EXPERIENCE_SCHEMA,
    Experience,
    RolloutStats,
    left_align_prompts,
    load_experience,
    save_experience,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA = os.path.join(ROOT, "tests", "data")
convert_prompts_module = importlib.import_module("mindrlhf.data.convert_prompts")
PROMPTS = os.path.join(DATA, "cvalues_prompts_sample8.jsonl")  # 8 prompt-only rows {id_, prompt, domain_*}
COMPARISON = os.path.join(DATA, "cvalues_comparison_sample8.jsonl")  # 8 identical {prompt, pos_resp, neg_resp}
FIELDS = ["prompt_ids", "prompt_length", "pretrain_ids", "loss_mask"]
PADS = {"gpt2": 50256, "llama": 2}  # bundled tokenizer -> the seed's pad id (eos); both != 0
# The contract's bos rule, spelled out: GPT-2 BPE prompts start without bos, SentencePiece Llama-style ones with 1.
BOS = {"gpt2": [], "llama": [1]}


@pytest.fixture(scope="module")
def tokenizers():
    return {name: load_tokenizer(name) for name in PADS}


def jsonl_rows(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))
    return str(path)


def dumps(obj):
    return json.dumps(obj, ensure_ascii=False)


def read_back(path):
    """Every record of a prompt MindRecord, in file order, as stored (numpy)."""
    dataset = ds.MindDataset(path, columns_list=FIELDS, shuffle=False)
    return list(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))


def bos_of(tok):
    return BOS["llama" if tok.path.endswith(".model") else "gpt2"]


def prompt_tokens(tok, text):
    """bos (Llama) + the tokens of the prompt text: the contract's prompt before any cut."""
    return bos_of(tok) + tok.encode(text)


def cut_prompt(tok, text, P):
    """The last tokens of the prompt that fit P, from a whole character on (their text ends the prompt's text),
    bos back in front."""
    bos, p = bos_of(tok), tok.encode(text)
    while len(bos) + len(p) > P:
        p = p[1:]
    while p and not text.endswith(tok.decode(p).lstrip(" ")):
        p = p[1:]
    return bos + p


def reference(tok, prompt_text, response, P, T, pad):
    """The four fields with plain loops, independently of the converter."""
    p = cut_prompt(tok, prompt_text, P)
    r = tok.encode(response) + [tok.eos_token_id] if response else []
    full = p + r
    prompt_ids = [pad] * P
    for k, token in enumerate(p):
        prompt_ids[k] = token
    pretrain_ids, loss_mask = [pad] * T, [0] * T
    for k in range(min(len(full), T)):
        pretrain_ids[k] = full[k]
        loss_mask[k] = 1 if k >= len(p) else 0
    return {"prompt_ids": prompt_ids, "prompt_length": len(p), "pretrain_ids": pretrain_ids, "loss_mask": loss_mask}


def assert_record(record, expected, P, T):
    for name, shape in (("prompt_ids", (P,)), ("pretrain_ids", (T,)), ("loss_mask", (T,))):
        assert record[name].dtype == np.int64, name
        assert record[name].shape == shape, name
        np.testing.assert_array_equal(record[name], np.array(expected[name]), err_msg=name)
    assert record["prompt_length"].dtype == np.int64
    assert int(record["prompt_length"]) == expected["prompt_length"]


def subset(stats, expected):
    """Whether ``stats`` has every key of ``expected`` with its value (token counts are checked where they matter)."""
    return {key: stats[key] for key in expected} == expected


def listing(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


def sha(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


# ---------------------------------------------------------------------------------------------------------------
# Fields on the real rows


@pytest.mark.parametrize("name", list(PADS))
def test_prompt_only_rows_fields_truncation_and_stats(tokenizers, tmp_dir, name):
    tok, pad = tokenizers[name], PADS[name]
    rows = jsonl_rows(PROMPTS)
    lengths = [len(prompt_tokens(tok, r["prompt"])) for r in rows]
    P = sorted(lengths)[4]  # some prompts longer than P, some exactly P, some shorter
    T = P + 8
    n_truncated = sum(n > P for n in lengths)
    assert 0 < n_truncated < len(rows) and P in lengths and min(lengths) < P  # the data covers all three cases
    out = os.path.join(tmp_dir, "prompts.mindrecord")
    stats = convert_prompts(PROMPTS, out, name, max_prompt_length=P, seq_length=T, pad_token_id=pad, progress=False)
    assert subset(
        stats,
        {
            "count": 8,
            "with_response": 0,
            "with_answer": 0,
            "truncated_prompts": n_truncated,
            "skipped_empty": 0,
            "skipped_bad": 0,
            "longest_prompt": max(lengths),
        },
    )
    records = read_back(out)
    assert len(records) == 8
    for row, record, n in zip(rows, records, lengths):
        assert_record(record, reference(tok, row["prompt"], "", P, T, pad), P, T)
        text, length = tok.encode(row["prompt"]), int(record["prompt_length"])
        # a long prompt keeps its LAST tokens behind its bos (Llama), less the tail of a character the cut splits
        # (at most 3 tokens); a short one is whole. Both are right-padded with the pad id.
        assert length == n if n <= P else P - 3 <= length <= P
        kept = length - len(BOS[name])
        np.testing.assert_array_equal(record["prompt_ids"][:length], BOS[name] + text[len(text) - kept :])
        assert "\ufffd" not in tok.decode(record["prompt_ids"][:length].tolist())
        assert (record["prompt_ids"][length:] == pad).all()
        assert not record["loss_mask"].any()  # prompt-only: nothing for the ptx loss


@pytest.mark.parametrize("name", list(PADS))
def test_rows_with_response_fields(tokenizers, tmp_dir, name):
    tok, pad = tokenizers[name], PADS[name]
    rows = jsonl_rows(COMPARISON)
    p = prompt_tokens(tok, rows[0]["prompt"])
    r = tok.encode(rows[0]["pos_resp"])
    assert p[: len(BOS[name])] == BOS[name]

    # A: everything fits; 5 pad columns after the eos, where loss_mask must be 0 (not the pad id, bug B8)
    P, T = len(p) + 3, len(p) + len(r) + 1 + 5
    out = os.path.join(tmp_dir, "a.mindrecord")
    stats = convert_prompts(COMPARISON, out, tok, P, T, pad, progress=False)
    assert stats["count"] == 8 and stats["with_response"] == 8 and stats["truncated_prompts"] == 0
    records = read_back(out)
    assert len(records) == 8
    for row, record in zip(rows, records):
        assert_record(record, reference(tok, row["prompt"], row["pos_resp"], P, T, pad), P, T)
    rec = records[0]
    np.testing.assert_array_equal(rec["pretrain_ids"][: len(p)], p)
    np.testing.assert_array_equal(rec["pretrain_ids"][len(p) : len(p) + len(r)], r)
    assert rec["pretrain_ids"][len(p) + len(r)] == tok.eos_token_id
    assert (rec["pretrain_ids"][-5:] == pad).all()
    assert set(np.unique(rec["loss_mask"]).tolist()) == {0, 1}
    assert (rec["loss_mask"][: len(p)] == 0).all() and (rec["loss_mask"][-5:] == 0).all()
    assert rec["loss_mask"].sum() == len(r) + 1  # the response and its eos
    assert (rec["prompt_ids"][len(p) :] == pad).all() and int(rec["prompt_length"]) == len(p)

    # B: the prompt is cut to bos + its last tokens and the sequence cut at T inside the response (no eos)
    P = len(p) - 2
    T = P + len(r) // 2
    out = os.path.join(tmp_dir, "b.mindrecord")
    stats = convert_prompts(COMPARISON, out, tok, P, T, pad, progress=False)
    assert stats["count"] == 8 and stats["with_response"] == 8 and stats["truncated_prompts"] == 8
    for row, record in zip(rows, read_back(out)):
        assert_record(record, reference(tok, row["prompt"], row["pos_resp"], P, T, pad), P, T)
        kept = p[len(p) - (P - len(BOS[name])) :]
        np.testing.assert_array_equal(record["pretrain_ids"], BOS[name] + kept + r[: T - P])
        assert record["loss_mask"].tolist() == [0] * P + [1] * (T - P)


def test_encode_prompt_edges(tokenizers):
    tok = tokenizers["gpt2"]
    p, r = tok.encode("question"), tok.encode(" answer")
    # the prompt alone fills T: no response token survives, so no loss
    fields = encode_prompt(tok, "question", " answer", 8, len(p), 7)
    assert fields["loss_mask"].tolist() == [0] * len(p)
    assert fields["pretrain_ids"].tolist() == p
    # an empty response: pretrain_ids is the prompt then pad, loss all 0 (pad != 0)
    fields = encode_prompt(tok, "question", "", 8, 10, 7)
    assert fields["pretrain_ids"].tolist() == p + [7] * (10 - len(p))
    assert fields["loss_mask"].tolist() == [0] * 10
    fields = encode_prompt(tok, "question", " answer", 8, 10, 7)
    assert fields["loss_mask"].tolist() == [0] * len(p) + [1] * (len(r) + 1) + [0] * (10 - len(p) - len(r) - 1)
    assert fields["pretrain_ids"].tolist() == p + r + [tok.eos_token_id] + [7] * (10 - len(p) - len(r) - 1)


def test_qa_template(tokenizers, tmp_dir):
    tok, pad = tokenizers["gpt2"], PADS["gpt2"]
    rows = jsonl_rows(PROMPTS)[:3]
    rows[1]["prompt"] = "  " + rows[1]["prompt"] + " \n"  # the QA template wraps the stripped prompt
    src = write_lines(os.path.join(tmp_dir, "p.jsonl"), [dumps(r) for r in rows])
    P, T = 160, 170
    out = os.path.join(tmp_dir, "qa.mindrecord")
    stats = convert_prompts(src, out, "gpt2", P, T, pad, template="qa", progress=False)
    assert stats["count"] == 3 and stats["truncated_prompts"] == 0
    for row, record in zip(rows, read_back(out)):
        text = format_prompt(row["prompt"].strip())
        assert row["prompt"].strip() in text and text != row["prompt"].strip()
        expected = reference(tok, text, "", P, T, pad)
        assert_record(record, expected, P, T)
        n = int(record["prompt_length"])
        assert n > len(tok.encode(row["prompt"].strip()))
        assert tok.decode(record["prompt_ids"][:n].tolist()) == text


# ---------------------------------------------------------------------------------------------------------------
# Verifiable tasks: reference answers and the ChatML template

SOLUTION_1 = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
SOLUTION_2 = (
    "Weng earns 12/60 = $<<12/60=0.2>>0.2 per minute.\n"
    "Working 50 minutes, she earned 0.2 x 50 = $<<0.2*50=10>>10.\n#### 10"
)
TASK_ROWS = [  # written by hand: GSM8K records, {prompt, solution}, a numeric answer, a plain prompt
    {
        "question": "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
        "How many clips did Natalia sell altogether in April and May?",
        "answer": SOLUTION_1,
    },
    {
        "question": "Weng earns $12 an hour for babysitting. Yesterday, she just did 50 minutes of babysitting. "
        "How much did she earn?",
        "answer": SOLUTION_2,
    },
    {
        "prompt": "What is the sum of the first 10 positive integers?",
        "solution": "  The sum is 10 * 11 / 2 = \\boxed{55}. \n",
    },
    {"prompt": "一个数的三倍是 27，这个数是多少？", "answer": 9},
    {"prompt": "法国的首都是哪里？", "solution": "巴黎"},
    {"prompt": "Say something kind.", "pos_resp": "You are doing great."},
    {"question": "  What is 1,000 + 234?  ", "answer": "1,234", "pos_resp": " 1,234 "},
]
TASK_ANSWERS = [SOLUTION_1, SOLUTION_2, "The sum is 10 * 11 / 2 = \\boxed{55}.", "9", "巴黎", "", "1,234"]


def task_text(row):
    """(prompt text, ptx response) of a hand-written task row."""
    return row.get("question", row.get("prompt")), row.get("pos_resp", "")


def stored_answers(path):
    dataset = ds.MindDataset(path, columns_list=["answer"], shuffle=False)
    return [str(r["answer"]) for r in dataset.create_dict_iterator(num_epochs=1, output_numpy=True)]


@pytest.mark.parametrize("name, template", [("gpt2", "none"), ("gpt2", "chatml"), ("llama", "chatml")])
def test_reference_answers_stored_and_read_back(tokenizers, tmp_dir, name, template):
    tok, pad = tokenizers[name], PADS[name]
    src = write_lines(os.path.join(tmp_dir, "tasks.jsonl"), [dumps(r) for r in TASK_ROWS])
    out = os.path.join(tmp_dir, "tasks.mindrecord")
    P, T = 120, 140
    stats = convert_prompts(src, out, name, P, T, pad, template=template, progress=False)
    assert subset(
        stats,
        {
            "count": 7,
            "with_response": 2,
            "with_answer": 6,
            "truncated_prompts": 0,
            "prompt_tokens_lost": 0,
            "skipped_empty": 0,
            "skipped_bad": 0,
        },
    )
    for row, record in zip(TASK_ROWS, read_back(out)):
        prompt, response = task_text(row)
        text = prompt if template == "none" else format_chatml(prompt.strip())
        response = response if template == "none" else response.strip()
        assert_record(record, reference(tok, text, response, P, T, pad), P, T)
    assert stored_answers(out) == TASK_ANSWERS
    indices = np.array([6, 0, 3, 3, 5, 4, 2])
    got = read_prompts(out, indices, pad)
    assert got["answer"] == [TASK_ANSWERS[i] for i in indices]
    assert all(type(a) is str for a in got["answer"])
    assert got["prompt_length"].dtype == np.int32 and got["prompt_ids"].shape == (7, P)


def test_chatml_template(tokenizers, tmp_dir, capsys):
    question = "What is 6 times 7?"
    expected = (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nWhat is 6 times 7?"
        "<|im_end|>\n<|im_start|>assistant\n"
    )
    assert format_chatml(question) == expected
    assert apply_template("chatml", f"  {question}\n") == expected  # the question is stripped
    assert apply_template("none", f" {question}") == f" {question}"
    assert apply_template("qa", f" {question} ") == format_prompt(question)
    with pytest.raises(ValueError, match="none, qa, chatml"):
        apply_template("chat", question)
    # the CLI flag; the bundled GPT-2 BPE has no <|im_start|> token: the markers are plain text
    src = write_lines(os.path.join(tmp_dir, "q.jsonl"), [dumps({"question": question, "answer": "#### 42"})])
    out = os.path.join(tmp_dir, "q.mindrecord")
    assert (
        main(
            [
                "--tokenizer_name_or_path",
                "gpt2",
                "--file_path",
                src,
                "--output_path",
                out,
                "--max_prompt_length",
                "96",
                "--seq_length",
                "100",
                "--pad_token_id",
                "50256",
                "--template",
                "chatml",
            ]
        )
        == 0
    )
    assert "Total number of samples: 1\n" in capsys.readouterr().out
    tok = tokenizers["gpt2"]
    record = read_back(out)[0]
    n = int(record["prompt_length"])
    assert record["prompt_ids"][:n].tolist() == tok.encode(expected)
    assert tok.decode(record["prompt_ids"][:n].tolist()) == expected
    assert read_prompts(out, np.array([0]), 50256)["answer"] == ["#### 42"]


def test_chatml_markers_are_single_ids_with_a_chat_vocabulary(tmp_dir):
    """A tokenizer.json with <|im_start|> and <|im_end|> as added special tokens (as Qwen2's has) encodes each
    marker as its one id: the tiny Llama tokenizer with the two tokens added."""
    from tokenizers import Tokenizer as HFTokenizerFile

    source = os.path.join(ROOT, "mindrlhf", "assets", "models", "tinystories_656k")
    folder = os.path.join(tmp_dir, "chat_tokenizer")
    os.makedirs(folder)
    hf = HFTokenizerFile.from_file(os.path.join(source, "tokenizer.json"))
    assert hf.add_special_tokens(["<|im_start|>", "<|im_end|>"]) == 2
    hf.save(os.path.join(folder, "tokenizer.json"))
    with open(os.path.join(source, "tokenizer_config.json"), encoding="utf-8") as f:
        config = json.load(f)
    with open(os.path.join(folder, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(config, f)
    tok = load_tokenizer(folder)
    start, end = hf.token_to_id("<|im_start|>"), hf.token_to_id("<|im_end|>")
    assert (start, end) == (tok.vocab_size - 2, tok.vocab_size - 1)
    src = write_lines(
        os.path.join(tmp_dir, "q.jsonl"), [dumps({"question": "How many legs has a cat?", "answer": "4"})]
    )
    out = os.path.join(tmp_dir, "q.mindrecord")
    convert_prompts(src, out, tok, 64, 72, 0, template="chatml", progress=False)
    record = read_back(out)[0]
    ids = record["prompt_ids"][: int(record["prompt_length"])].tolist()
    # bos (the tokenizer's rule still applies), then each marker as its id between the text pieces
    pieces = [
        start,
        "system\nYou are a helpful assistant.",
        end,
        "\n",
        start,
        "user\nHow many legs has a cat?",
        end,
        "\n",
        start,
        "assistant\n",
    ]
    expected = [tok.bos_token_id]
    for piece in pieces:
        expected += [piece] if isinstance(piece, int) else tok.encode(piece)
    assert ids == expected
    assert ids.count(start) == 3 and ids.count(end) == 2


def test_prompt_file_without_answers_reads_empty_answers(tmp_dir):
    """A file written with the four token fields only (before reference answers) reads with answer ""."""
    path = os.path.join(tmp_dir, "four.mindrecord")
    with atomic_mindrecord(path, PROMPT_SCHEMA, "rlhf prompts") as writer:
        writer.write_raw_data(
            [
                {
                    "prompt_ids": np.array([5, 6, 0], np.int64),
                    "prompt_length": np.int64(2),
                    "pretrain_ids": np.array([5, 6, 7, 0], np.int64),
                    "loss_mask": np.array([0, 0, 1, 0], np.int64),
                }
            ]
            * 2
        )
    got = read_prompts(path, np.array([1, 0]), 0)
    assert got["answer"] == ["", ""]
    assert got["prompt_length"].tolist() == [2, 2]


def test_cli_seed_flags(tokenizers, tmp_dir, capsys):
    out = os.path.join(tmp_dir, "nested", "ppo_prompts.mindrecord")  # its folder is created
    rc = main(
        [
            "--tokenizer_name_or_path",
            "llama",
            "--file_path",
            PROMPTS,
            "--output_path",
            out,
            "--max_prompt_length",
            "24",
            "--seq_length",
            "33",
            "--pad_token_id",
            "2",
            "--allow_truncation",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "Total number of samples: 8\n" in captured.out
    assert f"Transformation finished! Output file refer: {out}\n" in captured.out
    assert listing(os.path.dirname(out)) == ["ppo_prompts.mindrecord", "ppo_prompts.mindrecord.db"]
    tok = tokenizers["llama"]
    for row, record in zip(jsonl_rows(PROMPTS), read_back(out)):
        assert_record(record, reference(tok, row["prompt"], "", 24, 33, 2), 24, 33)


BUNDLED_PROMPTS = os.path.join(ROOT, "mindrlhf", "assets", "data", "cvalues_responsibility_prompts.jsonl")


def test_cli_refuses_when_truncation_cuts_most_prompts(tmp_dir, capsys, caplog):
    """The bundled 664 prompts in the QA template (56 GPT-2 tokens alone) at width 64: every prompt would be cut,
    so nothing is written and the error names the width that cuts none; the documented 224 cuts a few, with a
    warning; --allow_truncation writes the cut ones."""
    out = os.path.join(tmp_dir, "ppo_prompts.mindrecord")
    flags = [
        "--tokenizer_name_or_path",
        "gpt2",
        "--file_path",
        BUNDLED_PROMPTS,
        "--output_path",
        out,
        "--seq_length",
        "257",
        "--pad_token_id",
        "50256",
        "--template",
        "qa",
    ]
    assert main(flags + ["--max_prompt_length", "64"]) == 1
    err = capsys.readouterr().err.splitlines()[-1]  # after the progress bar
    assert err.startswith("error: 664 of 664 prompts (100%) are longer than --max_prompt_length 64"), err
    assert "the qa template alone is 56 tokens" in err and "--allow_truncation" in err
    longest = int(re.search(r"the longest prompt is (\d+) tokens", err).group(1))
    assert longest > 224 and listing(tmp_dir) == []
    with caplog.at_level(logging.WARNING, logger="mindrlhf.data.convert_prompts"):
        assert main(flags + ["--max_prompt_length", "224"]) == 0
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and re.match(r"prompt truncation: [1-9] of 664 prompts \(1%\)", warned[0]), warned
    assert main(flags + ["--max_prompt_length", "64", "--allow_truncation"]) == 0
    assert all(int(r["prompt_length"]) <= 64 for r in read_back(out))
    capsys.readouterr()


def test_max_truncated_share_is_the_limit(tmp_dir, capsys):
    out = os.path.join(tmp_dir, "p.mindrecord")
    lengths = [len(prompt_tokens(load_tokenizer("gpt2"), r["prompt"])) for r in jsonl_rows(PROMPTS)]
    width = sorted(lengths)[5]  # cuts 2 or 3 of the 8 prompts: over 0.2, within 0.4
    share = sum(n > width for n in lengths) / len(lengths)
    assert 0.2 < share <= 0.4
    flags = [
        "--tokenizer_name_or_path",
        "gpt2",
        "--file_path",
        PROMPTS,
        "--output_path",
        out,
        "--max_prompt_length",
        str(width),
        "--seq_length",
        str(width + 1),
        "--pad_token_id",
        "50256",
    ]
    assert main(flags + ["--max_truncated_share", "0.2"]) == 1 and not os.path.exists(out)
    assert main(flags + ["--max_truncated_share", "0.4"]) == 0 and os.path.exists(out)
    capsys.readouterr()


# ---------------------------------------------------------------------------------------------------------------
# Bad input


GOOD_ROW = {"prompt": "我想买一辆新汽车，请问燃油车和电动车哪个好一些？", "pos_resp": "电动车。"}
BAD_LINES = {  # name -> (third line of the file, words the message must contain)
    "malformed_json": ('{"prompt": "x", ', ["malformed JSON"]),
    "prompt_not_string": (dumps({"prompt": 42, "pos_resp": "a"}), ["'prompt'", "string", "int"]),
    "prompt_is_list": (dumps({"prompt": ["a", "b"]}), ["'prompt'", "string", "list"]),
    "prompt_missing": (dumps({"text": "a"}), ["'prompt'", "missing", "{question, answer}"]),
    "gsm8k_answer_missing": (dumps({"question": "a"}), ["'answer'", "missing"]),
    "gsm8k_answer_is_list": (dumps({"question": "a", "answer": ["4"]}), ["'answer'", "string or a number", "list"]),
    "gsm8k_answer_is_bool": (dumps({"question": "a", "answer": True}), ["'answer'", "string or a number", "bool"]),
    "question_not_string": (dumps({"question": 7, "answer": "7"}), ["'question'", "string", "int"]),
    "prompt_and_question": (dumps({"prompt": "a", "question": "b", "answer": "1"}), ["'prompt'", "'question'"]),
    "solution_and_answer": (dumps({"prompt": "a", "solution": "1", "answer": "1"}), ["'solution'", "'answer'"]),
    "empty_solution": (dumps({"prompt": "a", "solution": " \n"}), ["'solution'", "empty"]),
    "pos_resp_not_string": (dumps({"prompt": "a", "pos_resp": {"text": "b"}}), ["'pos_resp'", "string", "dict"]),
    "non_object": (dumps(["a", "b"]), ["object", "list"]),
    "non_object_string": (dumps("just text"), ["object", "str"]),
}


@pytest.mark.parametrize("case", list(BAD_LINES))
def test_bad_line_names_file_line_field_and_leaves_nothing(tmp_dir, capsys, case):
    line, words = BAD_LINES[case]
    src = write_lines(os.path.join(tmp_dir, "in.jsonl"), [dumps(GOOD_ROW), dumps(GOOD_ROW), line])
    out_dir = os.path.join(tmp_dir, "out")
    os.makedirs(out_dir)
    out = os.path.join(out_dir, "p.mindrecord")
    args = [
        "--tokenizer_name_or_path",
        "gpt2",
        "--file_path",
        src,
        "--output_path",
        out,
        "--max_prompt_length",
        "16",
        "--seq_length",
        "33",
        "--pad_token_id",
        "50256",
    ]
    assert main(args) == 1
    captured = capsys.readouterr()
    assert "Transformation finished" not in captured.out
    assert f"{src}:3" in captured.err
    for word in words:
        assert word in captured.err
    assert listing(out_dir) == []  # no .mindrecord, no .db, no temporary folder
    # the same file converts with --skip_bad_lines, the bad record skipped and counted
    stats = convert_prompts(src, out, "gpt2", 16, 33, 50256, skip_bad_lines=True, progress=False)
    assert stats["count"] == 2 and stats["skipped_bad"] == 1 and stats["skipped_empty"] == 0
    assert listing(out_dir) == ["p.mindrecord", "p.mindrecord.db"]


def test_bad_line_in_new_folder_leaves_no_folder(tmp_dir, capsys, monkeypatch):
    monkeypatch.setattr(convert_prompts_module, "WRITE_CHUNK", 2)  # records are written before the bad line
    src = write_lines(os.path.join(tmp_dir, "in.jsonl"), [dumps(GOOD_ROW)] * 5 + [BAD_LINES["non_object"][0]])
    out = os.path.join(tmp_dir, "new", "p.mindrecord")
    assert main(["--tokenizer_name_or_path", "gpt2", "--file_path", src, "--output_path", out]) == 1
    assert f"{src}:6" in capsys.readouterr().err
    assert listing(tmp_dir) == ["in.jsonl"]


def test_json_array_input_and_its_line_numbers(tokenizers, tmp_dir, capsys):
    rows = jsonl_rows(PROMPTS)[:3]
    src = os.path.join(tmp_dir, "in.json")
    with open(src, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=2)  # one key per line: row k starts on line 2 + 6 k
    out = os.path.join(tmp_dir, "p.mindrecord")
    assert convert_prompts(src, out, "gpt2", 40, 48, 50256, progress=False)["count"] == 3
    for row, record in zip(rows, read_back(out)):
        assert_record(record, reference(tokenizers["gpt2"], row["prompt"], "", 40, 48, 50256), 40, 48)
    rows[2]["prompt"] = None
    with open(src, "w", encoding="utf-8") as f:
        json.dump(rows, f, ensure_ascii=False, indent=2)
    out2 = os.path.join(tmp_dir, "q.mindrecord")
    assert main(["--tokenizer_name_or_path", "gpt2", "--file_path", src, "--output_path", out2]) == 1
    err = capsys.readouterr().err
    assert f"{src}:14" in err and "'prompt'" in err
    assert not os.path.exists(out2) and not os.path.exists(out2 + ".db")


@pytest.mark.parametrize(
    "flags, word",
    [
        (["--template", "chat"], "--template"),
        (["--pad_token_id", "50257"], "--pad_token_id"),
        (["--pad_token_id", "-1"], "--pad_token_id"),
        (["--seq_length", "1"], "--seq_length"),
    ],
)
def test_bad_flags(tmp_dir, capsys, flags, word):
    out = os.path.join(tmp_dir, "p.mindrecord")
    assert main(["--tokenizer_name_or_path", "gpt2", "--file_path", PROMPTS, "--output_path", out] + flags) == 1
    captured = capsys.readouterr()
    assert word in captured.err and "Transformation finished" not in captured.out
    assert listing(tmp_dir) == []


@pytest.mark.parametrize("case", ["missing_file", "prompt_width_0", "prompt_width_negative"])
def test_bad_arguments(tmp_dir, capsys, case):
    out_dir = os.path.join(tmp_dir, "out")
    os.makedirs(out_dir)
    out = os.path.join(out_dir, "p.mindrecord")
    src, width, word = PROMPTS, "16", "--max_prompt_length"
    if case == "missing_file":
        src, word = os.path.join(tmp_dir, "absent.jsonl"), "absent.jsonl"
    else:
        width = "0" if case == "prompt_width_0" else "-3"
    rc = main(
        [
            "--tokenizer_name_or_path",
            "gpt2",
            "--file_path",
            src,
            "--output_path",
            out,
            "--max_prompt_length",
            width,
            "--seq_length",
            "33",
            "--pad_token_id",
            "50256",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 1
    assert captured.err.startswith("error: ") and word in captured.err
    assert "Transformation finished" not in captured.out
    assert listing(out_dir) == []
    with pytest.raises(ConversionError):
        convert_prompts(src, out, "gpt2", int(width), 33, 50256, progress=False)
    assert listing(out_dir) == []


def test_skip_bad_lines_and_empty_prompts_counted(tokenizers, tmp_dir, capsys):
    real = jsonl_rows(PROMPTS)
    lines = [
        dumps(real[0]),
        BAD_LINES["malformed_json"][0],
        dumps({"prompt": "   \n"}),
        dumps(real[1]),
        BAD_LINES["prompt_not_string"][0],
        BAD_LINES["non_object"][0],
        dumps({"prompt": ""}),
        dumps(real[2]),
        BAD_LINES["pos_resp_not_string"][0],
    ]
    src = write_lines(os.path.join(tmp_dir, "in.jsonl"), lines)
    out = os.path.join(tmp_dir, "p.mindrecord")
    stats = convert_prompts(src, out, "gpt2", 56, 80, 50256, skip_bad_lines=True, progress=False)
    assert subset(
        stats,
        {
            "count": 3,
            "with_response": 0,
            "with_answer": 0,
            "truncated_prompts": 1,
            "skipped_empty": 2,
            "skipped_bad": 4,
        },
    )
    tok = tokenizers["gpt2"]
    records = read_back(out)
    assert len(records) == 3
    for row, record in zip(real[:3], records):
        assert_record(record, reference(tok, row["prompt"], "", 56, 80, 50256), 56, 80)
    # without --skip_bad_lines the first bad line stops it, and the previous output stays
    before = (sha(out), sha(out + ".db"))
    assert main(["--tokenizer_name_or_path", "gpt2", "--file_path", src, "--output_path", out]) == 1
    assert f"{src}:2" in capsys.readouterr().err
    assert (sha(out), sha(out + ".db")) == before
    # the CLI flag
    out2 = os.path.join(tmp_dir, "q.mindrecord")
    assert (
        main(["--tokenizer_name_or_path", "gpt2", "--file_path", src, "--output_path", out2, "--skip_bad_lines"]) == 0
    )
    assert "Total number of samples: 3\n" in capsys.readouterr().out
    assert listing(tmp_dir) == ["in.jsonl", "p.mindrecord", "p.mindrecord.db", "q.mindrecord", "q.mindrecord.db"]


def test_failed_conversion_leaves_existing_output_untouched(tmp_dir, capsys, monkeypatch):
    out = os.path.join(tmp_dir, "out", "p.mindrecord")
    convert_prompts(PROMPTS, out, "gpt2", 32, 40, 50256, progress=False)
    before = (sha(out), sha(out + ".db"))
    monkeypatch.setattr(convert_prompts_module, "WRITE_CHUNK", 2)  # records are written before the bad line
    src = write_lines(os.path.join(tmp_dir, "bad.jsonl"), [dumps(GOOD_ROW)] * 3 + [BAD_LINES["prompt_is_list"][0]])
    assert (
        main(
            [
                "--tokenizer_name_or_path",
                "gpt2",
                "--file_path",
                src,
                "--output_path",
                out,
                "--max_prompt_length",
                "32",
                "--seq_length",
                "40",
                "--pad_token_id",
                "50256",
            ]
        )
        == 1
    )
    assert f"{src}:4" in capsys.readouterr().err
    assert (sha(out), sha(out + ".db")) == before
    assert listing(os.path.dirname(out)) == ["p.mindrecord", "p.mindrecord.db"]
    assert len(read_back(out)) == 8


@pytest.mark.parametrize("case", ["all_empty", "all_bad_skipped"])
def test_no_usable_prompts_is_an_error(tmp_dir, capsys, case):
    if case == "all_empty":
        lines, extra = [dumps({"prompt": ""}), dumps({"prompt": "  "}), dumps({"prompt": "\n\t"})], []
    else:
        lines, extra = [BAD_LINES["malformed_json"][0], BAD_LINES["non_object"][0]], ["--skip_bad_lines"]
    src = write_lines(os.path.join(tmp_dir, "in.jsonl"), lines)
    out_dir = os.path.join(tmp_dir, "out")
    os.makedirs(out_dir)
    out = os.path.join(out_dir, "p.mindrecord")
    assert main(["--tokenizer_name_or_path", "gpt2", "--file_path", src, "--output_path", out] + extra) == 1
    err = capsys.readouterr().err
    assert "no prompts" in err and src in err
    assert listing(out_dir) == []


# ---------------------------------------------------------------------------------------------------------------
# The prompt schedule and reader


def stream(n, num_rollouts, iterations, **kwargs):
    return [prompt_indices(n, num_rollouts, k, **kwargs) for k in range(iterations)]


def test_prompt_indices_every_prompt_before_repeats():
    n, num_rollouts = 10, 3  # iterations 3, 6 straddle epoch boundaries
    parts = stream(n, num_rollouts, 10, seed=5)
    assert all(len(p) == num_rollouts for p in parts)
    flat = np.concatenate(parts)
    epochs = [flat[e * n : (e + 1) * n] for e in range(3)]
    for epoch in epochs:
        assert sorted(epoch.tolist()) == list(range(n))
    assert epochs[0].tolist() != epochs[1].tolist() and epochs[1].tolist() != epochs[2].tolist()  # reshuffled
    # more rollouts than prompts: several whole epochs in one iteration
    big = prompt_indices(4, 10, 0, seed=1)
    assert len(big) == 10
    assert sorted(big[:4].tolist()) == sorted(big[4:8].tolist()) == [0, 1, 2, 3]
    assert len(set(big[8:].tolist())) == 2
    # without shuffling the stream is 0, 1, ..., n-1, 0, 1, ...
    plain = np.concatenate(stream(n, num_rollouts, 5, shuffle=False))
    assert plain.tolist() == [i % n for i in range(15)]


def test_prompt_indices_is_pure():
    for k in (0, 3, 7):
        a = prompt_indices(11, 4, k, seed=3, rank_id=1, rank_size=2)
        b = prompt_indices(11, 4, k, seed=3, rank_id=1, rank_size=2)
        np.testing.assert_array_equal(a, b)
    # and the iterations do not depend on which were asked before (resume at iteration 7)
    np.testing.assert_array_equal(stream(11, 4, 8, seed=3)[7], prompt_indices(11, 4, 7, seed=3))
    assert np.concatenate(stream(50, 10, 5, seed=0)).tolist() != np.concatenate(stream(50, 10, 5, seed=1)).tolist()


@pytest.mark.parametrize("shuffle", [True, False])
def test_prompt_indices_ranks_disjoint_and_covering(shuffle):
    n, rank_size, num_rollouts, seed = 11, 3, 2, 4
    used = n // rank_size * rank_size  # 9 records per epoch, 3 per rank
    per_rank = used // rank_size
    streams = [
        np.concatenate(stream(n, num_rollouts, 6, seed=seed, shuffle=shuffle, rank_id=r, rank_size=rank_size))
        for r in range(rank_size)
    ]
    for epoch in range(4):
        chunks = [s[epoch * per_rank : (epoch + 1) * per_rank].tolist() for s in streams]
        union = [i for c in chunks for i in c]
        assert len(set(union)) == used  # disjoint, each rank's share without repeats
        if shuffle:
            order = np.random.default_rng(seed + epoch).permutation(n)
            assert set(union) == set(order[:used].tolist())
        else:
            assert set(union) == set(range(used))
    with pytest.raises(ValueError):
        prompt_indices(2, 1, 0, rank_id=0, rank_size=3)


@pytest.fixture(scope="module")
def prompt_record(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("prompts") / "p.mindrecord")
    convert_prompts(PROMPTS, out, "gpt2", 40, 48, 50256, progress=False)
    return out


def test_read_prompts_order_and_dtypes(prompt_record):
    stored = read_back(prompt_record)
    indices = np.array([5, 0, 7, 2, 5, 3])  # any order, repeats included (an iteration spanning epochs of a small set)
    out = read_prompts(prompt_record, indices, 50256)
    assert set(out) == set(PROMPT_COLUMNS) | {"prompt_length", "answer"}
    assert out["answer"] == [""] * 6  # prompt-only records
    shapes = {"prompt_ids": (6, 40), "prompt_length": (6,), "pretrain_ids": (6, 48), "loss_mask": (6, 48)}
    for name, shape in shapes.items():
        assert out[name].dtype == np.int32, name
        assert out[name].shape == shape, name
        np.testing.assert_array_equal(out[name], np.stack([stored[i][name] for i in indices]), err_msg=name)
    rows = jsonl_rows(PROMPTS)
    tok = load_tokenizer("gpt2")
    assert out["prompt_length"].tolist() == [len(cut_prompt(tok, rows[i]["prompt"], 40)) for i in indices]


def test_read_prompts_uses_stored_length_when_pad_is_in_text(tokenizers, tmp_dir):
    tok = tokenizers["gpt2"]
    row = jsonl_rows(PROMPTS)[0]
    tokens = tok.encode(row["prompt"])
    pad = tokens[-1]  # the last prompt token doubles as pad: counting non-pad tokens would be one short
    assert tokens[-2] != pad
    out = os.path.join(tmp_dir, "p.mindrecord")
    src = write_lines(os.path.join(tmp_dir, "in.jsonl"), [dumps(row)])
    convert_prompts(src, out, tok, 64, 70, pad, progress=False)
    got = read_prompts(out, np.array([0]), pad)
    assert got["prompt_length"].tolist() == [len(tokens)]
    assert got["prompt_ids"][0, : len(tokens)].tolist() == tokens


def test_read_prompts_predecessor_file(tmp_dir):
    pad = 7
    prompt_ids = np.array(
        [
            [3, 4, 5, 7, 7, 7],
            [5, 7, 9, 7, 7, 7],  # the pad id inside the text
            [0, 0, 0, 0, 7, 7],  # 0 is text here, not padding
            [1, 2, 3, 4, 5, 6],
        ],
        np.int64,
    )
    pretrain = np.arange(4 * 9, dtype=np.int64).reshape(4, 9)
    loss = (np.arange(4 * 9).reshape(4, 9) % 3 == 0).astype(np.int64)
    schema = {name: {"type": "int64", "shape": [-1]} for name in ("prompt_ids", "pretrain_ids", "loss_mask")}
    path = os.path.join(tmp_dir, "old.mindrecord")
    with atomic_mindrecord(path, schema, "rlhf prompts") as writer:
        writer.write_raw_data(
            [{"prompt_ids": prompt_ids[i], "pretrain_ids": pretrain[i], "loss_mask": loss[i]} for i in range(4)]
        )
    out = read_prompts(path, np.array([3, 1, 0, 2]), pad)
    assert out["prompt_length"].dtype == np.int32
    assert out["prompt_length"].tolist() == [6, 3, 3, 4]
    np.testing.assert_array_equal(out["prompt_ids"], prompt_ids[[3, 1, 0, 2]])
    np.testing.assert_array_equal(out["pretrain_ids"], pretrain[[3, 1, 0, 2]])
    np.testing.assert_array_equal(out["loss_mask"], loss[[3, 1, 0, 2]])
    assert all(out[name].dtype == np.int32 for name in FIELDS)
    assert out["answer"] == ["", "", "", ""]  # written before reference answers existed


# ---------------------------------------------------------------------------------------------------------------
# Left alignment and the experience MindRecord


def test_left_align_prompts():
    pad = 9
    right = np.array(
        [
            [11, 12, 13, 14, 15],
            [21, 9, 9, 9, 9],  # real token 21, then pad
            [31, 9, 33, 9, 9],
        ],
        np.int64,
    )  # the pad id inside the prompt is kept
    ids, mask = left_align_prompts(right, np.array([5, 1, 3]), pad)
    assert ids.dtype == np.int32 and mask.dtype == np.int32
    assert ids.tolist() == [[11, 12, 13, 14, 15], [9, 9, 9, 9, 21], [9, 9, 31, 9, 33]]
    assert mask.tolist() == [[1, 1, 1, 1, 1], [0, 0, 0, 0, 1], [0, 0, 1, 1, 1]]
    for bad in (0, 6, -1):
        with pytest.raises(ValueError, match="length"):
            left_align_prompts(right, np.array([5, bad, 3]), pad)


def random_experience(rng, B=3, P=4, N=5, T=7):
    L = P + N
    ints = lambda *shape: rng.integers(0, 1000, shape).astype(np.int32)  # noqa: E731
    floats = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return Experience(
        query_tensors=ints(B, P),
        response_tensors=ints(B, L),
        logprobs=floats(B, N),
        values=floats(B, N),
        rewards=floats(B, N),
        advantages=floats(B, N),
        returns=floats(B, N),
        pretrain_ids=ints(B, T),
        loss_mask=rng.integers(0, 2, (B, T)).astype(np.int32),
        attention_mask=rng.integers(0, 2, (B, L)).astype(np.int32),
    )


def test_experience_round_trip(tmp_dir):
    rng = np.random.default_rng(3)
    experience = random_experience(rng)
    stats = RolloutStats(
        score_mean=0.25,
        score_std=1.5,
        kl=0.125,
        response_length=4.0,
        kl_coef=0.05,
        explained_variance=float("nan"),
        scores=np.array([0.5, -1.25, 1.5], np.float32),
    )
    state = {"iteration": 3, "seed": 7, "kl_coef": 0.05, "note": "ppo"}
    path = os.path.join(tmp_dir, "exp", "ppo_elements.mindrecord")
    assert save_experience(experience, stats, path, state) == path
    for name in (path, path + ".db", path + ".json"):
        assert os.path.isfile(name), name
    assert listing(os.path.dirname(path)) == sorted(
        ["ppo_elements.mindrecord", "ppo_elements.mindrecord.db", "ppo_elements.mindrecord.json"]
    )
    loaded, loaded_stats, loaded_state = load_experience(path)
    assert isinstance(loaded, Experience)
    for name, spec in EXPERIENCE_SCHEMA.items():
        got, want = getattr(loaded, name), getattr(experience, name)
        assert got.dtype == (np.int32 if spec["type"] == "int32" else np.float32), name
        assert got.shape == want.shape, name
        np.testing.assert_array_equal(got, want, err_msg=name)
    assert loaded.response_mask.shape == (3, 5)
    for field in ("score_mean", "score_std", "kl", "response_length", "kl_coef"):
        assert getattr(loaded_stats, field) == getattr(stats, field), field
    assert np.isnan(loaded_stats.explained_variance)  # nan when the returns do not vary
    assert loaded_stats.scores.dtype == np.float32
    np.testing.assert_array_equal(loaded_stats.scores, stats.scores)
    assert loaded_state == state
    # without the statistics file the load fails naming it
    os.remove(path + ".json")
    with pytest.raises(FileNotFoundError, match=r"\.json"):
        load_experience(path)
