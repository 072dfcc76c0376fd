"""One run per output folder.

A training command claims its output folder before it builds anything (:func:`claim_output_dir`):

- **Lock.** ``<output_dir>/.mindrlhf.lock`` is held with ``flock`` for the life of the process and names the
  holder (pid, host, command, start time). A second run on the folder is refused with that name. The kernel drops
  the lock when its process dies, so the lock of a killed run is stale by construction: the next run takes it
  over and says whose it was.
- **Fresh, resume or overwrite.** ``run.json`` records the run that owns the folder (run id, command, config
  hash, start time). A fresh run in a folder that already holds a run's results (checkpoints or metrics) is
  refused unless the command resumes it or is told to overwrite it; overwriting removes the previous run's
  outputs (:data:`RUN_OUTPUTS`) first. A resumed run keeps the folder's run id.

The run id and config hash of this process are stamped into every checkpoint manifest (:func:`current_run`), so
checkpoints of different runs cannot be confused. Only rank 0 of a data-parallel group claims the folder; the
other ranks read its run id from ``run.json``.
"""

from __future__ import annotations

import dataclasses
import datetime
import fcntl
import glob
import hashlib
import json
import logging
import os
import shutil
import socket
import sys
import uuid
from typing import Optional

from mindrlhf.atomic import write_json
from mindrlhf.errors import LaunchError

logger = logging.getLogger(__name__)

LOCK_NAME = ".mindrlhf.lock"
RUN_FILE = "run.json"
# what a run writes into its output folder (removed by an overwrite); user files are never touched
RUN_OUTPUTS = (
    "checkpoint",
    "tensorboard",
    "log",
    "resolved_config.yaml",
    "ppo_metrics.jsonl",
    "grpo_metrics.jsonl",
    RUN_FILE,
)
MODES = ("fresh", "resume", "overwrite")

_HELD = {}  # output folder -> open lock file (kept open: the flock lives as long as the process)
_CURRENT = {}  # "output_dir", "config_hash" of this process's run


def config_hash(cfg) -> str:
    """SHA-256 (first 16 hex digits) of a config dataclass, ``load_checkpoint`` and ``output_dir`` left out (they
    change when a run is resumed or moved, the run does not)."""
    data = dataclasses.asdict(cfg) if dataclasses.is_dataclass(cfg) else dict(cfg)
    for key in ("load_checkpoint", "output_dir"):
        data.pop(key, None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()[:16]


def current_run() -> Optional[dict]:
    """``{"run_id", "config_hash"}`` of the run this process trains (None before a folder is claimed)."""
    if not _CURRENT:
        return None
    record = read_run(_CURRENT["output_dir"]) or {}
    return {"run_id": record.get("run_id"), "config_hash": _CURRENT["config_hash"]}


def read_run(output_dir: str) -> Optional[dict]:
    """The folder's ``run.json`` (None when it has none or it cannot be read)."""
    try:
        with open(os.path.join(output_dir, RUN_FILE), encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def previous_run(output_dir: str) -> Optional[str]:
    """What shows that ``output_dir`` already holds a run's results (a metrics file or a checkpoint), or None; a
    ``run.json`` alone is a run that stopped before it trained anything."""
    for name in ("ppo_metrics.jsonl", "grpo_metrics.jsonl"):
        if os.path.exists(os.path.join(output_dir, name)):
            return os.path.join(output_dir, name)
    found = glob.glob(os.path.join(output_dir, "checkpoint", "**", "*.ckpt"), recursive=True)
    return sorted(found)[0] if found else None


def _holder(lock_file) -> str:
    lock_file.seek(0)
    try:
        info = json.loads(lock_file.read() or "{}")
    except ValueError:
        info = {}
    if not info:
        return "another process"
    return f"process {info.get('pid')} on {info.get('host')} (started {info.get('started')}: {info.get('command')})"


def _alive(pid: Optional[int]) -> bool:
    if not pid:
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def acquire_lock(output_dir: str, command: str = "") -> str:
    """Hold ``<output_dir>/.mindrlhf.lock`` for the rest of this process; :class:`LaunchError` naming the
    holder when another live run has it. Returns the lock file's path."""
    output_dir = os.path.abspath(output_dir)
    path = os.path.join(output_dir, LOCK_NAME)
    if output_dir in _HELD:
        return path
    os.makedirs(output_dir, exist_ok=True)
    lock_file = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held open for the life of the process
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        holder = _holder(lock_file)
        lock_file.close()
        raise LaunchError(
            f"{output_dir}: in use by {holder}; wait for it to finish or choose another --output_dir"
        ) from None
    lock_file.seek(0)
    previous = lock_file.read()
    if previous.strip():
        try:
            stale = json.loads(previous)
        except ValueError:
            stale = {}
        state = "still running, but without the lock" if _alive(stale.get("pid")) else "no longer running"
        logger.warning("%s: took over the stale lock of process %s (%s)", output_dir, stale.get("pid"), state)
    lock_file.seek(0)
    lock_file.truncate()
    json.dump(
        {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "command": command or " ".join(sys.argv),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        },
        lock_file,
    )
    lock_file.flush()
    _HELD[output_dir] = lock_file
    return path


def release_lock(output_dir: str) -> None:
    """Give up the lock of ``output_dir`` if this process holds it."""
    lock_file = _HELD.pop(os.path.abspath(output_dir), None)
    if lock_file is not None:
        lock_file.seek(0)
        lock_file.truncate()
        lock_file.close()


def _remove_outputs(output_dir: str) -> None:
    for name in RUN_OUTPUTS:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
    logger.warning("%s: removed the previous run's outputs (overwrite)", output_dir)


def run_mode(resuming: bool, overwrite: bool) -> str:
    """The :data:`MODES` entry of a command's flags (overwrite wins)."""
    return "overwrite" if overwrite else "resume" if resuming else "fresh"


def claim_output_dir(
    output_dir: str, cfg, mode: str = "fresh", rank_id: int = 0, resume_hint: str = "", command: str = ""
) -> Optional[dict]:
    """Claim ``output_dir`` for this process's run and return its ``run.json`` record (None on ranks > 0).

    Args:
        cfg: the run's config dataclass (hashed into ``run.json`` and every checkpoint manifest).
        mode: ``fresh`` (refused when the folder already holds a run), ``resume`` (continue the folder's run, or
            start one there) or ``overwrite`` (remove the previous run's outputs, then start afresh).
        resume_hint: how to resume with this command (named in the refusal).
    Raises:
        LaunchError: the folder is locked by another live run, or holds a run and ``mode`` is ``fresh``.
    """
    if mode not in MODES:
        raise LaunchError(f"run mode {mode!r}: expected one of {', '.join(MODES)}")
    _CURRENT.update(output_dir=os.path.abspath(output_dir), config_hash=config_hash(cfg))
    if rank_id != 0:
        return None
    acquire_lock(output_dir, command)
    found = previous_run(output_dir)
    if found and mode == "fresh":
        release_lock(output_dir)
        raise LaunchError(
            f"{output_dir}: already holds a run ({found}); {resume_hint or 'resume it'}, pass "
            f"--overwrite_output_dir to start over (its outputs are removed), or choose another "
            f"--output_dir"
        )
    if found and mode == "overwrite":
        _remove_outputs(output_dir)
    record = read_run(output_dir) if mode == "resume" else None
    if record is None:
        record = {
            "run_id": uuid.uuid4().hex[:12],
            "command": command or " ".join(sys.argv),
            "config_hash": config_hash(cfg),
            "started": datetime.datetime.now().isoformat(timespec="seconds"),
        }
        write_json(os.path.join(output_dir, RUN_FILE), record)
    logger.info("run %s in %s (%s)", record["run_id"], os.path.abspath(output_dir), mode)
    return record
