"""Training checkpoints: everything a run needs to continue exactly (model, optimizer moments and step, loss scale,
epoch and position in the data), one ``.ckpt`` per save under ``<output_dir>/checkpoint/rank_<id>/``.

File names follow mindformers: ``<prefix>_rank_<id>-<global step>_<epoch>.ckpt``. Files are written atomically and
only the newest ``keep_checkpoint_max`` are kept.
"""
from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np
import mindspore as ms
from mindspore import nn

from mindrlhf.models.convert import CheckpointError, assign_parameters, save_ckpt

logger = logging.getLogger(__name__)

_NAME = re.compile(r"_rank_(\d+)-(\d+)_(\d+)\.ckpt$")
STATE_KEYS = ("epoch", "step_in_epoch", "global_step")
# The optimizer's learning-rate table is a function of the config (schedule and run length), not state: a resumed
# run rebuilds it, so more epochs can be added to a finished run.
SCHEDULE_PARAMS = ("learning_rate",)


@dataclass
class TrainState:
    """Where a run is: ``epoch`` (0-based) and the batches of it already trained, and the optimizer steps done."""

    epoch: int = 0
    step_in_epoch: int = 0
    global_step: int = 0


def rank_dir(root: str, rank_id: int) -> str:
    """``<root>/rank_<id>``."""
    return os.path.join(root, f"rank_{rank_id}")


def checkpoint_step(path: str) -> int:
    """Global step encoded in a checkpoint file name (-1 when the name has none)."""
    match = _NAME.search(os.path.basename(path))
    return int(match.group(2)) if match else -1


def list_checkpoints(folder: str) -> list:
    """``*.ckpt`` files of a folder, oldest step first (then by modification time)."""
    files = glob.glob(os.path.join(folder, "*.ckpt"))
    return sorted(files, key=lambda p: (checkpoint_step(p), os.path.getmtime(p)))


def latest_checkpoint(folder: str) -> Optional[str]:
    """The checkpoint with the highest step in ``folder`` (None when there is none)."""
    files = list_checkpoints(folder)
    return files[-1] if files else None


def resume_checkpoint(load_checkpoint: str, rank_id: int) -> Optional[str]:
    """The file to resume from when ``load_checkpoint`` is a checkpoint root (a folder with ``rank_<id>``)."""
    if not load_checkpoint or not os.path.isdir(rank_dir(load_checkpoint, rank_id)):
        return None
    path = latest_checkpoint(rank_dir(load_checkpoint, rank_id))
    if path is None:
        raise CheckpointError(f"{rank_dir(load_checkpoint, rank_id)}: no .ckpt file to resume from")
    return path


class CheckpointManager:
    """Saves the whole train step (model + optimizer + loss scale) with the :class:`TrainState`."""

    def __init__(self, root: str, rank_id: int, prefix: str, keep_max: int):
        self.folder = rank_dir(root, rank_id)
        self.rank_id = rank_id
        self.prefix = prefix
        self.keep_max = keep_max

    def save(self, train_step: nn.Cell, state: TrainState) -> str:
        name = f"{self.prefix}_rank_{self.rank_id}-{state.global_step}_{state.epoch + 1}.ckpt"
        path = os.path.join(self.folder, name)
        save_ckpt(train_step, path, append_dict={k: int(getattr(state, k)) for k in STATE_KEYS})
        for old in list_checkpoints(self.folder)[:-self.keep_max]:
            os.remove(old)
        logger.info("checkpoint saved: %s", path)
        return path


def newest_iteration_state(root: str, rank_id: int, prefix: str):
    """``(folder, n, file name)`` of the newest ``<prefix><n>.ckpt`` under ``root`` (a checkpoint root with
    ``rank_<id>/``, or that folder itself); :class:`CheckpointError` when there is none (an RL run's resume)."""
    folder = rank_dir(root, rank_id) if os.path.isdir(rank_dir(root, rank_id)) else root
    states = sorted((int(f[len(prefix):-5]), f) for f in os.listdir(folder)
                    if f.startswith(prefix) and f.endswith(".ckpt")) if os.path.isdir(folder) else []
    if not states:
        raise CheckpointError(f"{folder}: no {prefix}<n>.ckpt to resume from")
    return (folder,) + states[-1]


def read_ckpt(path: str) -> Dict[str, np.ndarray]:
    """All entries of a MindSpore ``.ckpt`` as numpy arrays."""
    if not os.path.exists(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        return {name: value.asnumpy() for name, value in ms.load_checkpoint(path).items()}
    except (ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path}: cannot read MindSpore checkpoint: {err}") from None


def restore(train_step: nn.Cell, path: str) -> TrainState:
    """Load every parameter of ``train_step`` from ``path`` (all must be present) and return the saved state."""
    entries = read_ckpt(path)
    missing_state = [k for k in STATE_KEYS if k not in entries]
    if missing_state:
        raise CheckpointError(f"{path}: not a training checkpoint (no {', '.join(missing_state)}); give a "
                              f".ckpt of model weights as an initial checkpoint instead")
    params = {p.name for p in train_step.get_parameters() if p.name not in SCHEDULE_PARAMS}
    try:
        assign_parameters(train_step, {n: v for n, v in entries.items() if n in params}, path,
                          allow_missing=SCHEDULE_PARAMS)
    except CheckpointError as err:  # e.g. the SFT run's checkpoint root given to the reward model's training
        raise CheckpointError(f"{err}. A checkpoint root (a folder with rank_<id>/) resumes a run of this same "
                              f"stage; to start this model from another run's weights (the SFT model for the "
                              f"reward model), pass the .ckpt file itself: --load_checkpoint {path}") from None
    state = TrainState(**{k: int(entries[k]) for k in STATE_KEYS})
    logger.info("resumed from %s at epoch %d, step %d of the epoch (global step %d)", path, state.epoch + 1,
                state.step_in_epoch, state.global_step)
    return state
