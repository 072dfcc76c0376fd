"""Training-step efficiency of GPT-2 124M: achieved GFLOP/s of one causal-LM training step against the same
process's float32 GEMM rate, ours (MindSpore) and the PyTorch peer (transformers ``GPT2LMHeadModel``).

Model: the GPT-2 124M recipe (model_configs/gpt2_config/run_gpt2_124m.yaml: 12 layers x 768, 12 heads, vocab 50257)
in float32, dropout 0, tied LM head; batch ``--batch`` sequences of ``--seq`` random tokens, every position real
and scored (next-token cross-entropy). Each side builds its own randomly initialised model: the FLOP count and the
kernels do not depend on the values.
  ours   SFTLoss(CausalLM) -> build_optimizer (AdamW) -> TrainStep (loss scale 1, clip 1.0), GRAPH_MODE, CPU.
  torch  GPT2LMHeadModel (sdpa attention) with ``labels``, ``clip_grad_norm_`` 1.0, ``torch.optim.AdamW(fused=True)``,
         ``TORCH_THREADS`` threads.

Step FLOPs (forward + backward = 3 x forward; the usual 6N rule, PaLM appendix B):
  6 * N * T + 12 * L * S * H * T,   T = batch * seq tokens,
  N = L * 12 * H^2 (attention qkv + out projection 4 H^2, MLP 8 H^2) + V * H (the LM head matmul); embeddings'
  lookups, biases, norms, softmax and the optimizer are not counted. The attention term counts the full S x S
  score and value matmuls (2 * 2 * S * H per token and layer forward), as both sides compute them.
Achieved GFLOP/s = step FLOPs / median step seconds. GEMM rate: a 2048 x 2048 float32 matmul (2 * 2048^3 FLOP)
in the same process and framework after the training steps (ours compiled, ``ops.MatMul`` in a graph cell; torch
``torch.mm``), median of ``GEMM_REPEATS`` timed calls, each synced. Efficiency = achieved / GEMM rate.

Each side runs in its own process (so its peak RSS, ``VmHWM``, is its own): ``WARMUP_STEPS`` untimed steps (graph
compilation, optimizer state), then ``--steps`` timed steps, each synced on the loss. Prints a table and (with
``--json``) the full report; run on an otherwise idle machine.

    python benchmarks/train_efficiency.py [--batch 2] [--seq 256] [--steps 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import rss_mb, versions  # noqa: E402 - shared with the other benchmarks
from rm_train import TORCH_THREADS  # noqa: E402 - the same torch thread count as the reward-model benchmark

logger = logging.getLogger("train_efficiency")

RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_124m.yaml")
WARMUP_STEPS = 2
GEMM_SIZE = 2048
GEMM_REPEATS = 5
LEARNING_RATE = 1e-5


def model_config(seq: int):
    """The 124M recipe's model, float32 everywhere, dropout off, ``seq`` positions."""
    from mindrlhf.config import load_config

    cfg = load_config(
        RECIPE,
        [
            "model.model_config.compute_dtype=float32",
            f"model.model_config.seq_length={seq}",
            "model.model_config.hidden_dropout_rate=0.0",
            "model.model_config.attention_dropout_rate=0.0",
        ],
    )
    return cfg.model.model_config


def step_flops(cfg, batch: int, seq: int) -> dict:
    """The FLOP count of one training step (see the module docstring) and its parts."""
    layers, hidden, vocab = cfg.num_layers, cfg.hidden_size, cfg.vocab_size
    tokens = batch * seq
    matmul_params = layers * 12 * hidden * hidden + vocab * hidden
    attention = 12 * layers * seq * hidden * tokens
    return {
        "tokens": tokens,
        "matmul_params": matmul_params,
        "dense_flops": 6 * matmul_params * tokens,
        "attention_flops": attention,
        "step_flops": 6 * matmul_params * tokens + attention,
    }


def batch_arrays(cfg, batch: int, seq: int) -> dict:
    """Random token ids ``(B, S) int32`` (never the pad id), all-ones attention and loss masks."""
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size - 1, (batch, seq)).astype(np.int32)
    ones = np.ones((batch, seq), np.int32)
    return {"input_ids": ids, "attention_mask": ones, "loss_mask": ones}


def median_time(fn, steps: int, warmup: int) -> list:
    """Seconds of each of ``steps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


SIDES = ("ours", "ours_fused", "torch")  # ours_fused: with graph-kernel fusion (context.enable_graph_kernel)


def ours_side(cfg, arrays: dict, steps: int, fused: bool = False) -> dict:
    """The step and GEMM timings of MindSpore (GRAPH_MODE, CPU; graph-kernel fusion when ``fused``)."""
    import mindspore as ms
    from mindspore import Tensor, nn, ops

    from mindrlhf.config import ContextConfig, LossScaleConfig, LrScheduleConfig, OptimizerConfig
    from mindrlhf.context import init_context
    from mindrlhf.models import CausalLM
    from mindrlhf.train.optim import build_optimizer
    from mindrlhf.train.sft import SFTLoss
    from mindrlhf.train.step import TrainStep

    init_context(ContextConfig(mode=0, enable_graph_kernel=fused), seed=0)
    loss_net = SFTLoss(CausalLM(cfg))
    optimizer = build_optimizer(
        loss_net.trainable_params(), OptimizerConfig(learning_rate=LEARNING_RATE), LrScheduleConfig(), 10_000
    )
    step = TrainStep(loss_net, optimizer, LossScaleConfig(loss_scale_value=1.0, use_clip_grad=True, max_grad_norm=1.0))
    step.set_train(True)
    inputs = [Tensor(arrays[k]) for k in ("input_ids", "attention_mask", "loss_mask")]
    step_times = median_time(lambda: step(*inputs)[0].asnumpy(), steps, WARMUP_STEPS)

    class Gemm(nn.Cell):
        def __init__(self):
            super().__init__()
            self.matmul = ops.MatMul()

        def construct(self, a, b):
            return self.matmul(a, b)

    gemm = Gemm()
    rng = np.random.default_rng(1)
    a, b = (Tensor(rng.standard_normal((GEMM_SIZE, GEMM_SIZE)).astype(np.float32)) for _ in range(2))
    gemm_times = median_time(lambda: gemm(a, b).asnumpy(), GEMM_REPEATS, 1)
    return {"framework": f"mindspore {ms.__version__}", "step_s_all": step_times, "gemm_s_all": gemm_times}


def torch_side(cfg, arrays: dict, steps: int) -> dict:
    """The step and GEMM timings of PyTorch (transformers GPT2LMHeadModel, sdpa)."""
    import torch
    import transformers

    torch.set_num_threads(TORCH_THREADS)
    torch.manual_seed(0)
    hf_cfg = transformers.GPT2Config(
        vocab_size=cfg.vocab_size,
        n_positions=cfg.seq_length,
        n_embd=cfg.hidden_size,
        n_layer=cfg.num_layers,
        n_head=cfg.num_heads,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        use_cache=False,
    )
    model = transformers.GPT2LMHeadModel._from_config(hf_cfg, attn_implementation="sdpa").train()
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=LEARNING_RATE, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.0, fused=True
    )
    ids = torch.tensor(arrays["input_ids"], dtype=torch.long)
    mask = torch.tensor(arrays["attention_mask"], dtype=torch.long)

    def train_step():
        optimizer.zero_grad(set_to_none=True)
        loss = model(input_ids=ids, attention_mask=mask, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        return loss.item()

    step_times = median_time(train_step, steps, WARMUP_STEPS)
    gen = torch.Generator().manual_seed(1)
    a, b = (torch.randn(GEMM_SIZE, GEMM_SIZE, generator=gen) for _ in range(2))
    gemm_times = median_time(lambda: torch.mm(a, b), GEMM_REPEATS, 1)
    return {
        "framework": f"torch {torch.__version__} (threads {torch.get_num_threads()})",
        "step_s_all": step_times,
        "gemm_s_all": gemm_times,
    }


def worker(side: str, batch: int, seq: int, steps: int) -> dict:
    """Runs in its own process: one side's timings, its FLOP rates and its peak RSS."""
    cfg = model_config(seq)
    arrays = batch_arrays(cfg, batch, seq)
    if side == "torch":
        out = torch_side(cfg, arrays, steps)
    else:
        out = ours_side(cfg, arrays, steps, fused=side == "ours_fused")
    flops = step_flops(cfg, batch, seq)
    out["step_s"] = statistics.median(out["step_s_all"])
    out["gemm_s"] = statistics.median(out["gemm_s_all"])
    out["achieved_gflops"] = flops["step_flops"] / out["step_s"] / 1e9
    out["gemm_gflops"] = 2 * GEMM_SIZE**3 / out["gemm_s"] / 1e9
    out["efficiency"] = out["achieved_gflops"] / out["gemm_gflops"]
    out["peak_rss_mb"] = rss_mb()
    return out


def run_side(side: str, args) -> dict:
    """``worker(side)`` in a fresh process; raises with its stderr tail when it fails."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--worker",
        side,
        "--batch",
        str(args.batch),
        "--seq",
        str(args.seq),
        "--steps",
        str(args.steps),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=dict(os.environ, PYTHONPATH=ROOT))
    if proc.returncode != 0:
        raise RuntimeError(f"{side} worker failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def markdown_table(sides: dict, flops: dict) -> str:
    rows = [
        (
            f"step: {flops['tokens']} tokens, {flops['step_flops'] / 1e12:.3f} TFLOP "
            f"(6 N T {flops['dense_flops'] / 1e12:.3f} + attention {flops['attention_flops'] / 1e12:.3f})"
        ),
        "",
        "| side | s / step | achieved GFLOP/s | 2048^2 GEMM GFLOP/s | efficiency | peak RSS MiB |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name, s in sides.items():
        rows.append(
            f"| {name} ({s['framework']}) | {s['step_s']:.2f} | {s['achieved_gflops']:.1f} | "
            f"{s['gemm_gflops']:.1f} | {s['efficiency']:.2f} | {s['peak_rss_mb']:.0f} |"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2, help="sequences per step")
    parser.add_argument("--seq", type=int, default=256, help="tokens per sequence")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per side (median reported)")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument("--worker", choices=SIDES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args.worker, args.batch, args.seq, args.steps)))
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    load_start = os.getloadavg()
    sides = {}
    for side in SIDES:
        logger.info("%s", side)
        sides[side] = run_side(side, args)
    flops = step_flops(model_config(args.seq), args.batch, args.seq)
    print(markdown_table(sides, flops))
    if args.json:
        report = {
            "machine": {
                "cpu_count": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "platform": platform.platform(),
                "load_avg_at_start": load_start,
                "load_avg_at_end": os.getloadavg(),
            },
            "versions": versions(),
            "setup": {
                "recipe": os.path.relpath(RECIPE, ROOT),
                "dtype": "float32",
                "batch": args.batch,
                "seq": args.seq,
                "steps": args.steps,
                "warmup_steps": WARMUP_STEPS,
                "flops_formula": "6 * N * T + 12 * L * S * H * T, N = 12 L H^2 + V H",
                "peak_rss_mb": "process RSS high-water mark (/proc VmHWM), one subprocess per side",
            },
            "flops": flops,
            "sides": sides,
            "ours_over_torch_efficiency": sides["ours"]["efficiency"] / sides["torch"]["efficiency"],
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        logger.info("wrote %s", args.json)


if __name__ == "__main__":
    main()
