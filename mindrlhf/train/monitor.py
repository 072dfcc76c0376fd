"""Training logs: the seeds' log line on stdout and in ``<output_dir>/log/rank_<id>/info.log``, and TensorBoard
scalars (tensorboardX, rank 0 only) under ``<output_dir>/tensorboard``."""

from __future__ import annotations

import json
import logging
import os
from typing import Dict

import numpy as np

from mindrlhf.atomic import write_text

LOG_FORMAT = "%(asctime)s - mindrlhf[%(filename)s:%(lineno)d] - %(levelname)s - %(message)s"


def append_jsonl(path: str, record: dict) -> None:
    """Append ``record`` as one JSON line to ``path`` (its folder is created)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def trim_jsonl(path: str, iteration: int) -> None:
    """Keep only the records of ``path`` with ``"iteration" < iteration``, rewritten atomically: a run that starts
    at ``iteration`` (0 for a fresh one) appends to its own history only, never to an earlier run's or to the
    iterations a killed run logged after its last checkpoint (or a line it was killed while writing)."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                if json.loads(line).get("iteration", 0) < iteration:
                    kept.append(line)
            except ValueError:
                continue
    write_text(path, "".join(kept))


def attach_rank_log(output_dir: str, rank_id: int) -> str:
    """Send the ``mindrlhf`` logger (INFO and up) to ``<output_dir>/log/rank_<id>/info.log`` as well."""
    folder = os.path.join(output_dir, "log", f"rank_{rank_id}")
    os.makedirs(folder, exist_ok=True)
    path = os.path.abspath(os.path.join(folder, "info.log"))
    root = logging.getLogger("mindrlhf")
    root.setLevel(min(root.level or logging.INFO, logging.INFO))
    if not any(getattr(h, "baseFilename", None) == path for h in root.handlers):
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(logging.Formatter(LOG_FORMAT))
        handler.setLevel(logging.INFO)
        root.addHandler(handler)
    return path


def format_step_line(
    epoch: int,
    epochs: int,
    step: int,
    steps: int,
    loss: float,
    ms_per_step: float,
    lr: float,
    overflow: bool,
    loss_scale: float,
) -> str:
    """``Epoch:[  1/  2], step:[    2/29134], loss: 0.744, time:68580.279 ms, lr:8e-08, overflow cond: False,
    loss_scale: 128.0`` (epoch and step 1-based)."""
    return (
        f"Epoch:[{epoch:3d}/{epochs:3d}], step:[{step:5d}/{steps:5d}], loss: {loss:5.3f}, "
        f"time:{ms_per_step:.3f} ms, lr:{np.float32(lr)!s}, overflow cond: {bool(overflow)}, "
        f"loss_scale: {float(loss_scale)}"
    )


class TrainMonitor:
    """Writes one line per logged step and the scalars of that step."""

    def __init__(self, output_dir: str, rank_id: int, is_main: bool):
        self.log_path = attach_rank_log(output_dir, rank_id)
        self.logger = logging.getLogger("mindrlhf.train")
        self.is_main = is_main
        self.writer = None
        if is_main:
            from tensorboardX import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))

    def line(self, text: str) -> None:
        """A seed log line: stdout (main rank) and info.log (every rank)."""
        if self.is_main:
            print(text, flush=True)
        for handler in logging.getLogger("mindrlhf").handlers:
            if getattr(handler, "baseFilename", None) == self.log_path:
                handler.emit(self.logger.makeRecord(self.logger.name, logging.INFO, __file__, 0, text, (), None))

    def scalars(self, step: int, values: Dict[str, float]) -> None:
        """TensorBoard scalars (main rank only)."""
        if self.writer is not None:
            for name, value in values.items():
                self.writer.add_scalar(name, float(value), step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
