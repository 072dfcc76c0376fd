"""Reward-model commands (stage 2), with the seed tutorial's flags:

    mindrlhf rm train --config run_llama_2_7b_rm.yaml --train_dataset train_4096.mindrecord
    mindrlhf rm eval  --config run_llama_2_7b_rm.yaml --distributed_ckpt_path output/checkpoint --load_all_ckpt True
    mindrlhf rm infer --config run_llama_2_7b_rm.yaml --data_file test.jsonl --tokenizer llama \
        --distributed_ckpt_path output/checkpoint

``examples/reward_model_train_tutorial/reward_{train,eval,infer}.py`` call the same functions. ``rm infer`` encodes
each (prompt, response) under the tokenization contract (:func:`infer_samples`) and reads the score at the eos that
ends it, so its score equals the reward PPO gives a rollout of the same tokens.
"""

from __future__ import annotations

import argparse
import logging
import os
from typing import List, Optional, Tuple

from mindrlhf.cli.common import (
    add_output_dir_argument,
    add_overwrite_flag,
    add_set_argument,
    add_tokenizer_argument,
    add_use_parallel_argument,
    choose_tokenizer,
    run_script,
    run_training,
    setup_run,
    str2bool,
)
from mindrlhf.atomic import write_jsonl
from mindrlhf.context import add_device_argument

logger = logging.getLogger(__name__)


def _common(parser: argparse.ArgumentParser, set_example: str) -> None:
    parser.add_argument("--config", required=True, help="run_*_rm.yaml recipe")
    add_set_argument(parser, set_example)
    add_device_argument(parser)


def add_train_args(parser: argparse.ArgumentParser) -> None:
    _common(parser, "runner_config.epochs=1")
    parser.add_argument(
        "--train_dataset",
        default="",
        help="preference MindRecord (default: the YAML's train_dataset.data_loader.dataset_dir)",
    )
    parser.add_argument(
        "--load_checkpoint",
        default=None,
        help="resume from a checkpoint root (with rank_<id>/) "
        "or start from weights (.ckpt or Hugging Face folder, e.g. the SFT model)",
    )
    add_output_dir_argument(parser)
    parser.add_argument("--run_mode", default="train", choices=["train"], help="kept for seed compatibility")
    add_use_parallel_argument(parser)
    add_overwrite_flag(parser)
    parser.set_defaults(func=run_train, stage="rm")


def add_eval_args(parser: argparse.ArgumentParser) -> None:
    _common(parser, "runner_config.batch_size=8")
    parser.add_argument(
        "--distributed_ckpt_path",
        required=True,
        help="checkpoint root (with rank_<id>/), a folder of .ckpt files, or one .ckpt",
    )
    parser.add_argument(
        "--load_all_ckpt", type=str2bool, default=False, help="True: evaluate every checkpoint; False: only the newest"
    )
    parser.add_argument(
        "--eval_dataset",
        default="",
        help="preference MindRecord (default: the YAML's eval_dataset.data_loader.dataset_dir)",
    )
    parser.set_defaults(func=run_eval, stage="rm")


def add_infer_args(parser: argparse.ArgumentParser) -> None:
    _common(parser, "model.model_config.seq_length=512")
    parser.add_argument(
        "--data_file",
        required=True,
        help=".json (list) or .jsonl of {prompt, pos_resp, neg_resp} "
        "(or {prompt, response} / {prompt, chosen, rejected})",
    )
    add_tokenizer_argument(parser)
    parser.add_argument(
        "--distributed_ckpt_path",
        default=None,
        help="the reward model's weights: checkpoint root, "
        "folder, .ckpt (newest is used) or Hugging Face folder (default: none, random weights, with "
        "a warning)",
    )
    parser.add_argument(
        "--output_file",
        default=None,
        help="JSONL of {prompt, response, score}, one line per "
        "scored response (default: <output_dir>/infer/scores.jsonl)",
    )
    parser.set_defaults(func=run_infer, stage="rm")


def add_reward_parser(sub) -> None:
    """``mindrlhf rm {train,eval,infer}``."""
    rm = sub.add_parser(
        "rm",
        help="reward model: train, eval, infer",
        description="Stage 2: the reward model. train on a preference MindRecord (mindrlhf "
        "convert-preference), eval the pairwise accuracy of checkpoints, infer scores "
        "for responses in a JSON/JSONL file.",
    )
    rm_sub = rm.add_subparsers(dest="rm_command", required=True, metavar="ACTION")
    add_train_args(rm_sub.add_parser("train", help="train on a preference MindRecord"))
    add_eval_args(rm_sub.add_parser("eval", help="pairwise accuracy of checkpoints"))
    add_infer_args(rm_sub.add_parser("infer", help="score responses from a JSON/JSONL file"))


def run_train(args) -> int:
    from mindrlhf.train.reward import train_reward_model

    return run_training(args, train_reward_model)


def run_eval(args) -> int:
    from mindrlhf.train.reward import eval_checkpoints, evaluate_reward_model

    cfg = setup_run(args)
    for checkpoint in eval_checkpoints(args.distributed_ckpt_path, args.load_all_ckpt):
        evaluate_reward_model(cfg, checkpoint, args.eval_dataset or None)
    return 0


def responses_of(record: dict, where: str) -> List[str]:
    """The responses to score in one record: pos_resp/neg_resp, chosen/rejected, or response."""
    for keys in (("pos_resp", "neg_resp"), ("chosen", "rejected"), ("response",)):
        if all(k in record for k in keys):
            return [str(record[k]).strip() for k in keys]
    raise ValueError(f"{where}: needs pos_resp/neg_resp, chosen/rejected or response")


def infer_pairs(data_file: str) -> List[Tuple[str, str]]:
    """Every ``(prompt, response)`` of ``data_file`` in file order (prompt and response stripped, no template)."""
    from mindrlhf.data.convert_preference import read_records

    if not data_file.endswith((".json", ".jsonl")):
        raise ValueError(f"{data_file}: data_file must be .json or .jsonl")
    pairs = []
    for number, record in read_records(data_file)[1]:
        if isinstance(record, Exception):
            raise record
        if not isinstance(record, dict) or "prompt" not in record:
            raise ValueError(f"{data_file}:{number}: expected an object with a 'prompt' field")
        prompt = str(record["prompt"]).strip()
        pairs.extend((prompt, response) for response in responses_of(record, f"{data_file}:{number}"))
    return pairs


def infer_samples(data_file: str, tokenizer, seq_length: int) -> Tuple[List[str], List[List[int]]]:
    """``(texts, token rows)``: every (prompt, response) of ``data_file`` as the text logged and as the ids scored.

    The ids follow the tokenization contract exactly as preference rows do
    (:func:`mindrlhf.data.contract.encode_for_reward`): ``format_prompt(prompt)`` and the response tokenized
    separately, bos in front iff the tokenizer's rule says so, eos appended and kept when cut to ``seq_length``.
    Scored at the last token, a row gets the reward a PPO rollout of the same tokens gets.
    """
    from mindrlhf.data.contract import encode_for_reward
    from mindrlhf.data.templates import format_prompt

    texts, rows = [], []
    for prompt, response in infer_pairs(data_file):
        prompt = format_prompt(prompt)
        texts.append(prompt + response)
        rows.append(encode_for_reward(tokenizer, prompt, response, seq_length).ids)
    return texts, rows


def infer_tokenizer(args, model_cfg, checkpoint: str):
    """The tokenizer ``rm infer`` encodes with, chosen as ``generate`` chooses it (``--tokenizer``, else the
    checkpoint folder's, else the family's bundled one); one that does not belong to the model stops the
    command: more ids than the embedding table, or another eos than the one the score is read at."""
    from mindrlhf.data.tokenizer import check_tokenizer_fits

    tokenizer, _ = choose_tokenizer(args.tokenizer, (checkpoint,), model_cfg.type)
    source = f"--tokenizer {args.tokenizer or tokenizer.path}"
    try:
        check_tokenizer_fits(tokenizer, model_cfg, source)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    if tokenizer.eos_token_id != model_cfg.eos_token_id:
        raise SystemExit(
            f"error: {source}: its eos id {tokenizer.eos_token_id} is not the model's eos_token_id "
            f"{model_cfg.eos_token_id} (model.model_config.eos_token_id), where the reward is read: "
            f"this tokenizer does not belong to the model; pass the one it was trained with"
        )
    logger.info("tokenizer: %s", tokenizer.path)
    return tokenizer


def run_infer(args) -> int:
    from mindrlhf.models import RewardModel
    from mindrlhf.models.convert import is_hf_folder, load_ckpt, load_weights
    from mindrlhf.train.reward import eval_checkpoints, score_texts

    cfg = setup_run(args)
    model_cfg = cfg.model.model_config
    # not the recipe's load_checkpoint: that starts training (often a causal LM, no score head), it is no scorer
    source = args.distributed_ckpt_path
    checkpoint = eval_checkpoints(source, load_all=False)[0] if source else ""
    tokenizer = infer_tokenizer(args, model_cfg, checkpoint)
    texts, rows = infer_samples(args.data_file, tokenizer, model_cfg.seq_length)
    model = RewardModel(model_cfg)
    if not checkpoint:
        logger.warning(
            "no --distributed_ckpt_path: scoring with random weights (seed %d); these scores mean nothing", cfg.seed
        )
    elif is_hf_folder(checkpoint):
        load_weights(model, checkpoint, model_cfg)
    else:
        load_ckpt(model, checkpoint)
    if checkpoint:
        logger.info("scoring with %s", checkpoint)
    model.set_train(False)
    # one call: one scoring cell, compiled once for every sample
    scores = score_texts(model, rows, model_cfg.seq_length, model_cfg.pad_token_id)
    for text, score in zip(texts, scores):
        logger.info("Sample:\n%s", text)
        logger.info("reward score: [[%.4g]]", score)
    path = args.output_file or os.path.join(cfg.output_dir, "infer", "scores.jsonl")
    write_jsonl(
        path,
        [
            {"prompt": prompt, "response": response, "score": float(score)}
            for (prompt, response), score in zip(infer_pairs(args.data_file), scores)
        ],
    )
    logger.info("%d scores written to %s", len(scores), path)
    return 0


def main(command: str, argv: Optional[List[str]] = None) -> int:
    """Entry for the example scripts: ``main("train", sys.argv[1:])``."""
    parser = argparse.ArgumentParser(prog=f"reward_{command}.py")
    {"train": add_train_args, "eval": add_eval_args, "infer": add_infer_args}[command](parser)
    return run_script(parser, argv)
