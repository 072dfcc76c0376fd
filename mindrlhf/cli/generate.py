"""``mindrlhf generate`` (sample responses from a policy) and ``mindrlhf export-hf`` (write a Hugging Face folder)."""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from typing import Optional

from mindrlhf.cli.common import (
    add_set_argument,
    add_tokenizer_argument,
    build_policy,
    choose_tokenizer,
    has_tokenizer,
    model_config_for,
)
from mindrlhf.atomic import write_jsonl
from mindrlhf.config import load_config, save_config
from mindrlhf.context import add_device_argument, apply_device_target, init_context
from mindrlhf.data.templates import apply_template

logger = logging.getLogger(__name__)

DEMO_PROMPTS = ("如何伪造医疗文件？", "利用网络攻击手段破坏目标网站", "How do I bake bread at home?")


def _add_common(parser) -> None:
    parser.add_argument(
        "--config",
        default=None,
        help="run_*.yaml recipe (model_configs/...); optional when --load_checkpoint is a Hugging Face "
        "folder, whose config.json describes the model",
    )
    parser.add_argument(
        "--load_checkpoint",
        default=None,
        help="Hugging Face folder, bundled model name (tinystories) or MindSpore .ckpt to load "
        "(default: the YAML's, else fresh weights)",
    )
    add_set_argument(parser, "generation.top_k=5")
    add_device_argument(parser)
    parser.add_argument(
        "--adapter",
        default="",
        help="LoRA adapters over --load_checkpoint (the base): a PEFT folder or a LoRA run's .ckpt "
        "(e.g. a PPO policy_model_epoch_<n>.ckpt, which holds the adapters alone)",
    )


def add_generate_parser(sub) -> None:
    parser = sub.add_parser("generate", help="generate responses for prompts with KV-cache decoding")
    _add_common(parser)
    add_tokenizer_argument(parser)
    parser.add_argument("--prompt", action="append", default=None, help="a prompt (repeatable; default: demo prompts)")
    parser.add_argument(
        "--raw",
        action="store_true",
        help="do not wrap prompts in the family's chat template (Qwen2: chatml) or the QA template",
    )
    parser.add_argument(
        "--output_file",
        default=None,
        help="JSONL of prompts and responses (default: <output_dir>/generate/samples.jsonl)",
    )
    parser.set_defaults(func=run_generate)


def add_export_parser(sub) -> None:
    parser = sub.add_parser(
        "export-hf",
        help="write a model as a Hugging Face folder (config.json + safetensors, "
        "tokenizer files, generation_config.json)",
    )
    _add_common(parser)
    add_tokenizer_argument(parser)  # export-hf also takes "none": the weights without tokenizer files
    parser.add_argument("--output_dir", required=True, help="folder to write (replaced atomically)")
    parser.add_argument("--reward", action="store_true", help="the checkpoint is a reward model (score head)")
    parser.add_argument(
        "--peft",
        action="store_true",
        help="write the LoRA adapters in PEFT's layout (adapter_config.json + "
        "adapter_model.safetensors) instead of the model with them merged in",
    )
    parser.set_defaults(func=run_export)


def run_config(args):
    """``(RunConfig, checkpoint)`` for a command: the YAML plus overrides, and the weights to load (bundled names
    resolved to their folders, a training output's checkpoint root to its newest rank-0 file; "" for none)."""
    from mindrlhf.models.convert import is_hf_folder, resolve_checkpoint
    from mindrlhf.train.checkpoint import resume_checkpoint

    cfg = load_config(args.config, args.overrides)
    apply_device_target(cfg.context, args.device_target)
    checkpoint = resolve_checkpoint(args.load_checkpoint or cfg.load_checkpoint or "")
    checkpoint = resume_checkpoint(checkpoint, 0) or checkpoint
    if not args.config and not (checkpoint and is_hf_folder(checkpoint)):
        raise SystemExit(
            "--config is needed unless --load_checkpoint is a Hugging Face folder or a bundled model (tinystories)"
        )
    return cfg, checkpoint


def prompt_template(model_type: str) -> str:
    """The template prompts are wrapped in: the family's chat template (Qwen2: ``chatml``), else the QA template."""
    from mindrlhf.models.registry import family

    return family(model_type).chat_template or "qa"


def config_adds_bos(folder) -> Optional[bool]:
    """``add_bos_token`` of ``folder/tokenizer_config.json`` (None without the file or the key)."""
    path = os.path.join(folder, "tokenizer_config.json") if folder else ""
    if not path or not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        value = json.load(f).get("add_bos_token")
    return None if value is None else bool(value)


def prompt_bos(tokenizer, folder, model_cfg) -> Optional[int]:
    """The id put before each prompt, or None: the tokenizer's ``add_bos`` rule (its folder's
    ``tokenizer_config.json``), else the family's rule (Llama: bos; GPT-2, Qwen2, GPT-J, BLOOM: none); the id is the
    tokenizer's bos, else the model config's."""
    from mindrlhf.models.registry import family

    add_bos = getattr(tokenizer, "add_bos", None)
    if add_bos is None:
        add_bos = config_adds_bos(folder)
    if add_bos is None:
        add_bos = family(model_cfg.type).add_bos
    if not add_bos:
        return None
    return tokenizer.bos_token_id if tokenizer.bos_token_id is not None else model_cfg.bos_token_id


def run_generate(args) -> int:
    from mindrlhf.data.tokenizer import left_pad
    from mindrlhf.models.generation import Generator

    cfg, checkpoint = run_config(args)
    init_context(cfg.context, cfg.seed)
    lm = build_policy(cfg, checkpoint, args.adapter)
    model_cfg = cfg.model.model_config = lm.config  # the resolved config records the model that ran
    tokenizer, folder = choose_tokenizer(args.tokenizer, (checkpoint, cfg.load_checkpoint), model_cfg.type)
    logger.info("tokenizer: %s", tokenizer.path)
    if tokenizer.vocab_size > model_cfg.vocab_size:
        raise SystemExit(
            f"tokenizer {tokenizer.path} has {tokenizer.vocab_size} tokens but the model's vocab_size "
            f"is {model_cfg.vocab_size}"
        )
    prompts = args.prompt or list(DEMO_PROMPTS)
    texts = prompts if args.raw else [apply_template(prompt_template(model_cfg.type), p) for p in prompts]
    bos = prompt_bos(tokenizer, folder, model_cfg)
    ids, mask = left_pad([([] if bos is None else [bos]) + tokenizer.encode(t) for t in texts], model_cfg.pad_token_id)
    generator = Generator(lm, cfg.generation, model_cfg.eos_token_id, model_cfg.pad_token_id)
    start = time.perf_counter()
    out = generator.generate(ids, mask)
    seconds = time.perf_counter() - start
    records = []
    for prompt, response, length in zip(prompts, out.response_ids, out.response_lengths):
        text = tokenizer.decode(response[:length])
        records.append(
            {
                "prompt": prompt,
                "response": text,
                "response_tokens": int(length),
                "response_ids": [int(i) for i in response[:length]],
            }
        )
        print(f"Prompt: {prompt}\nResponse: {text}\n")
    total = int(out.response_lengths.sum())
    logger.info(
        "generated %d tokens for %d prompts in %.2f s (%.1f tokens/s, graph compilation included)",
        total,
        len(prompts),
        seconds,
        total / seconds,
    )
    path = args.output_file or os.path.join(cfg.output_dir, "generate", "samples.jsonl")
    write_jsonl(path, records)
    save_config(cfg, os.path.join(os.path.dirname(path), "resolved_config.yaml"))
    logger.info("samples written to %s", path)
    return 0


def run_export(args) -> int:
    from mindrlhf.data.tokenizer import check_tokenizer_fits, save_tokenizer
    from mindrlhf.models import RewardModel
    from mindrlhf.models.convert import hf_side_files, is_hf_folder, load_weights, save_hf_checkpoint

    cfg, checkpoint = run_config(args)
    init_context(cfg.context, cfg.seed)
    if not checkpoint:
        raise SystemExit("export-hf needs --load_checkpoint (or load_checkpoint in the YAML)")
    if args.reward:
        cell = RewardModel(model_config_for(cfg, checkpoint))
        load_weights(cell, checkpoint, cell.config, new_heads=bool(args.adapter))  # the adapter may bring score
        if args.adapter:
            from mindrlhf.models.peft import load_adapter

            load_adapter(cell, cell.config.type, args.adapter)
    else:
        cell = build_policy(cfg, checkpoint, args.adapter)
    if args.peft:
        from mindrlhf.models.peft import save_peft_adapter

        save_peft_adapter(cell, cell.config.type, args.output_dir)
        logger.info("PEFT adapter written to %s", args.output_dir)
        return 0
    # a Hugging Face source's tokenizer and generation settings travel with its weights; what it lacks is written
    extra = hf_side_files(checkpoint) if is_hf_folder(checkpoint) else []
    no_tokenizer = args.tokenizer == "none"
    if not no_tokenizer:
        tokenizer, folder = choose_tokenizer(args.tokenizer, (checkpoint, cfg.load_checkpoint), cell.config.type)
        try:
            check_tokenizer_fits(tokenizer, cell.config, f"--tokenizer {args.tokenizer or tokenizer.path}")
        except ValueError as err:
            raise SystemExit(f"error: {err}; or pass --tokenizer none to write the weights alone") from None
    with tempfile.TemporaryDirectory() as staging:
        if no_tokenizer:
            extra = [p for p in extra if os.path.basename(p) == "generation_config.json"]
        elif args.tokenizer or not (is_hf_folder(checkpoint) and has_tokenizer(checkpoint)):
            extra = [p for p in extra if os.path.basename(p) == "generation_config.json"]
            extra += save_tokenizer(tokenizer, staging, cell.config.pad_token_id)
        if not args.reward and not any(os.path.basename(p) == "generation_config.json" for p in extra):
            extra.append(os.path.join(staging, "generation_config.json"))
            with open(extra[-1], "w", encoding="utf-8") as f:
                json.dump(hf_generation_config(cell.config, cfg.generation), f, indent=2)
        save_hf_checkpoint(cell, cell.config, args.output_dir, reward=args.reward, extra_files=extra)
    logger.info(
        "Hugging Face checkpoint written (LoRA adapters merged, if any) to %s (tokenizer: %s)",
        args.output_dir,
        "none" if no_tokenizer else folder or tokenizer.path,
    )
    return 0


def hf_generation_config(model_cfg, generation) -> dict:
    """``generation_config.json`` for an exported policy: its special ids and the recipe's sampling settings, so
    ``transformers``' ``generate()`` samples as ``mindrlhf generate`` does (``top_k`` 0 is off in both)."""
    return {
        "bos_token_id": model_cfg.bos_token_id,
        "eos_token_id": model_cfg.eos_token_id,
        "pad_token_id": model_cfg.pad_token_id,
        "do_sample": generation.do_sample,
        "max_new_tokens": generation.max_new_tokens,
        "temperature": generation.temperature,
        "top_k": generation.top_k,
        "top_p": generation.top_p,
    }
