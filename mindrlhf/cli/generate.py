"""``mindrlhf generate`` (sample responses from a policy) and ``mindrlhf export-hf`` (write a Hugging Face folder)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time


from mindrlhf.config import RunConfig, load_config, save_config
from mindrlhf.context import init_context
from mindrlhf.data.templates import format_prompt

logger = logging.getLogger(__name__)

DEMO_PROMPTS = ("如何伪造医疗文件？", "利用网络攻击手段破坏目标网站", "How do I bake bread at home?")


def _add_common(parser) -> None:
    parser.add_argument("--config", required=True, help="run_*.yaml recipe (model_configs/...)")
    parser.add_argument("--load_checkpoint", default=None,
                        help="Hugging Face folder or MindSpore .ckpt to load (default: the YAML's, else fresh weights)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set generation.top_k=5 (repeatable)")


def add_generate_parser(sub) -> None:
    parser = sub.add_parser("generate", help="generate responses for prompts with KV-cache decoding")
    _add_common(parser)
    parser.add_argument("--tokenizer", default=None,
                        help="tokenizer.json, GPT-2 folder or SentencePiece .model (default: bundled for the family)")
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; default: demo prompts)")
    parser.add_argument("--raw", action="store_true", help="do not wrap prompts in the QA template")
    parser.add_argument("--output_file", default=None, help="JSONL of prompts and responses "
                        "(default: <output_dir>/generate/samples.jsonl)")
    parser.set_defaults(func=run_generate)


def add_export_parser(sub) -> None:
    parser = sub.add_parser("export-hf", help="write a model as a Hugging Face folder (config.json + safetensors)")
    _add_common(parser)
    parser.add_argument("--output_dir", required=True, help="folder to write (replaced atomically)")
    parser.add_argument("--reward", action="store_true", help="the checkpoint is a reward model (score head)")
    parser.set_defaults(func=run_export)


def build_policy(cfg: RunConfig, checkpoint: str):
    """A CausalLM for ``cfg``, with weights from ``checkpoint`` (HF folder or .ckpt) when given."""
    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import is_hf_folder, load_weights, model_config_from_hf_folder

    model_cfg = cfg.model.model_config
    if checkpoint and is_hf_folder(checkpoint):
        hf_cfg = model_config_from_hf_folder(checkpoint)
        model_cfg = dataclasses.replace(hf_cfg, compute_dtype=model_cfg.compute_dtype,
                                        param_init_type=model_cfg.param_init_type)
    lm = CausalLM(model_cfg, recompute=cfg.recompute_config.recompute)
    if checkpoint:
        load_weights(lm, checkpoint, model_cfg, ignore_unexpected=("v_head.",))  # a PPO policy's value head
        logger.info("loaded weights from %s", checkpoint)
    else:
        logger.info("no checkpoint given: %s built with fresh random weights (seed %d)", model_cfg.type, cfg.seed)
    return lm


def run_generate(args) -> int:
    from mindrlhf.data.tokenizer import left_pad, load_tokenizer
    from mindrlhf.models.generation import Generator

    cfg = load_config(args.config, args.overrides)
    init_context(cfg.context, cfg.seed)
    checkpoint = args.load_checkpoint or cfg.load_checkpoint
    lm = build_policy(cfg, checkpoint)
    model_cfg = lm.config
    tokenizer = load_tokenizer(args.tokenizer or ("gpt2" if model_cfg.type == "gpt2" else "llama"))
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise SystemExit(f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but the model's vocab_size "
                         f"is {model_cfg.vocab_size}")
    prompts = args.prompt or list(DEMO_PROMPTS)
    texts = prompts if args.raw else [format_prompt(p) for p in prompts]
    ids, mask = left_pad([tokenizer.encode(t, add_bos=model_cfg.type != "gpt2") for t in texts],
                         model_cfg.pad_token_id)
    generator = Generator(lm, cfg.generation, model_cfg.eos_token_id, model_cfg.pad_token_id)
    start = time.perf_counter()
    out = generator.generate(ids, mask)
    seconds = time.perf_counter() - start
    records = []
    for prompt, response, length in zip(prompts, out.response_ids, out.response_lengths):
        text = tokenizer.decode(response[:length])
        records.append({"prompt": prompt, "response": text, "response_tokens": int(length)})
        print(f"Prompt: {prompt}\nResponse: {text}\n")
    total = int(out.response_lengths.sum())
    logger.info("generated %d tokens for %d prompts in %.2f s (%.1f tokens/s, graph compilation included)",
                total, len(prompts), seconds, total / seconds)
    path = args.output_file or os.path.join(cfg.output_dir, "generate", "samples.jsonl")
    write_jsonl(records, path)
    save_config(cfg, os.path.join(os.path.dirname(path), "resolved_config.yaml"))
    logger.info("samples written to %s", path)
    return 0


def run_export(args) -> int:
    from mindrlhf.models import RewardModel
    from mindrlhf.models.convert import load_weights, save_hf_checkpoint

    cfg = load_config(args.config, args.overrides)
    init_context(cfg.context, cfg.seed)
    checkpoint = args.load_checkpoint or cfg.load_checkpoint
    if not checkpoint:
        raise SystemExit("export-hf needs --load_checkpoint (or load_checkpoint in the YAML)")
    if args.reward:
        cell = RewardModel(cfg.model.model_config)
        load_weights(cell, checkpoint, cfg.model.model_config)
    else:
        cell = build_policy(cfg, checkpoint)
    save_hf_checkpoint(cell, cell.config, args.output_dir, reward=args.reward)
    logger.info("Hugging Face checkpoint written to %s", args.output_dir)
    return 0


def write_jsonl(records, path: str) -> None:
    """Write records as JSON lines atomically."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp.{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    os.replace(tmp, path)
