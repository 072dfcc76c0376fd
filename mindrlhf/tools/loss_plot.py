"""Loss curves from a training log: TensorBoard scalars and a ``loss.png`` plot.

    python -m mindrlhf.tools.loss_plot --log_file output/log/rank_0/info.log --output_file_dir loss_dir
    tensorboard --logdir loss_dir --port 6006

Input: the step lines of our trainer (``mindrlhf.train.monitor.format_step_line``), on stdout or in ``info.log``
where each line carries a logging prefix, and mindformers' ``MFLossMonitor`` variants (``loss: 0.744``,
``loss:[0.744/0.750]``, ``per_step_time: ...``). Every other line is ignored.

Output, in ``--output_file_dir`` (created if needed, otherwise left alone apart from the files this tool owns):

* an events file ``events.out.tfevents.<time>.<host>.loss_plot`` with the scalars ``loss``, and ``lr`` and
  ``loss_scale`` when the line carries them, each against the global step. Events files with that suffix from an
  earlier run are deleted first, so TensorBoard does not draw the curve twice; other files stay.
* ``loss.png``: loss against global step, titled with the log file, written under a temporary name and moved into
  place (:mod:`mindrlhf.atomic`), so a viewer never sees half a file.

Global step of a point: ``(epoch - 1) * steps_per_epoch + step`` when the line has ``Epoch:[e/E]`` and ``step:[s/S]``,
else ``n * sink_size`` for the n-th point (the predecessor's rule for sink-mode logs).

Modes: ``one-time`` reads the file once. ``real-time`` (the default, kept from the predecessor's script) follows the
file as training appends to it, waits up to ``--timeout`` seconds for it to appear, refreshes the plot every
``--plot_every`` points and whenever it has caught up with the writer, and stops once the file has not grown for
``--timeout`` seconds. Both modes close the events file and write the final plot before they return.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO, Iterable, Iterator, List, Optional

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tensorboardX import SummaryWriter

from mindrlhf.atomic import atomic_path

logger = logging.getLogger(__name__)

EVENTS_SUFFIX = ".loss_plot"  # marks the events files this tool owns (and may delete)
PNG_NAME = "loss.png"

_NUM = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?i:nan|inf)(?![A-Za-z])"
# ``\b`` keeps ``value_loss:`` from matching ``loss:``; ``\[?`` takes the first value of ``loss:[0.744/0.750]``.
_LOSS = re.compile(rf"\bloss:\s*\[?\s*({_NUM})")
_EPOCH = re.compile(r"\bEpoch:\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_STEP = re.compile(r"\bstep:\s*\[\s*(\d+)\s*/\s*(\d+)\s*\]")
_LR = re.compile(rf"\blr:\s*\[?\s*({_NUM})")
_OVERFLOW = re.compile(r"\boverflow cond:\s*(True|False)")
_LOSS_SCALE = re.compile(rf"\bloss_scale:\s*\[?\s*({_NUM})")


@dataclass
class LossPoint:
    """One parsed step line; the fields other than ``loss`` are None when the line does not carry them."""

    loss: float
    epoch: Optional[int] = None  # 1-based
    step: Optional[int] = None  # 1-based step within the epoch
    steps_per_epoch: Optional[int] = None
    lr: Optional[float] = None
    overflow: Optional[bool] = None
    loss_scale: Optional[float] = None

    @property
    def global_step(self) -> Optional[int]:
        """``(epoch - 1) * steps_per_epoch + step``, or None without epoch and step."""
        if self.epoch is None or self.step is None:
            return None
        return (self.epoch - 1) * self.steps_per_epoch + self.step


def _float(pattern: re.Pattern, line: str) -> Optional[float]:
    match = pattern.search(line)
    return float(match.group(1)) if match else None


def parse_loss_line(line: str) -> Optional[LossPoint]:
    """The loss (and epoch, step, lr, overflow, loss scale where present) of a step line, or None for other lines.

    A loss of 0.0 is a point like any other.
    """
    loss = _float(_LOSS, line)
    if loss is None:
        return None
    point = LossPoint(loss=loss, lr=_float(_LR, line), loss_scale=_float(_LOSS_SCALE, line))
    epoch, step = _EPOCH.search(line), _STEP.search(line)
    if epoch and step:
        point.epoch, point.step, point.steps_per_epoch = int(epoch.group(1)), int(step.group(1)), int(step.group(2))
    overflow = _OVERFLOW.search(line)
    if overflow:
        point.overflow = overflow.group(1) == "True"
    return point


def write_loss_png(path: str, steps: List[int], losses: List[float], title: str) -> None:
    """Plot loss against global step into ``path`` (see :func:`write_curve_png`).

    A step that appears twice (a resumed run appending to the same log) is drawn with its latest loss.
    """
    latest = dict(zip(steps, losses))
    xs = sorted(latest)
    write_curve_png(path, xs, [latest[x] for x in xs], title, "global step", "loss")


def write_curve_png(path: str, xs: List[float], ys: List[float], title: str, xlabel: str, ylabel: str) -> None:
    """One curve as a PNG (Agg canvas, no display needed), written under a temporary name and renamed."""
    fig = Figure(figsize=(8, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.plot(xs, ys, linewidth=1.0, marker="o" if len(xs) <= 50 else None, markersize=3)
    ax.set_title(title.replace("$", r"\$"))  # a "$" would start matplotlib mathtext
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)


def save_png(fig: Figure, path: str) -> None:
    """Save a matplotlib figure (attached to an Agg canvas) as a PNG, under a temporary name and then renamed."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


class LossRecorder:
    """Writes the points to an events file and ``loss.png`` in ``output_dir`` (see the module docstring).

    Args:
        output_dir: folder for both outputs; created if needed, never emptied.
        title: title of the plot.
        plot_every: rewrite the plot after this many new points; None rewrites it only in ``refresh``/``close``.
    """

    def __init__(self, output_dir: str, title: str, plot_every: Optional[int] = None):
        os.makedirs(output_dir, exist_ok=True)
        for name in sorted(os.listdir(output_dir)):
            if name.startswith("events.out.tfevents.") and name.endswith(EVENTS_SUFFIX):
                os.remove(os.path.join(output_dir, name))
                logger.info("removed %s (written by an earlier run of this tool)", name)
        self.writer = SummaryWriter(output_dir, filename_suffix=EVENTS_SUFFIX)
        self.png_path = os.path.join(output_dir, PNG_NAME)
        self.title = title
        self.plot_every = plot_every
        self.steps: List[int] = []
        self.losses: List[float] = []
        self._unplotted = 0

    def add(self, step: int, point: LossPoint) -> None:
        """Record one point at ``step``."""
        self.writer.add_scalar("loss", point.loss, step)
        if point.lr is not None:
            self.writer.add_scalar("lr", point.lr, step)
        if point.loss_scale is not None:
            self.writer.add_scalar("loss_scale", point.loss_scale, step)
        self.steps.append(step)
        self.losses.append(point.loss)
        self._unplotted += 1
        if self.plot_every and self._unplotted >= self.plot_every:
            self.refresh()

    def refresh(self) -> None:
        """Flush the events file and rewrite the plot if points arrived since the last one."""
        self.writer.flush()
        if self._unplotted:
            write_loss_png(self.png_path, self.steps, self.losses, self.title)
            self._unplotted = 0

    def close(self) -> None:
        """Write the final plot (also for zero points) and close the events file."""
        write_loss_png(self.png_path, self.steps, self.losses, self.title)
        self._unplotted = 0
        self.writer.close()


def open_log(path: str, wait_s: float, poll_interval: float) -> BinaryIO:
    """Open ``path`` for reading, waiting up to ``wait_s`` seconds for it to appear (saying so once)."""
    start, told = time.monotonic(), False
    while True:
        try:
            return open(path, "rb")
        except FileNotFoundError:
            if wait_s > 0 and not told:
                told = True
                print(
                    f"waiting up to {wait_s:g} s for {path} to appear (real-time mode follows a training run's "
                    f"log; --parse_mode one-time reads a finished one, --log_file names it)",
                    flush=True,
                )
            if time.monotonic() - start >= wait_s:
                waited = f" (waited {wait_s:g} s for it)" if wait_s > 0 else ""
                raise FileNotFoundError(f"log file not found: {path}{waited}") from None
            time.sleep(poll_interval)


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def read_lines(handle: BinaryIO) -> Iterator[Optional[str]]:
    """Every line of the file as it is now."""
    for raw in handle:
        yield _decode(raw)


def follow_lines(handle: BinaryIO, timeout: float, poll_interval: float) -> Iterator[Optional[str]]:
    """Lines of a file that another process appends to, and None each time the reader has caught up.

    Stops once the file has not grown for ``timeout`` seconds. A line still missing its newline is held back until it
    is complete (or until the end). A file that shrinks (truncated by a new run) is read again from the start.
    """
    partial = b""
    last_growth = time.monotonic()
    caught_up = False
    while True:
        raw = handle.readline()
        if raw:
            last_growth, caught_up = time.monotonic(), False
            partial += raw
            if partial.endswith(b"\n"):
                yield _decode(partial)
                partial = b""
            continue
        if not caught_up:
            caught_up = True
            yield None
        if time.monotonic() - last_growth >= timeout:
            break
        if os.fstat(handle.fileno()).st_size < handle.tell():
            logger.warning("%s shrank; reading it again from the start", handle.name)
            handle.seek(0)
            partial = b""
        time.sleep(poll_interval)
    if partial:
        yield _decode(partial)


def parse_log(lines: Iterable[Optional[str]], recorder: LossRecorder, sink_size: int, mode_label: str) -> None:
    """Feed every step line to ``recorder``; a None from ``lines`` (caught up) refreshes the outputs."""
    for line in lines:
        if line is None:
            recorder.refresh()
            logger.info("pause parsing..., size= %d", len(recorder.steps))
            continue
        point = parse_loss_line(line)
        if point is None:
            continue
        step = point.global_step
        if step is None:
            step = (len(recorder.steps) + 1) * sink_size
        recorder.add(step, point)
        if mode_label == "Real-time":  # following a live run, each new point is progress; a one-time read is quiet
            print(f"{mode_label} parsing, step:{step} loss:{point.loss}", flush=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Turn the loss lines of a training log into TensorBoard scalars and loss.png."
    )
    parser.add_argument("--log_file", default="output/log/rank_0/info.log", help="training log to read")
    parser.add_argument("--output_file_dir", default="loss_dir", help="folder for the events file and loss.png")
    parser.add_argument(
        "--sink_size",
        type=int,
        default=2,
        help="steps per logged point, for lines without Epoch/step (n-th point -> n * sink_size)",
    )
    parser.add_argument(
        "--parse_mode",
        choices=["real-time", "one-time"],
        default="real-time",
        help="real-time follows a growing log (the predecessor's default); one-time reads it once",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="real-time: stop after the log has not grown (or not appeared) for this many seconds",
    )
    parser.add_argument(
        "--poll_interval", type=float, default=1.0, help="real-time: seconds between checks for new lines"
    )
    parser.add_argument("--plot_every", type=int, default=50, help="real-time: rewrite loss.png every N new points")
    return parser


def _check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    if args.sink_size < 1:
        parser.error("--sink_size must be at least 1")
    if args.timeout < 0:
        parser.error("--timeout must be >= 0 seconds")
    if args.poll_interval <= 0:
        parser.error("--poll_interval must be > 0 seconds")
    if args.plot_every < 1:
        parser.error("--plot_every must be at least 1")


def main(argv: Optional[List[str]] = None) -> int:
    """Command line entry; returns the exit status (1 when the log file cannot be opened, 130 on Ctrl-C)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    _check_args(parser, args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    realtime = args.parse_mode == "real-time"
    print("start parse...", flush=True)
    try:
        handle = open_log(args.log_file, args.timeout if realtime else 0.0, args.poll_interval)
    except OSError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return 1
    status = 0
    with handle:
        lines = follow_lines(handle, args.timeout, args.poll_interval) if realtime else read_lines(handle)
        recorder = LossRecorder(args.output_file_dir, f"loss: {args.log_file}", args.plot_every if realtime else None)
        try:
            parse_log(lines, recorder, args.sink_size, "Real-time" if realtime else "One-time")
        except KeyboardInterrupt:
            logger.warning("interrupted; writing what was parsed so far")
            status = 130
        finally:
            recorder.close()
    if not recorder.steps:
        logger.warning("no loss lines found in %s", args.log_file)
    summary = f", steps {recorder.steps[0]}-{recorder.steps[-1]}" if recorder.steps else ""
    print(f"end parse..., size= {len(recorder.steps)}{summary}", flush=True)
    logger.info("wrote %s and the events file in %s", recorder.png_path, args.output_file_dir)
    return status


if __name__ == "__main__":
    sys.exit(main())
