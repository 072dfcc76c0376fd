"""New tokens per second of our KV-cache generation against ``transformers.generate`` on the same weights.

Cases (fp32, sampling with top_k=50, every row generates exactly ``new_tokens`` tokens):
  a) GPT-2 4 layers x 256 wide, vocab 50257, batch 8, prompt 64, 128 new tokens
  b) the GPT-2 124M recipe (model_configs/gpt2_config/run_gpt2_124m.yaml), batch 4, prompt 64, 128 new tokens
Ours is also run without the cache (whole sequence recomputed each step) to show what the cache buys.

Each measurement is the median of ``--repeats`` timed runs after one warm-up run (which includes graph
compilation). Prints one JSON document; run on an otherwise idle machine.

    python benchmarks/generate.py [--cases a b] [--repeats 3] [--skip-no-cache]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import mindspore as ms  # noqa: E402

from mindrlhf.config import GenerationConfig, ModelConfig, load_config  # noqa: E402
from mindrlhf.models import CausalLM  # noqa: E402
from mindrlhf.models.convert import save_hf_checkpoint  # noqa: E402
from mindrlhf.models.generation import Generator  # noqa: E402

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
TOP_K = 50


def case_config(case: str) -> ModelConfig:
    if case == "a":
        return ModelConfig(type="gpt2", vocab_size=50257, hidden_size=256, num_layers=4, num_heads=4,
                           seq_length=1024)
    recipe = load_config(os.path.join(ROOT, "model_configs/gpt2_config/run_gpt2_124m.yaml"),
                         ["model.model_config.compute_dtype=float32"])
    return recipe.model.model_config


def timed(fn, repeats: int) -> float:
    fn()  # warm-up: graph compilation, allocator
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_case(case: str, batch: int, prompt: int, new_tokens: int, repeats: int, no_cache: bool) -> dict:
    import torch
    import transformers

    cfg = case_config(case)
    lm = CausalLM(cfg)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, cfg.vocab_size, (batch, prompt)).astype(np.int32)
    mask = np.ones_like(ids)
    tokens = batch * new_tokens
    result = {"case": case, "layers": cfg.num_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size,
              "batch": batch, "prompt": prompt, "new_tokens": new_tokens}

    gen_cfg = GenerationConfig(max_new_tokens=new_tokens, do_sample=True, top_k=TOP_K, seed=0)
    ours = Generator(lm, gen_cfg, eos_token_id=None, pad_token_id=cfg.pad_token_id)
    result["ours_cache_s"] = timed(lambda: ours.generate(ids, mask), repeats)
    if no_cache:
        plain = Generator(lm, GenerationConfig(max_new_tokens=new_tokens, do_sample=True, top_k=TOP_K,
                                               use_cache=False), eos_token_id=None, pad_token_id=cfg.pad_token_id)
        result["ours_no_cache_s"] = timed(lambda: plain.generate(ids, mask), repeats)

    with tempfile.TemporaryDirectory() as tmp:
        save_hf_checkpoint(lm, cfg, os.path.join(tmp, "hf"))
        hf = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(tmp, "hf")).eval()
    hf_ids, hf_mask = torch.tensor(ids, dtype=torch.long), torch.tensor(mask, dtype=torch.long)

    def hf_generate():
        with torch.no_grad():
            hf.generate(input_ids=hf_ids, attention_mask=hf_mask, do_sample=True, top_k=TOP_K, top_p=1.0,
                        max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=cfg.pad_token_id)

    result["transformers_s"] = timed(hf_generate, repeats)
    result["ours_tokens_per_s"] = tokens / result["ours_cache_s"]
    result["transformers_tokens_per_s"] = tokens / result["transformers_s"]
    result["speedup_vs_transformers"] = result["transformers_s"] / result["ours_cache_s"]
    if no_cache:
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
    args = parser.parse_args(argv)
    import torch
    import transformers

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    batches = {"a": 8, "b": 4}
    report = {"machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                          "torch_threads": torch.get_num_threads()},
              "versions": {"mindspore": ms.__version__, "torch": torch.__version__,
                           "transformers": transformers.__version__},
              "repeats": args.repeats, "statistic": "median seconds per generate() call", "results": []}
    for case in args.cases:
        report["results"].append(run_case(case, batches[case], args.prompt, args.new_tokens, args.repeats,
                                          not args.skip_no_cache))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
