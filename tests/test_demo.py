"""``mindrlhf demo`` at a reduced size through its real command: every output exists and is sane."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--sft_samples", "48", "--sft_epochs", "1", "--rm_conversations", "60", "--rm_epochs", "1",
         "--ppo_iterations", "2", "--ppo_rollouts", "8", "--eval_prompts", "4", "--table_rows", "3",
         "--new_tokens", "8", "--seq_length", "128", "--prompt_length", "48", "--hidden_size", "64",
         "--num_layers", "2", "--no_progress"]


def test_demo_end_to_end(tmp_dir):
    out = os.path.join(tmp_dir, "demo")
    proc = subprocess.run([sys.executable, "-m", "mindrlhf.cli.main", "demo", "--output_dir", out, *SMALL],
                          cwd=tmp_dir, capture_output=True, text=True, timeout=600)
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
