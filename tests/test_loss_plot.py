"""``mindrlhf.tools.loss_plot``: log-line parsing, the events file and loss.png, one-time and real-time modes."""

from __future__ import annotations

import glob
import os
import struct
import subprocess
import sys
import threading
import time
from typing import Dict, List, Tuple

import pytest
from tensorboardX.proto import event_pb2
from tensorboardX.record_writer import masked_crc32c

from mindrlhf.tools.loss_plot import EVENTS_SUFFIX, main, parse_loss_line
from mindrlhf.train.monitor import format_step_line

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = os.path.join(ROOT, "examples", "reward_model_train_tutorial", "reward_loss_plot.py")
SEED_LINE = (
    "Epoch:[  1/  2], step:[    2/29134], loss: 0.744, time:68580.279 ms, lr:8e-08, overflow cond: False, "
    "loss_scale: 128.0"
)
PREFIX = "2026-11-21 05:57:08,237 - mindrlhf[trainer.py:93] - INFO - "
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def read_scalars(folder: str) -> Dict[str, List[Tuple[int, float]]]:
    """``{tag: [(step, value), ...]}`` from the single events file in ``folder``, checking every record's CRCs."""
    files = glob.glob(os.path.join(folder, "events.out.tfevents.*"))
    assert len(files) == 1, files
    data = open(files[0], "rb").read()
    scalars: Dict[str, List[Tuple[int, float]]] = {}
    pos = 0
    while pos < len(data):
        header = data[pos : pos + 8]
        (length,) = struct.unpack("<Q", header)
        assert struct.unpack("<I", data[pos + 8 : pos + 12])[0] == masked_crc32c(header)
        body = data[pos + 12 : pos + 12 + length]
        assert struct.unpack("<I", data[pos + 12 + length : pos + 16 + length])[0] == masked_crc32c(body)
        pos += 16 + length
        event = event_pb2.Event.FromString(body)
        for value in event.summary.value:
            scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def step_line(epoch: int, step: int, loss: float, steps: int = 3) -> str:
    return format_step_line(epoch, 2, step, steps, loss, 1234.5, 1e-5 * step, False, 128.0)


def test_parse_our_line_and_info_log_prefix():
    ours = format_step_line(1, 2, 2, 29134, 0.744, 68580.279, 8e-08, False, 128.0)
    for line in (SEED_LINE, PREFIX + SEED_LINE + "\n", "print_output_info: " + SEED_LINE, ours, PREFIX + ours):
        point = parse_loss_line(line)
        assert (point.epoch, point.step, point.steps_per_epoch) == (1, 2, 29134)
        assert (point.loss, point.overflow, point.loss_scale) == (0.744, False, 128.0)
        assert point.lr == pytest.approx(8e-08, rel=1e-6)  # our monitor may print the float32 lr with more digits
        assert point.global_step == 2
    assert parse_loss_line(step_line(2, 3, 0.5, steps=29134)).global_step == 29134 + 3


def test_parse_mindformers_variants():
    sink = (
        "{ Epoch:[  2/  2], step:[    5/  100], loss: 0.512, per_step_time: 68ms, lr: 8e-08, overflow cond: True, "
        "loss_scale: 64.0"
    )
    point = parse_loss_line(sink)
    assert (point.global_step, point.loss, point.lr, point.overflow, point.loss_scale) == (
        105,
        0.512,
        8e-08,
        True,
        64.0,
    )
    bracket = (
        "{ Epoch:[  1/  2], step:[    7/  100], loss:[0.744/0.750], time:68580.279 ms, lr:[8.e-08], "
        "overflow cond: False, loss_scale: [128.]"
    )
    point = parse_loss_line(bracket)
    assert (point.global_step, point.loss, point.lr, point.loss_scale) == (7, 0.744, 8e-08, 128.0)
    bare = parse_loss_line("loss: 0.25")
    assert bare.loss == 0.25 and bare.global_step is None and bare.lr is None and bare.overflow is None


@pytest.mark.parametrize(
    "text, value", [("1.5e-05", 1.5e-05), ("2E+3", 2000.0), ("[3.25e-1/4e-1]", 0.325), (".5", 0.5), ("7", 7.0)]
)
def test_parse_scientific_and_plain_numbers(text, value):
    assert parse_loss_line(f"{PREFIX}Epoch:[  1/  1], step:[    1/    1], loss: {text}, lr:1e-5").loss == value


def test_zero_loss_is_a_point():
    point = parse_loss_line(step_line(1, 1, 0.0))
    assert point is not None and point.loss == 0.0
    assert parse_loss_line("loss: 0").loss == 0.0


@pytest.mark.parametrize(
    "line",
    [
        "",
        PREFIX + "checkpoint saved: output/checkpoint/rank_0/rm-1_3.ckpt",
        PREFIX + "acc: [0.5]; avg acc: [0.5]",
        PREFIX + "reward model training: 2 epochs x 3 steps, batch 2 pairs per device, loss pairwise",
        "value_loss: 0.3, policy_loss: 0.1",
        "overflow cond: False, loss_scale: 128.0",
        "loss: information follows",
    ],
)
def test_unrelated_lines_are_ignored(line):
    assert parse_loss_line(line) is None


def write_info_log(path: str, losses: List[float]) -> None:
    """info.log with the losses as 2 epochs x 3 steps, interleaved with lines that are not step lines."""
    lines = [PREFIX + "context: pynative mode on CPU (device 0), seed 0"]
    for i, loss in enumerate(losses):
        lines.append(PREFIX + step_line(i // 3 + 1, i % 3 + 1, loss))
        lines.append(PREFIX + "checkpoint saved: rm.ckpt")
    open(path, "w", encoding="utf-8").write("\n".join(lines) + "\n")


def test_one_time_writes_events_and_png(tmp_dir, capsys):
    log, out = os.path.join(tmp_dir, "info.log"), os.path.join(tmp_dir, "loss_dir")
    losses = [0.9, 0.75, 0.0, 0.5, 0.25, 0.125]
    write_info_log(log, losses)
    assert main(["--log_file", log, "--output_file_dir", out, "--parse_mode", "one-time"]) == 0
    scalars = read_scalars(out)
    assert [s for s, _ in scalars["loss"]] == [1, 2, 3, 4, 5, 6]
    assert [v for _, v in scalars["loss"]] == pytest.approx(losses)
    assert [v for _, v in scalars["lr"]] == pytest.approx([1e-5, 2e-5, 3e-5, 1e-5, 2e-5, 3e-5])
    assert [v for _, v in scalars["loss_scale"]] == [128.0] * 6
    assert open(os.path.join(out, "loss.png"), "rb").read(8) == PNG_MAGIC
    assert sorted(os.listdir(out))[-1] == "loss.png" and len(os.listdir(out)) == 2  # no temp file left behind
    stdout = capsys.readouterr().out
    assert stdout.startswith("start parse...")
    assert "parsing, step:" not in stdout  # no line per step when reading a finished log
    assert stdout.rstrip().endswith("end parse..., size= 6, steps 1-6")


def test_rerun_replaces_only_its_own_files(tmp_dir):
    log, out = os.path.join(tmp_dir, "info.log"), os.path.join(tmp_dir, "loss_dir")
    write_info_log(log, [1.0, 0.5])
    os.makedirs(out)
    foreign = ["notes.txt", "events.out.tfevents.1700000000.other-host"]
    for name in foreign:
        open(os.path.join(out, name), "w").write("keep me")
    for _ in range(2):
        assert main(["--log_file", log, "--output_file_dir", out, "--parse_mode", "one-time"]) == 0
    names = sorted(os.listdir(out))
    assert [n for n in names if n.endswith(EVENTS_SUFFIX)] and len([n for n in names if n.endswith(EVENTS_SUFFIX)]) == 1
    assert set(foreign) | {"loss.png"} <= set(names) and len(names) == 4
    assert all(open(os.path.join(out, n)).read() == "keep me" for n in foreign)


def test_lines_without_steps_use_sink_size(tmp_dir):
    log, out = os.path.join(tmp_dir, "info.log"), os.path.join(tmp_dir, "loss_dir")
    open(log, "w").write("loss: 0.5\nnoise\nloss: 0.0\nloss: 1.5e-05")  # last line without a newline
    assert main(["--log_file", log, "--output_file_dir", out, "--parse_mode", "one-time", "--sink_size", "4"]) == 0
    scalars = read_scalars(out)
    assert scalars["loss"] == [(4, 0.5), (8, 0.0), (12, pytest.approx(1.5e-05))]
    assert "lr" not in scalars and "loss_scale" not in scalars


def test_real_time_follows_a_growing_file_and_stops(tmp_dir, capsys):
    log, out = os.path.join(tmp_dir, "info.log"), os.path.join(tmp_dir, "loss_dir")
    losses = [round(1.0 - 0.05 * i, 3) for i in range(12)]
    result: List[int] = []

    def append_lines():  # the file appears late, grows for about a second, and once ends in half a line
        time.sleep(0.2)
        with open(log, "w", encoding="utf-8") as f:
            for i, loss in enumerate(losses):
                line = PREFIX + step_line(i // 3 + 1, i % 3 + 1, loss) + "\n"
                cut = line.index("loss: ") + 8  # mid-number: "loss: 0.7" must not be read as a point
                f.write(line[:cut] if i == 5 else line)
                f.flush()
                time.sleep(0.3 if i == 5 else 0.06)  # the half line stays alone for several polls
                if i == 5:
                    f.write(line[cut:])
                    f.flush()

    writer = threading.Thread(target=append_lines, daemon=True)
    runner = threading.Thread(
        target=lambda: result.append(
            main(
                [
                    "--log_file",
                    log,
                    "--output_file_dir",
                    out,
                    "--parse_mode",
                    "real-time",
                    "--timeout",
                    "1",
                    "--poll_interval",
                    "0.1",
                    "--plot_every",
                    "5",
                ]
            )
        ),
        daemon=True,
    )
    start = time.monotonic()
    writer.start()
    runner.start()
    writer.join(timeout=10)
    runner.join(timeout=15)
    assert not runner.is_alive(), "real-time mode did not stop after --timeout"
    assert result == [0] and time.monotonic() - start < 10
    scalars = read_scalars(out)
    assert [s for s, _ in scalars["loss"]] == list(range(1, 13))
    assert [v for _, v in scalars["loss"]] == pytest.approx(losses)
    assert open(os.path.join(out, "loss.png"), "rb").read(8) == PNG_MAGIC
    stdout = capsys.readouterr().out
    assert stdout.count("Real-time parsing, step:") == 12 and "Real-time parsing, step:6 loss:0.75" in stdout
    assert "end parse..., size= 12" in stdout
    assert stdout.count("waiting up to") <= 1  # told once when the log is not there yet


@pytest.mark.parametrize("mode", ["one-time", "real-time"])
def test_missing_log_file_is_an_error(tmp_dir, capsys, mode):
    log, out = os.path.join(tmp_dir, "nope", "info.log"), os.path.join(tmp_dir, "loss_dir")
    assert (
        main(
            [
                "--log_file",
                log,
                "--output_file_dir",
                out,
                "--parse_mode",
                mode,
                "--timeout",
                "0.2",
                "--poll_interval",
                "0.05",
            ]
        )
        == 1
    )
    captured = capsys.readouterr()
    assert f"error: log file not found: {log}" in captured.err
    assert not os.path.exists(out)
    # real-time waits for the log to appear: it says so at once instead of waiting in silence
    waiting = f"waiting up to 0.2 s for {log} to appear"
    assert captured.out.count(waiting) == (1 if mode == "real-time" else 0)


def test_wrapper_script_from_another_folder(tmp_dir):
    proc = subprocess.run(
        [sys.executable, WRAPPER, "--parse_mode", "one-time"], cwd=tmp_dir, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert "log file not found: output/log/rank_0/info.log" in proc.stderr
    assert os.listdir(tmp_dir) == []


def test_bad_flags_are_rejected():
    with pytest.raises(SystemExit) as err:
        main(["--timeout", "-1"])
    assert err.value.code == 2
