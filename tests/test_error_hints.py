"""Errors that say how to fix them: a checkpoint of another stage's run given as a resume root, a training output
folder given as weights, and a preference file in a chat format."""

from __future__ import annotations

import json
import os

import mindspore as ms
import numpy as np
import pytest

from mindrlhf.data.convert_preference import ConversionError, convert_preference
from mindrlhf.models import CausalLM, RewardModel
from mindrlhf.models.convert import CheckpointError, load_weights, save_ckpt
from mindrlhf.train.checkpoint import STATE_KEYS, restore
from tests.helpers import tiny_gpt2_config


@pytest.fixture(scope="module")
def sft_output(tmp_path_factory):
    """An SFT run's output folder: ``checkpoint/rank_0/<file>.ckpt`` with the model and the training state."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    root = tmp_path_factory.mktemp("sft")
    folder = root / "checkpoint" / "rank_0"
    folder.mkdir(parents=True)
    path = save_ckpt(
        CausalLM(tiny_gpt2_config()),
        str(folder / "gpt2_sft_rank_0-4_1.ckpt"),
        append_dict={key: ms.Tensor(np.int64(1)) for key in STATE_KEYS},
    )
    return str(root), path


def test_resuming_another_stages_checkpoint_says_to_pass_the_file(sft_output):
    _, path = sft_output
    with pytest.raises(CheckpointError) as err:
        restore(RewardModel(tiny_gpt2_config()), path)
    message = str(err.value)
    assert "missing keys (1): score.weight" in message
    assert f"pass the .ckpt file itself: --load_checkpoint {path}" in message
    load_weights(RewardModel(tiny_gpt2_config()), path, tiny_gpt2_config(), new_heads=True)  # which works


def test_an_output_folder_as_weights_names_its_newest_checkpoint(sft_output):
    root, path = sft_output
    with pytest.raises(CheckpointError, match=f"it holds .ckpt files: pass one \\(the newest is {path}\\)"):
        load_weights(CausalLM(tiny_gpt2_config()), root, tiny_gpt2_config())


def test_a_preference_field_of_the_wrong_type_lists_the_accepted_forms(tmp_path):
    src = tmp_path / "numbers.jsonl"
    src.write_text(json.dumps({"prompt": 42, "chosen": "Hello.", "rejected": "No."}) + "\n")
    with pytest.raises(ConversionError) as err:
        convert_preference(str(src), str(tmp_path / "out.mindrecord"), "gpt2", 64, progress=False)
    message = str(err.value)
    assert message.startswith(f"{src}:1: field 'prompt': expected a string, got int; accepted records")
    assert "pairwise {prompt, chosen, rejected}" in message and "chat {[prompt,] chosen, rejected}" in message
    assert not os.path.exists(tmp_path / "out.mindrecord")
