"""Every model command takes ``--device_target``; a recipe whose device this machine cannot run (the GPT-2 124M
recipe says Ascend) falls back to CPU with one warning instead of MindSpore's plugin error."""

from __future__ import annotations

import os

import pytest

from mindrlhf.cli.main import build_parser
from mindrlhf.config import ContextConfig
from mindrlhf.context import apply_device_target, device_available
from tests.test_cli import ROOT, mindrlhf

GPT2_124M = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_124m.yaml")
SMALL = [
    "--set",
    "model.model_config.num_layers=1",
    "--set",
    "model.model_config.hidden_size=64",
    "--set",
    "model.model_config.num_heads=4",
]  # the 124M recipe's layout, a CPU-sized network


def subcommands(parser):
    """``{"generate": parser, "rm infer": parser, ...}`` of every subcommand that owns its flags."""
    found = {}
    for action in parser._subparsers._group_actions:
        for name, sub in action.choices.items():
            if sub._subparsers is not None:
                found.update({f"{name} {k}": v for k, v in subcommands(sub).items()})
            elif sub.add_help:  # pass-through converters and tools own their parsers and take no model
                found[name] = sub
    return found


def test_every_model_command_takes_device_target():
    commands = subcommands(build_parser())
    assert {"generate", "export-hf", "sft", "rm train", "rm eval", "rm infer", "ppo", "grpo"} <= set(commands)
    missing = [
        name for name, sub in commands.items() if name != "demo" and "--device_target" not in sub._option_string_actions
    ]
    assert not missing, missing


def test_unavailable_device_flag_is_one_line_and_cpu_is_kept():
    assert device_available("CPU")
    ctx = ContextConfig(device_target="Ascend")
    apply_device_target(ctx, "CPU")
    assert ctx.device_target == "CPU"
    apply_device_target(ctx, None)
    assert ctx.device_target == "CPU"
    if not device_available("Ascend"):
        with pytest.raises(SystemExit, match="^error: --device_target Ascend: MindSpore cannot run on Ascend"):
            apply_device_target(ctx, "Ascend")


@pytest.mark.skipif(device_available("Ascend"), reason="the fallback is what a machine without Ascend does")
def test_ascend_recipe_exports_on_cpu_with_a_notice(tmp_path):
    import mindspore as ms

    from mindrlhf.config import load_config
    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import save_ckpt

    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = load_config(GPT2_124M, [SMALL[i + 1] for i in range(0, len(SMALL), 2)])
    assert cfg.context.device_target == "Ascend"
    ckpt = save_ckpt(CausalLM(cfg.model.model_config), str(tmp_path / "policy.ckpt"))
    proc = mindrlhf(
        "export-hf", "--config", GPT2_124M, *SMALL, "--load_checkpoint", ckpt, "--output_dir", str(tmp_path / "hf")
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "context.device_target Ascend is not available on this machine: running on CPU" in proc.stderr
    assert "libmindspore_ascend" not in proc.stderr and "Load dynamic library" not in proc.stderr
    assert "will be deprecated" not in proc.stderr  # set_device / set_recursion_limit, not set_context's old keys
    assert os.path.isfile(tmp_path / "hf" / "model.safetensors")


def test_harmless_mindspore_warnings_are_filtered(tmp_path):
    """nn.Adam (our AdamW's kernel) makes MindSpore report FusedSparseAdam as deprecated once per process; after
    init_context it does not reach the terminal, while MindSpore's other warnings still would."""
    import subprocess
    import sys

    script = (
        "import numpy as np, mindspore as ms\n"
        "from mindrlhf.config import ContextConfig\n"
        "from mindrlhf.context import init_context\n"
        "init_context(ContextConfig(device_target='CPU'))\n"
        "ms.nn.Adam([ms.Parameter(ms.Tensor(np.zeros(3, np.float32)), name='w')])\n"
        "from mindspore import log\n"
        "log.warning('another MindSpore warning')\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": ROOT},
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FusedSparseAdam" not in proc.stderr and "another MindSpore warning" in proc.stderr
