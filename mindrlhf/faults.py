"""Fault injection for the crash tests: ``MINDRLHF_KILL_AT=<point>:<n>`` makes the process kill itself with
SIGKILL the ``n``-th time it reaches ``<point>`` (no clean-up, no ``finally``: the same as a power cut to the
process or the out-of-memory killer).

Points (:data:`POINTS`): ``train_step`` (an optimizer step was taken and not yet checkpointed), ``rollout``
(an RL iteration's rollouts were made and not yet trained on) and ``checkpoint_write`` (a checkpoint's bytes are
in its temporary file, its manifest and final name not yet written). Unset, :func:`reach` does nothing.
"""

from __future__ import annotations

import os
import signal
from typing import Dict

ENV = "MINDRLHF_KILL_AT"
POINTS = ("train_step", "rollout", "checkpoint_write")
_REACHED: Dict[str, int] = {}


def reach(point: str) -> None:
    """Count a pass through ``point``; SIGKILL this process when ``MINDRLHF_KILL_AT`` names it and its count."""
    spec = os.environ.get(ENV)
    if not spec:
        return
    name, _, count = spec.partition(":")
    if name != point:
        return
    _REACHED[point] = _REACHED.get(point, 0) + 1
    if _REACHED[point] >= int(count or 1):
        os.kill(os.getpid(), signal.SIGKILL)
