"""Faults survived: a batch with no token to learn from (a NaN loss) is skipped and counted, not trained on; a full
disk while a checkpoint is written (a file-size limit in a subprocess) is one clear error and leaves the previous
checkpoint intact. (Injected inf/NaN gradients: tests/test_losses_and_step.py; NaN/inf rewards:
tests/test_rewards.py.)"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from mindrlhf.config import load_config
from mindrlhf.data.datasets import SFT_COLUMNS
from mindrlhf.models import CausalLM
from mindrlhf.train.checkpoint import read_ckpt
from mindrlhf.train.sft import SFTLoss
from mindrlhf.train.trainer import Trainer
from tests.helpers import set_mode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_sft.yaml")
SEQ = 16


def batches(masked: set):
    """Three SFT batches of two rows; those in ``masked`` have no response token (``loss_mask`` all 0)."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(3):
        ids = rng.integers(0, 500, (2, SEQ)).astype(np.int32)
        loss_mask = np.zeros((2, SEQ), np.int32)
        if i not in masked:
            loss_mask[:, SEQ // 2 :] = 1
        out.append({"input_ids": ids, "attention_mask": np.ones((2, SEQ), np.int32), "loss_mask": loss_mask})
    return out


def fit(out_dir: str, data, stop_at_step: int):
    import mindspore as ms

    cfg = load_config(
        RECIPE,
        [
            f"output_dir={out_dir}",
            "model.model_config.hidden_size=16",
            "model.model_config.num_layers=1",
            f"model.model_config.seq_length={SEQ}",
            "lr_schedule.warmup_ratio=0.0",
            "checkpoint.save_checkpoint_steps=1",
        ],
    )
    ms.set_seed(0)
    model = CausalLM(cfg.model.model_config)
    trainer = Trainer(cfg, SFTLoss(model), SFT_COLUMNS, lambda epoch, skip: data[skip:], len(data))
    return trainer.fit(stop_at_step)


def test_a_batch_with_nothing_to_learn_is_skipped_and_counted(tmp_dir, caplog):
    set_mode("graph")
    result = fit(os.path.join(tmp_dir, "masked"), batches({1}), stop_at_step=2)
    assert np.isnan(result.losses[1]) and np.isfinite(result.losses[0])
    assert (result.nan_losses, result.overflows) == (1, 0)
    assert "global step 2: loss is nan (a batch with no token to learn from): skipped" in caplog.text
    folder = os.path.join(tmp_dir, "masked", "checkpoint", "rank_0")
    after_one, after_two = (read_ckpt(os.path.join(folder, f"gpt2_tiny_sft_rank_0-{s}_1.ckpt")) for s in (1, 2))
    # the model, the optimizer moments and its step count and the loss scale are those of step 1
    assert [
        k
        for k in after_one
        if k not in ("global_step", "step_in_epoch") and not np.array_equal(after_one[k], after_two[k])
    ] == []
    result = fit(os.path.join(tmp_dir, "clean"), batches(set()), stop_at_step=2)
    assert result.nan_losses == 0 and np.isfinite(result.losses).all()


FULL_DISK = """
import os, resource, signal, sys
import numpy as np
from mindrlhf.errors import run_command
from mindrlhf.manifest import verify
from mindrlhf.models import CausalLM
from mindrlhf.models.convert import save_ckpt
from tests.helpers import randomize_parameters, tiny_gpt2_config

path = sys.argv[1]
model = CausalLM(tiny_gpt2_config())
save_ckpt(model, path)
before = open(path, "rb").read()
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
limit = os.path.getsize(path) // 2
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
randomize_parameters(model, seed=3)
status = run_command(save_ckpt, model, path)
assert open(path, "rb").read() == before and verify(path, required=True)
print("status", status, sorted(os.listdir(os.path.dirname(path))))
"""


def test_full_disk_while_saving_is_one_error_and_the_previous_checkpoint_survives(tmp_dir):
    path = os.path.join(tmp_dir, "ckpt", "policy_model_epoch_0.ckpt")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run(
        [sys.executable, "-c", FULL_DISK, path], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        f"error: {path}: cannot write the checkpoint: [Errno 27] File too large"
    )
    assert proc.stdout.strip() == ("status 2 ['policy_model_epoch_0.ckpt', 'policy_model_epoch_0.ckpt.manifest.json']")
