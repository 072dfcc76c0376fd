"""DPO on real human preferences, mindrlhf and TRL's ``DPOTrainer`` side by side (not a test).

The bundled Chinese OpenAssistant rankings (``mindrlhf/assets/data/oasst_rm_zh.json``: each record one
conversation, its answers ranked by people) are split by conversation, 90% train / 10% held-out (seeded), and
converted with ``convert-preference`` (best answer against each worse one, GPT-2 tokenizer). Both frameworks start
from the same SFT model: the tiny GPT-2 recipe trained by ``mindrlhf sft`` on the bundled oasst SFT conversations
(``oasst_sft_zh.json``), exported as a Hugging Face folder. Both train with DPO on the same token ids (TRL gets the
prompt / chosen / rejected ids read from the MindRecord, its tokenization bypassed), the same beta, learning rate,
batch and epochs, reference log-probs precomputed, one compute thread each, each side in its own process (its peak
RSS, ``VmHWM``, is its own; the TRL worker imports no MindSpore; see ``dpo_sides.py``). The trained policies are
scored by the same code (:func:`mindrlhf.train.dpo.evaluate_preferences`) on the held-out pairs: the held-out
implicit-reward accuracy (share of pairs whose chosen answer gets the higher ``beta * (logp - ref_logp)``) and
margin.

    python benchmarks/dpo_oasst.py [--seq_length 128] [--epochs 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile

import numpy as np

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from bench_common import print_report, versions  # noqa: E402 - shared with the other benchmarks
from dpo_sides import run_side  # noqa: E402 - one DPO side per process, shared with alignment_quality.py

logger = logging.getLogger("dpo_oasst")

RANKINGS = os.path.join(ROOT, "mindrlhf", "assets", "data", "oasst_rm_zh.json")
SFT_DATA = os.path.join(ROOT, "mindrlhf", "assets", "data", "oasst_sft_zh.json")
SFT_RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_sft.yaml")
DPO_RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_dpo.yaml")
THREADS = 1


def split_conversations(out_dir: str, held_out_share: float, seed: int):
    """Train / held-out JSON files of whole conversations (no conversation's pairs on both sides)."""
    with open(RANKINGS, encoding="utf-8") as f:
        records = json.load(f)
    order = np.random.default_rng(seed).permutation(len(records))
    cut = int(round(len(records) * held_out_share))
    paths = {}
    for name, rows in (("held_out", order[:cut]), ("train", order[cut:])):
        paths[name] = os.path.join(out_dir, f"oasst_{name}.json")
        with open(paths[name], "w", encoding="utf-8") as f:
            json.dump([records[i] for i in sorted(rows)], f, ensure_ascii=False)
    return paths, len(records) - cut, cut


def settings(seq_length: int, epochs: int):
    """The ``--set`` overrides both stages share (model size and length) and the DPO ones."""
    model = [
        "model.model_config.seq_length=" + str(seq_length),
        "checkpoint.log_interval=1000000",
        "checkpoint.save_checkpoint_steps=1000000",
        "checkpoint.keep_checkpoint_max=1",
    ]
    dpo = model + [
        f"runner_config.epochs={epochs}",
        "runner_config.batch_size=4",
        "optimizer.learning_rate=5.0e-4",
        "lr_schedule.type=constant",
        "lr_schedule.learning_rate=5.0e-4",
        "lr_schedule.warmup_ratio=0.0",
        "dpo.beta=0.1",
    ]
    return model, dpo


def sft_model(out_dir: str, seq_length: int) -> str:
    """The tiny GPT-2 SFT model on the oasst SFT conversations, as a Hugging Face folder."""
    from mindrlhf.config import load_config
    from mindrlhf.data.convert_sft import convert_sft
    from mindrlhf.models.convert import save_hf_checkpoint
    from mindrlhf.train.sft import train_sft

    data = os.path.join(out_dir, "sft.mindrecord")
    convert_sft(SFT_DATA, data, "gpt2", seq_length=seq_length, progress=False)
    model_sets, _ = settings(seq_length, 1)
    cfg = load_config(SFT_RECIPE, model_sets + [f"output_dir={out_dir}/sft", "runner_config.epochs=2"])
    model, fit = train_sft(cfg, data)
    logger.info("SFT: %d steps, loss %.3f -> %.3f", len(fit.losses), fit.losses[0], fit.losses[-1])
    folder = os.path.join(out_dir, "sft_hf")
    tokenizer = os.path.join(ROOT, "mindrlhf", "assets", "tokenizers", "gpt2")
    save_hf_checkpoint(
        model,
        cfg.model.model_config,
        folder,
        extra_files=[os.path.join(tokenizer, n) for n in sorted(os.listdir(tokenizer))],
    )
    return folder


def read_pairs(path: str):
    """``(prompt ids, chosen ids, rejected ids)`` lists of a preference MindRecord (boundary from the masks)."""
    import mindspore.dataset as ds

    columns = [
        "chosen_input_ids",
        "chosen_attention_mask",
        "rejected_input_ids",
        "rejected_attention_mask",
        "chosen_response_mask",
    ]
    prompts, chosen, rejected = [], [], []
    for row in ds.MindDataset(path, columns_list=columns, shuffle=False).create_dict_iterator(
        num_epochs=1, output_numpy=True
    ):
        start = int(np.flatnonzero(row["chosen_response_mask"])[0])
        c_end, r_end = int(row["chosen_attention_mask"].sum()), int(row["rejected_attention_mask"].sum())
        prompts.append(row["chosen_input_ids"][:start].tolist())
        chosen.append(row["chosen_input_ids"][start:c_end].tolist())
        rejected.append(row["rejected_input_ids"][start:r_end].tolist())
    return prompts, chosen, rejected


def dpo_overrides(seq_length: int, epochs: int, out_dir: str) -> list:
    _, dpo_sets = settings(seq_length, epochs)
    return dpo_sets + [f"output_dir={out_dir}/dpo"]


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq_length", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=1, help="DPO epochs")
    parser.add_argument("--held_out", type=float, default=0.1, help="share of conversations held out")
    parser.add_argument("--output_dir", default="", help="keep data and checkpoints here (default: a temp folder)")
    parser.add_argument("--json", metavar="PATH", help="also write the JSON document here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    import mindspore as ms

    from mindrlhf.config import load_config
    from mindrlhf.data.convert_preference import convert_preference
    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import load_weights
    from mindrlhf.train.dpo import evaluate_preferences, reference_model

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    out_dir = args.output_dir or tempfile.mkdtemp(prefix="dpo_oasst_")
    os.makedirs(out_dir, exist_ok=True)
    load_start = os.getloadavg()
    files, n_train, n_held = split_conversations(out_dir, args.held_out, 0)
    stats = {
        name: convert_preference(path, path.replace(".json", ".mindrecord"), "gpt2", args.seq_length, progress=False)
        for name, path in files.items()
    }
    train, held_out = (files[n].replace(".json", ".mindrecord") for n in ("train", "held_out"))
    sft = sft_model(out_dir, args.seq_length)
    overrides = dpo_overrides(args.seq_length, args.epochs, out_dir)
    cfg = load_config(DPO_RECIPE, overrides)
    ref = reference_model(cfg.model.model_config, sft, 0)
    before = evaluate_preferences(ref, ref, held_out, cfg.dpo)
    job = {
        "recipe": DPO_RECIPE,
        "overrides": overrides,
        "model": sft,
        "out_dir": out_dir,
        "threads": THREADS,
        "pairs_file": train,
        "pairs": read_pairs(train),
    }
    results = []
    for side in ("ours", "trl"):
        result = {"framework": "mindrlhf" if side == "ours" else "trl", **run_side(side, job)}
        policy = CausalLM(cfg.model.model_config)
        load_weights(policy, result["checkpoint"], cfg.model.model_config)
        result["held_out"] = evaluate_preferences(policy, ref, held_out, cfg.dpo)
        results.append(result)
    print(
        "| framework | held-out implicit-reward acc | held-out margin | first / last loss | s / step | wall s | "
        "peak RSS MiB (after imports) |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        h = r["held_out"]
        print(
            f"| {r['framework']} | {h['rewards/accuracies']:.3f} | {h['rewards/margins']:.3f} | "
            f"{r['first_loss']:.3f} / {r['last_loss']:.3f} | {r['step_s_median']:.3f} | {r['wall_s']:.0f} | "
            f"{r['peak_rss_mb']:.0f} ({r['rss_after_import_mb']:.0f}) |"
        )
    ours, trl = results
    report = {
        "conversations": {"train": n_train, "held_out": n_held},
        "pairs": {k: v["count"] for k, v in stats.items()},
        "before": before,
        "results": results,
        "step_speedup_vs_trl": trl["step_s_median"] / ours["step_s_median"],
        "peak_rss_ours_over_trl": ours["peak_rss_mb"] / trl["peak_rss_mb"],
        "versions": versions(),
        "load_avg_at_start": load_start,
        "load_avg_at_end": os.getloadavg(),
    }
    print_report(report, args.json)


if __name__ == "__main__":
    main()
