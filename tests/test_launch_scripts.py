"""The launch scripts: argument checks with usage text, and a real two-worker CPU run through
run_distribute_reward.sh (msrun path) from a folder whose name has a space. The runs are about the scripts, not the
mode: their recipes switch to PYNATIVE mode (``context.mode: 1``), where a worker does not spend most of its time
compiling graphs (graph-mode data parallel runs in test_data_parallel.py, test_dpo.py, test_ppo_data_parallel.py and
test_grpo.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from mindrlhf.data.convert_preference import convert_preference
from mindrlhf.train.checkpoint import latest_checkpoint, read_ckpt
from tests.helpers import free_port

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = os.path.join(ROOT, "scripts")
PYNATIVE = "context:\n  mode: 1\n"  # the recipes' mode here (see the module docstring)


def run(script, *args, cwd=ROOT, env=None):
    return subprocess.run(
        ["bash", os.path.join(SCRIPTS, script), *args], capture_output=True, text=True, cwd=cwd, timeout=300, env=env
    )


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "expected 4 arguments, got 0"),
        (("python x.py", "t.json", "0-8", "8"), "DEVICE_RANGE must look like [0,8]"),
        (("python x.py", "t.json", "[0,8]", "eight"), "RANK_SIZE must be a whole number"),
        (("python x.py", "t.json", "[0,2]", "3"), "has 2 devices but RANK_SIZE is 3"),
        (("python x.py", "t.json", "[4,4]", "0"), "holds no device"),
    ],
)
def test_run_distribute_reward_argument_errors(args, message):
    proc = run("run_distribute_reward.sh", *args)
    assert proc.returncode == 2 and message in proc.stderr


@pytest.mark.parametrize(
    "args, message",
    [
        ((), "expected 1, 2, 6 or 9 arguments, got 0"),
        (("python x.py", "two"), "WORKER_NUM must be a whole number"),
        (("python x.py", "2", "8118", "log", "maybe", "600"), "JOIN must be True or False"),
        (("python x.py", "2", "port", "log", "True", "600"), "MASTER_PORT must be a whole number"),
    ],
)
def test_msrun_launcher_argument_errors(args, message):
    proc = run("msrun_launcher.sh", *args)
    assert proc.returncode == 2 and message in proc.stderr
    assert "EXECUTE_ORDER" in proc.stderr  # the usage text follows the error


def test_two_cpu_workers_through_run_distribute_reward(tmp_dir):
    work = os.path.join(tmp_dir, "my runs")  # a space in every path the command sees
    os.makedirs(work)
    data = os.path.join(work, "pairs.mindrecord")
    convert_preference(
        os.path.join(ROOT, "tests", "data", "oasst_rm_zh_sample5.json"),
        data,
        "gpt2",
        seq_length=128,
        pad_token_id=50256,
        progress=False,
    )
    recipe = os.path.join(work, "run tiny rm.yaml")
    with open(recipe, "w", encoding="utf-8") as f:
        f.write(f"base_config: {os.path.join(ROOT, 'model_configs', 'gpt2_config', 'run_gpt2_tiny_rm.yaml')}\n")
        f.write(PYNATIVE)
    order = (
        f"python '{os.path.join(ROOT, 'examples', 'reward_model_train_tutorial', 'reward_train.py')}' "
        f"--config '{recipe}' --train_dataset '{data}' --set runner_config.batch_size=1 "
        f"--set model.model_config.hidden_size=32 --set model.model_config.seq_length=128"
    )
    env = dict(
        os.environ,
        MASTER_PORT=str(free_port()),
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
    )
    proc = run("run_distribute_reward.sh", order, "hccl_2p_01_127.0.0.1.json", "[0,2]", "2", cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "starting 2 workers with msrun" in proc.stdout
    params = [read_ckpt(latest_checkpoint(os.path.join(work, "output", "checkpoint", f"rank_{r}"))) for r in (0, 1)]
    names = [n for n in params[0] if n.startswith(("backbone.", "score."))]
    assert names and all(np.array_equal(params[0][n], params[1][n]) for n in names)
    worker_log = open(os.path.join(work, "output", "msrun_log", "worker_1.log"), encoding="utf-8").read()
    assert "data parallel: rank 1 of 2" in worker_log  # joined the group without --use_parallel (auto)
    assert os.path.exists(os.path.join(work, "output", "log", "rank_1", "info.log"))


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("run_distribute_train.sh", (), "expected at least 6 arguments, got 0"),
        (
            "run_distribute_train.sh",
            ("d", "t.json", "first", "1", "a.yaml", "b.yaml"),
            "RANK_START must be a whole number",
        ),
        (
            "run_distribute_train.sh",
            ("d", "t.json", "0", "0", "a.yaml", "b.yaml"),
            "LOCAL_DEVICE_NUM must be a positive",
        ),
        (
            "run_distribute_train.sh",
            ("missing.mindrecord", "t.json", "0", "1", "a.yaml", "b.yaml"),
            "DATA_DIR not found: missing.mindrecord",
        ),
        ("run_distribute_grpo.sh", ("d", "t.json", "0"), "expected at least 5 arguments, got 3"),
        ("run_distribute_grpo.sh", ("d", "t.json", "x", "1", "a.yaml"), "RANK_START must be a whole number"),
        ("run_distribute_grpo.sh", ("d", "t.json", "0", "-1", "a.yaml"), "LOCAL_DEVICE_NUM must be a positive"),
        (
            "run_distribute_grpo.sh",
            ("missing.mindrecord", "t.json", "0", "1", "a.yaml"),
            "DATA_DIR not found: missing.mindrecord",
        ),
        ("run_standalone_train.sh", ("d",), "expected at least 3 arguments, got 1"),
        ("run_standalone_train.sh", ("missing.mindrecord", "a.yaml", "b.yaml"), "DATA_DIR not found"),
    ],
)
def test_ppo_launch_argument_errors(script, args, message):
    proc = run(script, *args)
    assert proc.returncode == 2 and message in proc.stderr
    if "not found" not in message:  # the usage text follows an argument error
        assert ("CONFIG" if "grpo" in script else "SFT_MODEL_PATH") in proc.stderr


def ppo_inputs(work: str):
    """A prompt MindRecord of the real CValues prompts and the tiny recipes (with spaces in their paths)."""
    from mindrlhf.data.convert_prompts import convert_prompts

    data = os.path.join(work, "ppo prompts.mindrecord")
    convert_prompts(
        os.path.join(ROOT, "tests", "data", "cvalues_prompts_sample8.jsonl"),
        data,
        "gpt2",
        max_prompt_length=56,
        seq_length=65,
        pad_token_id=50256,
        template="qa",
        progress=False,
    )
    recipes = []
    for name in ("run_gpt2_tiny_ppo.yaml", "run_gpt2_tiny_rm.yaml"):
        recipe = os.path.join(work, f"my {name}")
        with open(recipe, "w", encoding="utf-8") as f:
            f.write(f"base_config: {os.path.join(ROOT, 'model_configs', 'gpt2_config', name)}\n")
            f.write("model:\n  model_config:\n    seq_length: 64\n    hidden_size: 32\n")
            f.write(PYNATIVE)
        recipes.append(recipe)
    flags = [
        "--set",
        "ppo.epochs=1",
        "--set",
        "ppo.num_rollouts=4",
        "--set",
        "ppo.chunk_size=4",
        "--set",
        "ppo.batch_size=4",
        "--set",
        "ppo.generation.max_new_tokens=8",
    ]
    return data, recipes, flags


def test_standalone_and_two_worker_ppo_scripts(tmp_dir):
    work = os.path.join(tmp_dir, "my runs")
    os.makedirs(work)
    data, (policy, reward), flags = ppo_inputs(work)
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    proc = run("run_standalone_train.sh", data, policy, reward, *flags, "--output_dir", "solo", cwd=work, env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "PPO Batch: 0 | PPO Epoch: 0 | loss: [" in proc.stdout
    assert os.path.exists(os.path.join(work, "solo", "checkpoint", "rank_0", "policy_model_epoch_0.ckpt"))

    env["MASTER_PORT"] = str(free_port())
    proc = run(
        "run_distribute_train.sh",
        data,
        "hccl_2p_01_127.0.0.1.json",
        "0",
        "2",
        policy,
        reward,
        *flags,
        "--output_dir",
        "pair",
        cwd=work,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "starting 2 workers with msrun" in proc.stdout
    ranks = [
        read_ckpt(os.path.join(work, "pair", "checkpoint", f"rank_{r}", "policy_model_epoch_0.ckpt")) for r in (0, 1)
    ]
    assert all(np.array_equal(ranks[0][n], ranks[1][n]) for n in ranks[0])


def test_two_worker_grpo_script(tmp_dir):
    """run_distribute_grpo.sh on CPU: two msrun workers of ``mindrlhf grpo`` on GSM8K-style prompts with reward
    functions; both ranks end with the same policy and rank 0 writes the metrics over both."""
    import json

    from mindrlhf.data.convert_prompts import convert_prompts
    from tests.test_grpo import QA

    work = os.path.join(tmp_dir, "grpo runs")
    os.makedirs(work)
    src = os.path.join(work, "qa.jsonl")
    with open(src, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in QA)
    data = os.path.join(work, "prompts.mindrecord")
    convert_prompts(
        src, data, "gpt2", max_prompt_length=48, seq_length=64, pad_token_id=50256, template="qa", progress=False
    )
    env = dict(
        os.environ,
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""),
        MASTER_PORT=str(free_port()),
    )
    recipe = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_grpo.yaml")
    proc = run(
        "run_distribute_grpo.sh",
        data,
        "hccl_2p_01_127.0.0.1.json",
        "0",
        "2",
        recipe,
        "--output_dir",
        "pair",
        "--set",
        "grpo.epochs=1",
        "--set",
        "grpo.num_prompts=2",
        "--set",
        "grpo.num_generations=2",
        "--set",
        "grpo.batch_size=2",
        "--set",
        "grpo.generation.max_new_tokens=8",
        "--set",
        "context.mode=1",
        cwd=work,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "starting 2 workers with msrun" in proc.stdout
    ranks = [
        read_ckpt(os.path.join(work, "pair", "checkpoint", f"rank_{r}", "policy_model_epoch_0.ckpt")) for r in (0, 1)
    ]
    assert all(np.array_equal(ranks[0][n], ranks[1][n]) for n in ranks[0])
    with open(os.path.join(work, "pair", "grpo_metrics.jsonl"), encoding="utf-8") as f:
        rows = [json.loads(line) for line in f]
    assert [r["iteration"] for r in rows] == [0] and rows[0]["global_step"] == 2
