"""What the benchmark scripts share: each side's peak RSS, the versions they ran, a step clock for ``transformers``
trainers and the JSON report. Imports neither framework at module level, so a peer's worker that imports this
does not pay for MindSpore (or torch) in its peak RSS. The scripts put the repository root on ``sys.path`` first."""

from __future__ import annotations

import json
import platform
import resource
import time

import numpy as np

import mindrlhf  # noqa: F401 - its import sets OpenMP's passive wait before a worker's MindSpore loads libgomp


def rss_mb() -> float:
    """This process's RSS high-water mark in MiB: ``VmHWM`` of /proc/self/status. ``getrusage(...).ru_maxrss`` is
    not used where /proc exists: Linux carries the parent's high-water mark through fork + exec into it (and
    RUSAGE_CHILDREN is a max over all children), so every worker would read at least the parent's RSS."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def versions() -> dict:
    """The versions of Python, both frameworks and the peer's libraries (``None`` where one is not installed)."""
    import mindspore as ms
    import torch
    import transformers

    out = {
        "python": platform.python_version(),
        "mindspore": ms.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
    }
    for name in ("trl", "accelerate", "datasets"):
        try:
            out[name] = __import__(name).__version__
        except ImportError:
            out[name] = None
    return out


def step_clock(base):
    """``(callback, times)``: a ``base`` (transformers' ``TrainerCallback``) that appends ``[begin, end]``
    ``perf_counter`` times of every optimizer step to ``times``."""
    times = []

    class StepClock(base):
        def on_step_begin(self, *_, **__):
            times.append([time.perf_counter()])

        def on_step_end(self, *_, **__):
            times[-1].append(time.perf_counter())

    return StepClock(), times


def print_report(report: dict, path: str = "") -> None:
    """Print the JSON document, and write it to ``path`` too when given."""
    text = json.dumps(report, indent=1)
    if path:
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
