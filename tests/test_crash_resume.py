"""Crash safety for real: each stage's command is killed with SIGKILL at a chosen point (after an optimizer step,
after an RL iteration's rollouts, while a checkpoint's bytes are being written; :mod:`mindrlhf.faults`), in its own
process, then resumed from the newest intact checkpoint; it must end with exactly the parameters, optimizer state
and metrics of an uninterrupted run. Tiny recipes, 3-4 steps or iterations, in PYNATIVE mode: the tests are about
saved state, and each of a stage's five runs would otherwise spend most of its time compiling graphs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from typing import Dict, List

import numpy as np
import pytest

from mindrlhf.cli.main import main
from mindrlhf.faults import ENV
from mindrlhf.train.checkpoint import read_ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT2 = os.path.join(ROOT, "model_configs", "gpt2_config")
DATA = os.path.join(ROOT, "tests", "data")
SMALL = [
    "model.model_config.hidden_size=32",
    "model.model_config.num_layers=1",
    "lr_schedule.warmup_ratio=0.0",
    "context.mode=1",
]


def sets(overrides: List[str], flag: str = "--set") -> List[str]:
    return [arg for item in overrides for arg in (flag, item)]


def killed(argv: List[str], point: str, cwd: str) -> None:
    """Run ``mindrlhf <argv>`` in a new process that SIGKILLs itself at ``point`` (``name:count``)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), **{ENV: point})
    proc = subprocess.run(
        [sys.executable, "-m", "mindrlhf.cli.main", *argv],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]


def entries(out: str, names: List[str]) -> Dict[str, np.ndarray]:
    found = {}
    for name in names:
        found.update({f"{name}/{k}": v for k, v in read_ckpt(os.path.join(out, "checkpoint", "rank_0", name)).items()})
    return found


def assert_same(reference: Dict[str, np.ndarray], resumed: Dict[str, np.ndarray]) -> None:
    assert reference.keys() == resumed.keys()
    assert [k for k in reference if not np.array_equal(reference[k], resumed[k])] == []


def metrics(out: str, kind: str) -> List[dict]:
    with open(os.path.join(out, f"{kind}_metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from mindrlhf.data.convert_preference import convert_preference
    from mindrlhf.data.convert_prompts import convert_prompts
    from mindrlhf.data.convert_sft import convert_sft

    work = tmp_path_factory.mktemp("crash")
    paths = {
        "work": str(work),
        "sft": str(work / "sft.mindrecord"),
        "rm": str(work / "rm.mindrecord"),
        "prompts": str(work / "prompts.mindrecord"),
    }
    assert (
        convert_sft(os.path.join(DATA, "oasst_sft_zh_sample6.json"), paths["sft"], "gpt2", 160, progress=False)["count"]
        == 5
    )
    convert_preference(
        os.path.join(DATA, "oasst_rm_zh_sample5.json"),
        paths["rm"],
        "gpt2",
        seq_length=128,
        pad_token_id=50256,
        progress=False,
    )
    convert_prompts(
        os.path.join(DATA, "cvalues_prompts_sample8.jsonl"),
        paths["prompts"],
        "gpt2",
        32,
        65,
        50256,
        "qa",
        progress=False,
    )
    return paths


# (name, argv(data, out), kill points, the files of the finished run to compare, metrics kind or None)
STAGES = {
    "sft": (
        lambda d, o: [
            "sft",
            "--config",
            os.path.join(GPT2, "run_gpt2_tiny_sft.yaml"),
            "--train_dataset",
            d["sft"],
            "--output_dir",
            o,
            "--seed",
            "0",
            *sets(
                [
                    *SMALL,
                    "model.model_config.seq_length=160",
                    "runner_config.batch_size=2",
                    "runner_config.epochs=2",
                    "checkpoint.save_checkpoint_steps=1",
                ]
            ),
        ],
        ["train_step:3", "checkpoint_write:2"],
        ["gpt2_tiny_sft_rank_0-4_2.ckpt"],
        None,
        "--load_checkpoint",
    ),
    "rm": (
        lambda d, o: [
            "rm",
            "train",
            "--config",
            os.path.join(GPT2, "run_gpt2_tiny_rm.yaml"),
            "--train_dataset",
            d["rm"],
            "--output_dir",
            o,
            *sets(
                [
                    *SMALL,
                    "model.model_config.seq_length=128",
                    "runner_config.batch_size=2",
                    "checkpoint.save_checkpoint_steps=1",
                ]
            ),
        ],
        ["train_step:2", "checkpoint_write:3"],
        ["gpt2_tiny_rm_rank_0-3_1.ckpt"],
        None,
        "--load_checkpoint",
    ),
    "ppo": (
        lambda d, o: [
            "ppo",
            "--dataset_dir",
            d["prompts"],
            "--sft_model_path",
            os.path.join(GPT2, "run_gpt2_tiny_ppo.yaml"),
            "--reward_model_path",
            os.path.join(GPT2, "run_gpt2_tiny_rm.yaml"),
            "--output_dir",
            o,
            *sets(
                [
                    *SMALL,
                    "ppo.epochs=3",
                    "ppo.num_rollouts=4",
                    "ppo.chunk_size=4",
                    "ppo.batch_size=4",
                    "ppo.ppo_epochs=1",
                    "ppo.generation.max_new_tokens=8",
                ]
            ),
            *sets(SMALL, "--set_reward"),
        ],
        ["rollout:2", "checkpoint_write:4"],
        ["policy_model_epoch_2.ckpt", "ppo_state_epoch_2.ckpt"],
        "ppo",
        "--resume",
    ),
    "grpo": (
        lambda d, o: [
            "grpo",
            "--config",
            os.path.join(GPT2, "run_gpt2_tiny_grpo.yaml"),
            "--dataset_dir",
            d["prompts"],
            "--output_dir",
            o,
            *sets(
                [
                    *SMALL,
                    "grpo.epochs=3",
                    "grpo.num_prompts=2",
                    "grpo.num_generations=2",
                    "grpo.batch_size=4",
                    "grpo.generation.max_new_tokens=8",
                    "grpo.reward_funcs=[{name: length}]",
                ]
            ),
        ],
        ["train_step:2", "checkpoint_write:3"],
        ["policy_model_epoch_2.ckpt", "grpo_state_epoch_2.ckpt"],
        "grpo",
        "--resume",
    ),
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_killed_anywhere_then_resumed_equals_an_uninterrupted_run(stage, data, tmp_path, caplog):
    argv, points, finals, kind, resume_flag = STAGES[stage]
    reference = str(tmp_path / "reference")
    assert main(argv(data, reference)) == 0
    expected = entries(reference, finals)
    for point in points:
        out = str(tmp_path / point.replace(":", "_"))
        killed(argv(data, out), point, data["work"])
        caplog.clear()
        assert main([*argv(data, out), resume_flag, os.path.join(out, "checkpoint")]) == 0
        assert "loaded checkpoint " + os.path.join(out, "checkpoint", "rank_0") in caplog.text
        assert_same(expected, entries(out, finals))
        if kind:
            assert metrics(out, kind) == metrics(reference, kind)
