"""LoRA export and import against ``transformers`` + ``peft``: our adapters in PEFT's layout load onto the
``transformers`` base with our logits; the merged Hugging Face export gives them too; adapters ``peft`` wrote load
into our model with ``peft``'s logits; adapters for another model are refused."""

from __future__ import annotations

import os

import numpy as np
import pytest
from mindspore import Tensor

from mindrlhf.config import LoRAConfig
from mindrlhf.models.convert import CheckpointError, load_weights, save_hf_checkpoint
from mindrlhf.models.lora import apply_lora, lora_layers, prepare_lora
from mindrlhf.models.peft import ADAPTER_CONFIG, load_peft_adapter, save_peft_adapter
from mindrlhf.models.policy import CausalLM
from tests.helpers import (
    TINY_CONFIGS,
    load_transformers,
    max_abs_diff,
    ms_numpy,
    padded_batch,
    randomize_parameters,
    torch_forward,
)

TARGETS = {"gpt2": ["c_attn", "mlp.c_proj"], "llama": ["q_proj", "v_proj", "up_proj"]}


def adapted_model(family, tmp_dir):
    """A random tiny model saved as a Hugging Face base, then adapted with random (non-zero) adapters."""
    cfg = TINY_CONFIGS[family]()
    model = CausalLM(cfg)
    randomize_parameters(model, seed=1)
    base = save_hf_checkpoint(model, cfg, os.path.join(tmp_dir, "base"))
    apply_lora(model, LoRAConfig(r=4, alpha=8.0, target_modules=TARGETS[family]))
    rng = np.random.default_rng(2)
    for layer in lora_layers(model).values():
        for param in (layer.lora_A, layer.lora_B):
            param.set_data(Tensor(rng.normal(0, 0.2, param.shape).astype(np.float32)))
    model.set_train(False)
    return cfg, model, base


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_peft_loads_our_adapters_and_the_merged_export_matches(family, tmp_dir):
    from peft import PeftModel

    cfg, model, base = adapted_model(family, tmp_dir)
    ids, mask = padded_batch(cfg)
    ours = ms_numpy(model, ids, mask)
    adapter = save_peft_adapter(model, cfg.type, os.path.join(tmp_dir, "adapter"))
    peft_model = PeftModel.from_pretrained(load_transformers(base), adapter).eval()
    assert max_abs_diff(torch_forward(peft_model, ids, mask).logits.numpy(), ours, mask) < 1e-4
    merged = save_hf_checkpoint(model, cfg, os.path.join(tmp_dir, "merged"))
    assert max_abs_diff(torch_forward(load_transformers(merged), ids, mask).logits.numpy(), ours, mask) < 1e-4

    # and back: the adapter folder onto our base model, as a stage starts from it (lora.adapter)
    again = CausalLM(cfg)
    load_weights(again, base, cfg)
    assert sorted(prepare_lora(again, LoRAConfig(adapter=adapter))) == sorted(lora_layers(model))
    assert all(".lora_" in p.name for p in again.trainable_params())
    assert np.abs(ms_numpy(again, ids, mask) - ours).max() < 1e-5


def test_adapters_written_by_peft_load_with_peft_logits(tmp_dir):
    import torch
    from peft import LoraConfig, get_peft_model

    cfg = TINY_CONFIGS["llama"]()
    model = CausalLM(cfg)
    randomize_parameters(model, seed=3)
    base = save_hf_checkpoint(model, cfg, os.path.join(tmp_dir, "base"))
    torch.manual_seed(0)
    peft_model = get_peft_model(
        load_transformers(base),
        LoraConfig(r=2, lora_alpha=6, target_modules=["k_proj", "o_proj", "gate_proj"], init_lora_weights=False),
    ).eval()
    peft_model.save_pretrained(os.path.join(tmp_dir, "peft"))
    ids, mask = padded_batch(cfg)
    expected = torch_forward(peft_model, ids, mask).logits.numpy()
    adapted = load_peft_adapter(model, cfg.type, os.path.join(tmp_dir, "peft"))
    assert len(adapted) == 3 * cfg.num_layers
    model.set_train(False)
    assert max_abs_diff(ms_numpy(model, ids, mask), expected, mask) < 1e-4


def test_adapters_for_another_model_are_refused(tmp_dir):
    _, model, _ = adapted_model("gpt2", tmp_dir)
    adapter = save_peft_adapter(model, "gpt2", os.path.join(tmp_dir, "adapter"))
    llama = CausalLM(TINY_CONFIGS["llama"]())
    with pytest.raises(CheckpointError, match=r"adapter: the adapters do not fit the model: .*matches no dense layer"):
        load_peft_adapter(llama, "llama", adapter)
    wider = CausalLM(TINY_CONFIGS["gpt2"](hidden_size=64))
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_peft_adapter(wider, "gpt2", adapter)
    os.remove(os.path.join(adapter, ADAPTER_CONFIG))
    with pytest.raises(CheckpointError, match="not a PEFT adapter folder"):
        load_peft_adapter(CausalLM(TINY_CONFIGS["gpt2"]()), "gpt2", adapter)


def test_reward_model_adapters_and_score_head_load_in_peft_with_our_scores(tmp_dir):
    """A reward model's adapters and its trained ``score`` head (PEFT's ``modules_to_save``): ``peft`` on
    ``AutoModelForSequenceClassification`` of the base gives our scores; the folder loads back into our reward model
    (score included), and ``export-hf --reward --peft`` writes the same from a LoRA reward-model checkpoint."""
    from peft import PeftModel

    from mindrlhf.cli import main as cli_main
    from mindrlhf.config import ModelSection, RunConfig, save_config
    from mindrlhf.models import RewardModel
    from mindrlhf.models.convert import save_ckpt

    cfg = TINY_CONFIGS["gpt2"]()
    model = RewardModel(cfg)
    randomize_parameters(model, seed=4)
    base = save_hf_checkpoint(model, cfg, os.path.join(tmp_dir, "base"), reward=True)
    prepare_lora(model, LoRAConfig(r=4, alpha=8.0, target_modules=TARGETS["gpt2"]), heads=("score",))
    rng = np.random.default_rng(5)
    for param in model.trainable_params():  # adapters and the score head, as after training
        param.set_data(Tensor(rng.normal(0, 0.2, param.shape).astype(np.float32)))
    model.set_train(False)
    ids, mask = padded_batch(cfg)
    ours = ms_numpy(model, ids, mask)
    adapter = save_peft_adapter(model, cfg.type, os.path.join(tmp_dir, "adapter"))
    peft_model = PeftModel.from_pretrained(load_transformers(base, reward=True), adapter).eval()
    np.testing.assert_allclose(torch_forward(peft_model, ids, mask).logits.numpy()[:, 0], ours, atol=1e-4)

    again = RewardModel(cfg)
    load_weights(again, base, cfg)
    load_peft_adapter(again, cfg.type, adapter, trainable=["score"])
    again.set_train(False)
    np.testing.assert_allclose(ms_numpy(again, ids, mask), ours, atol=1e-5)

    recipe, exported = os.path.join(tmp_dir, "recipe.yaml"), os.path.join(tmp_dir, "exported")
    save_config(RunConfig(model=ModelSection(model_config=cfg)), recipe)
    ckpt = save_ckpt(model, os.path.join(tmp_dir, "rm_lora.ckpt"))  # adapters, score and base
    assert (
        cli_main.main(
            [
                "export-hf",
                "--config",
                recipe,
                "--reward",
                "--peft",
                "--load_checkpoint",
                base,
                "--adapter",
                ckpt,
                "--tokenizer",
                "none",
                "--output_dir",
                exported,
            ]
        )
        == 0
    )
    peft_model = PeftModel.from_pretrained(load_transformers(base, reward=True), exported).eval()
    np.testing.assert_allclose(torch_forward(peft_model, ids, mask).logits.numpy()[:, 0], ours, atol=1e-4)
