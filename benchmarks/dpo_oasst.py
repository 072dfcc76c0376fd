"""DPO on real human preferences, mindrlhf and TRL's ``DPOTrainer`` side by side (not a test).

The bundled Chinese OpenAssistant rankings (``mindrlhf/assets/data/oasst_rm_zh.json``: each record one
conversation, its answers ranked by people) are split by conversation, 90% train / 10% held-out (seeded), and
converted with ``convert-preference`` (best answer against each worse one, GPT-2 tokenizer). Both frameworks start
from the same SFT model: the tiny GPT-2 recipe trained by ``mindrlhf sft`` on the bundled oasst SFT conversations
(``oasst_sft_zh.json``), exported as a Hugging Face folder. Both train with DPO on the same token ids (TRL gets the
prompt / chosen / rejected ids read from the MindRecord, its tokenization bypassed), the same beta, learning rate,
batch and epochs, reference log-probs precomputed, one compute thread each. The trained policies are scored by the
same code (:func:`mindrlhf.train.dpo.evaluate_preferences`) on the held-out pairs: the held-out implicit-reward
accuracy (share of pairs whose chosen answer gets the higher ``beta * (logp - ref_logp)``) and margin.

    python benchmarks/dpo_oasst.py [--seq_length 128] [--epochs 1] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time

import numpy as np

for _var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

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


def run_ours(cfg, train: str, sft: str) -> dict:
    import mindspore as ms

    from mindrlhf.train.dpo import train_dpo

    ms.device_context.cpu.op_tuning.threads_num(THREADS)
    start = time.perf_counter()
    policy, fit = train_dpo(cfg, train, sft)
    return {
        "framework": "mindrlhf",
        "policy": policy,
        "wall_s": time.perf_counter() - start,
        "step_s_median": float(np.median(fit.step_seconds[1:])),
        "steps": len(fit.losses),
        "first_loss": fit.losses[0],
        "last_loss": fit.losses[-1],
    }


def run_trl(cfg, train: str, sft: str, out_dir: str) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import load_weights

    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    prompts, chosen, rejected = read_pairs(train)

    class PreTokenized(trl.DPOTrainer):
        def _prepare_dataset(self, dataset, *_, **__):  # the ids are the benchmark's: no re-tokenization
            return dataset

    opt, runner = cfg.optimizer, cfg.runner_config
    args = trl.DPOConfig(
        output_dir=os.path.join(out_dir, "trl_run"),
        use_cpu=True,
        bf16=False,
        fp16=False,
        seed=0,
        beta=cfg.dpo.beta,
        loss_type=["sigmoid"],
        learning_rate=opt.learning_rate,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=opt.weight_decay,
        adam_beta1=opt.beta1,
        adam_beta2=opt.beta2,
        adam_epsilon=opt.eps,
        max_grad_norm=cfg.runner_wrapper.max_grad_norm,
        per_device_train_batch_size=runner.batch_size,
        num_train_epochs=runner.epochs,
        dataloader_drop_last=True,
        max_length=None,
        precompute_ref_log_probs=True,
        gradient_checkpointing=False,
        save_strategy="no",
        report_to="none",
        logging_steps=1,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    from alignment_quality import step_clock  # noqa: E402 - a sibling script, on sys.path when run

    clock, times = step_clock(TrainerCallback)

    dataset = Dataset.from_dict({"prompt_ids": prompts, "chosen_ids": chosen, "rejected_ids": rejected})
    tokenizer = AutoTokenizer.from_pretrained(sft)
    tokenizer.pad_token = tokenizer.eos_token  # GPT-2 has none; masks, not ids, mark padding
    start = time.perf_counter()
    trainer = PreTokenized(
        model=AutoModelForCausalLM.from_pretrained(sft),
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=[clock],
    )
    trainer.train()
    wall = time.perf_counter() - start
    saved = os.path.join(out_dir, "trl_policy")
    trainer.model.save_pretrained(saved)
    policy = CausalLM(cfg.model.model_config)
    load_weights(policy, saved, cfg.model.model_config)
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "framework": "trl",
        "framework_version": f"trl {trl.__version__}",
        "policy": policy,
        "wall_s": wall,
        "step_s_median": float(np.median([b - a for a, b in times[1:]])),
        "steps": len(times),
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


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
    _, dpo_sets = settings(args.seq_length, args.epochs)
    cfg = load_config(DPO_RECIPE, dpo_sets + [f"output_dir={out_dir}/dpo"])
    ref = reference_model(cfg.model.model_config, sft, 0)
    before = evaluate_preferences(ref, ref, held_out, cfg.dpo)
    results = []
    for side in (run_ours(cfg, train, sft), run_trl(cfg, train, sft, out_dir)):
        side["held_out"] = evaluate_preferences(side.pop("policy"), ref, held_out, cfg.dpo)
        results.append(side)
    print("| framework | held-out implicit-reward acc | held-out margin | first / last loss | s / step | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in results:
        h = r["held_out"]
        print(
            f"| {r['framework']} | {h['rewards/accuracies']:.3f} | {h['rewards/margins']:.3f} | "
            f"{r['first_loss']:.3f} / {r['last_loss']:.3f} | {r['step_s_median']:.3f} | {r['wall_s']:.0f} |"
        )
    report = {
        "conversations": {"train": n_train, "held_out": n_held},
        "pairs": {k: v["count"] for k, v in stats.items()},
        "before": before,
        "results": results,
        "load_avg_at_start": load_start,
        "load_avg_at_end": os.getloadavg(),
    }
    from alignment_quality import print_report  # noqa: E402 - a sibling script, on sys.path when run

    print_report(report, args.json)


if __name__ == "__main__":
    main()
