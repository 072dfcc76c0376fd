"""``mindrlhf demo`` at a reduced size through its real command, both tasks: every output exists and is sane."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = [
    "--task",
    "cvalues",
    "--sft_samples",
    "48",
    "--sft_epochs",
    "1",
    "--rm_conversations",
    "60",
    "--rm_epochs",
    "1",
    "--ppo_iterations",
    "2",
    "--ppo_rollouts",
    "8",
    "--eval_prompts",
    "4",
    "--table_rows",
    "3",
    "--new_tokens",
    "8",
    "--seq_length",
    "128",
    "--prompt_length",
    "48",
    "--hidden_size",
    "64",
    "--num_layers",
    "2",
    "--no_progress",
]


def test_cvalues_demo_end_to_end(tmp_dir):
    out = os.path.join(tmp_dir, "demo")
    proc = subprocess.run(
        [sys.executable, "-m", "mindrlhf.cli.main", "demo", "--output_dir", out, *SMALL],
        cwd=tmp_dir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| 问题 (prompt) | 原始回答 (SFT) | RLHF后回答 (PPO) | reward before | reward after |" in proc.stdout
    assert "如何伪造医疗文件？" in proc.stdout  # the seed's first question is always in the table
    for name in ("report.md", "summary.json", "sft_loss.png", "rm_loss.png", "ppo_reward.png", "ppo_kl.png"):
        path = os.path.join(out, name)
        assert os.path.getsize(path) > 100, name
    with open(os.path.join(out, "sft_loss.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    summary = json.load(open(os.path.join(out, "summary.json"), encoding="utf-8"))
    assert 0.0 <= summary["rm_accuracy"] <= 1.0 and summary["rm_pairs"] > 0
    assert len(summary["ppo_reward_curve"]) == len(summary["ppo_kl_curve"]) == 2
    numbers = summary["ppo_reward_curve"] + summary["ppo_kl_curve"]
    numbers += [summary["reward_before"], summary["reward_after"]]
    assert all(math.isfinite(x) for x in numbers)
    assert summary["ppo_kl_curve"][0] == 0.0 or abs(summary["ppo_kl_curve"][0]) < 1e-4  # policy == SFT at first
    assert len(summary["table"]) == 2 + 4  # the seed's two questions + the held-out prompts
    for stage in ("sft", "rm", "ppo"):
        assert os.listdir(os.path.join(out, stage, "tensorboard")), stage
    assert os.path.exists(os.path.join(out, "ppo", "checkpoint", "rank_0", "policy_model_epoch_1.ckpt"))
    assert os.path.exists(os.path.join(out, "ppo", "checkpoint", "rank_0", "critic_model_epoch_1.ckpt"))


STORIES_SMALL = [
    "--train_prompts",
    "24",
    "--eval_prompts",
    "4",
    "--eval_samples",
    "2",
    "--new_tokens",
    "12",
    "--rm_epochs",
    "1",
    "--ppo_iterations",
    "2",
    "--ppo_rollouts",
    "8",
    "--table_rows",
    "2",
    "--no_progress",
]


def test_story_demo_end_to_end(tmp_dir):
    """The default task: gold-labelled pairs, proxy reward model, PPO with the gold judge after every iteration."""
    out = os.path.join(tmp_dir, "demo")
    proc = subprocess.run(
        [sys.executable, "-m", "mindrlhf.cli.main", "demo", "--output_dir", out, *STORIES_SMALL],
        cwd=tmp_dir,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| opening | before PPO (pretrained) | after PPO | gold before | gold after |" in proc.stdout
    assert "held-out gold mean: before PPO" in proc.stdout
    for name in ("report.md", "summary.json", "rm_loss.png", "gold_reward.png", "proxy_reward.png", "ppo_kl.png"):
        assert os.path.getsize(os.path.join(out, name)) > 100, name
    summary = json.load(open(os.path.join(out, "summary.json"), encoding="utf-8"))
    assert 0.0 <= summary["rm_accuracy"] <= 1.0 and summary["rm_pairs"] > 0
    assert len(summary["gold_curve"]) == 3 and len(summary["proxy_curve"]) == len(summary["kl_curve"]) == 2
    assert summary["gold_curve"][0] == summary["gold_before"] and summary["gold_curve"][-1] == summary["gold_after"]
    numbers = summary["gold_curve"] + summary["proxy_curve"] + summary["kl_curve"] + [summary["kl_after"]]
    assert all(math.isfinite(x) for x in numbers) and all(-1.0 <= g <= 1.0 for g in summary["gold_curve"])
    assert abs(summary["kl_curve"][0]) < 1e-4  # the first rollouts come from the pretrained weights themselves
    outcome = summary["gold_outcome"]  # after vs before, sample by sample
    samples = summary["settings"]["eval_prompts"] * summary["settings"]["eval_samples"]
    assert outcome["wins"] + outcome["ties"] + outcome["losses"] == outcome["questions"] == samples == 8
    assert outcome["ci_low"] <= outcome["win_rate"] <= outcome["ci_high"]
    assert "win rate" in open(os.path.join(out, "report.md"), encoding="utf-8").read()
    assert len(summary["table"]) == 2 and all(row["before"] and row["after"] for row in summary["table"])
    for stage in ("rm", "ppo"):
        assert os.listdir(os.path.join(out, stage, "tensorboard")), stage
    assert os.path.exists(os.path.join(out, "ppo", "checkpoint", "rank_0", "policy_model_epoch_1.ckpt"))


def test_demo_refuses_a_setting_of_the_other_task(tmp_dir):
    proc = subprocess.run(
        [sys.executable, "-m", "mindrlhf.cli.main", "demo", "--sft_epochs", "1"],
        cwd=tmp_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "--task stories has no setting --sft_epochs" in proc.stderr
    assert "Traceback" not in proc.stderr
