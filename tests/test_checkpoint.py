"""Checkpoint conversion: Hugging Face folders in both directions, sharded and legacy layouts, clear errors for
bad inputs, MindSpore ``.ckpt`` round trips and atomic writes. Runs in PYNATIVE mode (set by ``conftest``)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
import mindspore as ms
import safetensors.numpy
import torch
import transformers
from safetensors.numpy import load_file, save_file

from mindrlhf.models import CausalLM, RewardModel
from mindrlhf.models.convert import (
    CheckpointError,
    load_ckpt,
    load_hf_checkpoint,
    model_config_from_hf_folder,
    save_ckpt,
    save_hf_checkpoint,
)
from tests.helpers import (
    EOS,
    PAD,
    TINY_CONFIGS,
    load_transformers,
    max_abs_diff,
    ms_numpy,
    padded_batch,
    parameter_arrays,
    positions_from_mask,
    randomize_parameters,
    tiny_gpt2_config,
    tiny_llama_config,
    torch_forward,
)

TOL = 1e-4
FAMILIES = sorted(TINY_CONFIGS)


def torch_model(family: str, seed: int = 0, tied: bool = None):
    """A ``transformers`` causal LM built from a config with every weight randomised (not just HF's init, whose
    zero biases and unit norm weights would hide a mapping mistake); ``tied`` defaults to GPT-2 tied, Llama not."""
    torch.manual_seed(seed)
    tied = (family == "gpt2") if tied is None else tied
    common = dict(vocab_size=100, pad_token_id=PAD, bos_token_id=1, eos_token_id=EOS, tie_word_embeddings=tied)
    if family == "gpt2":
        config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_inner=64, n_positions=32, **common)
        model = transformers.GPT2LMHeadModel(config)
    else:
        config = transformers.LlamaConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            intermediate_size=64,
            max_position_embeddings=32,
            **common,
        )
        model = transformers.LlamaForCausalLM(config)
    with torch.no_grad():
        for param in model.parameters():
            param.add_(torch.randn_like(param) * 0.2)
    return model.eval()


def ours_from_folder(folder: str) -> CausalLM:
    cfg = model_config_from_hf_folder(folder)
    lm = CausalLM(cfg)
    load_hf_checkpoint(lm, folder, cfg)
    return lm


def assert_same_logits(lm: CausalLM, hf_model, side: str = "right"):
    ids, mask = padded_batch(lm.config, side=side)
    position_ids = None if side == "right" else positions_from_mask(mask)
    ref = torch_forward(hf_model, ids, mask, position_ids).logits.numpy()
    assert max_abs_diff(ms_numpy(lm, ids, mask), ref, mask) <= TOL


def export(family: str, folder: str, seed: int = 0, **overrides):
    """A randomised tiny CausalLM of ``family`` saved as a Hugging Face folder; returns the model."""
    cfg = TINY_CONFIGS[family](**overrides)
    lm = CausalLM(cfg)
    randomize_parameters(lm, seed=seed)
    save_hf_checkpoint(lm, cfg, folder)
    return lm


def rewrite_weights(folder: str, edit) -> None:
    """Apply ``edit(dict of arrays)`` to ``folder/model.safetensors`` in place."""
    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path, metadata={"format": "pt"})


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face folders, both directions


@pytest.mark.parametrize("family", FAMILIES)
def test_export_loads_in_transformers_with_the_same_logits(family, tmp_dir):
    lm = export(family, tmp_dir)
    with open(os.path.join(tmp_dir, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["model_type"] == family
    assert_same_logits(lm, load_transformers(tmp_dir), side="left")


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_checkpoint_loads_into_ours_with_the_same_logits(family, tmp_dir):
    hf_model = torch_model(family)
    hf_model.save_pretrained(tmp_dir)
    assert os.path.exists(os.path.join(tmp_dir, "model.safetensors"))
    lm = ours_from_folder(tmp_dir)
    assert (lm.config.type, lm.config.num_kv_heads) == (family, 2 if family == "llama" else 4)
    assert_same_logits(lm, hf_model)


@pytest.mark.parametrize("family", FAMILIES)
def test_sharded_checkpoint_loads_the_same(family, tmp_dir):
    hf_model = torch_model(family)
    hf_model.save_pretrained(tmp_dir, max_shard_size="20KB")
    with open(os.path.join(tmp_dir, "model.safetensors.index.json"), encoding="utf-8") as f:
        shards = set(json.load(f)["weight_map"].values())
    assert len(shards) > 1
    assert not os.path.exists(os.path.join(tmp_dir, "model.safetensors"))
    assert_same_logits(ours_from_folder(tmp_dir), hf_model, side="left")


def test_original_gpt2_names_without_prefix_load(tmp_dir):
    lm = export("gpt2", tmp_dir)
    n_pos = lm.config.seq_length

    def strip_prefix(tensors):
        for name in list(tensors):
            tensors[name.replace("transformer.", "", 1)] = tensors.pop(name)
        for layer in range(lm.config.num_layers):  # the original release also stored the causal-mask buffers
            tensors[f"h.{layer}.attn.bias"] = np.tril(np.ones((n_pos, n_pos), np.float32))[None, None]

    rewrite_weights(tmp_dir, strip_prefix)
    assert not any(k.startswith("transformer.") for k in load_file(os.path.join(tmp_dir, "model.safetensors")))
    loaded = ours_from_folder(tmp_dir)
    ids, mask = padded_batch(lm.config)
    np.testing.assert_array_equal(ms_numpy(loaded, ids, mask), ms_numpy(lm, ids, mask))


# ---------------------------------------------------------------------------------------------------------------
# tied embeddings: a checkpoint may store the shared matrix as the token table, as lm_head.weight, or as both

TABLE_NAMES = {"gpt2": "transformer.wte.weight", "llama": "model.embed_tokens.weight"}
LAYOUTS = {"only_lm_head": ("lm_head.weight",), "only_token_table": ("table",), "both": ("table", "lm_head.weight")}


def write_with_names(hf_model, folder: str, family: str, stored) -> set:
    """Save ``hf_model``'s config.json and a ``model.safetensors`` (written with safetensors.numpy) holding the
    token table and the LM head only under the names in ``stored`` (``"table"`` names the token table); returns
    the stored names of the two."""
    hf_model.config.save_pretrained(folder)
    names = {TABLE_NAMES[family] if n == "table" else n for n in stored}
    tensors = {
        n: t.detach().numpy().copy()
        for n, t in hf_model.state_dict().items()
        if n in names or n not in (TABLE_NAMES[family], "lm_head.weight")
    }
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    return names & set(load_file(os.path.join(folder, "model.safetensors")))


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("family", FAMILIES)
def test_tied_checkpoint_loads_whichever_name_it_stores(family, layout, tmp_dir):
    hf_model = torch_model(family, tied=True)
    stored = write_with_names(hf_model, tmp_dir, family, LAYOUTS[layout])
    assert stored == {TABLE_NAMES[family] if n == "table" else n for n in LAYOUTS[layout]}
    lm = ours_from_folder(tmp_dir)
    assert lm.config.tie_word_embeddings and "lm_head.weight" not in parameter_arrays(lm)
    assert_same_logits(lm, hf_model, side="left")
    assert_same_logits(lm, load_transformers(tmp_dir), side="left")


@pytest.mark.parametrize("family", FAMILIES)
def test_untied_checkpoint_loads_and_needs_both_matrices(family, tmp_dir):
    hf_model = torch_model(family, tied=False)
    write_with_names(hf_model, tmp_dir, family, LAYOUTS["both"])
    lm = ours_from_folder(tmp_dir)
    assert not lm.config.tie_word_embeddings and "lm_head.weight" in parameter_arrays(lm)
    assert_same_logits(lm, hf_model, side="left")
    assert_same_logits(lm, load_transformers(tmp_dir), side="left")
    ours_table = "backbone." + TABLE_NAMES[family].split(".", 1)[1]
    for layout, absent in (("only_lm_head", ours_table), ("only_token_table", "lm_head.weight")):
        write_with_names(hf_model, tmp_dir, family, LAYOUTS[layout])
        cfg = model_config_from_hf_folder(tmp_dir)
        with pytest.raises(CheckpointError, match=rf"missing keys \(1\): {absent}") as err:
            load_hf_checkpoint(CausalLM(cfg), tmp_dir, cfg)
        assert tmp_dir in str(err.value)


def test_tied_checkpoint_with_two_different_matrices_is_refused(tmp_dir):
    hf_model = torch_model("llama", tied=True)
    write_with_names(hf_model, tmp_dir, "llama", LAYOUTS["both"])
    rewrite_weights(tmp_dir, lambda tensors: tensors["lm_head.weight"].__iadd__(1.0))
    cfg = model_config_from_hf_folder(tmp_dir)
    with pytest.raises(CheckpointError, match="lm_head.weight and the token table") as err:
        load_hf_checkpoint(CausalLM(cfg), tmp_dir, cfg)
    assert tmp_dir in str(err.value)


def test_untied_checkpoint_does_not_load_into_a_tied_model(tmp_dir):
    export("llama", tmp_dir)  # untied: its own lm_head.weight
    cfg = tiny_llama_config(tie_word_embeddings=True)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): lm_head\.weight"):
        load_hf_checkpoint(CausalLM(cfg), tmp_dir, cfg)


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_export_stores_the_token_table_only(family, tmp_dir):
    lm = export(family, tmp_dir, tie_word_embeddings=True)
    names = set(load_file(os.path.join(tmp_dir, "model.safetensors")))
    assert TABLE_NAMES[family] in names and "lm_head.weight" not in names
    with open(os.path.join(tmp_dir, "config.json"), encoding="utf-8") as f:
        assert json.load(f)["tie_word_embeddings"] is True
    assert_same_logits(lm, load_transformers(tmp_dir), side="left")


# ---------------------------------------------------------------------------------------------------------------
# bad inputs: clear errors naming the file and the keys


def test_shape_mismatch_names_folder_and_keys(tmp_dir):
    export("llama", tmp_dir, hidden_size=48)
    cfg = tiny_llama_config()
    with pytest.raises(CheckpointError) as err:
        load_hf_checkpoint(CausalLM(cfg), tmp_dir, cfg)
    message = str(err.value)
    assert tmp_dir in message and "shape mismatches" in message
    assert "backbone.embed_tokens.weight: checkpoint (100, 48) vs model (100, 32)" in message


def test_missing_and_unexpected_keys_are_listed(tmp_dir):
    export("gpt2", tmp_dir)

    def edit(tensors):
        del tensors["transformer.h.1.ln_2.bias"]
        tensors["transformer.h.2.ln_1.weight"] = np.ones(32, np.float32)

    rewrite_weights(tmp_dir, edit)
    cfg = tiny_gpt2_config()
    with pytest.raises(CheckpointError) as err:
        load_hf_checkpoint(CausalLM(cfg), tmp_dir, cfg)
    message = str(err.value)
    assert tmp_dir in message
    assert "missing keys (1): backbone.h.1.ln_2.bias" in message
    assert "unexpected keys (1): backbone.h.2.ln_1.weight" in message


def test_folder_without_weights(tmp_dir):
    export("gpt2", tmp_dir)
    os.remove(os.path.join(tmp_dir, "model.safetensors"))
    cfg = model_config_from_hf_folder(tmp_dir)  # config.json alone still reads
    with pytest.raises(CheckpointError, match="no model.safetensors") as err:
        load_hf_checkpoint(CausalLM(cfg), tmp_dir, cfg)
    assert tmp_dir in str(err.value)


def test_missing_config_json(tmp_dir):
    with pytest.raises(CheckpointError, match="not found") as err:
        model_config_from_hf_folder(tmp_dir)
    assert os.path.join(tmp_dir, "config.json") in str(err.value)


def test_malformed_config_json(tmp_dir):
    with open(os.path.join(tmp_dir, "config.json"), "w", encoding="utf-8") as f:
        f.write('{"model_type": "gpt2",')
    with pytest.raises(CheckpointError, match="not valid JSON") as err:
        model_config_from_hf_folder(tmp_dir)
    assert os.path.join(tmp_dir, "config.json") in str(err.value)


def test_unsupported_model_type(tmp_dir):
    with open(os.path.join(tmp_dir, "config.json"), "w", encoding="utf-8") as f:
        json.dump({"model_type": "bert", "hidden_size": 32}, f)
    supported = r"\(supported: bloom, gpt2, gptj, llama, qwen2\)"
    with pytest.raises(CheckpointError, match=r"model_type 'bert' is not supported " + supported) as err:
        model_config_from_hf_folder(tmp_dir)
    assert os.path.join(tmp_dir, "config.json") in str(err.value)


def test_index_pointing_to_a_missing_shard(tmp_dir):
    torch_model("llama").save_pretrained(tmp_dir, max_shard_size="20KB")
    index = os.path.join(tmp_dir, "model.safetensors.index.json")
    with open(index, encoding="utf-8") as f:
        shard = sorted(set(json.load(f)["weight_map"].values()))[-1]
    os.remove(os.path.join(tmp_dir, shard))
    cfg = model_config_from_hf_folder(tmp_dir)
    with pytest.raises(CheckpointError, match="shard files missing") as err:
        load_hf_checkpoint(CausalLM(cfg), tmp_dir, cfg)
    assert index in str(err.value) and shard in str(err.value)


# ---------------------------------------------------------------------------------------------------------------
# MindSpore .ckpt and atomic writes


def test_ckpt_round_trip_restores_identical_parameters(tmp_dir):
    cfg = tiny_llama_config()
    lm = CausalLM(cfg, with_value_head=True)
    randomize_parameters(lm, seed=4)
    path = save_ckpt(lm, os.path.join(tmp_dir, "lm.ckpt"), append_dict={"step": 7})
    fresh = CausalLM(cfg, with_value_head=True)
    before, saved = parameter_arrays(fresh), parameter_arrays(lm)
    assert any(not np.array_equal(before[n], saved[n]) for n in saved)
    extras = load_ckpt(fresh, path)
    after = parameter_arrays(fresh)
    assert after.keys() == saved.keys()
    for name, array in saved.items():
        np.testing.assert_array_equal(after[name], array, err_msg=name)
    assert int(extras["step"]) == 7


def test_interrupted_ckpt_save_keeps_the_previous_file(tmp_dir, monkeypatch):
    cfg = tiny_gpt2_config()
    lm = CausalLM(cfg)
    path = save_ckpt(lm, os.path.join(tmp_dir, "lm.ckpt"))
    with open(path, "rb") as f:
        old_bytes = f.read()

    def crash(params, ckpt_file_name, **kwargs):
        # half-written files under the temporary name and under MindSpore's own "<name>.tmp"
        for name in (ckpt_file_name, os.path.splitext(ckpt_file_name)[0] + ".tmp"):
            with open(name, "wb") as f:
                f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ms, "save_checkpoint", crash)
    randomize_parameters(lm, seed=5)
    with pytest.raises(CheckpointError, match="lm.ckpt: cannot write the checkpoint: disk full"):
        save_ckpt(lm, path)
    with open(path, "rb") as f:
        assert f.read() == old_bytes
    assert sorted(os.listdir(tmp_dir)) == ["lm.ckpt", "lm.ckpt.manifest.json"]


def test_hf_save_over_existing_folder_replaces_it_atomically(tmp_dir, monkeypatch):
    folder = os.path.join(tmp_dir, "hf")
    export("gpt2", folder, seed=6)
    with open(os.path.join(folder, "stale.txt"), "w", encoding="utf-8") as f:
        f.write("left over from an older export")
    newer = export("gpt2", folder, seed=7)
    assert sorted(os.listdir(folder)) == ["config.json", "model.safetensors"]
    assert os.listdir(tmp_dir) == ["hf"]
    assert_same_logits(newer, load_transformers(folder))
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        newer_bytes = f.read()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        export("gpt2", folder, seed=8)
    with open(os.path.join(folder, "model.safetensors"), "rb") as f:
        assert f.read() == newer_bytes
    assert os.listdir(tmp_dir) == ["hf"]


# ---------------------------------------------------------------------------------------------------------------
# an SFT checkpoint starts a reward model


@pytest.mark.parametrize("family", FAMILIES)
def test_lm_checkpoint_into_reward_model_needs_new_heads(family, tmp_dir):
    lm = export(family, tmp_dir)
    cfg = lm.config
    has_lm_head = "lm_head.weight" in load_file(os.path.join(tmp_dir, "model.safetensors"))
    assert has_lm_head == (family == "llama")  # GPT-2 ties its head to the token table

    with pytest.raises(CheckpointError, match=r"missing keys \(1\): score\.weight") as err:
        load_hf_checkpoint(RewardModel(cfg), tmp_dir, cfg)
    assert tmp_dir in str(err.value)

    reward_model = RewardModel(cfg)
    score_before = reward_model.score.weight.asnumpy().copy()
    kept = load_hf_checkpoint(reward_model, tmp_dir, cfg, new_heads=True)
    assert kept == ["score.weight"]
    np.testing.assert_array_equal(reward_model.score.weight.asnumpy(), score_before)
    lm_params, rm_params = parameter_arrays(lm), parameter_arrays(reward_model)
    backbone = [n for n in rm_params if n.startswith("backbone.")]
    assert backbone and all(np.array_equal(rm_params[n], lm_params[n]) for n in backbone)
    assert np.isfinite(ms_numpy(reward_model, *padded_batch(cfg))).all()


def test_a_folder_whose_tokenizer_does_not_fit_the_model_is_refused(tmp_dir):
    """A Hugging Face folder with a tokenizer whose vocabulary exceeds the model's, or without eos, is refused
    before any weight is loaded."""
    import shutil

    from mindrlhf.models import CausalLM
    from mindrlhf.models.convert import BUNDLED_MODELS, CheckpointError, load_weights, model_config_from_hf_folder

    folder = os.path.join(tmp_dir, "small_vocab")
    shutil.copytree(BUNDLED_MODELS["tinystories"], folder)
    cfg = model_config_from_hf_folder(folder)
    model = CausalLM(cfg)
    load_weights(model, folder, cfg)  # the shipped folder fits
    small = dataclasses.replace(cfg, vocab_size=1024)
    with pytest.raises(CheckpointError, match="2048 ids, more than the model's vocab_size 1024"):
        load_weights(CausalLM(small), folder, small)
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        os.remove(os.path.join(folder, name))
    with pytest.raises(CheckpointError, match="has no eos token"):
        load_weights(model, folder, cfg)


# ---------------------------------------------------------------------------------------------------------------
# mindformers .ckpt files: the parameter names mindformers' GPT-2 and Llama write (its convert_weight.py scripts)


def mindformers_state(hf_model, family: str) -> dict:
    """The state dict mindformers holds for ``hf_model``, written out name by name: GPT-2's fused ``c_attn`` is
    split into ``dense1/2/3`` stored (out, in) while ``projection`` / ``mapping`` keep Conv1D's (in, out); Llama's
    names are renamed, its tensors unchanged."""
    hf = {n: t.detach().numpy().copy() for n, t in hf_model.state_dict().items()}
    layers = hf_model.config.num_hidden_layers
    out = {}
    if family == "gpt2":
        for i in range(layers):
            src, dst = f"transformer.h.{i}.", f"backbone.blocks.{i}."
            for ours, theirs in (
                ("ln_1.weight", "layernorm1.gamma"),
                ("ln_1.bias", "layernorm1.beta"),
                ("ln_2.weight", "layernorm2.gamma"),
                ("ln_2.bias", "layernorm2.beta"),
                ("attn.c_proj.weight", "attention.projection.weight"),
                ("attn.c_proj.bias", "attention.projection.bias"),
                ("mlp.c_fc.weight", "output.mapping.weight"),
                ("mlp.c_fc.bias", "output.mapping.bias"),
                ("mlp.c_proj.weight", "output.projection.weight"),
                ("mlp.c_proj.bias", "output.projection.bias"),
            ):
                out[dst + theirs] = hf[src + ours]
            weights = np.split(hf[src + "attn.c_attn.weight"], 3, -1)
            biases = np.split(hf[src + "attn.c_attn.bias"], 3, -1)
            for dense, weight, bias in zip(("dense1", "dense2", "dense3"), weights, biases):
                out[f"{dst}attention.{dense}.weight"], out[f"{dst}attention.{dense}.bias"] = weight.T, bias
        out["backbone.layernorm.gamma"], out["backbone.layernorm.beta"] = (
            hf["transformer.ln_f.weight"],
            hf["transformer.ln_f.bias"],
        )
        out["backbone.embedding.word_embedding.embedding_table"] = hf["transformer.wte.weight"]
        out["backbone.embedding.position_embedding.embedding_table"] = hf["transformer.wpe.weight"]
        return out
    renames = {
        "self_attn.q_proj": "attention.wq",
        "self_attn.k_proj": "attention.wk",
        "self_attn.v_proj": "attention.wv",
        "self_attn.o_proj": "attention.wo",
        "mlp.gate_proj": "feed_forward.w1",
        "mlp.down_proj": "feed_forward.w2",
        "mlp.up_proj": "feed_forward.w3",
        "input_layernorm": "attention_norm",
        "post_attention_layernorm": "ffn_norm",
    }
    for i in range(layers):
        for ours, theirs in renames.items():
            out[f"model.layers.{i}.{theirs}.weight"] = hf[f"model.layers.{i}.{ours}.weight"]
    out["model.tok_embeddings.embedding_weight"] = hf["model.embed_tokens.weight"]
    out["model.norm_out.weight"] = hf["model.norm.weight"]
    out["lm_head.weight"] = hf["lm_head.weight"]
    return out


def write_ckpt(arrays: dict, path: str) -> str:
    ms.save_checkpoint([{"name": n, "data": ms.Tensor(a)} for n, a in arrays.items()], path)
    return path


@pytest.mark.parametrize("family", FAMILIES)
def test_mindformers_ckpt_loads_and_writes_back(family, tmp_dir):
    from mindrlhf.models.convert import load_weights, model_config_from_hf, save_mindformers_ckpt

    hf_model = torch_model(family)
    theirs = mindformers_state(hf_model, family)
    path = write_ckpt({**theirs, "global_step": np.array([3], np.int32)}, os.path.join(tmp_dir, "mf.ckpt"))
    cfg = model_config_from_hf(hf_model.config.to_dict())  # the reference's sizes and norm epsilon
    lm = CausalLM(cfg)
    assert load_weights(lm, path, cfg) == []
    assert_same_logits(lm, hf_model, side="left")

    back = save_mindformers_ckpt(lm, os.path.join(tmp_dir, "back.ckpt"))
    written = {n: v.asnumpy() for n, v in ms.load_checkpoint(back).items()}
    assert written.keys() == theirs.keys()
    for name, array in theirs.items():
        np.testing.assert_array_equal(written[name], array, err_msg=name)


def test_mindformers_ckpt_problems_are_listed(tmp_dir):
    from mindrlhf.models.convert import load_weights

    theirs = mindformers_state(torch_model("gpt2"), "gpt2")
    del theirs["backbone.blocks.1.layernorm2.beta"]
    for dense in ("dense1", "dense2", "dense3"):  # a block of another width
        name = f"backbone.blocks.0.attention.{dense}.weight"
        theirs[name] = theirs[name][:, :16]
    path = write_ckpt(theirs, os.path.join(tmp_dir, "mf.ckpt"))
    cfg = tiny_gpt2_config()
    with pytest.raises(CheckpointError) as err:
        load_weights(CausalLM(cfg), path, cfg)
    message = str(err.value)
    assert path in message and "missing keys (1): backbone.h.1.ln_2.bias" in message
    assert "backbone.h.0.attn.c_attn.weight: checkpoint (96, 16) vs model (96, 32)" in message
