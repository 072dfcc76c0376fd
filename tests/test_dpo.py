"""DPO training on real converted preference pairs (the bundled oasst rankings, GPT-2 tokenizer) with a tiny GPT-2 in
graph mode: the first loss is log 2 (policy = reference), the loss falls and every parameter moves; a run stopped
and resumed ends with the weights of an uninterrupted one, bit for bit; on-the-fly reference log-probs give the
weights of precomputed ones; two msrun workers end where one process does; the command writes the step and metric
lines, TensorBoard and the held-out evaluation; bad inputs stop with one clear line."""

from __future__ import annotations

import glob
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
from mindspore.mindrecord import FileWriter

from mindrlhf.config import ConfigError, load_config
from mindrlhf.data.convert_preference import PREFERENCE_SCHEMA, ConversionError, convert_preference, pair_fields
from mindrlhf.models import CausalLM
from mindrlhf.models.convert import CheckpointError, cell_parameters, save_ckpt
from mindrlhf.train.checkpoint import latest_checkpoint, read_ckpt
from mindrlhf.train.dpo import reference_model, train_dpo
from tests.helpers import run_two_msrun_workers, set_mode, venv_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_dpo.yaml")
SCRIPT = os.path.join(ROOT, "examples", "dpo_tutorial", "train_dpo.py")
OASST = os.path.join(ROOT, "tests", "data", "oasst_rm_zh_sample5.json")
# 7 pairs of 128 tokens: 3 steps of 2 pairs per epoch; Adam eps 1e-6 as in tests/test_data_parallel.py
TINY = [
    "model.model_config.hidden_size=32",
    "model.model_config.seq_length=128",
    "runner_config.batch_size=2",
    "runner_config.epochs=2",
    "optimizer.eps=1e-6",
    "lr_schedule.warmup_ratio=0.0",
    "dpo.beta=0.5",
    "checkpoint.save_checkpoint_steps=2",
]


def config(out, *extra):
    return load_config(RECIPE, TINY + [f"output_dir={out}", *extra])


def weights(cell):
    return {n: p.asnumpy().copy() for n, p in cell_parameters(cell).items()}


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dpo_data") / "pairs.mindrecord")
    stats = convert_preference(OASST, path, "gpt2", seq_length=128, progress=False)
    assert stats["count"] == 7
    return path


@pytest.fixture(scope="module")
def full_run(pairs, tmp_path_factory):
    set_mode("graph")
    out = str(tmp_path_factory.mktemp("dpo_full"))
    policy, result = train_dpo(config(out), pairs)
    return weights(policy), result, out


def test_dpo_learns_from_log_two(full_run):
    final, result, out = full_run
    assert len(result.losses) == 6 and result.overflows == 0
    assert result.losses[0] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference: zero margins
    assert result.metrics[0]["rewards/margins"] == pytest.approx(0.0, abs=1e-6)
    assert result.losses[-1] < 0.5 * result.losses[0]
    assert result.metrics[-1]["rewards/accuracies"] == 1.0 and result.metrics[-1]["rewards/margins"] > 0
    start = weights(reference_model(config(out).model.model_config, "", 0))
    assert final.keys() == start.keys()
    unchanged = [n for n in final if np.array_equal(final[n], start[n])]
    assert not unchanged


def test_resume_continues_exactly(pairs, full_run, tmp_dir):
    set_mode("graph")
    final, result, _ = full_run
    _, first = train_dpo(config(tmp_dir), pairs, stop_at_step=2)
    assert first.losses == result.losses[:2]
    policy, rest = train_dpo(config(tmp_dir), pairs, resume=os.path.join(tmp_dir, "checkpoint"))
    assert rest.losses == result.losses[2:]
    resumed = weights(policy)
    assert all(np.array_equal(resumed[n], final[n]) for n in final)


def test_on_the_fly_reference_matches_precomputed(pairs, full_run, tmp_dir):
    set_mode("graph")
    final, result, _ = full_run
    policy, fly = train_dpo(config(tmp_dir, "dpo.precompute_ref_log_probs=False"), pairs)
    np.testing.assert_allclose(fly.losses, result.losses, atol=1e-5)
    ours = weights(policy)
    assert max(np.abs(ours[n] - final[n]).max() for n in final) <= 1e-5


def cli_args(pairs, out, batch, *extra):
    sets = [f"runner_config.batch_size={batch}" if s.startswith("runner_config.batch_size") else s for s in TINY]
    return [
        "--config",
        RECIPE,
        "--train_dataset",
        pairs,
        "--output_dir",
        out,
        *[a for s in sets for a in ("--set", s)],
        *extra,
    ]


def test_command_logs_evaluates_and_two_workers_match_one(pairs, tmp_dir):
    """``train_dpo.py`` (= ``mindrlhf dpo``) alone with batch 2, then under msrun on two workers with batch 1 each:
    the same pairs per step, the same final weights."""
    env = venv_env()
    single = os.path.join(tmp_dir, "single")
    proc = subprocess.run(
        [sys.executable, SCRIPT, *cli_args(pairs, single, 2, "--eval_dataset", pairs)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Epoch:[  2/  2], step:[    3/    3], loss:" in proc.stdout
    assert "rewards/chosen: " in proc.stdout and "rewards/accuracies: " in proc.stdout
    assert len(glob.glob(os.path.join(single, "tensorboard", "events.out.tfevents.*"))) == 1
    with open(os.path.join(single, "dpo_eval.json"), encoding="utf-8") as f:
        held_out = json.load(f)["held_out"]
    assert held_out["pairs"] == 7 and 0.0 <= held_out["rewards/accuracies"] <= 1.0
    assert held_out["rewards/margins"] > 0  # trained on these pairs

    parallel = os.path.join(tmp_dir, "parallel")
    proc, logs = run_two_msrun_workers(tmp_dir, [SCRIPT, *cli_args(pairs, parallel, 1, "--use_parallel", "True")])
    assert proc.returncode == 0, logs
    assert "Epoch:[  2/  2], step:[    3/    3]" in logs
    params = [
        {
            k: v
            for k, v in read_ckpt(latest_checkpoint(os.path.join(root, "checkpoint", f"rank_{r}"))).items()
            if k.startswith(("backbone.", "lm_head."))
        }
        for root, r in ((single, 0), (parallel, 0), (parallel, 1))
    ]
    reference, rank0, rank1 = params
    assert reference.keys() == rank0.keys() == rank1.keys() and reference
    assert max(np.abs(rank0[k] - rank1[k]).max() for k in rank0) == 0.0
    assert max(np.abs(rank0[k] - reference[k]).max() for k in rank0) <= 1e-5


# ---------------------------------------------------------------------------------------------------------------
# Bad inputs


def test_old_preference_file_is_refused_with_the_fix(pairs, tmp_dir):
    old = os.path.join(tmp_dir, "old.mindrecord")
    writer = FileWriter(old, shard_num=1, overwrite=True)
    writer.add_schema(PREFERENCE_SCHEMA, "preference")
    writer.write_raw_data([pair_fields([5, 6, 7, 2], [5, 6, 2], 16, 0)])
    writer.commit()
    with pytest.raises(ConversionError, match="no prompt/response boundary.*Reconvert.*mindrlhf convert-preference"):
        train_dpo(config(tmp_dir), old)


@pytest.mark.parametrize(
    "override,message",
    [
        ("dpo.beta=0", "dpo.beta must be > 0"),
        ("dpo.beta=-0.1", "dpo.beta must be > 0"),
        ("dpo.loss_type=sigmoidd", "did you mean 'sigmoid'"),
        ("dpo.label_smoothing=0.5", "label_smoothing"),
    ],
)
def test_bad_dpo_settings(override, message, tmp_dir):
    with pytest.raises(ConfigError, match=message):
        config(tmp_dir, override)


def test_reference_of_another_shape_is_refused(pairs, tmp_dir):
    other = load_config(RECIPE, ["model.model_config.hidden_size=64", "model.model_config.seq_length=128"])
    path = save_ckpt(CausalLM(other.model.model_config), os.path.join(tmp_dir, "other.ckpt"))
    with pytest.raises(CheckpointError, match="reference checkpoint .*other.ckpt does not fit the policy"):
        train_dpo(config(tmp_dir, f"dpo.ref_checkpoint={path}"), pairs)


def test_command_errors_are_one_line(pairs, tmp_dir, capsys):
    from mindrlhf.cli.main import main

    def last_error_line(argv):
        assert main(argv) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    assert re.match(
        r"^error: .*dpo.beta must be > 0", last_error_line(["dpo", *cli_args(pairs, tmp_dir, 2, "--set", "dpo.beta=0")])
    )
    missing = os.path.join(tmp_dir, "missing.mindrecord")
    assert re.match(
        r"^error: .*missing.mindrecord: no such file", last_error_line(["dpo", *cli_args(missing, tmp_dir, 2)])
    )
