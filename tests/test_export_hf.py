"""``mindrlhf export-hf`` writes a folder ``transformers`` uses whole: ``AutoTokenizer`` encodes prompts to the ids
``mindrlhf generate`` feeds the model (bos rule included), and ``AutoModelForCausalLM.generate`` with the exported
``generation_config.json`` (greedy, as the recipe was set) produces the tokens ``mindrlhf generate`` produced.

GPT-2 exports the bundled byte-level BPE (``tokenizer.json``), Llama the bundled SentencePiece model
(``tokenizer.model``); both models are the tiny CPU recipes with random weights saved as a MindSpore ``.ckpt``.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from mindrlhf.data.templates import format_prompt
from tests.test_cli import TINY_GPT2, TINY_LLAMA, mindrlhf

PROMPTS = ("如何伪造医疗文件？", "Hello world")
NEW_TOKENS = 6
GREEDY = ["--set", "generation.do_sample=false", "--set", f"generation.max_new_tokens={NEW_TOKENS}"]


@pytest.fixture(scope="module", params=[TINY_GPT2, TINY_LLAMA], ids=["gpt2", "llama"])
def exported(request, tmp_path_factory):
    """``(hf folder, records of mindrlhf generate, model config)`` for one tiny recipe."""
    import mindspore as ms

    from mindrlhf.config import load_config
    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import save_ckpt
    from tests.helpers import randomize_parameters

    recipe, work = request.param, str(tmp_path_factory.mktemp("export"))
    ms.set_context(mode=ms.PYNATIVE_MODE)
    cfg = load_config(recipe).model.model_config
    lm = CausalLM(cfg)
    randomize_parameters(lm, seed=1, scale=0.1)  # clear margins between the top logits: greedy is well defined
    ckpt = save_ckpt(lm, os.path.join(work, "policy.ckpt"))
    hf_dir = os.path.join(work, "hf")
    proc = mindrlhf("export-hf", "--config", recipe, "--load_checkpoint", ckpt, "--output_dir", hf_dir, *GREEDY)
    assert proc.returncode == 0, proc.stderr[-2000:]
    samples = os.path.join(work, "samples.jsonl")
    proc = mindrlhf(
        "generate",
        "--config",
        recipe,
        "--load_checkpoint",
        ckpt,
        "--output_file",
        samples,
        *[a for p in PROMPTS for a in ("--prompt", p)],
        *GREEDY,
        "--set",
        f"output_dir={work}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return hf_dir, [json.loads(line) for line in open(samples, encoding="utf-8")], cfg


def test_exported_folder_holds_tokenizer_and_generation_config(exported):
    hf_dir, _, cfg = exported
    names = set(os.listdir(hf_dir))
    vocabulary = "tokenizer.json" if cfg.type == "gpt2" else "tokenizer.model"
    assert {
        "config.json",
        "model.safetensors",
        vocabulary,
        "tokenizer_config.json",
        "special_tokens_map.json",
        "generation_config.json",
    } <= names, names
    with open(os.path.join(hf_dir, "generation_config.json"), encoding="utf-8") as f:
        generation = json.load(f)
    assert generation["do_sample"] is False and generation["max_new_tokens"] == NEW_TOKENS
    assert (generation["bos_token_id"], generation["eos_token_id"], generation["pad_token_id"]) == (
        cfg.bos_token_id,
        cfg.eos_token_id,
        cfg.pad_token_id,
    )


def test_auto_classes_tokenize_and_generate_as_mindrlhf(exported):
    import torch
    import transformers

    hf_dir, records, cfg = exported
    tok = transformers.AutoTokenizer.from_pretrained(hf_dir)
    assert len(tok("Hello world")["input_ids"]) >= 2  # a real vocabulary, not an empty one
    assert (tok.eos_token_id, tok.pad_token_id) == (cfg.eos_token_id, cfg.pad_token_id)
    model = transformers.AutoModelForCausalLM.from_pretrained(hf_dir).eval()
    for prompt, record in zip(PROMPTS, records):
        ids = tok(format_prompt(prompt), return_tensors="pt")
        if cfg.type == "llama":  # the Llama rule: bos in front, as mindrlhf generate puts it
            assert ids["input_ids"][0, 0].item() == cfg.bos_token_id
        with torch.no_grad():
            out = model.generate(**ids)  # the exported generation_config.json: greedy, NEW_TOKENS, eos, pad
        new = out[0, ids["input_ids"].shape[1] :].tolist()
        new = new[: new.index(cfg.eos_token_id) + 1] if cfg.eos_token_id in new else new
        assert new == record["response_ids"], prompt
        assert tok.decode(new, skip_special_tokens=True) == record["response"]
    assert np.mean([r["response_tokens"] for r in records]) > 1  # the comparison covered more than an eos


def test_a_training_checkpoint_root_loads_its_newest_file(tmp_path):
    """``--load_checkpoint output/sft/checkpoint`` (the README's export example) means the newest rank-0 file."""
    from argparse import Namespace

    from mindrlhf.cli.generate import run_config

    folder = tmp_path / "checkpoint" / "rank_0"
    folder.mkdir(parents=True)
    for step in (2, 10):
        (folder / f"gpt2_tiny_sft_rank_0-{step}_1.ckpt").write_bytes(b"")
    args = Namespace(config=TINY_GPT2, overrides=[], device_target=None, load_checkpoint=str(tmp_path / "checkpoint"))
    assert run_config(args)[1] == str(folder / "gpt2_tiny_sft_rank_0-10_1.ckpt")
