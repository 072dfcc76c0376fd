"""The tokenization contract (mindrlhf/data/contract.py) and the tokenizers' special tokens: one (prompt, response)
gives the same token ids through the SFT converter, the preference converter and a PPO rollout built from the
prompt converter's record, for GPT-2 BPE, SentencePiece and a Hugging Face tokenizer folder; the truncation rules;
bos / eos / pad / add_bos read from tokenizer folders; check_tokenizer_fits."""

from __future__ import annotations

import json
import os
import shutil

import numpy as np
import mindspore.dataset as ds
import pytest

from mindrlhf.config import ModelConfig
from mindrlhf.data.contract import encode_for_reward, encode_prompt_response, tokenize_prompt, tokenize_response
from mindrlhf.data.convert_preference import convert_preference
from mindrlhf.data.convert_prompts import convert_prompts
from mindrlhf.data.convert_sft import convert_sft
from mindrlhf.data.datasets import read_prompts
from mindrlhf.data.templates import format_prompt
from mindrlhf.data.tokenizer import check_tokenizer_fits, load_tokenizer
from mindrlhf.train.experience import left_align_prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED = os.path.join(ROOT, "mindrlhf", "assets", "models", "tinystories_656k")
TINYSTORIES = (
    SHIPPED if os.path.isfile(os.path.join(SHIPPED, "tokenizer.json")) else "/work/shared/data/models/tinystories_656k"
)
# name -> (what load_tokenizer takes, bos in front of a prompt, eos, pad the converters default to)
TOKENIZERS = {
    "gpt2": ("gpt2", [], 50256, 50256),
    "llama": ("llama", [1], 2, 2),
    "tinystories": (TINYSTORIES, [1], 2, 0),
}
# (prompt, chosen response, rejected response), spaces around them as a source file may have them
ENGLISH = [
    ("What does a kind dog do?", "It helps a lost cat find its home.", "Nothing."),
    (" Where did Tom go? ", " Tom went to the park with his mom.\n", "He went to sleep."),
]
# outside TinyStories' vocabulary
CHINESE = [("  请用一句话介绍长城。 ", "长城是中国古代修建的防御工事。\n", "不知道。")]
SEQ, PROMPT_WIDTH = 160, 96


@pytest.fixture(scope="module", params=list(TOKENIZERS))
def named_tokenizer(request):
    return request.param, load_tokenizer(TOKENIZERS[request.param][0])


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return str(path)


def records(path, columns):
    dataset = ds.MindDataset(path, columns_list=columns, shuffle=False)
    return list(dataset.create_dict_iterator(num_epochs=1, output_numpy=True))


# ---------------------------------------------------------------------------------------------------------------
# One (prompt, response): SFT row == preference chosen row == PPO rollout


def sft_rows(tmp_path, tok, pairs):
    src = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": p, "response": r} for p, r, _ in pairs])
    dst = str(tmp_path / "sft.mindrecord")
    assert convert_sft(src, dst, tok, SEQ, fmt="prompt_response", progress=False)["truncated"] == 0
    out = []
    for rec in records(dst, ["input_ids", "attention_mask", "loss_mask"]):
        n = int(rec["attention_mask"].sum())
        out.append((rec["input_ids"][:n].tolist(), int(np.flatnonzero(rec["loss_mask"])[0])))
    return out


def preference_rows(tmp_path, tok, pairs):
    src = write_jsonl(tmp_path / "pref.jsonl", [{"prompt": p, "chosen": c, "rejected": r} for p, c, r in pairs])
    dst = str(tmp_path / "pref.mindrecord")
    assert convert_preference(src, dst, tok, SEQ, progress=False)["count"] == len(pairs)
    return [
        rec["chosen_input_ids"][: int(rec["chosen_attention_mask"].sum())].tolist()
        for rec in records(dst, ["chosen_input_ids", "chosen_attention_mask"])
    ]


def rollout_rows(tmp_path, tok, pad, pairs):
    """PPO's layout: the prompt converter's record left-aligned, then the response tokens with their eos."""
    src = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p, _, _ in pairs])
    dst = str(tmp_path / "prompts.mindrecord")
    convert_prompts(src, dst, tok, PROMPT_WIDTH, SEQ, pad, template="qa", progress=False)
    stored = read_prompts(dst, np.arange(len(pairs)), pad)
    query, query_mask = left_align_prompts(stored["prompt_ids"], stored["prompt_length"], pad)
    rows = []
    for (_, response, _), ids, mask in zip(pairs, query, query_mask):
        response_ids = tokenize_response(tok, response.strip())
        tokens = np.concatenate([ids, response_ids, [pad] * 4])  # [left pad | prompt | response + eos | pad]
        full_mask = np.concatenate([mask, [1] * len(response_ids), [0] * 4])
        rows.append((tokens[full_mask == 1].tolist(), int(mask.sum())))
    return rows


def test_sft_preference_and_rollout_give_identical_ids(named_tokenizer, tmp_path):
    name, tok = named_tokenizer
    _, bos, eos, pad = TOKENIZERS[name]
    pairs = ENGLISH + (CHINESE if name != "tinystories" else [])
    sft, preference = sft_rows(tmp_path, tok, pairs), preference_rows(tmp_path, tok, pairs)
    rollout = rollout_rows(tmp_path, tok, pad, pairs)
    assert len(sft) == len(preference) == len(rollout) == len(pairs)
    for (prompt, response, _), (sft_ids, sft_start), pref_ids, (ppo_ids, ppo_prompt) in zip(
        pairs, sft, preference, rollout
    ):
        assert sft_ids == pref_ids == ppo_ids
        assert sft_start == ppo_prompt  # the SFT loss starts exactly where PPO starts generating
        prompt_ids, response_ids = sft_ids[:sft_start], sft_ids[sft_start:]
        assert prompt_ids == bos + tok.encode(format_prompt(prompt.strip()))
        assert response_ids == tok.encode(response.strip()) + [eos]


def test_sentencepiece_contract_is_not_the_joint_encoding():
    """Why the contract tokenizes separately: a SentencePiece response on its own starts with a word boundary that
    the joint encoding of ``prompt + response`` does not have, so the two disagree at the response's first token."""
    tok = load_tokenizer("llama")
    prompt, response = format_prompt(CHINESE[0][0].strip()), CHINESE[0][1].strip()
    encoded = encode_prompt_response(tok, prompt, response)
    joint = [1] + tok.encode(prompt + response) + [2]
    assert encoded.prompt_ids == joint[: len(encoded.prompt_ids)]
    assert encoded.ids != joint


# ---------------------------------------------------------------------------------------------------------------
# Truncation rules


def test_prompt_keeps_its_last_tokens_and_its_bos():
    tok = load_tokenizer("llama")
    text = tok.encode("one two three four five six seven")
    assert tokenize_prompt(tok, "one two three four five six seven") == [1] + text
    assert tokenize_prompt(tok, "one two three four five six seven", 4) == [1] + text[-3:]
    assert tokenize_prompt(tok, "one two three four five six seven", 1) == [1]
    assert tokenize_prompt(tok, "one two three four five six seven", len(text) + 1) == [1] + text  # fits exactly
    gpt2 = load_tokenizer("gpt2")
    words = gpt2.encode("one two three four")
    assert tokenize_prompt(gpt2, "one two three four", 2) == words[-2:]  # no bos for GPT-2
    with pytest.raises(ValueError, match=">= 1"):
        tokenize_prompt(gpt2, "one", 0)


def test_a_cut_prompt_never_starts_inside_a_character(named_tokenizer):
    """Every budget over a text of 1-, 3- and 4-byte characters: the kept tokens are the text's last tokens, at most
    3 fewer than the budget, and decode to an end of the text (no replacement character)."""
    name, tok = named_tokenizer
    text = "问题：鳄鱼𝄞吃什么？ answer: 答"
    ids, bos = tok.encode(text), TOKENIZERS[name][1]
    for budget in range(len(bos) + 1, len(bos) + len(ids) + 1):
        kept = tokenize_prompt(tok, text, budget, whole_characters=True)
        assert kept[: len(bos)] == bos and budget - 3 <= len(kept) <= budget
        tail = kept[len(bos) :]
        assert tail == ids[len(ids) - len(tail) :]
        decoded = tok.decode(tail)
        assert "\ufffd" not in decoded, (budget, decoded)
        # TinyStories' vocabulary has no Chinese (those characters become <unk>), the others round-trip
        assert text.endswith(decoded.lstrip(" ")) or name == "tinystories", (budget, decoded)
    gpt2 = load_tokenizer("gpt2")
    assert tok is not gpt2 or gpt2.decode(gpt2.encode(text)[-1:]) == "\ufffd"  # GPT-2 does split a character here


def test_response_cut_keeps_or_drops_the_eos():
    tok = load_tokenizer("gpt2")
    words = tok.encode(" alpha beta gamma delta")
    assert tokenize_response(tok, " alpha beta gamma delta") == words + [50256]
    assert tokenize_response(tok, " alpha beta gamma delta", 3) == words[:3]  # SFT: the eos goes first
    assert tokenize_response(tok, " alpha beta gamma delta", 3, keep_eos=True) == words[:2] + [50256]
    assert tokenize_response(tok, " alpha beta gamma delta", 1, keep_eos=True) == [50256]
    assert tokenize_response(tok, " alpha beta gamma delta", len(words) + 1, keep_eos=True) == words + [50256]
    assert tokenize_response(tok, " alpha", 0, keep_eos=True) == []


def test_encode_prompt_response_and_the_reward_rule():
    tok = load_tokenizer("llama")
    prompt, response = "a b c d e f g h", "x y z w"
    p, r = tok.encode(prompt), tok.encode(response)
    sft = encode_prompt_response(tok, prompt, response, len(p) + 1 + 3)  # room for 3 of the len(r) + 1 tokens
    assert (sft.prompt_ids, sft.response_ids) == ([1] + p, r[:3])
    assert sft.response_cut and not sft.prompt_cut and sft.truncated
    scored = encode_for_reward(tok, prompt, response, len(p) + 1 + 3)
    assert scored.ids == [1] + p + r[:2] + [2] and len(scored.ids) == len(p) + 4
    long_prompt = encode_for_reward(tok, prompt, response, 4)  # the prompt keeps bos + its last 2 tokens
    assert long_prompt.ids == [1] + p[-2:] + [2] and long_prompt.prompt_cut
    fits = encode_for_reward(tok, prompt, response, 64)
    assert fits.ids == [1] + p + r + [2] and not fits.truncated
    with pytest.raises(ValueError, match="seq_length >= 2"):
        encode_for_reward(tok, prompt, response, 1)


def test_preference_rows_keep_the_eos_when_cut(tmp_path):
    tok = load_tokenizer(TINYSTORIES)
    rows = [
        {"prompt": "Tell a story.", "chosen": "Once upon a time there was a big red ball. " * 6, "rejected": "The end."}
    ]
    dst = str(tmp_path / "cut.mindrecord")
    stats = convert_preference(write_jsonl(tmp_path / "cut.jsonl", rows), dst, tok, 48, progress=False)
    assert stats["truncated"] == 1
    (rec,) = records(
        dst, ["chosen_input_ids", "chosen_attention_mask", "rejected_input_ids", "rejected_attention_mask"]
    )
    assert rec["chosen_attention_mask"].all() and rec["chosen_input_ids"][-1] == 2  # cut, still ends in eos
    n = int(rec["rejected_attention_mask"].sum())
    assert rec["rejected_input_ids"][n - 1] == 2 and (rec["rejected_input_ids"][n:] == 0).all()  # pad 0


# ---------------------------------------------------------------------------------------------------------------
# Tokenizers: special tokens, add_bos, check_tokenizer_fits


def test_tinystories_folder_special_tokens_match_transformers():
    import transformers

    tok = load_tokenizer(TINYSTORIES)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.add_bos) == (1, 2, 0, True)
    assert tok.vocab_size == 2048
    reference = transformers.AutoTokenizer.from_pretrained(TINYSTORIES)
    for text in ("Once upon a time", "Lily saw a big dog. She was happy!"):
        assert tokenize_prompt(tok, text) == reference(text).input_ids
        assert tok.encode(text, add_bos=tok.add_bos) == reference(text).input_ids
        assert tok.encode(text) == reference(text, add_special_tokens=False).input_ids
    assert tok.encode("Once upon a time", add_bos=True)[0] == 1


def test_bundled_tokenizers_special_tokens():
    gpt2, llama = load_tokenizer("gpt2"), load_tokenizer("llama")
    assert (gpt2.bos_token_id, gpt2.eos_token_id, gpt2.pad_token_id, gpt2.add_bos) == (50256, 50256, None, False)
    assert (llama.bos_token_id, llama.eos_token_id, llama.pad_token_id, llama.add_bos) == (1, 2, None, True)


def copy_tokenizer_json(tmp_path, name="folder"):
    folder = tmp_path / name
    folder.mkdir()
    shutil.copy(os.path.join(TINYSTORIES, "tokenizer.json"), folder / "tokenizer.json")
    return folder


def test_special_tokens_from_the_map_file_and_config_precedence(tmp_path):
    folder = copy_tokenizer_json(tmp_path)
    (folder / "special_tokens_map.json").write_text(
        json.dumps(
            {"bos_token": {"content": "<|start_story|>"}, "eos_token": "<|end_story|>", "pad_token": "<|end_story|>"}
        )
    )
    tok = load_tokenizer(str(folder))
    # no add_bos_token anywhere: the tokenizer.json post-processor's rule (it puts <|start_story|> in front)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, tok.add_bos) == (1, 2, 2, True)
    (folder / "tokenizer_config.json").write_text(json.dumps({"add_bos_token": False, "pad_token": "<unk>"}))
    tok = load_tokenizer(str(folder))
    assert (tok.pad_token_id, tok.add_bos) == (0, False)  # the config wins over the map file
    assert tokenize_prompt(tok, "Once upon a time") == tok.encode("Once upon a time")


def test_folder_without_specials_has_no_eos_and_is_refused(tmp_path):
    folder = copy_tokenizer_json(tmp_path)
    tok = load_tokenizer(str(folder))
    assert tok.eos_token_id is None and tok.pad_token_id is None  # no <|endoftext|> to fall back to
    model_cfg = ModelConfig(type="llama", vocab_size=2048, hidden_size=32, num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match="--tokenizer x: .* no eos token"):
        check_tokenizer_fits(tok, model_cfg, "--tokenizer x")
    with pytest.raises(ValueError, match="no eos token"):
        tokenize_response(tok, "hi")
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<nope>"}))
    with pytest.raises(ValueError, match="'<nope>' is not in the vocabulary"):
        load_tokenizer(str(folder))


def test_check_tokenizer_fits_vocab():
    tok = load_tokenizer("gpt2")
    check_tokenizer_fits(tok, ModelConfig(vocab_size=50257, hidden_size=32, num_layers=1, num_heads=4), "--model")
    small = ModelConfig(type="llama", vocab_size=32000, hidden_size=32, num_layers=1, num_heads=4)
    with pytest.raises(ValueError, match=r"--model gpt2: .*50257 ids.*vocab_size 32000.*32000\.\.50256"):
        check_tokenizer_fits(tok, small, "--model gpt2")
    check_tokenizer_fits(load_tokenizer("llama"), small, "--model llama")


def test_close_with_eos_appends_eos_only_to_cut_rows():
    from mindrlhf.data.contract import close_with_eos

    eos, pad = 2, 0
    tokens = np.array([[pad, 5, 6, 7, eos, pad], [5, 6, 7, 8, 9, 10], [pad, pad, 5, 6, pad, pad]], np.int32)
    mask = np.array([[0, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 0, 0]], np.int32)
    wide, wide_mask = close_with_eos(tokens, mask, eos)
    assert wide.shape == wide_mask.shape == (3, 7)
    np.testing.assert_array_equal(wide[0], [pad, 5, 6, 7, eos, pad, 0])  # ended in eos: unchanged
    np.testing.assert_array_equal(wide_mask[0], [0, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(wide[1], [5, 6, 7, 8, 9, 10, eos])  # cut at the last column
    np.testing.assert_array_equal(wide_mask[1], [1] * 7)
    np.testing.assert_array_equal(wide[2], [pad, pad, 5, 6, eos, pad, 0])  # cut earlier: eos right after it
    np.testing.assert_array_equal(wide_mask[2], [0, 0, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(tokens[1], [5, 6, 7, 8, 9, 10])  # inputs untouched


def test_close_with_eos_replaces_the_last_token_when_the_reward_model_is_full():
    """Rollouts that fill the reward model's seq_length get no extra column: a full row's last token becomes eos,
    a shorter row still gets its eos appended inside the width."""
    from mindrlhf.data.contract import close_with_eos

    eos, pad = 2, 0
    tokens = np.array([[5, 6, 7, 8, 9, 10], [pad, 5, 6, 7, 8, pad], [pad, 5, 6, eos, pad, pad]], np.int32)
    mask = np.array([[1, 1, 1, 1, 1, 1], [0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 0, 0]], np.int32)
    closed, closed_mask = close_with_eos(tokens, mask, eos, max_length=6)
    assert closed.shape == (3, 6)
    np.testing.assert_array_equal(closed[0], [5, 6, 7, 8, 9, eos])  # full: the last token replaced
    np.testing.assert_array_equal(closed_mask[0], [1] * 6)
    np.testing.assert_array_equal(closed[1], [pad, 5, 6, 7, 8, eos])  # room: appended
    np.testing.assert_array_equal(closed_mask[1], [0, 1, 1, 1, 1, 1])
    np.testing.assert_array_equal(closed[2], tokens[2])  # ended in eos: unchanged
    assert close_with_eos(tokens, mask, eos, max_length=7)[0].shape == (3, 7)
