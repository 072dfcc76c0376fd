"""New tokens per second of our KV-cache generation against ``transformers.generate`` on the same weights.

Cases (fp32, sampling with top_k=50, every row generates exactly ``new_tokens`` tokens):
  a) GPT-2 4 layers x 256 wide, vocab 50257, batch 8, prompt 64, 128 new tokens
  b) the GPT-2 124M recipe (model_configs/gpt2_config/run_gpt2_124m.yaml), batch 4, prompt 64, 128 new tokens
Ours is also run without the cache (whole sequence recomputed each step) to show what the cache buys.

Each measurement is the median of ``--repeats`` timed runs after one warm-up run (which includes graph
compilation).

At a few rows per step a decode step reads every weight matrix once, so each side also reports its time per new
token (``ms_per_token_step``, prefill included) and the rate at which that streams the model's weights
(``weights_gbs``: float32 weight bytes of the blocks and the tied output table / time per token); a side bound by
memory bandwidth alone would show the machine's read bandwidth there.

Each side runs in its own process on the same weights (ours seeded, exported once as a Hugging Face folder that both
load), so each peak RSS (``VmHWM`` after its cached generation runs, before ours' no-cache runs) is its own.
Prints one JSON document; run on an otherwise idle machine.

    python benchmarks/generate.py [--cases a b] [--repeats 3] [--skip-no-cache]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import rss_mb  # noqa: E402 - shared with the other benchmarks; sets OMP_WAIT_POLICY first
import mindspore as ms  # noqa: E402

from mindrlhf.config import GenerationConfig, ModelConfig, load_config  # noqa: E402
from mindrlhf.models import CausalLM  # noqa: E402
from mindrlhf.models.convert import save_hf_checkpoint  # noqa: E402
from mindrlhf.models.generation import Generator  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TOP_K = 50


def case_config(case: str) -> ModelConfig:
    if case == "a":
        return ModelConfig(type="gpt2", vocab_size=50257, hidden_size=256, num_layers=4, num_heads=4, seq_length=1024)
    recipe = load_config(
        os.path.join(ROOT, "model_configs/gpt2_config/run_gpt2_124m.yaml"), ["model.model_config.compute_dtype=float32"]
    )
    return recipe.model.model_config


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: graph compilation, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def weight_bytes(cfg: ModelConfig) -> int:
    """Bytes of float32 weights a GPT-2 decode step reads: the blocks' matrices and the (tied) output table."""
    h, layers = cfg.hidden_size, cfg.num_layers
    return 4 * (layers * 12 * h * h + cfg.vocab_size * h)


def make_prompts(cfg: ModelConfig, batch: int, prompt: int) -> tuple:
    """``(ids, mask)`` ``(batch, prompt) int32``: seeded random tokens, no padding."""
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size, (batch, prompt)).astype(np.int32)
    return ids, np.ones_like(ids)


def ours_side(
    case: str, hf_dir: str, batch: int, prompt: int, new_tokens: int, repeats: int, no_cache: bool, fused: bool
) -> dict:
    """Our generation on the weights in ``hf_dir`` (graph-kernel fusion when ``fused``); ``peak_rss_mb`` is taken
    before the no-cache runs."""
    from mindrlhf.config import ContextConfig
    from mindrlhf.context import init_context
    from mindrlhf.models.convert import load_weights

    init_context(ContextConfig(mode=0, enable_graph_kernel=fused))
    cfg = case_config(case)
    lm = CausalLM(cfg)
    load_weights(lm, hf_dir, cfg)
    ids, mask = make_prompts(cfg, batch, prompt)
    gen_cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=True, top_k=TOP_K, seed=0)
    ours = Generator(lm, gen_cfg, eos_token_id=None, pad_token_id=cfg.pad_token_id)
    out = {"ours_cache_s": timed(lambda: ours.generate(ids, mask), repeats), "peak_rss_mb": rss_mb()}
    if no_cache:
        plain = Generator(
            lm,
            GenerationConfig(max_new_tokens=new_tokens, do_sample=True, top_k=TOP_K, use_cache=False),
            eos_token_id=None,
            pad_token_id=cfg.pad_token_id,
        )
        out["ours_no_cache_s"] = timed(lambda: plain.generate(ids, mask), repeats)
    return out


def transformers_side(case: str, hf_dir: str, batch: int, prompt: int, new_tokens: int, repeats: int) -> dict:
    """``transformers.generate`` on the weights in ``hf_dir``."""
    import torch
    import transformers

    cfg = case_config(case)
    hf = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    ids, mask = make_prompts(cfg, batch, prompt)
    hf_ids, hf_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def hf_generate():
        with torch.no_grad():
            hf.generate(
                input_ids=hf_ids,
                attention_mask=hf_mask,
                do_sample=True,
                top_k=TOP_K,
                top_p=1.0,
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                pad_token_id=cfg.pad_token_id,
            )

    return {"transformers_s": timed(hf_generate, repeats), "peak_rss_mb": rss_mb()}


def side_process(side: str, case: str, hf_dir: str, args, batch: int) -> dict:
    """One side of one case in a fresh process (its peak RSS is its own)."""
    cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--side",
        side,
        "--cases",
        case,
        "--hf-dir",
        hf_dir,
        "--batch",
        str(batch),
        "--prompt",
        str(args.prompt),
        "--new-tokens",
        str(args.new_tokens),
        "--repeats",
        str(args.repeats),
    ]
    cmd += ["--skip-no-cache"] if args.skip_no_cache else []
    cmd += ["--graph-kernel"] if args.graph_kernel and side == "ours" else []
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} (case {case}) failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_case(case: str, batch: int, args) -> dict:
    """Both sides of one case on the same seeded weights (exported once as a Hugging Face folder)."""
    cfg = case_config(case)
    ms.set_seed(0)
    tokens = batch * args.new_tokens
    result = {
        "case": case,
        "layers": cfg.num_layers,
        "hidden": cfg.hidden_size,
        "vocab": cfg.vocab_size,
        "batch": batch,
        "prompt": args.prompt,
        "new_tokens": args.new_tokens,
    }
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = save_hf_checkpoint(CausalLM(cfg), cfg, os.path.join(tmp, "hf"))
        ours = side_process("ours", case, hf_dir, args, batch)
        peer = side_process("transformers", case, hf_dir, args, batch)
    result.update(
        {k: v for k, v in ours.items() if k != "peak_rss_mb"},
        transformers_s=peer["transformers_s"],
        ours_peak_rss_mb=ours["peak_rss_mb"],
        transformers_peak_rss_mb=peer["peak_rss_mb"],
    )
    result["weights_mb"] = weight_bytes(cfg) / 1e6
    for side, seconds in (("ours", result["ours_cache_s"]), ("transformers", result["transformers_s"])):
        result[f"{side}_ms_per_token_step"] = 1000.0 * seconds / args.new_tokens
        result[f"{side}_weights_gbs"] = weight_bytes(cfg) / (seconds / args.new_tokens) / 1e9
    result["ours_tokens_per_s"] = tokens / result["ours_cache_s"]
    result["transformers_tokens_per_s"] = tokens / result["transformers_s"]
    result["speedup_vs_transformers"] = result["transformers_s"] / result["ours_cache_s"]
    result["peak_rss_ours_over_transformers"] = ours["peak_rss_mb"] / peer["peak_rss_mb"]
    if "ours_no_cache_s" in ours:
        result["ours_no_cache_tokens_per_s"] = tokens / result["ours_no_cache_s"]
        result["cache_speedup"] = result["ours_no_cache_s"] / result["ours_cache_s"]
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", default=["a", "b"], choices=["a", "b"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompt", type=int, default=64)
    parser.add_argument("--skip-no-cache", action="store_true", help="skip the slow no-cache runs")
    parser.add_argument(
        "--graph-kernel", action="store_true", help="ours with graph-kernel fusion (context.enable_graph_kernel)"
    )
    parser.add_argument("--side", choices=["ours", "transformers"], help=argparse.SUPPRESS)
    parser.add_argument("--hf-dir", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.side == "ours":
        print(
            json.dumps(
                ours_side(
                    args.cases[0],
                    args.hf_dir,
                    args.batch,
                    args.prompt,
                    args.new_tokens,
                    args.repeats,
                    not args.skip_no_cache,
                    args.graph_kernel,
                )
            )
        )
        return
    if args.side == "transformers":
        print(
            json.dumps(
                transformers_side(args.cases[0], args.hf_dir, args.batch, args.prompt, args.new_tokens, args.repeats)
            )
        )
        return
    import torch
    import transformers

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    batches = {"a": 8, "b": 4}
    report = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
        "versions": {"mindspore": ms.__version__, "torch": torch.__version__, "transformers": transformers.__version__},
        "repeats": args.repeats,
        "graph_kernel": args.graph_kernel,
        "statistic": "median seconds per generate() call",
        "results": [],
    }
    for case in args.cases:
        report["results"].append(run_case(case, batches[case], args))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
