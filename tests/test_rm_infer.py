"""``mindrlhf rm infer``: scores written as JSONL, a warning when no checkpoint gives the weights, the tokenizer
defaulted as ``generate`` defaults it, and a tokenizer that does not belong to the model refused in one line."""

from __future__ import annotations

import json
import os

import numpy as np

from tests.test_cli import ROOT, mindrlhf

RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_rm.yaml")
DATA = os.path.join(ROOT, "tests", "data", "cvalues_comparison_sample8.jsonl")


def test_scores_jsonl_and_random_weights_warning(tmp_path):
    out = tmp_path / "scores.jsonl"
    proc = mindrlhf(
        "rm",
        "infer",
        "--config",
        RECIPE,
        "--data_file",
        DATA,
        "--output_file",
        str(out),
        "--set",
        f"output_dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "WARNING mindrlhf.cli.reward: no --distributed_ckpt_path" in proc.stderr and "random weights" in proc.stderr
    assert "tokenizer: " in proc.stderr and "gpt2" in proc.stderr  # the family's bundled one, as generate picks
    records = [json.loads(line) for line in open(out, encoding="utf-8")]
    rows = [json.loads(line) for line in open(DATA, encoding="utf-8")]
    assert [(r["prompt"], r["response"]) for r in records] == [
        (row["prompt"].strip(), row[key].strip()) for row in rows for key in ("pos_resp", "neg_resp")
    ]
    scores = np.array([r["score"] for r in records])
    assert np.isfinite(scores).all() and len(set(scores.round(6))) > 1
    logged = [
        float(line.split("[[")[1].split("]]")[0]) for line in proc.stderr.splitlines() if "reward score: [[" in line
    ]
    np.testing.assert_allclose(logged, scores, rtol=1e-3)  # the log shows 4 significant digits


def test_a_tokenizer_of_another_model_is_refused(tmp_path):
    proc = mindrlhf(
        "rm",
        "infer",
        "--config",
        RECIPE,
        "--data_file",
        DATA,
        "--tokenizer",
        "llama",
        "--set",
        f"output_dir={tmp_path}",
    )
    assert proc.returncode != 0
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: --tokenizer llama: its eos id 2 is not the model's eos_token_id 50256")
    ), proc.stderr[-2000:]
    assert not os.path.exists(tmp_path / "infer")
