"""Reward-model dataset: the (2B, S) layout, per-row end_ind (each row's eos), reproducible order, rank shards,
resume by skipping batches, num_batches, the errors for missing or foreign files and the refusal of preference files
whose sequences do not end in eos."""

from __future__ import annotations

import json
import os

import numpy as np
import mindspore.dataset as ds
import pytest
from mindspore.mindrecord import FileWriter

from mindrlhf.data import convert_preference as cp
from mindrlhf.data.convert_preference import PREFERENCE_SCHEMA, ConversionError, convert_preference
from mindrlhf.data.datasets import (
    PREFERENCE_COLUMNS,
    check_preference_ends,
    epoch_indices,
    num_batches,
    record_count,
    reward_model_dataset,
    row_ends,
)
from mindrlhf.data.templates import format_prompt
from mindrlhf.data.tokenizer import load_tokenizer

N, SEQ, PAD = 10, 96, 50256
SPEC_COLUMNS = (
    "chosen_input_ids",
    "chosen_attention_mask",
    "rejected_input_ids",
    "rejected_attention_mask",
    "position_id",
    "loss_mask",
    "end_ind",
)


def make_rows(n):
    """Distinct pairs of different lengths: record k is recognisable by its chosen ids."""
    return [
        {"prompt": f"Question number {k}?", "chosen": "Yes. " * (k % 3 + 1), "rejected": "No" + "!" * (k % 4)}
        for k in range(n)
    ]


def build(folder, name, padding_side="right"):
    src = os.path.join(folder, f"{name}.jsonl")
    with open(src, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in make_rows(N)))
    dst = os.path.join(folder, f"{name}.mindrecord")
    stats = convert_preference(src, dst, "gpt2", SEQ, PAD, padding_side=padding_side, progress=False)
    assert stats["count"] == N and stats["truncated"] == 0
    stored = list(
        ds.MindDataset(dst, columns_list=list(SPEC_COLUMNS), shuffle=False).create_dict_iterator(
            num_epochs=1, output_numpy=True
        )
    )
    return dst, stored


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """``(path, stored records in file order)`` of a 10-pair right-padded MindRecord."""
    return build(str(tmp_path_factory.mktemp("rm_data")), "pairs")


def batches(path, batch_size, **kwargs):
    dataset = reward_model_dataset(path, batch_size, **kwargs)
    return list(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))


def record_ids(batch_list, stored):
    """The record index of every pair in the batches, recovered from the chosen rows."""
    index = {tuple(r["chosen_input_ids"].tolist()): k for k, r in enumerate(stored)}
    assert len(index) == len(stored)
    out = []
    for batch in batch_list:
        pairs = len(batch["loss_mask"])
        out += [index[tuple(row.tolist())] for row in batch["input_ids"][:pairs]]
    return out


def test_columns_and_layout(records):
    path, stored = records
    assert PREFERENCE_COLUMNS == SPEC_COLUMNS
    dataset = reward_model_dataset(path, 4, shuffle=False)
    assert dataset.get_col_names() == ["input_ids", "position_id", "attention_mask", "loss_mask", "end_ind"]
    first = batches(path, 4, shuffle=False)[0]
    shapes = {k: (v.dtype, v.shape) for k, v in first.items()}
    assert shapes == {
        "input_ids": (np.int32, (8, SEQ)),
        "position_id": (np.int32, (8, SEQ)),
        "attention_mask": (np.int32, (8, SEQ)),
        "loss_mask": (np.float32, (4, SEQ)),
        "end_ind": (np.int32, (8,)),
    }
    for b in range(4):
        rec = stored[b]
        np.testing.assert_array_equal(first["input_ids"][b], rec["chosen_input_ids"])
        np.testing.assert_array_equal(first["input_ids"][4 + b], rec["rejected_input_ids"])
        np.testing.assert_array_equal(first["attention_mask"][b], rec["chosen_attention_mask"])
        np.testing.assert_array_equal(first["attention_mask"][4 + b], rec["rejected_attention_mask"])
        np.testing.assert_array_equal(first["position_id"][b], rec["position_id"])
        np.testing.assert_array_equal(first["position_id"][4 + b], rec["position_id"])
        np.testing.assert_array_equal(first["loss_mask"][b], rec["loss_mask"].astype(np.float32))
        # each row's own number of real tokens, not the pair's shared stored end_ind; the score is read at its eos
        chosen_len, rejected_len = int(rec["chosen_attention_mask"].sum()), int(rec["rejected_attention_mask"].sum())
        assert (first["end_ind"][b], first["end_ind"][4 + b]) == (chosen_len, rejected_len)
        assert first["input_ids"][b, chosen_len - 1] == first["input_ids"][4 + b, rejected_len - 1] == PAD  # eos
        assert int(rec["end_ind"]) == max(chosen_len, rejected_len)
    assert (first["end_ind"][:4] != first["end_ind"][4:]).any()


def test_end_ind_ignores_pad_ids_inside_text():
    mask = np.array([[1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 1, 1]], np.int32)
    np.testing.assert_array_equal(row_ends(mask), [3, 1, 0, 4])


def test_left_padded_rows_end_at_their_last_token(tmp_path):
    path, stored = build(str(tmp_path), "left", padding_side="left")
    first = batches(path, 2, shuffle=False)[0]
    for b in range(2):
        for row, mask in ((b, stored[b]["chosen_attention_mask"]), (2 + b, stored[b]["rejected_attention_mask"])):
            last = int(np.flatnonzero(mask)[-1])
            assert first["end_ind"][row] == last + 1  # the score is read at end_ind - 1, the row's last token
            assert first["input_ids"][row, last] == PAD  # which is the eos (GPT-2: the pad id too)
    assert max(first["end_ind"][0], first["end_ind"][2]) == SEQ


def test_subset_sampler_keeps_the_given_order(records):
    path, stored = records
    order = [7, 2, 9, 0, 5, 5]
    dataset = ds.MindDataset(path, columns_list=list(SPEC_COLUMNS), sampler=ds.SubsetSampler(order))
    got = [r["chosen_input_ids"] for r in dataset.create_dict_iterator(num_epochs=1, output_numpy=True)]
    assert len(got) == len(order)
    for k, row in zip(order, got):
        np.testing.assert_array_equal(row, stored[k]["chosen_input_ids"])


def test_order_is_reproducible_per_epoch_and_seed(records):
    path, stored = records
    epoch0 = record_ids(batches(path, 2, epoch=0, seed=3), stored)
    assert epoch0 == np.random.default_rng(3).permutation(N).tolist()
    assert record_ids(batches(path, 2, epoch=0, seed=3), stored) == epoch0
    assert record_ids(batches(path, 2, epoch=0, seed=3, num_parallel_workers=2), stored) == epoch0
    epoch1 = record_ids(batches(path, 2, epoch=1, seed=3), stored)
    assert epoch1 != epoch0 and sorted(epoch1) == list(range(N))
    assert record_ids(batches(path, 2, shuffle=False), stored) == list(range(N))


def test_rank_shards_are_disjoint_and_cover(records):
    path, stored = records
    shards = [record_ids(batches(path, 1, epoch=2, rank_id=r, rank_size=2), stored) for r in range(2)]
    assert len(shards[0]) == len(shards[1]) == N // 2
    assert not set(shards[0]) & set(shards[1]) and set(shards[0]) | set(shards[1]) == set(range(N))
    permutation = np.random.default_rng(2).permutation(N)
    assert shards[1] == permutation[1::2].tolist()
    thirds = [record_ids(batches(path, 1, rank_id=r, rank_size=3, shuffle=False), stored) for r in range(3)]
    assert [len(t) for t in thirds] == [3, 3, 3]  # 10 records: the tail record is dropped so ranks stay equal
    assert sorted(sum(thirds, [])) == list(range(9))


@pytest.mark.parametrize("skip", [1, 2])
def test_skip_batches_resumes_the_same_stream(records, skip):
    path, stored = records
    full = batches(path, 2, epoch=1, seed=5)
    resumed = batches(path, 2, epoch=1, seed=5, skip_batches=skip)
    assert len(resumed) == len(full) - skip
    for a, b in zip(full[skip:], resumed):
        for name in a:
            np.testing.assert_array_equal(a[name], b[name])
    assert batches(path, 2, epoch=1, seed=5, skip_batches=len(full)) == []


def test_num_batches_and_num_samples(records):
    path, stored = records
    assert record_count(path) == N
    assert num_batches(path, 3, 1, True, None) == 3 and num_batches(path, 3, 1, False, None) == 4
    assert num_batches(path, 2, 2, True, None) == 2 and num_batches(path, 2, 2, False, None) == 3
    assert num_batches(path, 4, 1, True, 6) == 1 and num_batches(path, 4, 1, True, 100) == 2
    assert len(batches(path, 3, drop_remainder=True)) == 3
    tail = batches(path, 3, drop_remainder=False, shuffle=False)
    assert len(tail) == 4 and tail[-1]["input_ids"].shape == (2, SEQ) and tail[-1]["end_ind"].shape == (2,)
    assert sorted(record_ids(batches(path, 2, num_samples=6, seed=1), stored)) == list(range(6))


def test_epoch_indices_rejects_bad_arguments():
    with pytest.raises(ValueError, match="rank_id"):
        epoch_indices(10, 2, rank_id=2, rank_size=2)
    with pytest.raises(ValueError, match="skip_batches"):
        epoch_indices(10, 2, skip_batches=-1)


def test_missing_file_and_foreign_schema(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.mindrecord"):
        reward_model_dataset(str(tmp_path / "nothing.mindrecord"), 2)
    path = str(tmp_path / "other.mindrecord")
    writer = FileWriter(path, shard_num=1, overwrite=True)
    writer.add_schema({"input_ids": {"type": "int32", "shape": [-1]}, "end_ind": {"type": "int64"}}, "other")
    writer.write_raw_data([{"input_ids": np.arange(4, dtype=np.int32), "end_ind": 4}])
    writer.commit()
    with pytest.raises(ValueError, match="missing columns") as err:
        reward_model_dataset(path, 2)
    assert "chosen_input_ids" in str(err.value) and "other.mindrecord" in str(err.value)


def write_old_preference_file(path, rows, seq_length=SEQ, pad=PAD):
    """A preference MindRecord as the converter wrote it before the tokenization contract: ``format_prompt(prompt,
    response)`` encoded as one string, no eos at the end."""
    tok = load_tokenizer("gpt2")
    samples = [
        cp.pair_fields(
            tok.encode(format_prompt(r["prompt"], r["chosen"])),
            tok.encode(format_prompt(r["prompt"], r["rejected"])),
            seq_length,
            pad,
        )
        for r in rows
    ]
    writer = FileWriter(path, shard_num=1, overwrite=True)
    writer.add_schema(PREFERENCE_SCHEMA, "preference")
    writer.write_raw_data(samples)
    writer.commit()
    return path


def test_sequences_must_end_in_the_model_eos(records, tmp_path):
    path, _ = records
    check_preference_ends(path, PAD)  # freshly converted: every sequence ends in eos
    check_preference_ends(build(str(tmp_path), "left", padding_side="left")[0], PAD)
    with pytest.raises(ConversionError, match="not the model's eos id 2 ") as err:
        check_preference_ends(path, 2)  # converted with another tokenizer than the model's
    assert "pairs.mindrecord: record 0: the chosen sequence ends in token 50256" in str(err.value)
    old = write_old_preference_file(str(tmp_path / "old.mindrecord"), make_rows(3))
    with pytest.raises(ConversionError) as err:
        check_preference_ends(old, PAD)
    message = str(err.value)
    assert "old.mindrecord: record 0: the chosen sequence ends in token" in message
    assert "reconvert it with `mindrlhf convert-preference`" in message
    # an old file is still a readable preference MindRecord: only the eos check tells it apart
    assert record_count(old) == 3
