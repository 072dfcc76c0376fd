"""GRPO end to end on tiny models (CPU): learning against a toy reward of the reference answers, every parameter
training, metrics and checkpoints, exact resume (with num_iterations 2, dynamic sampling and RLOO too), the first
pass's ratio of 1, failing reward functions, two msrun workers against one process, and the ``mindrlhf grpo``
command with its errors. Graph mode, except the tests about saved state and errors (exact resume, a failing reward
function), which run in PYNATIVE mode: a ``train_grpo`` call there skips compiling its graphs, most of its time on
CPU.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from mindrlhf.config import GenerationConfig, GRPOConfig, ModelSection, RunConfig
from mindrlhf.data.convert_preference import atomic_mindrecord
from mindrlhf.data.convert_prompts import PROMPT_ANSWER_SCHEMA
from mindrlhf.rewards import CombinedReward, RewardFunctionError, load_reward_funcs
from mindrlhf.train.checkpoint import read_ckpt
from mindrlhf.train.rollout import RewardMix
from mindrlhf.train.grpo import (
    GRPOTrainer,
    build_policy_and_ref,
    format_grpo_line,
    grpo_prompt_source,
    repeat_prompts,
    train_grpo,
)
from tests.helpers import (
    PAD,
    parameter_arrays,
    rl_training_sections,
    run_two_msrun_workers,
    set_mode,
    tiny_gpt2_config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = {
    "gpt2": os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_grpo.yaml"),
    "llama": os.path.join(ROOT, "model_configs", "llama2_config", "run_llama2_tiny_grpo.yaml"),
}
VOCAB, WIDTH = 64, 8
TARGET = 7  # the reference answer of every prompt: the token the toy reward pays for
# what grpo_metrics.jsonl holds for every iteration (besides reward/<name> per reward function)
METRIC_KEYS = {
    "iteration",
    "global_step",
    "pg_loss",
    "clipfrac",
    "kl_k3",
    "entropy",
    "reward_mean",
    "reward_std",
    "kl",
    "response_length",
    "no_eos_rate",
    "kept_share",
    "loss",
    "seconds",
}


def write_prompts(path: str, count: int = 32, seed: int = 0, answers=None) -> str:
    """A prompt MindRecord in the converter's schema: random token prompts (lengths 3..WIDTH), each with the
    reference answer ``answers[i]`` (default ``str(TARGET)``)."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(count):
        n = int(rng.integers(3, WIDTH + 1))
        prompt = np.full(WIDTH, PAD, np.int64)
        prompt[:n] = rng.integers(3, VOCAB, n)
        records.append(
            {
                "prompt_ids": prompt,
                "prompt_length": np.int64(n),
                "pretrain_ids": np.full(4, PAD, np.int64),
                "loss_mask": np.zeros(4, np.int64),
                "answer": str(TARGET) if answers is None else answers[i],
            }
        )
    with atomic_mindrecord(path, PROMPT_ANSWER_SCHEMA) as writer:
        writer.write_raw_data(records)
    return path


def answer_share(prompts, responses, answers):
    """The toy reward: share of response tokens equal to the reference answer (a token id)."""
    del prompts
    return [float(np.mean([t == int(a) for t in r])) for r, a in zip(responses, answers)]


def low_share(prompts, responses, answers):
    """A dense toy reward (most groups' scores differ): share of response tokens in the lower half of the
    vocabulary."""
    del prompts, answers
    return [float(np.mean([t < VOCAB // 2 for t in r])) for r in responses]


def fragile_reward(prompts, completions, answers):
    """A text reward function (TRL protocol) that raises for a batch with a prompt whose answer is "raise" (alone,
    only that prompt's rows fail) and returns NaN for the rows whose answer is "nan"; 1.0 elsewhere."""
    del prompts, completions
    if "raise" in answers:
        raise ZeroDivisionError("cannot score this completion")
    return [float("nan") if a == "nan" else 1.0 for a in answers]


class DigitTokenizer:
    """Decodes token ids as space-separated numbers (the reward functions' text)."""

    def decode(self, ids):
        return " ".join(str(i) for i in ids)


def run_config(
    out: str, width: int = 32, max_new_tokens: int = 8, temperature: float = 1.0, eps: float = 1e-8, **grpo
) -> RunConfig:
    base = dict(epochs=2, num_prompts=4, num_generations=4, batch_size=8, num_iterations=1, beta=0.01)
    cfg = GRPOConfig(
        **{**base, **grpo}, generation=GenerationConfig(max_new_tokens=max_new_tokens, top_k=0, temperature=temperature)
    )
    model = tiny_gpt2_config(vocab_size=VOCAB, seq_length=32, hidden_size=width, intermediate_size=4 * width)
    return RunConfig(
        output_dir=out, model=ModelSection(model), grpo=cfg, **rl_training_sections(3e-3, weight_decay=0.0, eps=eps)
    )


@pytest.fixture
def prompts_file(tmp_dir):
    set_mode("graph")
    return write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"))


def metrics(out: str) -> list:
    with open(os.path.join(out, "grpo_metrics.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def checkpoint_files(out: str) -> list:
    return sorted(f for f in os.listdir(os.path.join(out, "checkpoint", "rank_0")) if f.endswith(".ckpt"))


def policy_at(out: str, iteration: int) -> dict:
    return read_ckpt(os.path.join(out, "checkpoint", "rank_0", f"policy_model_epoch_{iteration}.ckpt"))


def test_step_log_line():
    assert format_grpo_line(0, 1, 0.125, 3e-3, False, 1.0) == (
        "GRPO Batch: 0 | GRPO Update: 1 | loss: [0.125] | lr: [0.003] | is overflow: False | loss scale: 1.0"
    )


def test_reward_rises_every_parameter_trains_and_metrics_and_checkpoints_are_written(prompts_file, tmp_dir):
    """The share of the answer token rises clearly over 10 iterations (from about 1/64); every policy tensor
    moves, the reference does not."""
    out = os.path.join(tmp_dir, "out")
    cfg = run_config(
        out,
        width=64,
        epochs=10,
        num_prompts=4,
        num_generations=8,
        batch_size=16,
        num_iterations=2,
        save_checkpoint_epochs=4,
    )
    width, prompts = grpo_prompt_source(prompts_file, cfg, 0, 1)
    policy, ref = build_policy_and_ref(cfg.model.model_config, "", cfg.seed)
    before = {name: value.copy() for name, value in parameter_arrays(policy).items()}
    ref_before = {name: value.copy() for name, value in parameter_arrays(ref).items()}
    trainer = GRPOTrainer(cfg, policy, ref, answer_share, width, prompts)
    results = trainer.fit()
    assert [r.iteration for r in results] == list(range(10))
    assert (trainer.state.iteration, trainer.state.global_step) == (10, 10 * 2 * 2)

    rows = metrics(out)
    rewards = [m["reward_mean"] for m in rows]
    print("reward_mean per iteration:", [round(r, 3) for r in rewards])
    assert np.mean(rewards[-2:]) > np.mean(rewards[:2]) + 0.25, rewards
    assert [m["iteration"] for m in rows] == list(range(10))
    assert [m["global_step"] for m in rows] == [4 * (i + 1) for i in range(10)]
    for row in rows:
        assert METRIC_KEYS <= set(row), METRIC_KEYS - set(row)
        assert all(np.isfinite(row[k]) for k in METRIC_KEYS - {"seconds", "iteration", "global_step"})
        assert row["kept_share"] == 1.0 and 1 <= row["response_length"] <= 8
        assert {"generation", "scoring", "logprobs", "update", "total"} <= set(row["seconds"])
    assert rows[0]["kl"] == pytest.approx(0.0, abs=1e-5)  # the first rollouts come from the reference itself
    assert rows[-1]["kl"] > 0.01

    after = parameter_arrays(policy)
    unchanged = [n for n in before if np.array_equal(before[n], after[n])]
    assert not unchanged, unchanged
    assert all(np.array_equal(v, ref_before[n]) for n, v in parameter_arrays(ref).items())
    # every save_checkpoint_epochs (4) iterations and after the last; the policy file is the trained policy
    assert checkpoint_files(out) == sorted(
        f"{kind}_epoch_{i}.ckpt" for kind in ("policy_model", "grpo_state") for i in (3, 7, 9)
    )
    saved = policy_at(out, 9)
    assert set(saved) == set(after) and all(np.array_equal(saved[n], after[n]) for n in after)
    state = read_ckpt(os.path.join(out, "checkpoint", "rank_0", "grpo_state_epoch_9.ckpt"))
    assert (float(state["grpo_state.iteration"]), float(state["grpo_state.global_step"])) == (10.0, 40.0)
    assert os.path.isfile(os.path.join(out, "resolved_config.yaml"))
    with open(os.path.join(out, "log", "rank_0", "info.log"), encoding="utf-8") as f:
        assert f.read().count("GRPO Batch: ") == 40


@pytest.mark.parametrize(
    "settings",
    [
        dict(),
        dict(num_iterations=2, dynamic_sampling=True, advantage_estimator="rloo", batch_size=4),
    ],
    ids=["grpo", "rloo_dynamic_sampling_mu2"],
)
def test_resume_equals_one_uninterrupted_run(prompts_file, tmp_dir, settings):
    set_mode("pynative")  # about saved state, not the mode
    straight = os.path.join(tmp_dir, "straight")
    train_grpo(run_config(straight, epochs=3, **settings), prompts_file, answer_share)

    parts = os.path.join(tmp_dir, "parts")
    first = train_grpo(run_config(parts, epochs=3, **settings), prompts_file, answer_share, stop_after=2)
    assert first.state.iteration == 2
    resumed = train_grpo(
        run_config(parts, epochs=3, **settings), prompts_file, answer_share, resume=os.path.join(parts, "checkpoint")
    )
    assert resumed.state.iteration == 3

    reference, got = policy_at(straight, 2), policy_at(parts, 2)
    assert set(got) == set(reference)
    diff = max(float(np.abs(got[k] - reference[k]).max()) for k in reference)
    assert diff <= 1e-6, diff
    before_last = policy_at(parts, 1)
    assert max(float(np.abs(reference[k] - before_last[k]).max()) for k in reference) > 1e-4  # the last one trained
    straight_m, parts_m = metrics(straight), metrics(parts)
    assert [m["iteration"] for m in parts_m] == [0, 1, 2]
    assert [m["reward_mean"] for m in parts_m] == [m["reward_mean"] for m in straight_m]
    assert [m["global_step"] for m in parts_m] == [m["global_step"] for m in straight_m]
    assert checkpoint_files(straight) == sorted(
        f"{kind}_epoch_{i}.ckpt" for kind in ("policy_model", "grpo_state") for i in range(3)
    )
    if settings.get("dynamic_sampling"):
        # groups with equal scores were dropped (fewer steps than 2 passes x 4 minibatches), yet some trained
        kept = [m["kept_share"] for m in straight_m]
        assert min(kept) < 1.0 and all(k > 0 for k in kept), kept
        assert straight_m[-1]["global_step"] < 3 * 2 * 4


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_the_first_pass_ratio_is_one(prompts_file, tmp_dir, temperature):
    """num_iterations 1 and one minibatch of all rollouts: each step's policy is the sampling policy, so with a clip
    range of only 1e-5 no token is clipped (|ratio - 1| <= 1e-5 on every token); a second pass over the same
    rollouts (num_iterations 2) is clipped."""
    settings = dict(
        epochs=2,
        num_prompts=4,
        num_generations=4,
        batch_size=16,
        epsilon_low=1e-5,
        epsilon_high=1e-5,
        temperature=temperature,
    )
    out = os.path.join(tmp_dir, "one")
    train_grpo(run_config(out, num_iterations=1, **settings), prompts_file, low_share)
    rows = metrics(out)
    assert [m["global_step"] for m in rows] == [1, 2]
    assert [m["clipfrac"] for m in rows] == [0.0, 0.0]
    assert any(m["reward_std"] > 0 for m in rows)  # non-zero advantages: a ratio off 1 would have been clipped

    out = os.path.join(tmp_dir, "two")
    train_grpo(run_config(out, num_iterations=2, **settings), prompts_file, low_share)
    rows = metrics(out)
    assert [m["global_step"] for m in rows] == [2, 4]
    assert all(m["clipfrac"] > 0.05 for m in rows), rows  # the mean over a clean and a clipped step


@pytest.mark.parametrize(
    "marker,message",
    [
        (
            "raise",
            r"reward function 'tests.test_grpo:fragile_reward' failed on prompt index {}: ZeroDivisionError: "
            r"cannot score",
        ),
        ("nan", r"reward function 'tests.test_grpo:fragile_reward' returned nan for prompt index {} "),
    ],
)
def test_a_failing_reward_function_stops_grpo_naming_it_and_the_prompt(tmp_dir, marker, message):
    set_mode("pynative")  # about the error, not the mode
    answers = [str(TARGET)] * 16
    answers[5] = marker
    prompts_file = write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"), count=16, answers=answers)
    cfg = run_config(os.path.join(tmp_dir, "out"), epochs=4)
    funcs = load_reward_funcs([{"name": "tests.test_grpo:fragile_reward"}])
    reward = RewardMix(CombinedReward(funcs, DigitTokenizer()))
    # the first iteration whose prompts include record 5, and that record's first row among the rollouts
    _, source = grpo_prompt_source(prompts_file, cfg, 0, 1)
    iteration = next(i for i in range(4) if marker in source(i)["answer"])
    index = repeat_prompts(source(iteration), cfg.grpo.num_generations)["answer"].index(marker)
    with pytest.raises(RewardFunctionError, match=message.format(index)):
        train_grpo(cfg, prompts_file, reward)
    if iteration:  # the iterations before it ran
        assert [m["iteration"] for m in metrics(cfg.output_dir)] == list(range(iteration))


def test_bad_settings_are_refused_before_training(prompts_file, tmp_dir):
    with pytest.raises(ValueError, match="exceeds the policy's seq_length"):
        train_grpo(run_config(tmp_dir, max_new_tokens=30), prompts_file, answer_share)
    with pytest.raises(ValueError, match="finite scores"):
        train_grpo(run_config(tmp_dir), prompts_file, lambda p, r: [1.0])
    with pytest.raises(ValueError, match="reward functions"):
        RewardMix()


# ---------------------------------------------------------------------------------------------------------------
# data parallel

WORKER = os.path.join(ROOT, "tests", "grpo_dp_worker.py")
RANK_LOSS = re.compile(r"GRPO Batch: 0 \| GRPO Update: 0 \| loss: \[([^\]]+)\]")


def rank_losses(out: str, rank: int) -> list:
    with open(os.path.join(out, "log", f"rank_{rank}", "info.log"), encoding="utf-8") as f:
        return [float(v) for v in RANK_LOSS.findall(f.read())]


def one_process(prompts_file: str, out: str):
    """The two workers' global minibatches on one process: per iteration, rank 0's and rank 1's rollouts (their
    prompts, their sampling seeds, the current policy), REINFORCE++ advantages over all 16, then ONE step on the 16
    rows, each rank's in the row order its ``train_on`` uses, normalised by their total token count. Returns
    (initial and final policy parameters, losses, generated tokens of each rank's minibatch per iteration)."""
    from mindspore import Tensor

    from mindrlhf.train.grpo import TRAIN_COLUMNS, group_scores
    from tests.grpo_dp_worker import dp_config

    set_mode("graph")
    cfg = dp_config(out)
    grpo = cfg.grpo
    width, _ = grpo_prompt_source(prompts_file, cfg, 0, 1)
    sources = [grpo_prompt_source(prompts_file, cfg, rank, 2)[1] for rank in range(2)]
    policy, ref = build_policy_and_ref(cfg.model.model_config, "", cfg.seed)
    initial = {name: value.copy() for name, value in parameter_arrays(policy).items()}
    trainer = GRPOTrainer(cfg, policy, ref, low_share, width, sources[0])
    size = grpo.rollouts_per_epoch
    losses, tokens = [], []
    for iteration in range(grpo.epochs):
        raws = []
        for rank in range(2):
            trainer.maker.rank_id = rank
            prompts = repeat_prompts(sources[rank](iteration), grpo.num_generations)
            raws.append(trainer.maker.rollouts(prompts, iteration, cfg.seed))
        raw = {key: np.concatenate([part[key] for part in raws]) for key in raws[0]}
        # one process: the batch std over both ranks' rollouts
        raw["advantages"] = trainer.advantages(group_scores(raw, grpo))
        data = {name: raw[name] for name in TRAIN_COLUMNS}
        data["logprobs"] = raw["logprobs"] * raw["response_mask"]
        (rows,) = trainer.minibatches(np.arange(size), iteration, 0)  # each rank's one minibatch, in its order
        parts = (rows, size + rows)
        tokens.append([float(raw["response_mask"][part].sum()) for part in parts])
        both = np.concatenate(parts)
        inputs = [Tensor(data[name][both]) for name in TRAIN_COLUMNS]
        loss, overflow, _, _ = trainer.step(*inputs, Tensor(np.asarray([sum(tokens[-1])], np.float32)))
        assert not bool(overflow.asnumpy())
        losses.append(float(loss.asnumpy()))
    return initial, parameter_arrays(policy), losses, tokens


def test_two_grpo_workers_match_one_process(tmp_dir):
    """Two msrun CPU workers (token-level loss, REINFORCE++ advantages scaled over both ranks, responses of
    different lengths on the two ranks) end with identical policies, equal to one process that trains on both
    ranks' rollouts each iteration."""
    set_mode("graph")
    prompts_file = write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"), count=16)
    parallel = os.path.join(tmp_dir, "parallel")
    proc, logs = run_two_msrun_workers(tmp_dir, [WORKER, prompts_file, parallel])
    assert proc.returncode == 0, logs
    assert "data parallel: rank 1 of 2" in logs
    assert "worker 0 done at iteration 2" in logs and "worker 1 done at iteration 2" in logs

    final = os.path.join(parallel, "checkpoint", "rank_{}", "policy_model_epoch_1.ckpt")
    rank0, rank1 = (read_ckpt(final.format(rank)) for rank in range(2))
    assert rank0.keys() == rank1.keys()
    rank_diff = max(float(np.abs(rank0[k] - rank1[k]).max()) for k in rank0)
    assert rank_diff <= 1e-7, (rank_diff, {k: float(np.abs(rank0[k] - rank1[k]).max()) for k in rank0})
    local = [rank_losses(parallel, rank) for rank in range(2)]
    assert all(len(v) == 2 for v in local), local
    assert all(a != b for a, b in zip(*local)), local  # the ranks trained on different rollouts

    initial, reference, losses, tokens = one_process(prompts_file, os.path.join(tmp_dir, "single"))
    assert any(a != b for a, b in tokens), tokens  # the ranks' minibatches hold different token counts
    assert reference.keys() == rank0.keys()
    single_diff = max(float(np.abs(rank0[k] - reference[k]).max()) for k in rank0)
    print(
        f"rank0 vs rank1: {rank_diff:.3g}, ranks vs one process: {single_diff:.3g}, losses {local} vs {losses}, "
        f"tokens {tokens}"
    )
    assert single_diff <= 1e-5, single_diff
    assert min(float(np.abs(reference[k] - initial[k]).max()) for k in rank0) > 5e-4  # every tensor moved 50x more
    # each rank divides its token sums by half the global count: the one-process loss is the ranks' mean
    np.testing.assert_allclose(losses, np.mean(local, axis=0), atol=1e-5)
    rows = metrics(parallel)  # rank 0 writes the metrics, over both ranks' rollouts
    assert [m["iteration"] for m in rows] == [0, 1]


# ---------------------------------------------------------------------------------------------------------------
# mindrlhf grpo

QA = [
    {
        "question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
        "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7",
    },
    {"question": "A box holds 12 pens. How many pens are in 2 boxes?", "answer": "12 * 2 = 24\n#### 24"},
    {"question": "Sara reads 5 pages a day. How many pages does she read in a week?", "answer": "35"},
    {"question": "What is 100 minus 58?", "answer": "#### 42"},
]


def cli(*argv, cwd, env=None):
    return subprocess.run(
        [sys.executable, "-m", "mindrlhf.cli.main", *argv],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


@pytest.fixture(scope="module")
def gsm8k_prompts(tmp_path_factory):
    """GSM8K-style {question, answer} records converted by ``mindrlhf convert-prompts`` (GPT-2 tokenizer, QA
    template)."""
    work = str(tmp_path_factory.mktemp("grpo_cli"))
    src = os.path.join(work, "gsm8k.jsonl")
    with open(src, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in QA)
    dst = os.path.join(work, "prompts.mindrecord")
    proc = cli(
        "convert-prompts",
        "--tokenizer_name_or_path",
        "gpt2",
        "--file_path",
        src,
        "--output_path",
        dst,
        "--max_prompt_length",
        "48",
        "--seq_length",
        "64",
        "--pad_token_id",
        "50256",
        "--template",
        "qa",
        "--allow_truncation",
        cwd=work,
    )  # a narrow width keeps the test fast; the template alone is 56
    assert proc.returncode == 0, proc.stderr[-3000:]
    return work, dst


def test_grpo_command_runs_the_tiny_recipe(gsm8k_prompts):
    work, data = gsm8k_prompts
    out = os.path.join(work, "out")
    proc = cli(
        "grpo",
        "--config",
        RECIPES["gpt2"],
        "--dataset_dir",
        data,
        "--output_dir",
        out,
        "--set",
        "grpo.epochs=2",
        "--set",
        "grpo.num_prompts=2",
        "--set",
        "grpo.num_generations=2",
        "--set",
        "grpo.batch_size=2",
        "--set",
        "grpo.generation.max_new_tokens=8",
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "GRPO Batch: 0 | GRPO Update: 0 | loss: [" in proc.stdout
    rows = metrics(out)
    assert [m["iteration"] for m in rows] == [0, 1]
    assert [m["global_step"] for m in rows] == [2, 4]
    for row in rows:
        assert METRIC_KEYS <= set(row)
        # the recipe's reward functions, each function's mean score (accuracy needs the converted answers)
        assert {"reward/accuracy", "reward/format", "reward/length"} <= set(row)
        assert row["reward/length"] < 0
    assert checkpoint_files(out) == sorted(
        f"{kind}_epoch_{i}.ckpt" for kind in ("policy_model", "grpo_state") for i in range(2)
    )


@pytest.mark.parametrize(
    "overrides,expected",
    [
        (["grpo.reward_funcs=[{name: acuracy}]"], "unknown reward function 'acuracy' (did you mean 'accuracy'?)"),
        (
            ["grpo.reward_funcs=[{name: 'broken_reward_module:score'}]"],
            "cannot import module 'broken_reward_module': ImportError: needs the scoring service",
        ),
        (["grpo.batch_size=6"], "grpo.batch_size 6 must be a multiple of num_generations 4"),
        (["grpo.epsilon_low=0.3", "grpo.epsilon_high=0.2"], "grpo.epsilon_high 0.2 must be >= epsilon_low 0.3"),
    ],
    ids=["unknown_name", "module_fails_to_import", "batch_not_whole_groups", "epsilon_high_below_low"],
)
def test_grpo_command_errors_are_one_line_before_any_model(gsm8k_prompts, overrides, expected):
    work, data = gsm8k_prompts
    with open(os.path.join(work, "broken_reward_module.py"), "w", encoding="utf-8") as f:
        f.write('raise ImportError("needs the scoring service")\n')
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([work, ROOT, os.environ.get("PYTHONPATH", "")]))
    out = os.path.join(work, "bad")
    flags = [arg for item in overrides for arg in ("--set", item)]
    proc = cli(
        "grpo", "--config", RECIPES["gpt2"], "--dataset_dir", data, "--output_dir", out, *flags, cwd=work, env=env
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and expected in last, proc.stderr[-3000:]
    assert not os.path.exists(out)  # stopped before any model, log or checkpoint


def test_grpo_command_reports_a_failing_reward_function_in_one_line(gsm8k_prompts):
    work, data = gsm8k_prompts
    with open(os.path.join(work, "down_reward_module.py"), "w", encoding="utf-8") as f:
        f.write("def score(prompts, completions, answers):\n    raise RuntimeError('scoring service down')\n")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([work, ROOT, os.environ.get("PYTHONPATH", "")]))
    proc = cli(
        "grpo",
        "--config",
        RECIPES["gpt2"],
        "--dataset_dir",
        data,
        "--output_dir",
        os.path.join(work, "down"),
        "--set",
        "grpo.reward_funcs=[{name: accuracy}, {name: 'down_reward_module:score'}]",
        "--set",
        "grpo.generation.max_new_tokens=4",
        cwd=work,
        env=env,
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: reward function 'down_reward_module:score' failed on prompt index 0: RuntimeError: scoring service down"
    ), proc.stderr[-3000:]


@pytest.mark.parametrize("family", sorted(RECIPES))
def test_tiny_recipes_are_small_cpu_grpo_runs(family):
    from mindrlhf.config import load_config

    cfg = load_config(RECIPES[family])
    grpo = cfg.grpo
    assert cfg.context.device_target == "CPU" and cfg.model.model_config.hidden_size == 64
    assert grpo.rollouts_per_epoch <= 32 and grpo.generation.max_new_tokens <= 32
    assert [f["name"] for f in grpo.reward_funcs] == ["accuracy", "format", "length"]
    assert load_reward_funcs(grpo.reward_funcs)  # every name resolves
