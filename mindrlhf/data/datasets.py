"""``mindspore.dataset`` pipelines over the converters' MindRecord files (schemas: :mod:`mindrlhf.data.schemas`).

Every reader goes through one pipeline, :func:`mindrecord_batches`: the given record indices in the given order,
batched, then mapped batch-wise into the training layout. The supervised stages take one epoch of one rank
(:func:`epoch_indices`); the RL stages take each iteration's prompts (:func:`prompt_indices`, :func:`read_prompts`).

:func:`reward_model_dataset` reads the seven preference columns written by
:mod:`mindrlhf.data.convert_preference` and yields, per batch of ``B`` pairs (``S`` = stored sequence length):

- ``input_ids (2B, S) int32``: rows ``0..B-1`` the chosen sequences, rows ``B..2B-1`` the rejected ones.
- ``position_id (2B, S) int32``: the stored position ids, once for each half.
- ``attention_mask (2B, S) int32``: chosen masks then rejected masks.
- ``loss_mask (B, S) float32``: the stored divergence span.
- ``end_ind (2B,) int32``: each row's OWN end, one past its last real token according to its attention mask. For
  right padding this is the row's number of real tokens; the score of a row is read at ``end_ind - 1``, its eos
  (every preference sequence ends in eos, the token PPO's reward is read at). The stored ``end_ind`` (the longer
  sequence's end, shared by the pair) is not used, and pad ids are never counted (pad may equal eos, the
  predecessor's bug B3).

:func:`check_preference_ends` refuses preference files written before sequences ended in eos (their last real
token is the last response token): the reward trainer and ``rm eval`` call it before reading a batch.

:func:`sft_dataset` reads the three SFT columns written by :mod:`mindrlhf.data.convert_sft` and yields batches of
``input_ids``, ``attention_mask`` and ``loss_mask``, each ``(B, S) int32``, as stored.

:func:`dpo_dataset` reads a preference MindRecord with the response masks (:func:`check_dpo_file`) and yields
``input_ids``, ``attention_mask`` ``(2B, S) int32`` and ``response_mask (2B, S) float32``, the B chosen rows first.

:func:`read_prompts` reads given records of a prompt MindRecord (:mod:`mindrlhf.data.convert_prompts`) into numpy:
``prompt_ids``, ``prompt_length``, ``pretrain_ids``, ``loss_mask`` and the reference ``answer`` strings.

Order is a pure function of ``(seed, epoch, rank_id, rank_size, skip_batches)``, so a resumed run sees exactly the
batches it would have seen; see :func:`epoch_indices`.
"""

from __future__ import annotations

import math
import os
from typing import Callable, Optional, Sequence, Tuple

import numpy as np

from mindrlhf.data.records import ConversionError
from mindrlhf.data.schemas import (
    ANSWER_COLUMN,
    PREFERENCE_COLUMNS,
    PROMPT_COLUMNS,
    RESPONSE_SCHEMA,
    SFT_COLUMNS,
    WRITERS,
)

REWARD_COLUMNS: Tuple[str, ...] = ("input_ids", "position_id", "attention_mask", "loss_mask", "end_ind")
DPO_COLUMNS: Tuple[str, ...] = ("input_ids", "attention_mask", "response_mask")  # one DPO batch
# the stored columns a DPO batch is made of (the reward model's position_id, loss_mask and end_ind are not read)
DPO_STORED: Tuple[str, ...] = (
    "chosen_input_ids",
    "chosen_attention_mask",
    "rejected_input_ids",
    "rejected_attention_mask",
    *RESPONSE_SCHEMA,
)


def record_count(path: str, columns: Tuple[str, ...] = PREFERENCE_COLUMNS) -> int:
    """Number of records in the MindRecord ``path``; a clear error if it or its ``.db`` is missing, or it lacks
    one of ``columns``."""
    from mindspore.mindrecord import FileReader

    kind, converter = WRITERS.get(tuple(columns), ("", "convert_*"))
    for needed in (path, path + ".db"):
        if not os.path.isfile(needed):
            raise FileNotFoundError(
                f"{needed}: no such file (a MindRecord needs the file and its .db index; "
                f"write one with python -m mindrlhf.data.{converter})"
            )
    try:
        reader = FileReader(path)
    except RuntimeError as err:
        lines = [line for line in str(err).splitlines() if "[ERROR]" in line] or str(err).strip().splitlines()
        raise ValueError(f"{path}: not a readable MindRecord file ({lines[0].strip()})") from err
    try:
        missing = [c for c in columns if c not in reader.schema()]
        count = reader.len()
    finally:
        reader.close()
    if missing:
        expected = f"{kind} MindRecord has" if kind else "expected"
        raise ValueError(f"{path}: missing columns {missing}; {expected} {list(columns)}")
    return count


def stored_columns(path: str) -> Tuple[str, ...]:
    """The columns of the MindRecord ``path`` (readable: checked by :func:`record_count` first)."""
    from mindspore.mindrecord import FileReader

    reader = FileReader(path)
    try:
        return tuple(reader.schema())
    finally:
        reader.close()


def epoch_indices(
    n: int,
    batch_size: int,
    *,
    epoch: int = 0,
    seed: int = 0,
    shuffle: bool = True,
    rank_id: int = 0,
    rank_size: int = 1,
    skip_batches: int = 0,
    num_samples: Optional[int] = None,
) -> np.ndarray:
    """Record indices one rank reads in one epoch, in order.

    1. ``m = min(n, num_samples)`` records are used (the first ``m``).
    2. ``numpy.random.default_rng(seed + epoch).permutation(m)`` when ``shuffle``, else ``arange(m)``.
    3. The tail is cut to a multiple of ``rank_size`` (every rank gets as many records) and rank ``r`` takes
       ``indices[r::rank_size]``.
    4. The first ``skip_batches * batch_size`` indices are dropped (resuming inside an epoch).
    """
    if batch_size < 1 or rank_size < 1 or not 0 <= rank_id < rank_size:
        raise ValueError(
            f"need batch_size >= 1 and 0 <= rank_id < rank_size, got batch_size={batch_size}, "
            f"rank_id={rank_id}, rank_size={rank_size}"
        )
    if skip_batches < 0 or epoch < 0 or seed < 0 or (num_samples is not None and num_samples < 1):
        raise ValueError(
            f"need skip_batches, epoch and seed >= 0 and num_samples None or >= 1, got "
            f"skip_batches={skip_batches}, epoch={epoch}, seed={seed}, num_samples={num_samples}"
        )
    used = n if num_samples is None else min(n, num_samples)
    indices = np.random.default_rng(seed + epoch).permutation(used) if shuffle else np.arange(used)
    indices = indices[: used // rank_size * rank_size][rank_id::rank_size]
    return indices[skip_batches * batch_size :]


def num_batches(
    path: str,
    batch_size: int,
    rank_size: int = 1,
    drop_remainder: bool = True,
    num_samples: Optional[int] = None,
    columns: Tuple[str, ...] = PREFERENCE_COLUMNS,
) -> int:
    """Batches per epoch on each rank (before any ``skip_batches``) of a MindRecord with ``columns``."""
    per_rank = len(
        epoch_indices(
            record_count(path, columns), batch_size, rank_size=rank_size, shuffle=False, num_samples=num_samples
        )
    )
    return per_rank // batch_size if drop_remainder else math.ceil(per_rank / batch_size)


def mindrecord_batches(
    path: str,
    columns: Sequence[str],
    indices: np.ndarray,
    batch_size: Optional[int] = None,
    drop_remainder: bool = True,
    num_parallel_workers: int = 1,
    layout: Optional[Callable] = None,
    output_columns: Sequence[str] = (),
):
    """The one ``mindspore.dataset`` pipeline over a MindRecord: records ``indices`` (in that order, each
    ``columns``), batched by ``batch_size`` (None: one record at a time), then mapped batch-wise by ``layout`` into
    ``output_columns`` (the stored columns when ``layout`` is None).

    Args:
        path: the ``.mindrecord`` file (its ``.db`` beside it).
        columns: the stored columns read.
        indices: ``(R,)`` record indices (at most one of each record: ``SubsetSampler`` yields exactly these, in this
            order, checked in tests/test_datasets.py).
        layout: ``f(*batched columns) -> tuple of output columns``, numpy in and out.
        num_parallel_workers: reader / batch / map threads (the order does not depend on it).
    Returns:
        A ``mindspore.dataset`` pipeline; iterate it with ``create_dict_iterator(num_epochs=1)``.
    """
    import mindspore.dataset as ds

    dataset = ds.MindDataset(
        path,
        columns_list=list(columns),
        sampler=ds.SubsetSampler([int(i) for i in indices]),
        num_parallel_workers=num_parallel_workers,
    )
    if batch_size is not None:
        dataset = dataset.batch(batch_size, drop_remainder=drop_remainder, num_parallel_workers=num_parallel_workers)
    if layout is None:
        return dataset
    # per_batch_map must return B rows per column, so a layout that changes the row count is a map over batches.
    dataset = dataset.map(
        layout,
        input_columns=list(columns),
        output_columns=list(output_columns),
        num_parallel_workers=num_parallel_workers,
    )
    return dataset.project(list(output_columns))


def _epoch_batches(
    path: str,
    count: int,
    columns: Sequence[str],
    batch_size: int,
    order: dict,
    drop_remainder: bool,
    num_parallel_workers: int,
    layout: Optional[Callable] = None,
    output_columns: Sequence[str] = (),
):
    """:func:`mindrecord_batches` over the records of one epoch of one rank: :func:`epoch_indices` of ``count``
    records with ``order`` (its keyword arguments)."""
    indices = epoch_indices(count, batch_size, **order)
    return mindrecord_batches(
        path, columns, indices, batch_size, drop_remainder, num_parallel_workers, layout, output_columns
    )


def row_ends(attention_mask: np.ndarray) -> np.ndarray:
    """``(N, S)`` mask -> ``(N,)`` int32: one past each row's last nonzero entry (0 for an all-zero row)."""
    mask = np.asarray(attention_mask) != 0
    last = mask.shape[1] - np.argmax(mask[:, ::-1], axis=1)
    return np.where(mask.any(axis=1), last, 0).astype(np.int32)


def check_preference_ends(path: str, eos_token_id: int, records: int = 8) -> None:
    """Raise :class:`ConversionError` naming ``path`` unless, in its first ``records`` records, the last real token
    (last attention-mask-1 column) of every chosen and rejected sequence is ``eos_token_id``.

    A reward model is read at the eos; files written before the tokenization contract end at the last response
    token instead and must be reconverted. Also raised when the file was converted with a tokenizer whose eos is not
    the model's ``eos_token_id``.
    """
    count = min(record_count(path), records)
    columns = ["chosen_input_ids", "chosen_attention_mask", "rejected_input_ids", "rejected_attention_mask"]
    dataset = mindrecord_batches(path, columns, np.arange(count))
    for k, row in enumerate(dataset.create_dict_iterator(num_epochs=1, output_numpy=True)):
        for side in ("chosen", "rejected"):
            ids, end = row[f"{side}_input_ids"], int(row_ends(row[f"{side}_attention_mask"][None])[0])
            if end == 0 or int(ids[end - 1]) != eos_token_id:
                last = int(ids[end - 1]) if end else None
                raise ConversionError(
                    f"{path}: record {k}: the {side} sequence ends in token {last}, not the model's eos id "
                    f"{eos_token_id} (model.model_config.eos_token_id). Reward models are trained and read at the "
                    f"eos that ends every sequence; this file was written by an older converter that did not end "
                    f"sequences in eos, or with a different tokenizer: reconvert it with `mindrlhf "
                    f"convert-preference` and the model's tokenizer"
                )


def _pair_layout(chosen_ids, chosen_mask, rejected_ids, rejected_mask, position_id, loss_mask, end_ind):
    """Batched stored columns ``(B, S)`` -> the ``(2B, S)`` training layout (see the module docstring)."""
    del end_ind  # the shared stored end; each row's own end comes from its mask
    attention_mask = np.concatenate([chosen_mask, rejected_mask]).astype(np.int32)
    return (
        np.concatenate([chosen_ids, rejected_ids]).astype(np.int32),
        np.concatenate([position_id, position_id]).astype(np.int32),
        attention_mask,
        loss_mask.astype(np.float32),
        row_ends(attention_mask),
    )


def reward_model_dataset(
    path: str, batch_size: int, *, drop_remainder: bool = True, num_parallel_workers: int = 1, **order
):
    """One epoch of reward-model batches from a preference MindRecord; columns :data:`REWARD_COLUMNS`.

    Args:
        path: the ``.mindrecord`` file (its ``.db`` beside it).
        batch_size: pairs per batch ``B`` (the batch holds ``2B`` sequences).
        drop_remainder: drop a last batch with fewer than ``B`` pairs.
        num_parallel_workers: reader / map threads (the order does not depend on it).
        order: which records and in what order: the keyword arguments of :func:`epoch_indices` (``epoch``,
            ``seed``, ``shuffle``, ``rank_id``, ``rank_size``, ``skip_batches``, ``num_samples``).
    Returns:
        A ``mindspore.dataset`` pipeline; iterate it with ``create_dict_iterator(num_epochs=1)``.
    """
    return _epoch_batches(
        path,
        record_count(path),
        PREFERENCE_COLUMNS,
        batch_size,
        order,
        drop_remainder,
        num_parallel_workers,
        _pair_layout,
        REWARD_COLUMNS,
    )


def check_dpo_file(path: str) -> int:
    """Number of records of a preference MindRecord that DPO can read; a :class:`ConversionError` that says how to
    reconvert a file written before the prompt/response boundary (the response masks) was stored."""
    count = record_count(path, PREFERENCE_COLUMNS)
    missing = [c for c in RESPONSE_SCHEMA if c not in stored_columns(path)]
    if missing:
        raise ConversionError(
            f"{path}: no prompt/response boundary ({', '.join(missing)} missing): this preference file was written "
            f"before the converter stored it, and DPO sums log-probs over the response tokens only. Reconvert the "
            f"source with `mindrlhf convert-preference --model <tokenizer> --src_file <pairs> --dst_file {path} "
            f"--seq_length <n>`"
        )
    return count


def _dpo_layout(chosen_ids, chosen_mask, rejected_ids, rejected_mask, chosen_response, rejected_response):
    """Batched stored columns ``(B, S)`` -> ``input_ids``, ``attention_mask`` ``(2B, S)`` int32 and
    ``response_mask (2B, S)`` float32, the B chosen rows first."""
    return (
        np.concatenate([chosen_ids, rejected_ids]).astype(np.int32),
        np.concatenate([chosen_mask, rejected_mask]).astype(np.int32),
        np.concatenate([chosen_response, rejected_response]).astype(np.float32),
    )


def dpo_batches(
    path: str, indices: np.ndarray, batch_size: int, drop_remainder: bool = True, num_parallel_workers: int = 1
):
    """Records ``indices`` (in that order) of a preference MindRecord in batches of ``batch_size`` pairs, columns
    :data:`DPO_COLUMNS` (see :func:`_dpo_layout`)."""
    return mindrecord_batches(
        path, DPO_STORED, indices, batch_size, drop_remainder, num_parallel_workers, _dpo_layout, DPO_COLUMNS
    )


def dpo_dataset(path: str, batch_size: int, *, drop_remainder: bool = True, num_parallel_workers: int = 1, **order):
    """One epoch of DPO batches from a preference MindRecord with the response masks: per batch of ``B`` pairs
    ``input_ids``, ``attention_mask`` ``(2B, S)`` int32 and ``response_mask (2B, S)`` float32 (1 on each
    sequence's response tokens, eos included), the B chosen rows first. Records and order as
    :func:`reward_model_dataset` (:func:`epoch_indices`)."""
    return _epoch_batches(
        path,
        check_dpo_file(path),
        DPO_STORED,
        batch_size,
        order,
        drop_remainder,
        num_parallel_workers,
        _dpo_layout,
        DPO_COLUMNS,
    )


def sft_dataset(path: str, batch_size: int, *, drop_remainder: bool = True, num_parallel_workers: int = 1, **order):
    """One epoch of SFT batches from an SFT MindRecord; columns :data:`SFT_COLUMNS`, each ``(B, S) int32``.
    Arguments as :func:`reward_model_dataset`, with ``B`` sequences (not pairs) per batch."""
    return _epoch_batches(
        path, record_count(path, SFT_COLUMNS), SFT_COLUMNS, batch_size, order, drop_remainder, num_parallel_workers
    )


# ---------------------------------------------------------------------------------------------------------------
# PPO prompts (mindrlhf.data.convert_prompts)


def prompt_indices(
    n: int,
    num_rollouts: int,
    iteration: int,
    *,
    seed: int = 0,
    shuffle: bool = True,
    rank_id: int = 0,
    rank_size: int = 1,
) -> np.ndarray:
    """The records one rank turns into rollouts in PPO iteration ``iteration``.

    The rank's prompt stream is its :func:`epoch_indices` of epoch 0, then epoch 1, ... (each epoch reshuffled);
    iteration ``k`` takes items ``[k * num_rollouts, (k + 1) * num_rollouts)`` of it, so every prompt is used before
    any repeats (the predecessor took the same ``num_rollouts`` prompts every time, bug B21) and the choice is a pure
    function of the arguments (exact resume).
    """
    per_epoch = len(epoch_indices(n, 1, shuffle=False, rank_id=rank_id, rank_size=rank_size))
    if per_epoch == 0:
        raise ValueError(f"{n} prompt records cannot be shared by {rank_size} ranks")
    start, stop = iteration * num_rollouts, (iteration + 1) * num_rollouts
    parts, epoch = [], start // per_epoch
    while epoch * per_epoch < stop:
        order = epoch_indices(n, 1, epoch=epoch, seed=seed, shuffle=shuffle, rank_id=rank_id, rank_size=rank_size)
        lo, hi = max(start - epoch * per_epoch, 0), min(stop - epoch * per_epoch, per_epoch)
        parts.append(order[lo:hi])
        epoch += 1
    return np.concatenate(parts)


def read_prompts(path: str, indices: np.ndarray, pad_token_id: int) -> dict:
    """Records ``indices`` (in that order) of a prompt MindRecord: ``prompt_ids (R, P)``, ``prompt_length (R,)``,
    ``pretrain_ids (R, T)``, ``loss_mask (R, T)``, numpy int32, and ``answer``, a list of ``R`` str (each record's
    reference answer for the reward functions, ``""`` when it has none).

    Files without ``prompt_length`` (the predecessor's) get each prompt's length as one past its last token that
    is not ``pad_token_id``; files without ``answer`` (written before it existed) get ``""`` for every record.
    """
    record_count(path, PROMPT_COLUMNS)
    stored = stored_columns(path)
    has_length, has_answer = "prompt_length" in stored, ANSWER_COLUMN in stored
    columns = list(PROMPT_COLUMNS) + (["prompt_length"] if has_length else [])
    columns += [ANSWER_COLUMN] if has_answer else []
    # each record once (a SubsetSampler takes no more indices than records), then repeated into the given order
    unique, order = np.unique(np.asarray(indices, np.int64), return_inverse=True)
    rows = list(mindrecord_batches(path, columns, unique).create_dict_iterator(num_epochs=1, output_numpy=True))
    rows = [rows[i] for i in order]
    out = {name: np.stack([r[name] for r in rows]).astype(np.int32) for name in PROMPT_COLUMNS}
    # the predecessor padded loss_mask with the pad id (bug B8): only 1 marks a ptx token
    out["loss_mask"] = (out["loss_mask"] == 1).astype(np.int32)
    if has_length:
        out["prompt_length"] = np.asarray([int(r["prompt_length"]) for r in rows], np.int32)
    else:
        out["prompt_length"] = row_ends(out["prompt_ids"] != pad_token_id)
    out[ANSWER_COLUMN] = [_text(r[ANSWER_COLUMN]) for r in rows] if has_answer else [""] * len(rows)
    return out


def _text(value) -> str:
    """A stored string column as ``str`` (MindDataset yields a 0-d numpy string array, or bytes)."""
    value = value.item() if isinstance(value, np.ndarray) else value
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)
