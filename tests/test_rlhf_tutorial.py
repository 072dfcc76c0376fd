"""The RLHF tutorial (examples/rlhf_train_tutorial) end to end, each step a subprocess of its script or of the
``mindrlhf`` command, on the tiny GPT-2 recipes and real data: SFT (oasst) -> reward model (CValues pairs, started
from the SFT weights) -> PPO with ``train.py`` (CValues prompts) -> one more iteration in the stages mode
(``make_experience.py`` + ``ppo_train.py``) resumed from ``train.py``'s checkpoint -> generation from the policy.
"""

from __future__ import annotations

import glob
import json
import math
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mindrlhf.train.checkpoint import read_ckpt

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
RECIPES = os.path.join(ROOT, "model_configs", "gpt2_config")
DATA = os.path.join(ROOT, "tests", "data")
PAD = "50256"  # GPT-2: pad = eos
SEQ = 256  # the tiny recipes' seq_length
NEW_TOKENS = 8  # ppo.generation.max_new_tokens here (the recipe has 32)
PROMPT_WIDTH = SEQ - NEW_TOKENS  # the length contract: max_prompt_length = seq_length - max_new_tokens
ITERATIONS = 2
# 8 prompts (the fixture's all), one generation chunk and one optimizer step per iteration
PPO_SETTINGS = [
    f"ppo.epochs={ITERATIONS}",
    "ppo.num_rollouts=8",
    "ppo.chunk_size=8",
    "ppo.batch_size=8",
    "ppo.ppo_epochs=1",
    f"ppo.generation.max_new_tokens={NEW_TOKENS}",
]
SEED_LINE = re.compile(
    r"^PPO Batch: 0 \| PPO Epoch: 0 \| loss: \[-?[0-9.e+-]+\] \| lr: \[[0-9.e+-]+\] \| "
    r"is overflow: False \| loss scale: 1\.0$",
    re.MULTILINE,
)


def run(*argv, cwd):
    """A tutorial script (``rlhf_train_tutorial/...`` / ``reward_model_train_tutorial/...``) or, for a first
    argument ``mindrlhf``, the command's entry point."""
    head = (
        [sys.executable, "-m", "mindrlhf.cli.main"]
        if argv[0] == "mindrlhf"
        else [sys.executable, os.path.join(EXAMPLES, argv[0])]
    )
    proc = subprocess.run(head + list(argv[1:]), cwd=cwd, capture_output=True, text=True, timeout=300)
    return proc


def ok(proc):
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def metrics(out_dir: str) -> list:
    with open(os.path.join(out_dir, "ppo_metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def ppo_flags(work: str, out: str) -> list:
    flags = [
        "--dataset_dir",
        os.path.join(work, "data", "ppo_prompts.mindrecord"),
        "--sft_model_path",
        os.path.join(RECIPES, "run_gpt2_tiny_ppo.yaml"),
        "--reward_model_path",
        os.path.join(RECIPES, "run_gpt2_tiny_rm.yaml"),
        "--sft_checkpoint",
        os.path.join(work, "output", "sft", "checkpoint"),
        "--reward_checkpoint",
        os.path.join(work, "output", "rm", "checkpoint"),
        "--output_dir",
        out,
    ]
    for setting in PPO_SETTINGS:
        flags += ["--set", setting]
    return flags


@pytest.fixture(scope="module")
def tutorial(tmp_path_factory):
    """Run the tutorial's steps once; returns the working folder and the PPO runs' stdout."""
    work = str(tmp_path_factory.mktemp("rlhf_tutorial"))
    # stage 1: SFT (5 of the 6 oasst rows fit in 256 tokens; batch 2 -> 2 steps)
    ok(
        run(
            "mindrlhf",
            "convert-sft",
            "--model",
            "gpt2",
            "--src_file",
            os.path.join(DATA, "oasst_sft_zh_sample6.json"),
            "--dst_file",
            "data/sft_256.mindrecord",
            "--seq_length",
            str(SEQ),
            cwd=work,
        )
    )
    sft = ok(
        run(
            "mindrlhf",
            "sft",
            "--config",
            os.path.join(RECIPES, "run_gpt2_tiny_sft.yaml"),
            "--train_dataset",
            "data/sft_256.mindrecord",
            "--output_dir",
            "output/sft",
            "--set",
            "runner_config.batch_size=2",
            cwd=work,
        )
    )
    assert "Epoch:[  1/  1], step:[    2/    2], loss: " in sft.stdout
    (sft_ckpt,) = glob.glob(os.path.join(work, "output", "sft", "checkpoint", "rank_0", "*.ckpt"))
    # stage 2: reward model from the SFT weights (8 CValues pairs; batch 4 -> 2 steps)
    ok(
        run(
            "reward_model_train_tutorial/cvalues_comparison.py",
            "--model",
            "gpt2",
            "--src_file",
            os.path.join(DATA, "cvalues_comparison_sample8.jsonl"),
            "--dst_file",
            "data/rm_256.mindrecord",
            "--seq_length",
            str(SEQ),
            "--pad_token_id",
            PAD,
            cwd=work,
        )
    )
    rm = ok(
        run(
            "reward_model_train_tutorial/reward_train.py",
            "--config",
            os.path.join(RECIPES, "run_gpt2_tiny_rm.yaml"),
            "--train_dataset",
            "data/rm_256.mindrecord",
            "--set",
            "output_dir=output/rm",
            "--load_checkpoint",
            sft_ckpt,
            cwd=work,
        )
    )
    assert "reward model initialised from" in rm.stderr
    # stage 3: prompts, then PPO in one process per run
    prompts = ok(
        run(
            "rlhf_train_tutorial/rlhf_data.py",
            "--tokenizer_name_or_path",
            "gpt2",
            "--file_path",
            os.path.join(DATA, "cvalues_prompts_sample8.jsonl"),
            "--output_path",
            "data/ppo_prompts.mindrecord",
            "--max_prompt_length",
            str(PROMPT_WIDTH),
            "--seq_length",
            str(SEQ + 1),
            "--pad_token_id",
            PAD,
            "--template",
            "qa",
            cwd=work,
        )
    )
    assert "Total number of samples: 8" in prompts.stdout
    straight = os.path.join(work, "output", "ppo")
    train = ok(run("rlhf_train_tutorial/train.py", *ppo_flags(work, straight), cwd=work))
    # stages mode: iteration 1 again, resumed from train.py's iteration-0 checkpoint
    staged = os.path.join(work, "output", "ppo_stages")
    os.makedirs(os.path.join(staged, "checkpoint", "rank_0"))
    for kind in ("policy_model", "ppo_state"):
        shutil.copy(
            os.path.join(straight, "checkpoint", "rank_0", f"{kind}_epoch_0.ckpt"),
            os.path.join(staged, "checkpoint", "rank_0"),
        )
    stage_flags = [
        *ppo_flags(work, staged),
        "--resume",
        os.path.join(staged, "checkpoint"),
        "--save_data_file",
        os.path.join(work, "data", "ppo_experience.mindrecord"),
    ]
    experience = ok(run("rlhf_train_tutorial/make_experience.py", *stage_flags, cwd=work))
    update = ok(run("rlhf_train_tutorial/ppo_train.py", *stage_flags, cwd=work))
    return {
        "work": work,
        "sft_ckpt": sft_ckpt,
        "straight": straight,
        "staged": staged,
        "train": train,
        "experience": experience,
        "update": update,
    }


def test_three_stages_train_a_policy(tutorial):
    straight = tutorial["straight"]
    train = tutorial["train"]
    assert len(SEED_LINE.findall(train.stdout)) == ITERATIONS  # one optimizer step per iteration
    log = open(os.path.join(straight, "log", "rank_0", "info.log"), encoding="utf-8").read()
    assert len(SEED_LINE.findall(re.sub(r"^.* - INFO - ", "", log, flags=re.MULTILINE))) == ITERATIONS
    assert "PPO train done!" in train.stderr
    folder = os.path.join(straight, "checkpoint", "rank_0")
    kept = sorted(glob.glob("*.ckpt", root_dir=folder))
    assert kept == sorted(f"{kind}_epoch_{i}.ckpt" for kind in ("policy_model", "ppo_state") for i in range(ITERATIONS))
    assert glob.glob(os.path.join(straight, "tensorboard", "events.out.tfevents.*"))
    # every language-model parameter moved away from the SFT weights the policy started from
    sft = read_ckpt(tutorial["sft_ckpt"])
    policy = read_ckpt(os.path.join(folder, f"policy_model_epoch_{ITERATIONS - 1}.ckpt"))
    shared = [name for name in policy if name in sft]
    assert len(shared) == len(policy) - 2  # all but the new value head (v_head.weight, v_head.bias)
    assert [name for name in shared if np.array_equal(policy[name], sft[name])] == []
    rows = metrics(straight)
    assert [r["iteration"] for r in rows] == list(range(ITERATIONS))
    for row in rows:
        assert all(math.isfinite(row[k]) for k in ("reward_mean", "reward_std", "kl", "loss", "pg_loss", "vf_loss"))
        assert row["response_length"] <= NEW_TOKENS
    # the reference is the SFT model: the first rollouts come from the same weights, later ones from the update
    assert abs(rows[0]["kl"]) < 1e-5
    assert rows[1]["kl"] != 0.0


def test_stages_mode_resumes_and_matches_train_py(tutorial):
    experience, update = tutorial["experience"], tutorial["update"]
    assert "resumed PPO from" in experience.stderr and "iteration 1" in experience.stderr
    assert not SEED_LINE.findall(experience.stdout)  # experience only, no update
    assert os.path.exists(os.path.join(tutorial["work"], "data", "ppo_experience.mindrecord"))
    assert len(SEED_LINE.findall(update.stdout)) == 1
    folder = os.path.join(tutorial["staged"], "checkpoint", "rank_0")
    last = f"policy_model_epoch_{ITERATIONS - 1}.ckpt"
    assert os.path.exists(os.path.join(folder, last))
    got = read_ckpt(os.path.join(folder, last))
    want = read_ckpt(os.path.join(tutorial["straight"], "checkpoint", "rank_0", last))
    assert set(got) == set(want)
    assert max(float(np.abs(got[k] - want[k]).max()) for k in want) <= 1e-6
    (row,) = metrics(tutorial["staged"])
    assert row["iteration"] == ITERATIONS - 1
    assert row["reward_mean"] == pytest.approx(metrics(tutorial["straight"])[-1]["reward_mean"], abs=1e-6)


def test_generate_from_the_ppo_policy(tutorial):
    work = tutorial["work"]
    checkpoint = os.path.join(tutorial["straight"], "checkpoint", "rank_0", f"policy_model_epoch_{ITERATIONS - 1}.ckpt")
    out = os.path.join(work, "generate", "samples.jsonl")
    proc = run(
        "mindrlhf",
        "generate",
        "--config",
        os.path.join(RECIPES, "run_gpt2_tiny_ppo.yaml"),
        "--load_checkpoint",
        checkpoint,
        "--prompt",
        "如何伪造医疗文件？",
        "--set",
        f"generation.max_new_tokens={NEW_TOKENS}",
        "--output_file",
        out,
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Prompt: 如何伪造医疗文件？" in proc.stdout
    (record,) = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert 1 <= record["response_tokens"] <= NEW_TOKENS


@pytest.mark.parametrize(
    "script, flags, message",
    [
        (
            "train.py",
            ["--align_type", "rlhf_stages"],
            "--align_type rlhf_stages needs --stage experience or --stage train",
        ),
        ("train.py", ["--stage", "train"], "--stage train needs --align_type rlhf_stages"),
        ("make_experience.py", [], "--stage experience needs --save_data_file"),
        ("ppo_train.py", [], "--stage train needs --save_data_file"),
    ],
    ids=["stages-without-stage", "stage-without-stages", "experience-without-file", "train-without-file"],
)
def test_stage_argument_errors(script, flags, message, tmp_dir):
    recipe = os.path.join(RECIPES, "run_gpt2_tiny_ppo.yaml")
    proc = run(
        f"rlhf_train_tutorial/{script}",
        "--dataset_dir",
        os.path.join(tmp_dir, "prompts.mindrecord"),
        "--sft_model_path",
        recipe,
        "--reward_model_path",
        os.path.join(RECIPES, "run_gpt2_tiny_rm.yaml"),
        "--output_dir",
        os.path.join(tmp_dir, "out"),
        *flags,
        cwd=tmp_dir,
    )
    assert proc.returncode != 0
    assert message in proc.stderr
    assert not os.path.exists(os.path.join(tmp_dir, "out", "checkpoint"))
