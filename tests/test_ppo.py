"""PPO end to end on tiny models (CPU): learning against an analytic reward, the experience layout against the
policy's own log-probs, checkpoints and exact resume, the stages mode, the separate critic, errors. Learning and the
experience run in graph mode; the tests about saved state (resume, stages, extending a finished run, errors) and the
separate critic's start run in PYNATIVE mode, where a ``train_ppo`` call skips compiling its graphs (most of its time
on CPU)."""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pytest
from mindspore import Tensor

from mindrlhf.config import ModelSection, PPOConfig, RunConfig
from mindrlhf.data.convert_preference import atomic_mindrecord
from mindrlhf.data.convert_prompts import PROMPT_SCHEMA
from mindrlhf.models import CausalLM, RewardModel
from mindrlhf.models.convert import load_ckpt, save_ckpt
from mindrlhf.train.checkpoint import read_ckpt
from mindrlhf.train.ppo import PPOTrainer, build_ppo_models, format_ppo_line, prompt_source, train_ppo
from tests.helpers import PAD, parameter_arrays, rl_training_sections, set_mode, tiny_gpt2_config, tiny_llama_config

VOCAB, WIDTH, PRETRAIN = 64, 8, 17
TARGET = 7  # the token the analytic reward pays for


def write_prompts(path: str, count: int = 32, seed: int = 0, with_pretrain: bool = False) -> str:
    """A prompt MindRecord of random token prompts (lengths 3..WIDTH) in the converter's schema."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(count):
        n = int(rng.integers(3, WIDTH + 1))
        prompt = np.full(WIDTH, PAD, np.int64)
        prompt[:n] = rng.integers(3, VOCAB, n)
        pretrain = np.full(PRETRAIN, PAD, np.int64)
        loss_mask = np.zeros(PRETRAIN, np.int64)
        if with_pretrain:
            answer = rng.integers(3, VOCAB, 6)
            pretrain[:n], pretrain[n : n + 6] = prompt[:n], answer
            loss_mask[n : n + 6] = 1
        records.append(
            {"prompt_ids": prompt, "prompt_length": np.int64(n), "pretrain_ids": pretrain, "loss_mask": loss_mask}
        )
    with atomic_mindrecord(path, PROMPT_SCHEMA) as writer:
        writer.write_raw_data(records)
    return path


def target_reward(prompts, responses):
    """Share of response tokens equal to TARGET."""
    del prompts
    return [float(np.mean([t == TARGET for t in r])) for r in responses]


def run_config(
    out: str, family=tiny_gpt2_config, width: int = 32, lr: float = 3e-3, eps: float = 1e-8, **ppo
) -> RunConfig:
    base = dict(epochs=2, num_rollouts=8, chunk_size=4, batch_size=4, ppo_epochs=1, kl_coef=0.01)
    settings = {**base, **ppo}
    generation = settings.pop("max_new_tokens", 8)
    cfg = PPOConfig(**settings)
    cfg.generation = dataclasses.replace(cfg.generation, max_new_tokens=generation)
    model = family(vocab_size=VOCAB, seq_length=32, hidden_size=width, intermediate_size=4 * width)
    return RunConfig(output_dir=out, model=ModelSection(model), ppo=cfg, **rl_training_sections(lr, eps=eps))


@pytest.fixture
def prompts_file(tmp_dir):
    set_mode("graph")
    return write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"))


def metrics(out: str) -> list:
    with open(os.path.join(out, "ppo_metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_seed_log_line():
    assert format_ppo_line(0, 0, 9.821571, 2.25e-08, False, 4096.0) == (
        "PPO Batch: 0 | PPO Epoch: 0 | loss: [9.821571] | lr: [2.25e-08] | is overflow: False | loss scale: 4096.0"
    )


def test_reward_rises_and_the_kl_penalty_holds_the_policy_back(prompts_file, tmp_dir):
    """trlx's PPO-only smoke test with an analytic reward: the share of TARGET tokens rises over iterations; a
    20x larger KL coefficient keeps the policy far closer to the reference."""
    settings = dict(width=64, epochs=12, num_rollouts=16, chunk_size=16, batch_size=8, ppo_epochs=2)
    free = os.path.join(tmp_dir, "free")
    train_ppo(run_config(free, **settings), prompts_file, target_reward)
    held = os.path.join(tmp_dir, "held")
    train_ppo(run_config(held, kl_coef=0.2, **settings), prompts_file, target_reward)
    free_m, held_m = metrics(free), metrics(held)
    rewards = [m["reward_mean"] for m in free_m]
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]) + 0.25, rewards
    assert all(np.isfinite(m["kl"]) and np.isfinite(m["loss"]) for m in free_m + held_m)
    assert held_m[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollouts come from the reference itself
    assert np.mean([m["kl"] for m in held_m[-3:]]) < np.mean([m["kl"] for m in free_m[-3:]]) / 3
    assert np.mean([m["kl"] for m in held_m[-3:]]) < 2.0
    for key in (
        "reward_std",
        "entropy",
        "clipfrac",
        "approx_kl",
        "vf_loss",
        "explained_variance",
        "response_length",
        "kl_coef",
        "no_eos_rate",
    ):
        assert key in free_m[-1]


def test_experience_matches_the_policy_and_every_parameter_trains(prompts_file, tmp_dir):
    cfg = run_config(tmp_dir, epochs=1)
    width, prompts = prompt_source(prompts_file, cfg, 0, 1)
    models = build_ppo_models(cfg.model.model_config, cfg.ppo, target_reward)
    before = {name: value.copy() for name, value in parameter_arrays(models.policy).items()}
    trainer = PPOTrainer(cfg, models, width, prompts)
    experience, stats = trainer.maker.make_experience(prompts(0), 0, cfg.seed)

    # layout: prompt right-aligned at P, response from column P, mask = real tokens
    mask = experience.attention_mask
    assert (mask[:, WIDTH - 1] == 1).all() and (experience.response_mask.sum(1) >= 1).all()
    assert (experience.response_tensors[mask == 0] == PAD).all()
    # log-probs and KL: the reference is the policy, so rewards are the score on each row's last token
    unpadded = CausalLM(cfg.model.model_config)
    load_ckpt(unpadded, save_ckpt(models.ref, os.path.join(tmp_dir, "ref.ckpt")))
    for row in range(len(experience)):
        tokens = experience.response_tensors[row][mask[row] == 1]
        ref = unpadded.logprobs(Tensor(tokens[None].astype(np.int32))).asnumpy()[0]
        n = int(experience.response_mask[row].sum())
        np.testing.assert_allclose(experience.logprobs[row, :n], ref[-n:], atol=2e-5)
        assert (experience.logprobs[row, n:] == 0).all()
        expected = np.zeros(experience.rewards.shape[1], np.float32)
        expected[n - 1] = target_reward(None, [tokens[-n:].tolist()])[0]
        np.testing.assert_allclose(experience.rewards[row], expected, atol=1e-6)
    assert stats.kl == pytest.approx(0.0, abs=1e-5)

    trainer.train_on(experience, 0)
    after = parameter_arrays(models.policy)
    unchanged = [n for n in before if np.array_equal(before[n], after[n])]
    assert not unchanged, unchanged
    assert all(
        np.array_equal(a, b) for a, b in zip(parameter_arrays(models.ref).values(), parameter_arrays(unpadded).values())
    )


def test_llama_experience_log_probs_match_unpadded_scoring(prompts_file, tmp_dir):
    cfg = run_config(tmp_dir, family=tiny_llama_config, epochs=1)
    width, prompts = prompt_source(prompts_file, cfg, 0, 1)
    models = build_ppo_models(cfg.model.model_config, cfg.ppo, target_reward)
    trainer = PPOTrainer(cfg, models, width, prompts)
    experience, _ = trainer.maker.make_experience(prompts(0), 0, cfg.seed)
    for row in range(len(experience)):
        tokens = experience.response_tensors[row][experience.attention_mask[row] == 1]
        ref = models.policy.logprobs(Tensor(tokens[None].astype(np.int32))).asnumpy()[0]
        n = int(experience.response_mask[row].sum())
        np.testing.assert_allclose(experience.logprobs[row, :n], ref[-n:], atol=2e-5)


def test_resume_and_stages_equal_one_uninterrupted_run(prompts_file, tmp_dir):
    set_mode("pynative")  # about saved state, not the mode
    straight = os.path.join(tmp_dir, "straight")
    train_ppo(run_config(straight, epochs=3), prompts_file, target_reward)

    parts = os.path.join(tmp_dir, "parts")
    first = train_ppo(run_config(parts, epochs=3), prompts_file, target_reward, stop_after=2)
    assert first.state.iteration == 2
    train_ppo(run_config(parts, epochs=3), prompts_file, target_reward, resume=os.path.join(parts, "checkpoint"))

    staged = os.path.join(tmp_dir, "staged")
    data = os.path.join(tmp_dir, "experience.mindrecord")
    for iteration in range(3):
        resume = os.path.join(staged, "checkpoint") if iteration else ""
        train_ppo(
            run_config(staged, epochs=3),
            prompts_file,
            target_reward,
            resume=resume,
            save_data_file=data,
            stage="experience",
        )
        train_ppo(
            run_config(staged, epochs=3), prompts_file, target_reward, resume=resume, save_data_file=data, stage="train"
        )

    final = "checkpoint/rank_0/policy_model_epoch_2.ckpt"
    reference = read_ckpt(os.path.join(straight, final))
    for other in (parts, staged):
        got = read_ckpt(os.path.join(other, final))
        assert set(got) == set(reference)
        assert max(float(np.abs(got[k] - reference[k]).max()) for k in reference) <= 1e-6
    assert [m["reward_mean"] for m in metrics(straight)] == [m["reward_mean"] for m in metrics(staged)]
    kept = sorted(f for f in os.listdir(os.path.join(straight, "checkpoint", "rank_0")) if f.endswith(".ckpt"))
    assert kept == sorted(f"{kind}_epoch_{i}.ckpt" for kind in ("policy_model", "ppo_state") for i in range(3))


def test_separate_critic_starts_from_the_reward_model(tmp_dir):
    set_mode("pynative")  # about where the critic starts and what the reward model scores (graph mode: test_demo.py)
    prompts_file = write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"), with_pretrain=True)
    cfg = run_config(os.path.join(tmp_dir, "out"), epochs=1, is_shared_backbone=False, pretrain_coef=0.5)
    reward_cfg = tiny_gpt2_config(vocab_size=VOCAB, seq_length=32)
    reward = RewardModel(reward_cfg)
    reward_ckpt = save_ckpt(reward, os.path.join(tmp_dir, "rm.ckpt"))
    trainer = train_ppo(cfg, prompts_file, reward_cfg, reward_checkpoint=reward_ckpt)
    models = trainer.models
    saved = read_ckpt(reward_ckpt)
    critic_file = os.path.join(tmp_dir, "out", "checkpoint", "rank_0", "critic_model_epoch_0.ckpt")
    critic = read_ckpt(critic_file)
    assert set(critic) == set(saved)  # the critic file loads into a RewardModel / Critic as is
    assert any(not np.array_equal(critic[k], saved[k]) for k in saved)  # and it trained
    np.testing.assert_array_equal(parameter_arrays(models.reward)["score.weight"], saved["score.weight"])
    last = metrics(os.path.join(tmp_dir, "out"))[-1]
    assert last["ptx_loss"] > 0 and np.isfinite(last["ptx_loss"])
    # the reward model scored each rollout at its own eos: the one it emitted, or one appended to a cut rollout
    width, prompts = prompt_source(prompts_file, cfg, 0, 1)
    experience, stats = trainer.maker.make_experience(prompts(1), 1, cfg.seed)
    eos = reward_cfg.eos_token_id
    assert (
        0
        < sum(int(row[m == 1][-1] == eos) for row, m in zip(experience.response_tensors, experience.attention_mask))
        < len(experience)
    )
    for row in range(len(experience)):
        tokens = experience.response_tensors[row][experience.attention_mask[row] == 1].astype(np.int32)
        tokens = tokens if tokens[-1] == eos else np.append(tokens, np.int32(eos))
        score = reward(Tensor(tokens[None]), Tensor(np.ones((1, len(tokens)), np.int32))).asnumpy()[0]
        assert stats.scores[row] == pytest.approx(score, abs=1e-5)


def test_bad_inputs_are_clear(prompts_file, tmp_dir):
    set_mode("pynative")  # about errors and the stages' saved state, not the mode
    with pytest.raises(ValueError, match="exceeds the policy's seq_length"):
        train_ppo(run_config(tmp_dir, max_new_tokens=30), prompts_file, target_reward)
    with pytest.raises(ValueError, match="vocab_size"):
        train_ppo(run_config(tmp_dir), prompts_file, tiny_gpt2_config(vocab_size=VOCAB + 1))
    with pytest.raises(ValueError, match="needs save_data_file"):
        train_ppo(run_config(tmp_dir), prompts_file, target_reward, stage="train")
    with pytest.raises(FileNotFoundError, match="missing.mindrecord"):
        train_ppo(run_config(tmp_dir), os.path.join(tmp_dir, "missing.mindrecord"), target_reward)
    with pytest.raises(ValueError, match="finite scores"):
        train_ppo(run_config(tmp_dir), prompts_file, lambda p, r: [1.0])
    data = os.path.join(tmp_dir, "exp.mindrecord")
    out = os.path.join(tmp_dir, "stages")
    train_ppo(run_config(out), prompts_file, target_reward, save_data_file=data, stage="experience")
    train_ppo(run_config(out), prompts_file, target_reward, save_data_file=data, stage="train")
    with pytest.raises(ValueError, match="iteration 0, but the run is at iteration 1"):
        train_ppo(
            run_config(out),
            prompts_file,
            target_reward,
            save_data_file=data,
            stage="train",
            resume=os.path.join(out, "checkpoint"),
        )


def test_models_load_hugging_face_and_checkpoint_roots(tmp_dir):
    """The policy and reference start from an SFT model exported as a Hugging Face folder, the reward model and
    the critic from a reward model's training-checkpoint root (rank_0/ with optimizer state beside the weights)."""
    from mindrlhf.models.convert import save_hf_checkpoint

    cfg = tiny_gpt2_config(vocab_size=VOCAB)
    sft = CausalLM(cfg)
    sft_dir = save_hf_checkpoint(sft, cfg, os.path.join(tmp_dir, "sft_hf"))
    reward = RewardModel(cfg)
    root = os.path.join(tmp_dir, "rm", "checkpoint")
    save_ckpt(
        reward,
        os.path.join(root, "rank_0", "rm_rank_0-10_1.ckpt"),
        append_dict={"epoch": 0, "step_in_epoch": 10, "global_step": 10},
    )
    ppo = PPOConfig(is_shared_backbone=False)
    models = build_ppo_models(cfg, ppo, cfg, sft_checkpoint=sft_dir, reward_checkpoint=root)
    expected = parameter_arrays(sft)
    for model in (models.policy, models.ref):
        got = parameter_arrays(model)
        assert all(np.array_equal(got[n], expected[n]) for n in expected)
    assert "v_head.weight" not in parameter_arrays(models.policy)  # the separate critic carries the values
    rm_expected = parameter_arrays(reward)
    assert all(np.array_equal(v, rm_expected[n]) for n, v in parameter_arrays(models.reward).items())
    critic = parameter_arrays(models.critic)
    assert all(np.array_equal(critic["critic." + n], v) for n, v in rm_expected.items())


def test_few_prompts_cycle_and_a_finished_run_can_be_extended(tmp_dir):
    set_mode("pynative")  # about saved state, not the mode
    prompts_file = write_prompts(os.path.join(tmp_dir, "few.mindrecord"), count=3)  # fewer than num_rollouts
    out = os.path.join(tmp_dir, "out")
    first = train_ppo(run_config(out, epochs=1, num_rollouts=8), prompts_file, target_reward)
    assert first.state.iteration == 1
    more = train_ppo(
        run_config(out, epochs=2, num_rollouts=8), prompts_file, target_reward, resume=os.path.join(out, "checkpoint")
    )
    assert (more.state.iteration, more.state.global_step) == (2, 4)
    assert [m["iteration"] for m in metrics(out)] == [0, 1]
