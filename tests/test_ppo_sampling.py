"""PPO's log-probs are those of the sampling distribution ``softmax(logits / T)`` (graph mode, CPU, tiny GPT-2 with
spread-out random weights, T = 0.7): the experience's old log-probs match a numpy log-softmax of the model's logits
at T (and not at T = 1, so the checks can fail), the first minibatch's new log-probs equal the old ones (ratio 1,
approx_kl and clipfrac 0 before any update), and the sampled per-token KL estimate ``logp - ref_logp`` against a
perturbed reference is the expected KL of the sampling distributions; the configuration refuses top-k, top-p and
greedy rollouts."""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest
from mindspore import Tensor

from mindrlhf.config import ConfigError, GenerationConfig, PPOConfig, load_config
from mindrlhf.train.ppo import LOSS_METRICS, PPOTrainer, build_ppo_models, prompt_source, token_counts
from tests.helpers import randomize_parameters, set_mode
from tests.test_ppo import WIDTH, run_config, target_reward, write_prompts

TEMPERATURE = 0.7
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def window_logits(lm, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``(B, N, V)`` float64 logits of ``lm`` predicting each response token (the unscaled model output)."""
    logits = lm(Tensor(tokens), Tensor(mask)).asnumpy().astype(np.float64)
    return logits[:, WIDTH - 1 : tokens.shape[1] - 1]


def picked(logp: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """``(B, N, V)`` log-probs, ``(B, L)`` tokens -> ``(B, N)`` log-prob of each response token."""
    return np.take_along_axis(logp, tokens[:, WIDTH:, None].astype(np.int64), -1)[..., 0]


def sampling_trainer(out: str, prompts_file: str, rollouts: int, ref_noise: float = 0.0):
    """A PPO trainer at T = 0.7 whose policy has N(0, 0.2) weights (peaked next-token distributions) and whose
    reference is that policy plus N(0, ``ref_noise``) noise."""
    cfg = run_config(out, epochs=1, num_rollouts=rollouts, chunk_size=rollouts, batch_size=4)
    cfg.ppo.generation = dataclasses.replace(cfg.ppo.generation, temperature=TEMPERATURE)
    width, prompts = prompt_source(prompts_file, cfg, 0, 1)
    models = build_ppo_models(cfg.model.model_config, cfg.ppo, target_reward)
    randomize_parameters(models.policy, seed=1)
    rng = np.random.default_rng(2)
    ref = {p.name: p for p in models.ref.get_parameters()}
    for param in models.policy.get_parameters():
        if param.name in ref:
            value = param.asnumpy()
            ref[param.name].set_data(Tensor((value + rng.normal(0.0, ref_noise, value.shape)).astype(np.float32)))
    return PPOTrainer(cfg, models, width, prompts), prompts


def test_first_ratio_is_one_at_the_sampling_temperature(tmp_dir):
    set_mode("graph")
    prompts_file = write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"), count=8)
    trainer, prompts = sampling_trainer(tmp_dir, prompts_file, rollouts=8)
    experience, _ = trainer.maker.make_experience(prompts(0), 0, trainer.cfg.seed)
    tokens, mask = experience.response_tensors, experience.attention_mask
    response_mask = experience.response_mask == 1

    # the old log-probs are those of softmax(z / T), the distribution the generator sampled from
    logits = window_logits(trainer.models.policy, tokens, mask)
    sampling = picked(log_softmax(logits / TEMPERATURE), tokens)
    at_t1 = picked(log_softmax(logits), tokens)
    np.testing.assert_allclose(experience.logprobs[response_mask], sampling[response_mask], atol=2e-5)
    assert np.abs(at_t1 - sampling)[response_mask].max() > 0.1  # T = 1 scoring would fail the check above

    # the first minibatch: new log-probs equal the old ones, so ratio 1, approx_kl 0 and clipfrac 0 before the update
    data = experience.as_dict()
    rows = trainer.minibatches(len(experience), 0, 0)[0]
    new = trainer.loss_net.policy_outputs(Tensor(tokens[rows]), Tensor(mask[rows]))[1].asnumpy()
    log_ratio = (new - experience.logprobs[rows])[response_mask[rows]]
    assert np.abs(log_ratio).max() <= 1e-5, np.abs(log_ratio).max()
    _, overflow, _, metrics = trainer.step(*trainer.step_inputs(data, rows, token_counts(data, rows, WIDTH)))
    metrics = dict(zip(LOSS_METRICS, metrics.asnumpy()))
    assert not bool(overflow.asnumpy())
    assert metrics["clipfrac"] == 0.0 and abs(metrics["approx_kl"]) < 1e-9, metrics
    # the entropy metric is that of the sampling distribution too
    probs = np.exp(log_softmax(logits[rows] / TEMPERATURE))
    entropy = -(probs * np.log(probs)).sum(-1)[response_mask[rows]].mean()
    assert metrics["entropy"] == pytest.approx(entropy, abs=1e-4)


def test_sampled_kl_estimate_is_the_expected_kl_of_the_sampling_distributions(tmp_dir):
    """Each response token is drawn from p_T(. | context), so ``logp - ref_logp`` at that token averages, over many
    rollouts, to the mean over the same contexts of the exact KL(p_T || ref_T), which is >= 0."""
    set_mode("graph")
    prompts_file = write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"), count=64)
    trainer, prompts = sampling_trainer(tmp_dir, prompts_file, rollouts=64, ref_noise=0.05)
    raw = trainer.maker.rollouts(prompts(0), 0, trainer.cfg.seed)
    tokens, mask = raw["response_tensors"], raw["attention_mask"]
    response_mask = raw["response_mask"] == 1
    policy = log_softmax(window_logits(trainer.models.policy, tokens, mask) / TEMPERATURE)
    ref = log_softmax(window_logits(trainer.models.ref, tokens, mask) / TEMPERATURE)
    np.testing.assert_allclose(raw["ref_logprobs"][response_mask], picked(ref, tokens)[response_mask], atol=2e-5)
    sample = (raw["logprobs"] - raw["ref_logprobs"])[response_mask]
    expected = (np.exp(policy) * (policy - ref)).sum(-1)[response_mask]  # KL(p_T || ref_T) at each context
    noise = (sample - expected).std() / np.sqrt(sample.size)
    print(f"{sample.size} tokens: sampled KL {sample.mean():.4f}, expected {expected.mean():.4f} +- {noise:.4f}")
    assert expected.mean() > 5 * noise  # the reference differs enough for the estimate to mean something
    assert abs(sample.mean() - expected.mean()) < 4 * noise
    assert sample.mean() > -noise


@pytest.mark.parametrize(
    "generation, words",
    [
        (dict(top_k=5), ["top_k 5", "top_k: 0"]),
        (dict(top_p=0.9), ["top_p 0.9", "top_p: 1.0"]),
        (dict(do_sample=False), ["greedy", "do_sample: True"]),
    ],
)
def test_truncated_or_greedy_sampling_is_refused(generation, words):
    with pytest.raises(ConfigError) as err:
        PPOConfig(generation=GenerationConfig(**generation))
    for word in words + ["another distribution"]:
        assert word in str(err.value)
    PPOConfig(generation=GenerationConfig(temperature=0.7))  # a temperature alone is fine
    with pytest.raises(ConfigError, match="ppo.generation.top_k"):
        load_config(
            os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_ppo.yaml"), ["ppo.generation.top_k=5"]
        )


def test_a_generation_section_replaced_after_validation_is_checked_again(tmp_dir):
    set_mode("graph")
    prompts_file = write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"), count=8)
    cfg = run_config(tmp_dir, epochs=1)
    cfg.ppo.generation = dataclasses.replace(cfg.ppo.generation, top_k=3)
    width, prompts = prompt_source(prompts_file, cfg, 0, 1)
    models = build_ppo_models(cfg.model.model_config, cfg.ppo, target_reward)
    with pytest.raises(ConfigError, match="top_k 3"):
        PPOTrainer(cfg, models, width, prompts)
