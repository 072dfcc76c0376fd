"""Training checkpoints: everything a run needs to continue exactly (model, optimizer moments and step, loss scale,
epoch and position in the data), one ``.ckpt`` per save under ``<output_dir>/checkpoint/rank_<id>/``.

File names follow mindformers: ``<prefix>_rank_<id>-<global step>_<epoch>.ckpt``. Files are written atomically and
only the newest ``keep_checkpoint_max`` are kept; the RL trainers keep as many iterations (:func:`prune_iterations`).

Every file has a manifest (:mod:`mindrlhf.manifest`). "The newest checkpoint" of a folder is the newest *written*
(the manifest's time, then the step) that matches its manifest: a corrupt or partial newer file is skipped with a
warning naming it, never loaded. Files without any manifest (written by other tools) are taken by step.
"""

from __future__ import annotations

import glob
import logging
import os
import re
from dataclasses import dataclass
from typing import Collection, Dict, List, Optional, Sequence, Union

import numpy as np
from mindspore import nn

from mindrlhf.atomic import TMP_MARK
from mindrlhf.manifest import manifest_path, read_manifest, verify
from mindrlhf.models.convert import (
    CheckpointError,
    assign_parameters,
    cell_parameters,
    load_entries,
    load_recorded_base,
    save_tensors,
)
from mindrlhf.models.lora import BASE_KEY, check_base, parse_base_record

logger = logging.getLogger(__name__)

_NAME = re.compile(r"_rank_(\d+)-(\d+)_(\d+)\.ckpt$")
_ITERATION = re.compile(r"_epoch_(\d+)\.ckpt$")
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


def _written_at(path: str) -> float:
    """When a checkpoint was written: its manifest's time, else the file's modification time."""
    try:
        manifest = read_manifest(path)
    except CheckpointError:
        manifest = None
    return manifest["written_at"] if manifest else os.path.getmtime(path)


def list_checkpoints(folder: str) -> list:
    """``*.ckpt`` files of a folder, oldest first (by the time written, then by step); the temporary files of a
    save that was killed are not checkpoints."""
    files = [f for f in glob.glob(os.path.join(folder, "*.ckpt")) if TMP_MARK not in os.path.basename(f)]
    return sorted(files, key=lambda p: (_written_at(p), checkpoint_step(p)))


def intact(paths: Sequence[str], required: bool) -> bool:
    """True when every file of ``paths`` matches its manifest (``required``: and has one); logs a warning naming
    the first that does not."""
    for path in paths:
        try:
            verify(path, required=required)
        except CheckpointError as err:
            logger.warning("skipping checkpoint %s: %s", path, err)
            return False
    return True


def latest_checkpoint(folder: str) -> Optional[str]:
    """The newest intact checkpoint of ``folder`` (None when there is none)."""
    files = list_checkpoints(folder)
    with_manifest = any(os.path.exists(manifest_path(f)) for f in files)
    for path in reversed(files):
        if intact([path], required=with_manifest):
            return path
    return None


def remove_checkpoint(path: str) -> None:
    """Delete a checkpoint file and its manifest."""
    for name in (path, manifest_path(path)):
        if os.path.exists(name):
            os.remove(name)


def resume_checkpoint(load_checkpoint: str, rank_id: int) -> Optional[str]:
    """The file to resume from when ``load_checkpoint`` is a checkpoint root (a folder with ``rank_<id>``)."""
    if not load_checkpoint or not os.path.isdir(rank_dir(load_checkpoint, rank_id)):
        return None
    path = latest_checkpoint(rank_dir(load_checkpoint, rank_id))
    if path is None:
        raise CheckpointError(f"{rank_dir(load_checkpoint, rank_id)}: no intact .ckpt file to resume from")
    logger.info("newest intact checkpoint of %s: %s", load_checkpoint, path)
    return path


class CheckpointManager:
    """Saves the whole train step (model + optimizer + loss scale) with the :class:`TrainState`."""

    def __init__(self, root: str, rank_id: int, prefix: str, keep_max: int):
        self.folder = rank_dir(root, rank_id)
        self.rank_id = rank_id
        self.prefix = prefix
        self.keep_max = keep_max

    def save(
        self, train_step: nn.Cell, state: TrainState, frozen: Collection[str] = (), base: Optional[str] = None
    ) -> str:
        """Write every parameter of ``train_step`` but the ``frozen`` base names; ``base`` (a LoRA run's
        :func:`~mindrlhf.models.lora.base_record`) is stored with them, so the base can be found and checked."""
        name = f"{self.prefix}_rank_{self.rank_id}-{state.global_step}_{state.epoch + 1}.ckpt"
        path = os.path.join(self.folder, name)
        extra = {k: int(getattr(state, k)) for k in STATE_KEYS}
        if base is not None:
            extra[BASE_KEY] = base
        frozen = set(frozen)
        save_tensors({n: p for n, p in cell_parameters(train_step).items() if n not in frozen}, path, extra)
        for old in list_checkpoints(self.folder)[: -self.keep_max]:
            remove_checkpoint(old)
        logger.info("checkpoint saved: %s", path)
        return path


def iteration_files(folder: str) -> Dict[int, List[str]]:
    """An RL run's checkpoint sets: iteration ``n`` -> the paths of every ``<kind>_epoch_<n>.ckpt`` in ``folder``."""
    sets: Dict[int, List[str]] = {}
    for path in glob.glob(os.path.join(folder, "*_epoch_*.ckpt")):
        match = _ITERATION.search(os.path.basename(path))
        if match:
            sets.setdefault(int(match.group(1)), []).append(path)
    return sets


def newest_iteration_state(root: str, rank_id: int, prefix: str):
    """``(folder, n, file name)`` of the newest intact ``<prefix><n>.ckpt`` under ``root`` (a checkpoint root with
    ``rank_<id>/``, or that folder itself), every file of iteration ``n`` checked against its manifest (a set
    that fails is skipped with a warning); :class:`CheckpointError` when there is none (an RL run's resume)."""
    folder = rank_dir(root, rank_id) if os.path.isdir(rank_dir(root, rank_id)) else root
    sets = iteration_files(folder) if os.path.isdir(folder) else {}
    states = sorted(
        (n, f"{prefix}{n}.ckpt") for n, paths in sets.items() if os.path.join(folder, f"{prefix}{n}.ckpt") in paths
    )
    with_manifest = any(os.path.exists(manifest_path(p)) for paths in sets.values() for p in paths)
    for n, name in reversed(states):
        if intact(sets[n], required=with_manifest):
            logger.info("resuming from iteration %d: %s", n, ", ".join(sorted(sets[n])))
            return folder, n, name
    raise CheckpointError(f"{folder}: no intact {prefix}<n>.ckpt to resume from")


def prune_iterations(folder: str, keep_max: int) -> List[int]:
    """Delete every RL checkpoint set of ``folder`` but the newest ``keep_max`` iterations; returns the iterations
    removed."""
    sets = iteration_files(folder)
    removed = sorted(sets)[:-keep_max]
    for n in removed:
        for path in sets[n]:
            remove_checkpoint(path)
    return removed


def read_ckpt(path: str) -> Dict[str, Union[np.ndarray, str]]:
    """All entries of a MindSpore ``.ckpt``: numpy arrays, and text as it was stored (a LoRA base record)."""
    return {name: value if isinstance(value, str) else value.asnumpy() for name, value in load_entries(path).items()}


def recorded_base(path: str) -> Optional[dict]:
    """The base record of a LoRA run's adapter-only training checkpoint (None for a checkpoint with its base)."""
    text = read_ckpt(path).get(BASE_KEY)
    return None if text is None else parse_base_record(text, path)


def load_base_for_resume(model: nn.Cell, path: str) -> None:
    """Before resuming from training checkpoint ``path``: when it holds adapters alone, load the base it records
    into ``model`` (:func:`restore` then checks it)."""
    record = recorded_base(path)
    if record is not None:
        load_recorded_base(model, record)


def initial_weights(model: nn.Cell, load_checkpoint: Optional[str], rank_id: int) -> Optional[str]:
    """The weights to start ``model`` from: ``load_checkpoint`` when it names weights (a .ckpt or Hugging Face
    folder), None when it is empty or a checkpoint root with ``rank_<id>``. Such a root is a resume, restored by the
    trainer; a LoRA run's checkpoint there holds its adapters alone, so the base it records is loaded here."""
    resume = resume_checkpoint(load_checkpoint, rank_id) if load_checkpoint else None
    if resume:
        load_base_for_resume(model, resume)
    return None if resume else load_checkpoint or None


def restore(train_step: nn.Cell, path: str) -> TrainState:
    """Load every parameter of ``train_step`` from ``path`` (all must be present) and return the saved state."""
    entries = read_ckpt(path)
    missing_state = [k for k in STATE_KEYS if k not in entries]
    if missing_state:
        raise CheckpointError(
            f"{path}: not a training checkpoint (no {', '.join(missing_state)}); give a "
            f".ckpt of model weights as an initial checkpoint instead"
        )
    base = ()
    if BASE_KEY in entries:  # a LoRA run's adapters: the frozen base must be the one they were trained on
        record = parse_base_record(entries[BASE_KEY], path)
        check_base(cell_parameters(train_step), record, path)
        base = tuple(record["digests"])
    params = {p.name for p in train_step.get_parameters() if p.name not in SCHEDULE_PARAMS}
    try:
        assign_parameters(
            train_step, {n: v for n, v in entries.items() if n in params}, path, allow_missing=SCHEDULE_PARAMS + base
        )
    except CheckpointError as err:  # e.g. the SFT run's checkpoint root given to the reward model's training
        raise CheckpointError(
            f"{err}. A checkpoint root (a folder with rank_<id>/) resumes a run of this same "
            f"stage; to start this model from another run's weights (the SFT model for the "
            f"reward model), pass the .ckpt file itself: --load_checkpoint {path}"
        ) from None
    state = TrainState(**{k: int(entries[k]) for k in STATE_KEYS})
    logger.info(
        "resumed from %s at epoch %d, step %d of the epoch (global step %d)",
        path,
        state.epoch + 1,
        state.step_in_epoch,
        state.global_step,
    )
    return state
