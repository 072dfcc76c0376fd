"""Checkpoint manifests: every ``.ckpt`` the project writes has a ``<file>.manifest.json`` beside it, and every
``.ckpt`` it reads is checked against its manifest first.

A manifest records the file's size and SHA-256, the step in its name (the global step of an SFT / reward-model
checkpoint, the iteration of an RL one), the run that wrote it (:mod:`mindrlhf.runlock`), a hash of that run's
config, and when it was written. It is written *before* the checkpoint is renamed into place, so a checkpoint
file that exists under its final name always has one; a file that does not match its manifest was cut short or
changed after it was written (a full disk, a copy that stopped half way) and is never loaded.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from typing import Optional

from mindrlhf.atomic import write_json
from mindrlhf.errors import UserError

SUFFIX = ".manifest.json"
FORMAT = "mindrlhf-checkpoint/1"
_STEP = re.compile(r"(?:-(\d+)_\d+|_epoch_(\d+))\.ckpt$")
_CHUNK = 1 << 22


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not fit the model: names the file and lists every problem."""


def manifest_path(path: str) -> str:
    """``<path>.manifest.json``."""
    return path + SUFFIX


def file_sha256(path: str) -> str:
    """Hex SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def step_of(path: str) -> Optional[int]:
    """The step in a checkpoint's name: ``<prefix>_rank_<id>-<step>_<epoch>.ckpt`` or ``<kind>_epoch_<n>.ckpt``."""
    match = _STEP.search(os.path.basename(path))
    return None if match is None else int(match.group(1) or match.group(2))


def write_manifest(data_file: str, final_path: str, run: Optional[dict] = None) -> dict:
    """Describe ``data_file`` (the checkpoint, still under its temporary name) as ``final_path`` and write the
    manifest atomically; ``run``: ``{"run_id", "config_hash"}`` of the run writing it. Returns the manifest."""
    manifest = {
        "format": FORMAT,
        "file": os.path.basename(final_path),
        "size": os.path.getsize(data_file),
        "sha256": file_sha256(data_file),
        "step": step_of(final_path),
        "written_at": time.time(),
        **(run or {}),
    }
    write_json(manifest_path(final_path), manifest)
    return manifest


def read_manifest(path: str) -> Optional[dict]:
    """The manifest of checkpoint ``path`` (None when it has none); :class:`CheckpointError` for one that cannot be
    read."""
    target = manifest_path(path)
    if not os.path.exists(target):
        return None
    try:
        with open(target, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: its manifest {target} cannot be read ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"{path}: {target} is not a checkpoint manifest of format {FORMAT}")
    return manifest


def verify(path: str, required: bool = False) -> Optional[dict]:
    """Check checkpoint ``path`` against its manifest (size, then SHA-256); returns the manifest, or None when the
    file has none and ``required`` is False. Raises :class:`CheckpointError` naming the file otherwise."""
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: checkpoint file not found")
    manifest = read_manifest(path)
    if manifest is None:
        if required:
            raise CheckpointError(
                f"{path}: no manifest ({manifest_path(path)}): the run that wrote it stopped "
                f"before the checkpoint was complete"
            )
        return None
    size = os.path.getsize(path)
    if size != manifest.get("size"):
        raise CheckpointError(
            f"{path}: {size} bytes, its manifest says {manifest.get('size')}: the file is partial or corrupt"
        )
    if file_sha256(path) != manifest.get("sha256"):
        raise CheckpointError(f"{path}: SHA-256 differs from its manifest: the file is corrupt")
    return manifest
