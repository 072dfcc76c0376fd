"""Every MindRecord schema the project writes, in one place: the converters write them, :mod:`mindrlhf.data.datasets`
reads them and the PPO stages mode writes and reads the experience file (:mod:`mindrlhf.train.experience`).

A schema maps each field to ``{"type": ..., "shape": [-1]}`` (a vector) or ``{"type": ...}`` (a scalar), as
``mindspore.mindrecord.FileWriter.add_schema`` takes it; its order is the order of the field list here.
``S`` is the converter's ``seq_length``; the module docstrings of the converters define each field.
"""

from __future__ import annotations

from typing import Dict, Tuple

Schema = Dict[str, dict]


def _vector(dtype: str) -> dict:
    """A vector field of ``dtype`` (a fresh dict per field: FileWriter may keep what it is given)."""
    return {"type": dtype, "shape": [-1]}


# Preference pairs (mindrlhf.data.convert_preference): the reward model's seven fields, in the spec order.
PREFERENCE_SCHEMA: Schema = {
    "chosen_input_ids": _vector("int32"),  # (S,)
    "chosen_attention_mask": _vector("int32"),  # (S,)
    "rejected_input_ids": _vector("int32"),  # (S,)
    "rejected_attention_mask": _vector("int32"),  # (S,)
    "position_id": _vector("int32"),  # (S,)
    "loss_mask": _vector("int32"),  # (S,) the divergence span
    "end_ind": {"type": "int64"},  # scalar: one past the last token of the longer sequence
}
# The prompt/response boundary of each sequence (what DPO needs on top of the reward model's fields).
RESPONSE_SCHEMA: Schema = {
    "chosen_response_mask": _vector("int32"),  # (S,)
    "rejected_response_mask": _vector("int32"),  # (S,)
}
FILE_SCHEMA: Schema = {**PREFERENCE_SCHEMA, **RESPONSE_SCHEMA}  # what convert_preference writes

# Supervised fine-tuning (mindrlhf.data.convert_sft): stored and batched as is.
SFT_SCHEMA: Schema = {
    "input_ids": _vector("int32"),  # (S,)
    "attention_mask": _vector("int32"),  # (S,)
    "loss_mask": _vector("int32"),  # (S,) 1 on the trained tokens
}

# RL prompts (mindrlhf.data.convert_prompts); P = max_prompt_length, T = seq_length.
PROMPT_SCHEMA: Schema = {
    "prompt_ids": _vector("int64"),  # (P,) right-padded prompt
    "prompt_length": {"type": "int64"},  # scalar: real tokens of prompt_ids
    "pretrain_ids": _vector("int64"),  # (T,) prompt + reference response, for the ptx loss
    "loss_mask": _vector("int64"),  # (T,) 1 on the response tokens of pretrain_ids
}
# the converter's schema: the four token fields and the reference answer ("" when the record has none)
PROMPT_ANSWER_SCHEMA: Schema = {**PROMPT_SCHEMA, "answer": {"type": "string"}}

# PPO rollouts, one record per rollout: the fields of mindrlhf.train.experience.Experience in its order (shapes and
# meanings there), stored flat and read back by shape: int32 token ids and masks, float32 per-token values.
EXPERIENCE_SCHEMA: Schema = {
    **{name: _vector("int32") for name in ("query_tensors", "response_tensors")},
    **{name: _vector("float32") for name in ("logprobs", "values", "rewards", "advantages", "returns")},
    **{name: _vector("int32") for name in ("pretrain_ids", "loss_mask", "attention_mask")},
}

PREFERENCE_COLUMNS: Tuple[str, ...] = tuple(PREFERENCE_SCHEMA)  # stored columns, in the spec order
DPO_FILE_COLUMNS: Tuple[str, ...] = tuple(FILE_SCHEMA)  # the reward fields + the boundary
SFT_COLUMNS: Tuple[str, ...] = tuple(SFT_SCHEMA)  # ("input_ids", "attention_mask", "loss_mask")
PROMPT_COLUMNS: Tuple[str, ...] = ("prompt_ids", "pretrain_ids", "loss_mask")  # the predecessor's three fields
ANSWER_COLUMN = "answer"  # the reference answer (string), in files written since GRPO; optional
EXPERIENCE_COLUMNS: Tuple[str, ...] = tuple(EXPERIENCE_SCHEMA)

# the kind of MindRecord with these columns and the converter that writes it, for error messages
WRITERS: Dict[Tuple[str, ...], Tuple[str, str]] = {
    PREFERENCE_COLUMNS: ("a preference", "convert_preference"),
    SFT_COLUMNS: ("an SFT", "convert_sft"),
    DPO_FILE_COLUMNS: ("a DPO preference", "convert_preference"),
}
