"""The bundled pretrained model, TinyStories-656K (a Hugging Face Llama folder whose ``model.safetensors`` stores
only ``lm_head.weight`` although its embeddings are tied), against ``transformers`` on the same folder: logits on
a left-padded batch of story prompts, greedy generation with the KV cache, reward model / critic initialisation,
export and the ``mindrlhf generate`` / ``export-hf`` commands."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from safetensors.numpy import load_file

from mindrlhf.config import GenerationConfig
from mindrlhf.data.tokenizer import left_pad, load_tokenizer
from mindrlhf.models import CausalLM, Critic, RewardModel
from mindrlhf.models.convert import BUNDLED_MODELS, is_hf_folder, load_weights, model_config_from_hf_folder
from mindrlhf.models.generation import Generator
from tests.helpers import load_transformers, max_abs_diff, ms_numpy, positions_from_mask, set_mode, torch_forward

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FOLDER = BUNDLED_MODELS["tinystories"]
SHA256 = "187d0d5e8360d9625e40e0b35ec57d1ef0eea1a60ddcf09412246bed3484852f"  # mindrlhf/assets/README.md
BOS, EOS, PAD = 1, 2, 0
TOL = 1e-4
NEW_TOKENS = 48
# story openings; the last one finishes a story, so the model writes a few tokens and then eos within 48
PROMPTS = (
    "Once upon a time",
    "Tom and his dog went to the park",
    "One day, a big bear",
    "Ben had a red ball. He threw it to his friend. They played all day and had fun.",
)


@pytest.fixture(scope="module")
def hf_model():
    return load_transformers(FOLDER)


@pytest.fixture(scope="module")
def hf_tokenizer():
    import transformers

    return transformers.AutoTokenizer.from_pretrained(FOLDER)


@pytest.fixture(scope="module")
def prompt_ids(hf_tokenizer):
    """Each prompt's ids as ``transformers`` tokenizes it (bos first, as the folder's tokenizer config says)."""
    return [hf_tokenizer(p)["input_ids"] for p in PROMPTS]


@pytest.fixture(scope="module")
def hf_greedy(hf_model, prompt_ids):
    """``transformers`` greedy continuation of each prompt alone (no padding): the new ids, up to and including
    eos when it comes."""
    import torch

    out = []
    for ids in prompt_ids:
        with torch.no_grad():
            seq = hf_model.generate(
                torch.tensor([ids]),
                attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                max_new_tokens=NEW_TOKENS,
                do_sample=False,
                pad_token_id=PAD,
            )
        new = seq[0, len(ids) :].tolist()
        out.append(new[: new.index(EOS) + 1] if EOS in new else new)
    return out


def bundled_policy() -> CausalLM:
    cfg = model_config_from_hf_folder("tinystories")
    lm = CausalLM(cfg)
    assert load_weights(lm, "tinystories", cfg) == []
    return lm


def mindrlhf(*args):
    return subprocess.run(
        [sys.executable, "-m", "mindrlhf.cli.main", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_bundled_folder_is_the_recorded_model():
    assert is_hf_folder("tinystories") and os.path.dirname(FOLDER).startswith(os.path.join(ROOT, "mindrlhf"))
    assert sorted(os.listdir(FOLDER)) == [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "special_tokens_map.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    with open(os.path.join(FOLDER, "model.safetensors"), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == SHA256
    stored = load_file(os.path.join(FOLDER, "model.safetensors"))
    assert "lm_head.weight" in stored and "model.embed_tokens.weight" not in stored
    cfg = model_config_from_hf_folder("tinystories")
    assert (
        cfg.type,
        cfg.vocab_size,
        cfg.hidden_size,
        cfg.num_layers,
        cfg.num_heads,
        cfg.num_kv_heads,
        cfg.intermediate_size,
        cfg.tie_word_embeddings,
    ) == ("llama", 2048, 128, 2, 8, 4, 384, True)
    assert (cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id) == (BOS, EOS, PAD)


def test_logits_match_transformers_on_left_padded_story_prompts(ms_mode, hf_model, prompt_ids):
    lm = bundled_policy()
    ids, mask = left_pad(prompt_ids, PAD)
    assert (ids[np.arange(len(ids)), mask.argmax(1)] == BOS).all()  # every row's first real token is bos
    ours = ms_numpy(lm, ids, mask)
    ref = torch_forward(hf_model, ids, mask, positions_from_mask(mask)).logits.numpy()
    assert ours.shape == ref.shape == (*ids.shape, 2048)
    assert max_abs_diff(ours, ref, mask) <= TOL, ms_mode


def test_greedy_generation_matches_transformers(hf_greedy, prompt_ids):
    set_mode("graph")
    lm = bundled_policy()
    tokenizer = load_tokenizer(FOLDER)
    assert [[BOS] + tokenizer.encode(p) for p in PROMPTS] == prompt_ids
    ids, mask = left_pad(prompt_ids, PAD)
    generator = Generator(lm, GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False), EOS, PAD)
    out = generator.generate(ids, mask)
    ours = [row[:length].tolist() for row, length in zip(out.response_ids, out.response_lengths)]
    assert ours == hf_greedy
    assert [len(r) for r in ours[:3]] == [NEW_TOKENS] * 3 and ours[3][-1] == EOS  # three run on, one stops
    assert all(tokenizer.decode(row).strip() for row in ours)


@pytest.mark.parametrize("cls", [RewardModel, Critic])
def test_reward_model_and_critic_start_from_the_pretrained_folder(cls, hf_model, prompt_ids):
    import torch

    cfg = model_config_from_hf_folder("tinystories")
    model = cls(cfg)
    assert load_weights(model, "tinystories", cfg, new_heads=True) == ["score.weight"]
    table = model.backbone.embed_tokens.weight.asnumpy()
    np.testing.assert_array_equal(table, hf_model.lm_head.weight.detach().numpy())
    ids, mask = left_pad(prompt_ids, PAD)
    hidden = ms_numpy(model.backbone, ids, mask)
    with torch.no_grad():
        ref = hf_model.model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(positions_from_mask(mask)),
        ).last_hidden_state.numpy()
    assert max_abs_diff(hidden, ref, mask) <= TOL
    out = ms_numpy(model, ids, mask)
    assert out.shape == ((len(PROMPTS),) if cls is RewardModel else ids.shape) and np.isfinite(out).all()


def test_export_of_the_loaded_policy_loads_in_transformers(hf_model, prompt_ids, tmp_dir):
    out_dir = os.path.join(tmp_dir, "export")
    proc = mindrlhf("export-hf", "--load_checkpoint", "tinystories", "--output_dir", out_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    stored = load_file(os.path.join(out_dir, "model.safetensors"))
    assert "model.embed_tokens.weight" in stored and "lm_head.weight" not in stored  # transformers' own layout
    assert sorted(os.listdir(out_dir)) == sorted(os.listdir(FOLDER))  # tokenizer and generation files travel
    with open(os.path.join(out_dir, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["tie_word_embeddings"] is True
    ids, mask = left_pad(prompt_ids, PAD)
    positions = positions_from_mask(mask)
    exported = torch_forward(load_transformers(out_dir), ids, mask, positions).logits.numpy()
    assert max_abs_diff(exported, torch_forward(hf_model, ids, mask, positions).logits.numpy(), mask) <= TOL
    assert max_abs_diff(ms_numpy(bundled_policy(), ids, mask), exported, mask) <= TOL


@pytest.mark.parametrize("source", ["name", "folder"])
def test_generate_command_matches_transformers_greedy(source, hf_greedy, tmp_dir):
    """``mindrlhf generate`` with no recipe: the model, its tokenizer (2048 tokens, not the bundled Llama one) and
    the bos rule all come from the checkpoint folder (the bundled name, or a copy elsewhere)."""
    checkpoint = "tinystories"
    if source == "folder":
        checkpoint = shutil.copytree(FOLDER, os.path.join(tmp_dir, "story_model"))
    out = os.path.join(tmp_dir, "samples.jsonl")
    prompts = [arg for p in PROMPTS for arg in ("--prompt", p)]
    proc = mindrlhf(
        "generate",
        "--load_checkpoint",
        checkpoint,
        *prompts,
        "--raw",
        "--output_file",
        out,
        "--set",
        "generation.do_sample=false",
        "--set",
        f"generation.max_new_tokens={NEW_TOKENS}",
        "--set",
        f"output_dir={tmp_dir}",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    records = [json.loads(line) for line in open(out, encoding="utf-8")]
    assert [r["prompt"] for r in records] == list(PROMPTS)
    assert [r["response_ids"] for r in records] == hf_greedy
    assert all(r["response"].strip() for r in records)
    assert f"Prompt: {PROMPTS[0]}\nResponse: {records[0]['response']}" in proc.stdout
