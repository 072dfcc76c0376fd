"""``tensorboard --logdir ...``, as the README, the demo report and the tutorials say to run it, works after the
project's own install: the ``tensorboard`` command is installed with mindrlhf and reads the events its trainers
write."""

from __future__ import annotations

import os
import subprocess
import sys

from mindrlhf.train.monitor import TrainMonitor


def test_tensorboard_command_reads_the_trainers_events(tmp_path):
    command = os.path.join(os.path.dirname(sys.executable), "tensorboard")
    assert os.access(command, os.X_OK), "the tensorboard command is not installed beside this python"
    monitor = TrainMonitor(str(tmp_path), rank_id=0, is_main=True)
    for step in range(3):
        monitor.scalars(step, {"loss/total": 1.0 / (step + 1)})
    monitor.close()
    proc = subprocess.run(
        [command, "--inspect", "--logdir", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loss/total" in proc.stdout and "last_step            2" in proc.stdout, proc.stdout
