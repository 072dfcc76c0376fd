"""Model numerics against Hugging Face ``transformers`` (torch CPU, eager attention), in GRAPH and PYNATIVE mode.

Each test exports our randomly initialised model with ``save_hf_checkpoint`` and loads it with ``transformers``,
so the reference has exactly our weights. Only non-pad positions are compared: what a model computes at a pad
query is undefined and differs between implementations.
"""

from __future__ import annotations

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from mindrlhf.config import ConfigError
from mindrlhf.models import CausalLM, Critic, RewardModel, TokenLogProbs, list_backbones, token_logprobs
from mindrlhf.models.convert import model_config_from_hf_folder, save_hf_checkpoint
from mindrlhf.models.layers import FUSED_MAX_ROWS, LayerNorm, gelu_tanh
from mindrlhf.models.registry import backbone_class
from tests.helpers import (
    FIRST_TEXT_ID,
    TINY_CONFIGS,
    load_transformers,
    max_abs_diff,
    ms_numpy,
    padded_batch,
    parameter_arrays,
    positions_from_mask,
    randomize_parameters,
    set_mode,
    tiny_bloom_config,
    tiny_llama_config,
    torch_forward,
)

TOL = 1e-4
FAMILIES = sorted(TINY_CONFIGS)
SIDES = ("right", "left")


def hf_inputs(mask: np.ndarray, side: str):
    """Position ids to hand Hugging Face: its default ``arange`` for right padding (checking that both agree),
    our ``clip(cumsum(mask) - 1, 0)`` for left padding."""
    return None if side == "right" else positions_from_mask(mask)


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def exported(cell, cfg, folder, reward=False):
    """Randomise ``cell``'s weights, export them, and load the export with ``transformers``."""
    randomize_parameters(cell, seed=1)
    save_hf_checkpoint(cell, cfg, folder)
    return load_transformers(folder, reward=reward)


@pytest.mark.parametrize("family", FAMILIES)
def test_logits_match_transformers_on_padded_batches(family, ms_mode, tmp_dir):
    cfg = TINY_CONFIGS[family]()
    lm = CausalLM(cfg)
    hf = exported(lm, cfg, tmp_dir)
    for side in SIDES:
        ids, mask = padded_batch(cfg, side=side)
        ours = ms_numpy(lm, ids, mask)
        ref = torch_forward(hf, ids, mask, hf_inputs(mask, side)).logits.numpy()
        assert ours.shape == ref.shape == (*ids.shape, cfg.vocab_size)
        assert max_abs_diff(ours, ref, mask) <= TOL, f"{family} {side} padding, {ms_mode}"


@pytest.mark.parametrize("family", FAMILIES)
def test_token_logprobs_match_log_softmax_of_reference_logits(family, ms_mode, tmp_dir):
    cfg = TINY_CONFIGS[family]()
    lm = CausalLM(cfg)
    hf = exported(lm, cfg, tmp_dir)
    ids, mask = padded_batch(cfg, side="left")
    ref_logits = torch_forward(hf, ids, mask, positions_from_mask(mask)).logits.numpy()
    labels = ids[:, 1:]
    ref = np.take_along_axis(log_softmax(ref_logits[:, :-1]), labels[..., None], -1)[..., 0]
    real = mask[:, :-1]  # the logprob at t is defined when position t (the context's last token) is real

    cell_out = ms_numpy(TokenLogProbs(lm), ids, mask)
    assert cell_out.shape == (ids.shape[0], ids.shape[1] - 1)
    assert max_abs_diff(cell_out, ref, real) <= TOL

    fn_out = token_logprobs(Tensor(ref_logits[:, :-1]), Tensor(labels)).asnumpy()
    assert fn_out.shape == ref.shape
    np.testing.assert_allclose(fn_out, ref, atol=1e-5)


def test_value_head_gives_one_value_per_token(ms_mode, tmp_dir):
    cfg = tiny_llama_config()
    lm = CausalLM(cfg, with_value_head=True)
    randomize_parameters(lm, seed=2)
    ids, mask = padded_batch(cfg, side="right")
    logprobs, values = ms_numpy(TokenLogProbs(lm), ids, mask)
    assert logprobs.shape == (3, ids.shape[1] - 1)
    assert values.shape == ids.shape and values.dtype == np.float32

    # values = v_head(final hidden state); the hidden state comes from the exported backbone in transformers
    params = parameter_arrays(lm)
    save_hf_checkpoint(lm, cfg, tmp_dir)
    hidden = torch_forward(load_transformers(tmp_dir), ids, mask, output_hidden_states=True).hidden_states[-1]
    expected = hidden.numpy() @ params["v_head.weight"][0] + params["v_head.bias"][0]
    assert max_abs_diff(values, expected, mask) <= TOL


def last_real_index(mask: np.ndarray) -> np.ndarray:
    return np.array([np.flatnonzero(row).max() for row in mask])


@pytest.mark.parametrize("family", FAMILIES)
def test_reward_model_scores_the_last_real_token(family, ms_mode, tmp_dir):
    cfg = TINY_CONFIGS[family]()
    reward_model = RewardModel(cfg)
    hf = exported(reward_model, cfg, tmp_dir, reward=True)
    critic = Critic(cfg)
    params = parameter_arrays(reward_model)
    for param in critic.get_parameters():
        param.set_data(Tensor(params[param.name]))

    for side in SIDES:
        ids, mask = padded_batch(cfg, side=side)
        assert not np.any(ids[mask == 1] == cfg.pad_token_id)  # HF finds the last token by pad id
        rewards = ms_numpy(reward_model, ids, mask)
        per_token = ms_numpy(critic, ids, mask)
        assert rewards.shape == (3,) and per_token.shape == ids.shape
        expected = per_token[np.arange(3), last_real_index(mask)]
        np.testing.assert_allclose(rewards, expected, atol=1e-6, err_msg=f"{side} padding")

        ref = torch_forward(hf, ids, mask, hf_inputs(mask, side)).logits.numpy()
        assert ref.shape == (3, 1)
        assert np.abs(rewards - ref[:, 0]).max() <= TOL, f"{family} {side} padding, {ms_mode}"
    # the rows differ in length, so scoring a fixed column instead would not match on both sides
    assert len(set(last_real_index(padded_batch(cfg, side="right")[1]))) == 3


def test_recompute_gives_the_same_forward_and_gradients():
    ms.set_context(mode=ms.GRAPH_MODE)
    cfg = tiny_llama_config()
    plain, recomputed = CausalLM(cfg), CausalLM(cfg, recompute=True)
    randomize_parameters(plain, seed=3)
    params = parameter_arrays(plain)
    for param in recomputed.get_parameters():
        param.set_data(Tensor(params[param.name]))
    ids, mask = padded_batch(cfg, side="right")

    np.testing.assert_allclose(ms_numpy(recomputed, ids, mask), ms_numpy(plain, ids, mask), atol=1e-6)

    def grads(lm):
        def loss_fn(input_ids, attention_mask):
            return -(lm.logprobs(input_ids, attention_mask) * attention_mask[:, 1:]).sum()

        grad_fn = ms.value_and_grad(loss_fn, None, lm.trainable_params())
        loss, grad = grad_fn(Tensor(ids), Tensor(mask, ms.float32))
        return loss.asnumpy(), [g.asnumpy() for g in grad]

    (loss_a, grads_a), (loss_b, grads_b) = grads(plain), grads(recomputed)
    np.testing.assert_allclose(loss_b, loss_a, rtol=1e-6)
    assert len(grads_a) == len(grads_b) == len(plain.trainable_params())
    for name, g_a, g_b in zip((p.name for p in plain.trainable_params()), grads_a, grads_b):
        np.testing.assert_allclose(g_b, g_a, atol=1e-5, err_msg=name)
    assert any(np.abs(g).max() > 0 for g in grads_a)


def test_unknown_model_type_names_the_nearest_registered_one():
    with pytest.raises(ConfigError, match=r"unknown model 'lama'.*did you mean 'llama'"):
        CausalLM(tiny_llama_config(type="lama"))
    with pytest.raises(ConfigError, match=r"did you mean 'gpt2'"):
        backbone_class("gpt-2")


def test_registry_lists_both_families():
    assert {"gpt2", "llama"} <= set(list_backbones())
    assert backbone_class("llama").__name__ == "LlamaModel"


def test_batch_builder_keeps_pad_ids_out_of_text():
    ids, mask = padded_batch(tiny_llama_config(), side="left")
    assert (ids[mask == 1] >= FIRST_TEXT_ID).all() and (ids[mask == 0] == 0).all()
    assert mask.sum(1).tolist() == [8, 5, 2] and mask[:, -1].all()


@pytest.mark.parametrize(
    "family, hidden_act, hf_name",
    [
        ("gpt2", "gelu_exact", "gelu"),
        ("gpt2", "silu", "silu"),
        ("gpt2", "relu", "relu"),
        ("llama", "gelu", "gelu_new"),
        ("llama", "relu", "relu"),
    ],
)
def test_hidden_act_selects_the_mlp_activation(family, hidden_act, hf_name, tmp_dir):
    """Each family's MLP computes ``model_config.hidden_act``: the export names it in ``config.json`` and
    ``transformers`` (ACT2FN) computes the same logits; the same weights under the family default differ."""
    set_mode("graph")
    cfg = TINY_CONFIGS[family](hidden_act=hidden_act)
    lm = CausalLM(cfg)
    hf = exported(lm, cfg, tmp_dir)
    key = "activation_function" if family == "gpt2" else "hidden_act"
    assert getattr(hf.config, key) == hf_name
    ids, mask = padded_batch(cfg)
    ours = ms_numpy(lm, ids, mask)
    assert max_abs_diff(ours, torch_forward(hf, ids, mask).logits.numpy(), mask) <= TOL
    default = CausalLM(TINY_CONFIGS[family](hidden_act=None))
    ms.load_param_into_net(default, {name: ms.Parameter(value) for name, value in parameter_arrays(lm).items()})
    assert max_abs_diff(ms_numpy(default, ids, mask), ours, mask) > 3 * TOL  # (erf vs tanh GELU: ~8e-4 here)
    assert model_config_from_hf_folder(tmp_dir).hidden_act == hidden_act  # read back from config.json


def test_bloom_refuses_an_activation_its_checkpoints_cannot_name():
    with pytest.raises(ConfigError, match="hidden_act: BLOOM's MLP is the tanh GELU .gelu., got 'silu'"):
        CausalLM(tiny_bloom_config(hidden_act="silu"))


@pytest.mark.parametrize("rows", [4, 2 * FUSED_MAX_ROWS])  # the fused (decode-sized) and the elementwise path
def test_gelu_backward_matches_torch(ms_mode, rows):
    """gelu_tanh's forward and autodiff gradient against torch's tanh GELU, the tails included."""
    import torch

    x = np.random.default_rng(5).normal(0.0, 3.0, (rows, 16)).astype(np.float32)  # the tails included
    dout = np.random.default_rng(6).normal(size=x.shape).astype(np.float32)
    gelu = gelu_tanh

    def weighted(v, d):
        return (gelu(v) * d).sum()

    ours_grad = ms.grad(weighted, grad_position=0)(Tensor(x), Tensor(dout)).asnumpy()
    ref_x = torch.tensor(x, requires_grad=True)
    ref_y = torch.nn.functional.gelu(ref_x, approximate="tanh")
    (ref_y * torch.tensor(dout)).sum().backward()
    np.testing.assert_allclose(gelu(Tensor(x)).asnumpy(), ref_y.detach().numpy(), atol=1e-5)
    np.testing.assert_allclose(ours_grad, ref_x.grad.numpy(), atol=1e-5)


@pytest.mark.parametrize("rows", [4, 2 * FUSED_MAX_ROWS])  # the fused (decode-sized) and the matmul path
def test_layernorm_backward_matches_torch(ms_mode, rows):
    """LayerNorm's output and its input, weight and bias gradients against torch's ``layer_norm``."""
    import torch

    rng = np.random.default_rng(7)
    x = rng.normal(0.5, 2.0, (rows, 32)).astype(np.float32)
    dout = rng.normal(size=x.shape).astype(np.float32)
    weight, bias = rng.normal(1.0, 0.3, 32).astype(np.float32), rng.normal(0.0, 0.3, 32).astype(np.float32)
    norm = LayerNorm(32, eps=1e-5)
    norm.weight.set_data(Tensor(weight))
    norm.bias.set_data(Tensor(bias))

    def weighted(v, d):
        return (norm(v) * d).sum()

    dx, (dweight, dbias) = ms.grad(weighted, grad_position=0, weights=norm.trainable_params())(Tensor(x), Tensor(dout))
    ref = [torch.tensor(a, requires_grad=True) for a in (x, weight, bias)]
    ref_y = torch.nn.functional.layer_norm(ref[0], (32,), ref[1], ref[2], eps=1e-5)
    (ref_y * torch.tensor(dout)).sum().backward()
    np.testing.assert_allclose(norm(Tensor(x)).asnumpy(), ref_y.detach().numpy(), atol=1e-5)
    for ours, theirs in zip((dx, dweight, dbias), ref):
        np.testing.assert_allclose(ours.asnumpy(), theirs.grad.numpy(), rtol=1e-5, atol=1e-4)
