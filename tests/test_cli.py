"""The ``mindrlhf`` command through its real entry point (subprocess), on the tiny bundled recipes."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_GPT2 = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny.yaml")
TINY_LLAMA = os.path.join(ROOT, "model_configs", "llama2_config", "run_llama2_tiny.yaml")


def mindrlhf(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "mindrlhf.cli.main", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("recipe", [TINY_GPT2, TINY_LLAMA], ids=["gpt2", "llama"])
def test_generate_writes_samples(recipe, tmp_dir):
    out = os.path.join(tmp_dir, "samples.jsonl")
    proc = mindrlhf(
        "generate",
        "--config",
        recipe,
        "--prompt",
        "如何伪造医疗文件？",
        "--prompt",
        "Hello",
        "--set",
        "generation.max_new_tokens=8",
        "--set",
        f"output_dir={tmp_dir}",
        "--output_file",
        out,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Prompt: 如何伪造医疗文件？" in proc.stdout
    records = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert [r["prompt"] for r in records] == ["如何伪造医疗文件？", "Hello"]
    assert all(1 <= r["response_tokens"] <= 8 for r in records)
    assert os.path.exists(os.path.join(tmp_dir, "resolved_config.yaml"))


def test_export_then_generate_from_hf_folder(tmp_dir):
    """A .ckpt exported to a Hugging Face folder loads back (and into transformers) with the same logits."""
    import mindspore as ms
    from mindspore import Tensor

    from mindrlhf.config import load_config
    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import save_ckpt
    from tests.helpers import load_transformers, torch_forward

    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = load_config(TINY_GPT2).model.model_config
    lm = CausalLM(cfg)
    ckpt = save_ckpt(lm, os.path.join(tmp_dir, "policy.ckpt"))
    hf_dir = os.path.join(tmp_dir, "hf")
    proc = mindrlhf("export-hf", "--config", TINY_GPT2, "--load_checkpoint", ckpt, "--output_dir", hf_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (2, 6)).astype(np.int32)
    mask = np.ones_like(ids)
    ref = torch_forward(load_transformers(hf_dir), ids, mask).logits.numpy()
    ours = lm(Tensor(ids), Tensor(mask)).asnumpy()
    assert np.abs(ref - ours).max() < 1e-4
    proc = mindrlhf(
        "generate",
        "--config",
        TINY_GPT2,
        "--load_checkpoint",
        hf_dir,
        "--prompt",
        "hi",
        "--set",
        "generation.max_new_tokens=4",
        "--set",
        f"output_dir={tmp_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "loaded weights from" in proc.stderr


def test_bad_config_key_is_reported_with_nearest_name(tmp_dir):
    proc = mindrlhf("generate", "--config", TINY_GPT2, "--set", "model.model_config.hiden_size=8")
    assert proc.returncode != 0
    assert "hiden_size" in proc.stderr and "hidden_size" in proc.stderr


def test_unknown_model_type_is_reported(tmp_dir):
    proc = mindrlhf("generate", "--config", TINY_GPT2, "--set", "model.model_config.type=gpt3")
    assert proc.returncode != 0
    assert "unknown model 'gpt3'" in proc.stderr and "gpt2" in proc.stderr


def test_convert_preference_and_rm_commands(tmp_dir):
    dst = os.path.join(tmp_dir, "pairs.mindrecord")
    proc = mindrlhf(
        "convert-preference",
        "--model",
        "llama",
        "--src_file",
        os.path.join(ROOT, "tests", "data", "cvalues_comparison_sample8.jsonl"),
        "--dst_file",
        dst,
        "--seq_length",
        "256",
        "--pad_token_id",
        "2",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"Transformation finished! Output file refer: {dst}" in proc.stdout
    assert os.path.exists(dst) and os.path.exists(dst + ".db")
    for action in ("train", "eval", "infer"):
        proc = mindrlhf("rm", action, "--help")
        assert proc.returncode == 0 and "--config" in proc.stdout


def test_rank_table_command(tmp_dir):
    proc = mindrlhf(
        "rank-table",
        "--device_num",
        "[0,2)",
        "--visible_devices",
        "0,1",
        "--server_ip",
        "127.0.0.1",
        "--device_ips",
        "10.0.0.1,10.0.0.2",
        "--output_dir",
        tmp_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    path = os.path.join(tmp_dir, "hccl_2p_01_127.0.0.1.json")
    assert json.load(open(path))["server_list"][0]["device"][1] == {
        "device_id": "1",
        "device_ip": "10.0.0.2",
        "rank_id": "1",
    }
