"""Stage 1 (SFT) on real oasst rows: converter fields against an independent reference, the three input formats,
truncation and skips, bad inputs, the dataset, the loss against torch, training, exact resume and the commands."""

from __future__ import annotations

import json
import os

import numpy as np
import mindspore as ms
import mindspore.dataset as ds
import pytest
from mindspore import Tensor

from mindrlhf.cli import main as cli_main
from mindrlhf.cli import sft as sft_cli
from mindrlhf.config import load_config
from mindrlhf.data import convert_sft as cs
from mindrlhf.data.convert_sft import ConversionError, convert_sft
from mindrlhf.data.datasets import epoch_indices, record_count, sft_dataset
from mindrlhf.data.tokenizer import load_tokenizer
from mindrlhf.models.convert import load_ckpt
from mindrlhf.models.policy import CausalLM
from mindrlhf.train.checkpoint import latest_checkpoint
from mindrlhf.train.sft import SFTLoss, train_sft
from tests.helpers import EOS, FIRST_TEXT_ID, PAD, set_mode, tiny_gpt2_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OASST = os.path.join(ROOT, "tests", "data", "oasst_sft_zh_sample6.json")
RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_sft.yaml")
# The seed template and the history markup, spelled out here so that a change in either shows up as a failure.
SEED_TEMPLATE = "根据以下问题，写一个合适的回答。\n\n### 问题：\n{instruction}\n\n### 回答：\n{response}"
HISTORY = "{q}\n\n### 回答：\n{a}\n\n### 问题：\n"
COLUMNS = ["input_ids", "attention_mask", "loss_mask"]
EOS_IDS = {"gpt2": 50256, "llama": 2}
# The contract's bos rule, spelled out: GPT-2 BPE prompts start without bos, SentencePiece Llama-style ones with 1.
BOS = {"gpt2": [], "llama": [1]}
SEQ = 512  # every sample row fits (longest: 288 + 148 GPT-2 tokens)


@pytest.fixture(scope="module")
def tokenizers():
    return {name: load_tokenizer(name) for name in EOS_IDS}


def oasst_rows():
    with open(OASST, encoding="utf-8") as f:
        return json.load(f)


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def read_back(path):
    dataset = ds.MindDataset(path, columns_list=COLUMNS, shuffle=False)
    return list(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))


def reference(tok, row, seq_length, pad, bos=()):
    """The three fields of an alpaca/oasst row with plain loops, or None when the prompt leaves no room: ``bos`` +
    the templated prompt and the response tokenized separately, then the eos, cut at the end (eos first)."""
    history = "".join(HISTORY.format(q=q.strip(), a=a.strip()) for q, a in row.get("history", []))
    query = row["instruction"] + (f"\n{row['input']}" if row.get("input") else "")
    prompt = list(bos) + tok.encode(SEED_TEMPLATE.format(instruction=(history + query).strip(), response=""))
    if len(prompt) >= seq_length:
        return None
    full = tok.encode(row["output"].strip()) + [tok.eos_token_id]
    response = full[: seq_length - len(prompt)]
    ids, attention, loss = [pad] * seq_length, [0] * seq_length, [0] * seq_length
    for k, token in enumerate(prompt + response):
        ids[k], attention[k] = token, 1
        loss[k] = int(k >= len(prompt))
    return {
        "input_ids": ids,
        "attention_mask": attention,
        "loss_mask": loss,
        "_prompt_len": len(prompt),
        "_truncated": len(response) < len(full),
    }


def assert_records_equal(records, expected):
    assert len(records) == len(expected)
    for record, want in zip(records, expected):
        for name in COLUMNS:
            assert record[name].dtype == np.int32, name
            np.testing.assert_array_equal(record[name], np.array(want[name]), err_msg=name)


def leftovers(folder):
    return sorted(os.listdir(folder)) if os.path.isdir(folder) else []


# ---------------------------------------------------------------------------------------------------------------
# Converter


@pytest.mark.parametrize("name", ["gpt2", "llama"])
def test_fields_match_reference_on_real_rows(name, tokenizers, tmp_path):
    tok, dst = tokenizers[name], str(tmp_path / "sft.mindrecord")
    stats = convert_sft(OASST, dst, tok, SEQ, progress=False)  # pad defaults to eos
    assert (stats["count"], stats["truncated"], stats["skipped_long"], stats["skipped_empty"]) == (6, 0, 0, 0)
    rows, records = oasst_rows(), read_back(dst)
    expected = [reference(tok, row, SEQ, EOS_IDS[name], BOS[name]) for row in rows]
    assert_records_equal(records, expected)
    for row, record, want in zip(rows, records, expected):
        ids, loss = record["input_ids"], record["loss_mask"].astype(bool)
        response = ids[loss]
        assert response[-1] == EOS_IDS[name] and np.flatnonzero(loss)[0] == want["_prompt_len"]
        assert ids[: len(BOS[name])].tolist() == BOS[name]
        assert tok.decode(response[:-1]) == row["output"].strip()
        prompt = tok.decode(ids[: want["_prompt_len"]])
        for question, answer in row["history"]:  # history turns, in order, before the current question
            assert f"{question.strip()}\n\n### 回答：\n{answer.strip()}\n\n### 问题：\n" in prompt
        assert prompt.endswith(f"{row['instruction'].strip()}\n\n### 回答：\n")
    assert sum(len(r["history"]) > 0 for r in rows) >= 2


SHAREGPT_KEYS = {
    "conversations": ("from", "value", "human", "gpt"),
    "messages": ("role", "content", "user", "assistant"),
}


def as_sharegpt(row, key="conversations"):
    """The alpaca row as a ShareGPT (``conversations``) or OpenAI-style (``messages``) record."""
    role, text, user, bot = SHAREGPT_KEYS[key]
    turns = []
    for question, answer in row["history"] + [[row["instruction"], row["output"]]]:
        turns += [{role: user, text: question}, {role: bot, text: answer}]
    return {key: turns}


def as_prompt_response(row):
    history = "".join(HISTORY.format(q=q.strip(), a=a.strip()) for q, a in row["history"])
    return {"prompt": history + row["instruction"], "response": row["output"]}


def runs(mask):
    """``[(start, end), ...]`` of the runs of 1 in a 0/1 vector."""
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask, [0]])))
    return list(zip(edges[0::2], edges[1::2]))


def test_sharegpt_messages_and_prompt_response_match_alpaca(tokenizers, tmp_path):
    """The same conversations in every format give the same ids; a conversation (ShareGPT / messages) also trains
    on the history's answers, each exactly its own tokens, where alpaca's history is context only."""
    tok, rows = tokenizers["gpt2"], oasst_rows()
    convert_sft(OASST, str(tmp_path / "alpaca.mindrecord"), tok, SEQ, progress=False)
    alpaca = read_back(str(tmp_path / "alpaca.mindrecord"))
    variants = {
        "sharegpt": [as_sharegpt(r) for r in rows],
        "messages": [as_sharegpt(r, "messages") for r in rows],
        "prompt_response": [as_prompt_response(r) for r in rows],
        "mixed": [[as_sharegpt(r), as_prompt_response(r), r][k % 3] for k, r in enumerate(rows)],
    }
    for name, variant in variants.items():
        dst = str(tmp_path / f"{name}.mindrecord")
        fmt = {"messages": "sharegpt", "mixed": "auto"}.get(name, name)
        assert (
            convert_sft(write_jsonl(tmp_path / f"{name}.jsonl", variant), dst, tok, SEQ, fmt=fmt, progress=False)[
                "count"
            ]
            == 6
        )
        for k, (row, record, want) in enumerate(zip(rows, read_back(dst), alpaca)):
            for column in ("input_ids", "attention_mask"):
                np.testing.assert_array_equal(record[column], want[column], err_msg=f"{name} row {k} {column}")
            conversation = name in ("sharegpt", "messages") or (name == "mixed" and k % 3 == 0)
            extra = record["loss_mask"] - want["loss_mask"]
            assert extra.min() == 0, name  # the last answer is trained on in every format
            answers = [a.strip() for _, a in row["history"]] if conversation else []
            decoded = [tok.decode(record["input_ids"][a:b].tolist()) for a, b in runs(extra)]
            assert decoded == answers, (name, k)
    assert sum(len(r["history"]) > 0 for r in rows) >= 2  # the comparison covers multi-turn rows


def test_sharegpt_system_turns_and_trailing_user_turn(tmp_path):
    record = {
        "conversations": [
            {"from": "system", "value": "你是助手。"},
            {"from": "human", "value": "你好"},
            {"from": "gpt", "value": "你好！"},
            {"from": "human", "value": "1+1 等于几"},
            {"from": "gpt", "value": "2"},
            {"from": "human", "value": "谢谢"},
        ]
    }
    (example,) = cs.read_examples(write_jsonl(tmp_path / "s.jsonl", [record]))
    assert (example.system, example.history, example.query, example.response) == (
        "你是助手。",
        (("你好", "你好！"),),
        "1+1 等于几",
        "2",
    )
    # the system text stays apart from the question: in front of the template, not inside it
    assert cs.prompt_text(example) == "你是助手。\n\n" + SEED_TEMPLATE.format(
        instruction=HISTORY.format(q="你好", a="你好！") + "1+1 等于几", response=""
    )
    segments = cs.conversation_segments(example)
    assert [trained for _, trained in segments] == [False, True, False, True]
    assert "".join(text for text, _ in segments) == cs.prompt_text(example) + "2"
    assert (segments[1][0], segments[3][0]) == ("你好！", "2")


def test_template_none_keeps_the_raw_texts(tokenizers, tmp_path):
    tok, dst = tokenizers["gpt2"], str(tmp_path / "raw.mindrecord")
    prompt, response = "Question: what is 1+1?\nAnswer:", " 2, of course. "
    src = write_jsonl(tmp_path / "raw.jsonl", [{"prompt": prompt, "response": response}])
    convert_sft(src, dst, tok, 32, pad_token_id=0, template="none", progress=False)
    (record,) = read_back(dst)
    ids = tok.encode(prompt) + tok.encode(response) + [50256]
    np.testing.assert_array_equal(record["input_ids"], ids + [0] * (32 - len(ids)))
    np.testing.assert_array_equal(
        record["loss_mask"][: len(ids)], [0] * len(tok.encode(prompt)) + [1] * (len(ids) - len(tok.encode(prompt)))
    )
    assert record["attention_mask"].sum() == len(ids) and record["loss_mask"][len(ids) :].sum() == 0


def test_truncation_and_skips_counted(tokenizers, tmp_path):
    tok, seq = tokenizers["gpt2"], 128
    rows = oasst_rows() + [{"instruction": "空回答", "input": "", "output": "  \n"}]
    stats = convert_sft(
        write_jsonl(tmp_path / "t.jsonl", rows), str(tmp_path / "t.mindrecord"), tok, seq, progress=False
    )
    expected = [reference(tok, row, seq, 50256) for row in rows[:-1]]
    kept = [e for e in expected if e is not None]
    truncated = sum(e["_truncated"] for e in kept)
    assert stats["skipped_long"] == expected.count(None) >= 1 and truncated >= 1
    assert (stats["count"], stats["truncated"], stats["skipped_empty"]) == (len(kept), truncated, 1)
    assert stats["response_max"] <= seq - stats["prompt_min"]
    records = read_back(str(tmp_path / "t.mindrecord"))
    assert_records_equal(records, kept)
    cut = [r for r in records if r["attention_mask"].all()]
    assert len(cut) == truncated and all(r["input_ids"][-1] != 50256 for r in cut)  # a cut response has no eos


GOOD = json.dumps({"instruction": "1+1 等于几", "input": "", "output": "2"}, ensure_ascii=False)
BAD_INPUTS = {  # case -> (file text, kwargs, needles in the message)
    "missing_output": (
        GOOD + '\n{"instruction": "x", "input": ""}\n',
        {"fmt": "alpaca"},
        ["src.jsonl:2:", "field 'output': missing"],
    ),
    "non_string": (
        GOOD + '\n\n{"instruction": "x", "output": ["a", "b"]}\n',
        {},
        ["src.jsonl:3:", "field 'output': expected a string, got list"],
    ),
    "not_object": (GOOD + "\n[1, 2]\n", {}, ["src.jsonl:2:", "record is a JSON list"]),
    "malformed": (GOOD + "\n{broken\n", {}, ["src.jsonl:2:", "malformed JSON"]),
    "unknown_keys": ('{"question": "x", "answer": "y"}\n', {}, ["src.jsonl:1:", "cannot detect the format"]),
    "bad_role": (
        '{"conversations": [{"from": "human", "value": "x"}, {"from": "bot", "value": "y"}]}\n',
        {},
        ["src.jsonl:1:", "field 'conversations[1].from'", "'bot'"],
    ),
    "not_alternating": (
        json.dumps(
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {"role": "user", "content": "b"},
                    {"role": "assistant", "content": "c"},
                ]
            }
        )
        + "\n",
        {},
        ["src.jsonl:1:", "field 'messages[1]'", "expected role 'assistant'"],
    ),
    "missing_value": (
        '{"messages": [{"role": "user"}, {"role": "assistant", "content": "c"}]}\n',
        {},
        ["src.jsonl:1:", "field 'messages[0].content': missing"],
    ),
    "bad_history": (
        '{"instruction": "x", "output": "y", "history": [["only question"]]}\n',
        {},
        ["src.jsonl:1:", "field 'history'"],
    ),
    "all_too_long": (GOOD + "\n", {"seq_length": 8}, ["no samples to write", "1 too long"]),
    "bad_format": (GOOD + "\n", {"fmt": "sharegtp"}, ["--format"]),
    "bad_template": (GOOD + "\n", {"template": "chatml"}, ["--template"]),
    "bad_pad": (GOOD + "\n", {"pad_token_id": 60000}, ["--pad_token_id 60000"]),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_raises_and_leaves_nothing(case, tokenizers, tmp_path):
    text, overrides, needles = BAD_INPUTS[case]
    src = tmp_path / "src.jsonl"
    src.write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    kwargs = {
        "src_file": str(src),
        "dst_file": str(out / "x.mindrecord"),
        "tokenizer": tokenizers["gpt2"],
        "seq_length": 96,
        "progress": False,
    }
    kwargs.update(overrides)
    with pytest.raises(ConversionError) as err:
        convert_sft(**kwargs)
    for needle in needles:
        assert needle in str(err.value), (needle, str(err.value))
    assert not out.exists(), leftovers(out)  # no file, no .db, no temporary folder, not even the created folder


def test_skip_bad_lines_counts(tokenizers, tmp_path):
    bad = [BAD_INPUTS[c][0].splitlines()[-1] for c in ("missing_output", "not_alternating", "bad_role")]
    src = tmp_path / "mixed.jsonl"
    src.write_text("\n".join([GOOD, "{broken", *bad, GOOD, "[3]"]) + "\n", encoding="utf-8")
    stats = convert_sft(
        str(src), str(tmp_path / "m.mindrecord"), tokenizers["gpt2"], 96, skip_bad_lines=True, progress=False
    )
    assert (stats["count"], stats["skipped_bad"]) == (2, 5)


def test_main_prints_stats_and_closing_line(tmp_path, capsys):
    dst = str(tmp_path / "cli" / "sft.mindrecord")
    assert cs.main(["--model", "gpt2", "--src_file", OASST, "--dst_file", dst, "--seq_length", "1"]) == 1
    assert "--seq_length" in capsys.readouterr().err
    assert (
        cs.main(
            [
                "--tokenizer_name_or_path",
                "gpt2",
                "--src_file",
                OASST,
                "--dst_file",
                dst,
                "--seq_length",
                "128",
                "--format",
                "alpaca",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "| count | skipped_empty | skipped_long | skipped_bad | truncated |" in out
    assert out.rstrip().splitlines()[-1] == f"Transformation finished! Output file refer: {dst}"
    assert record_count(dst, ("input_ids", "attention_mask", "loss_mask")) == 4


# ---------------------------------------------------------------------------------------------------------------
# Dataset


@pytest.fixture(scope="module")
def sft_records(tmp_path_factory):
    """``(path, stored records in file order)`` of the six oasst rows (GPT-2 tokens, S = 512)."""
    path = str(tmp_path_factory.mktemp("sft_data") / "oasst.mindrecord")
    convert_sft(OASST, path, "gpt2", SEQ, progress=False)
    return path, read_back(path)


def batch_rows(path, stored, batch_size, **kwargs):
    """The stored record index of every row of every batch, checking each row against the stored one."""
    index = {tuple(r["input_ids"].tolist()): k for k, r in enumerate(stored)}
    out = []
    for batch in sft_dataset(path, batch_size, **kwargs).create_dict_iterator(num_epochs=1, output_numpy=True):
        assert all(batch[c].dtype == np.int32 and batch[c].shape == (batch_size, SEQ) for c in COLUMNS)
        for row in range(batch_size):
            k = index[tuple(batch["input_ids"][row].tolist())]
            for c in COLUMNS:
                np.testing.assert_array_equal(batch[c][row], stored[k][c])
            out.append(k)
    return out


def test_sft_dataset_order_shards_and_resume(sft_records):
    path, stored = sft_records
    order = batch_rows(path, stored, 2, epoch=1, seed=3)
    assert order == epoch_indices(6, 2, epoch=1, seed=3).tolist() and sorted(order) == list(range(6))
    assert order != batch_rows(path, stored, 2, epoch=2, seed=3)  # a new permutation every epoch
    shards = [batch_rows(path, stored, 1, epoch=1, seed=3, rank_id=r, rank_size=2) for r in (0, 1)]
    assert shards == [order[0::2], order[1::2]]
    assert batch_rows(path, stored, 2, epoch=1, seed=3, skip_batches=1) == order[2:]
    assert batch_rows(path, stored, 4, shuffle=False, drop_remainder=True) == [0, 1, 2, 3]


def test_dataset_errors_name_the_sft_converter(sft_records, tmp_path):
    with pytest.raises(FileNotFoundError, match="convert_sft"):
        sft_dataset(str(tmp_path / "nothing.mindrecord"), 2)
    with pytest.raises(ValueError, match="missing columns .*a preference MindRecord has"):
        record_count(sft_records[0])  # the default columns are the preference ones


# ---------------------------------------------------------------------------------------------------------------
# Loss


def sft_batch(seed=0):
    """Right-padded rows ``prompt + response`` with the response (incl. its last token) in the loss mask."""
    rng = np.random.default_rng(seed)
    seq, spans = 12, [(3, 6), (5, 7), (2, 3)]  # (prompt, prompt + response) per row
    ids = np.full((len(spans), seq), PAD, np.int32)
    mask, loss = np.zeros_like(ids), np.zeros_like(ids)
    for row, (prompt, end) in enumerate(spans):
        ids[row, :end] = rng.integers(FIRST_TEXT_ID, 100, end)
        ids[row, end - 1] = EOS
        mask[row, :end], loss[row, prompt:end] = 1, 1
    return ids, mask, loss


def torch_sft_loss(logits, ids, loss_mask):
    """Hugging Face convention: labels -100 outside the response, shifted by one, mean cross-entropy."""
    import torch

    labels = torch.from_numpy(np.where(loss_mask == 1, ids, -100).astype(np.int64))
    return float(
        torch.nn.functional.cross_entropy(
            torch.from_numpy(logits[:, :-1]).reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )
    )


def test_sft_loss_equals_cross_entropy_over_response_tokens(ms_mode):
    model = CausalLM(tiny_gpt2_config())
    loss_net = SFTLoss(model)
    assert {p.name.split(".")[0] for p in loss_net.trainable_params()} == {"backbone"}  # names unprefixed (tied)
    ids, mask, loss_mask = sft_batch()
    logits = model(Tensor(ids), Tensor(mask)).asnumpy()
    loss = float(loss_net(Tensor(ids), Tensor(mask), Tensor(loss_mask)).asnumpy())
    assert loss == pytest.approx(torch_sft_loss(logits, ids, loss_mask), rel=1e-5)
    # prompt positions do not enter: counting them too changes the loss; changing padded targets does not
    with_prompt = np.where(mask == 1, 1, 0).astype(np.int32)
    assert abs(float(loss_net(Tensor(ids), Tensor(mask), Tensor(with_prompt)).asnumpy()) - loss) > 1e-3
    other_pad = np.where(mask == 1, ids, 7).astype(np.int32)
    assert float(loss_net(Tensor(other_pad), Tensor(mask), Tensor(loss_mask)).asnumpy()) == pytest.approx(loss, 1e-6)


# ---------------------------------------------------------------------------------------------------------------
# Training, resume and the commands


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    """The six rows at S = 160 GPT-2 tokens: the two-turn row is too long, five are kept (2 batches of 2)."""
    path = str(tmp_path_factory.mktemp("sft_train") / "train.mindrecord")
    assert convert_sft(OASST, path, "gpt2", 160, progress=False)["count"] == 5
    return path


def sft_config(out_dir, data, *extra):
    return load_config(
        RECIPE,
        [
            f"output_dir={out_dir}",
            f"train_dataset.data_loader.dataset_dir={data}",
            "runner_config.batch_size=2",
            "model.model_config.hidden_size=32",
            "model.model_config.seq_length=160",
            "lr_schedule.warmup_ratio=0.0",
            "optimizer.learning_rate=5.0e-3",
            "lr_schedule.learning_rate=5.0e-3",
            *extra,
        ],
    )


def params_of(model):
    return {p.name: p.asnumpy().copy() for p in model.trainable_params()}


def test_training_lowers_the_loss_and_resume_is_exact(train_file, tmp_dir):
    """An uninterrupted run: loss falls, every parameter changes. A run stopped at step 3 and resumed through
    ``mindrlhf sft --load_checkpoint`` ends with the same parameters."""
    set_mode("graph")
    straight_dir, broken_dir = os.path.join(tmp_dir, "straight"), os.path.join(tmp_dir, "broken")
    ms.set_seed(0)
    initial = params_of(CausalLM(sft_config(straight_dir, train_file).model.model_config))
    ms.set_seed(0)
    straight, result = train_sft(sft_config(straight_dir, train_file, "runner_config.epochs=3"))
    assert len(result.losses) == 6 and result.overflows == 0 and np.isfinite(result.losses).all()
    assert np.mean(result.losses[-2:]) < np.mean(result.losses[:2]) - 0.3
    final = params_of(straight)
    assert initial.keys() == final.keys()
    assert [n for n in final if np.array_equal(initial[n], final[n])] == []

    ms.set_seed(0)
    _, first = train_sft(sft_config(broken_dir, train_file, "runner_config.epochs=3"), stop_at_step=3)
    assert first.state.global_step == 3 and (first.state.epoch, first.state.step_in_epoch) == (1, 1)
    recipe_flags = [
        f"--set={o}"
        for o in (
            "runner_config.batch_size=2",
            "model.model_config.hidden_size=32",
            "model.model_config.seq_length=160",
            "lr_schedule.warmup_ratio=0.0",
            "optimizer.learning_rate=5.0e-3",
            "lr_schedule.learning_rate=5.0e-3",
            "runner_config.epochs=3",
        )
    ]
    assert (
        sft_cli.main(
            [
                "--config",
                RECIPE,
                *recipe_flags,
                "--train_dataset",
                train_file,
                "--output_dir",
                broken_dir,
                "--load_checkpoint",
                os.path.join(broken_dir, "checkpoint"),
                "--seed",
                "0",
                "--use_parallel",
                "auto",
            ]
        )
        == 0
    )
    resumed = CausalLM(sft_config(broken_dir, train_file).model.model_config)
    load_ckpt(resumed, latest_checkpoint(os.path.join(broken_dir, "checkpoint", "rank_0")))
    resumed = params_of(resumed)
    assert max(np.abs(final[n] - resumed[n]).max() for n in final) <= 1e-6
    with open(os.path.join(broken_dir, "log", "rank_0", "info.log"), encoding="utf-8") as f:
        log = f.read()
    assert "Epoch:[  3/  3], step:[    2/    2], loss: " in log


def test_init_weights_from_ckpt_or_hf_folder_but_not_from_a_resume_root(tmp_dir):
    from mindrlhf.models.convert import save_ckpt, save_hf_checkpoint
    from mindrlhf.train.sft import init_weights

    cfg = sft_config(tmp_dir, "")
    source = CausalLM(cfg.model.model_config)
    for p in source.get_parameters():
        p.set_data(Tensor(np.random.default_rng(1).normal(0, 0.1, p.shape).astype(np.float32)))
    weights = {
        "ckpt": save_ckpt(source, os.path.join(tmp_dir, "sft.ckpt")),
        "hf": save_hf_checkpoint(source, cfg.model.model_config, os.path.join(tmp_dir, "hf")),
    }
    for path in weights.values():
        cfg.load_checkpoint = path
        target = CausalLM(cfg.model.model_config)
        init_weights(target, cfg, 0)
        assert all(np.array_equal(a, params_of(source)[n]) for n, a in params_of(target).items())
    os.makedirs(os.path.join(tmp_dir, "root", "rank_0"))
    save_ckpt(source, os.path.join(tmp_dir, "root", "rank_0", "step.ckpt"))
    cfg.load_checkpoint = os.path.join(tmp_dir, "root")  # a resume: the trainer restores it, not init_weights
    target = CausalLM(cfg.model.model_config)
    before = params_of(target)
    init_weights(target, cfg, 0)
    assert all(np.array_equal(a, before[n]) for n, a in params_of(target).items())


def test_recipes_and_help(capsys):
    for recipe, prefix in (
        (RECIPE, "gpt2_tiny_sft"),
        (os.path.join(ROOT, "model_configs", "llama2_config", "run_llama2_tiny_sft.yaml"), "llama2_tiny_sft"),
    ):
        cfg = load_config(recipe)
        assert cfg.checkpoint.prefix == prefix and cfg.context.device_target == "CPU"
    for argv in (["sft", "--help"], ["convert-sft", "--help"]):
        with pytest.raises(SystemExit) as done:
            cli_main.main(argv)
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert ("--train_dataset" if argv[0] == "sft" else "--tokenizer_name_or_path") in out
