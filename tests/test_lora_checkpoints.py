"""LoRA training checkpoints of the supervised stages (SFT, reward model, DPO) hold the adapters and trained heads
alone and record their base: they are small, resume exactly with the base loaded from the record, load merged into
the next stage and ``export-hf``, and a different base is refused in one line."""

from __future__ import annotations

import dataclasses
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindrlhf.cli import main as cli_main
from mindrlhf.config import save_config
from mindrlhf.models import CausalLM, RewardModel
from mindrlhf.models.convert import CheckpointError, cell_parameters, load_ckpt, load_weights, save_ckpt
from mindrlhf.models.lora import BASE_KEY
from mindrlhf.train.checkpoint import latest_checkpoint, read_ckpt
from mindrlhf.train.dpo import train_dpo
from mindrlhf.train.reward import score_texts, train_reward_model
from mindrlhf.train.sft import train_sft
from tests.helpers import load_transformers, set_mode, torch_forward
from tests.test_dpo import config as dpo_config
from tests.test_dpo import pairs  # noqa: F401  (the preference MindRecord fixture, 128 tokens)
from tests.test_lora_stages import LORA_FLAGS
from tests.test_reward_training import rm_config
from tests.test_sft import sft_config, train_file  # noqa: F401  (the SFT MindRecord fixture)

IDS = np.array([[5, 9, 300, 7, 1000, 42, 8, 11]], np.int32)


def newest(out_dir):
    return latest_checkpoint(os.path.join(out_dir, "checkpoint", "rank_0"))


def model_entries(path, model):
    """The entries of checkpoint ``path`` named like a parameter of ``model`` (not optimizer state)."""
    names = set(cell_parameters(model))
    return {n: v for n, v in read_ckpt(path).items() if n in names}


def assert_adapters_alone(path, model, heads=()):
    """Only adapters (and ``heads``) of ``model`` are in ``path``; no base weight, no moment of one."""
    entries = read_ckpt(path)
    assert BASE_KEY in entries
    saved = model_entries(path, model)
    assert saved and all(".lora_" in n or n.startswith(heads) for n in saved), sorted(saved)
    base = [n for n in cell_parameters(model) if ".lora_" not in n and not n.startswith(heads)]
    assert not [n for n in entries if any(n.endswith(b) for b in base)]  # nor their optimizer moments


def save_base(model_cfg, path, seed):
    ms.set_seed(seed)
    return save_ckpt(CausalLM(model_cfg), path)


def test_sft_lora_checkpoint_is_small_resumes_exactly_and_loads_into_the_next_stage(train_file, tmp_dir):  # noqa: F811
    set_mode("graph")
    flags = ("runner_config.epochs=2", *LORA_FLAGS)
    base = save_base(sft_config(tmp_dir, train_file).model.model_config, os.path.join(tmp_dir, "base.ckpt"), 7)
    straight_dir, broken_dir = os.path.join(tmp_dir, "straight"), os.path.join(tmp_dir, "broken")
    ms.set_seed(0)
    model, result = train_sft(sft_config(straight_dir, train_file, *flags, f"load_checkpoint={base}"))
    final = newest(straight_dir)
    assert_adapters_alone(final, model)
    assert os.path.getsize(final) < 0.05 * os.path.getsize(base)

    ms.set_seed(0)
    train_sft(sft_config(broken_dir, train_file, *flags, f"load_checkpoint={base}"), stop_at_step=3)
    ms.set_seed(123)  # another fresh init: the base must come from the checkpoint's record
    _, rest = train_sft(
        sft_config(broken_dir, train_file, *flags, f"load_checkpoint={os.path.join(broken_dir, 'checkpoint')}")
    )
    assert rest.state.global_step == len(result.losses) == 4 and len(rest.losses) == 1
    a, b = read_ckpt(final), read_ckpt(newest(broken_dir))
    assert set(a) == set(b)
    assert max(float(np.abs(a[n] - b[n]).max()) for n in a if n != BASE_KEY) <= 1e-6

    # the next stages read it merged: a plain model, a reward model's backbone, export-hf for transformers
    model.set_train(False)
    ours = model(Tensor(IDS)).asnumpy()
    plain = CausalLM(model.config)
    load_ckpt(plain, final)
    np.testing.assert_allclose(plain(Tensor(IDS)).asnumpy(), ours, atol=1e-4)
    reward = RewardModel(model.config)
    assert load_weights(reward, final, model.config, new_heads=True) == ["score.weight"]
    backbone = {n: p.asnumpy() for n, p in cell_parameters(plain).items() if n.startswith("backbone.")}
    assert all(np.array_equal(p.asnumpy(), backbone[n]) for n, p in cell_parameters(reward).items() if n in backbone)
    recipe, merged = os.path.join(tmp_dir, "recipe.yaml"), os.path.join(tmp_dir, "merged")
    save_config(sft_config(tmp_dir, train_file), recipe)
    assert (
        cli_main.main(
            ["export-hf", "--config", recipe, "--load_checkpoint", final, "--tokenizer", "none", "--output_dir", merged]
        )
        == 0
    )
    logits = torch_forward(load_transformers(merged).eval(), IDS, np.ones_like(IDS)).logits.numpy()
    np.testing.assert_allclose(logits, ours, atol=1e-4)

    # another base under the recorded name: refused in one line, when loaded and when resumed
    save_base(model.config, base, 8)
    with pytest.raises(CheckpointError, match="trained on the base .*base.ckpt.*another model") as err:
        load_ckpt(CausalLM(model.config), final)
    assert "\n" not in str(err.value)
    with pytest.raises(CheckpointError, match="another model"):
        train_sft(
            sft_config(
                broken_dir,
                train_file,
                *flags,
                "runner_config.epochs=3",
                f"load_checkpoint={os.path.join(broken_dir, 'checkpoint')}",
            )
        )


def test_reward_lora_checkpoint_holds_adapters_and_score_and_scores_as_trained(pairs, tmp_dir):  # noqa: F811
    set_mode("graph")
    cfg = rm_config(
        tmp_dir,
        pairs,
        "runner_config.epochs=1",
        "optimizer.learning_rate=2.0e-2",
        "lr_schedule.learning_rate=2.0e-2",
        *LORA_FLAGS,
    )
    base = save_base(cfg.model.model_config, os.path.join(tmp_dir, "sft.ckpt"), 3)
    model, _ = train_reward_model(dataclasses.replace(cfg, load_checkpoint=base))
    final = newest(tmp_dir)
    assert_adapters_alone(final, model, heads=("score.",))
    rows = [[5, 9, 300, 7, 50256], [11, 42, 8, 50256]]
    model.set_train(False)
    scored = RewardModel(model.config)  # what rm eval / rm infer / PPO's reward model load
    load_ckpt(scored, final)
    np.testing.assert_allclose(score_texts(scored, rows, 128, 50256), score_texts(model, rows, 128, 50256), atol=1e-5)


def test_dpo_lora_checkpoint_holds_adapters_and_refuses_another_start(pairs, tmp_dir):  # noqa: F811
    set_mode("graph")
    cfg = dpo_config(tmp_dir, *LORA_FLAGS)
    start, other = (
        save_base(cfg.model.model_config, os.path.join(tmp_dir, f"{n}.ckpt"), s) for n, s in (("sft", 4), ("other", 5))
    )
    policy, _ = train_dpo(cfg, pairs, sft_checkpoint=start, stop_at_step=1)
    assert_adapters_alone(newest(tmp_dir), policy)
    with pytest.raises(CheckpointError, match="another model"):
        train_dpo(cfg, pairs, sft_checkpoint=other, resume=os.path.join(tmp_dir, "checkpoint"))
