"""PPO data parallel for real: two msrun CPU workers run 3 PPO iterations (graph mode, analytic reward) with
adaptive KL, advantage whitening, running reward scaling, the missing-eos penalty and responses of different
lengths on the two ranks, and end with identical policies, KL coefficients and score moments, equal to one process
that makes both ranks' rollouts with the same policy, computes the experience statistics over all of them and takes
one step on their concatenation each iteration. (That each global statistic differs from its rank-local version,
so that these checks can fail, is shown in tests/test_ppo_statistics.py.)"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from mindrlhf.train.checkpoint import read_ckpt
from mindrlhf.train.experience import build_experience
from mindrlhf.train.ppo import PPOTrainer, build_ppo_models, prompt_source, token_counts
from tests.helpers import parameter_arrays, run_two_msrun_workers, set_mode
from tests.ppo_dp_worker import dp_config
from tests.test_ppo import target_reward, write_prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "ppo_dp_worker.py")
FINAL = os.path.join("checkpoint", "{}", "{}_epoch_2.ckpt")
LOSS = re.compile(r"PPO Batch: 0 \| PPO Epoch: 0 \| loss: \[([^\]]+)\]")
STATE = ("kl_coef", "score_mean", "score_var", "score_count")


def rank_losses(out: str, rank: int) -> list:
    with open(os.path.join(out, "log", f"rank_{rank}", "info.log"), encoding="utf-8") as f:
        return [float(v) for v in LOSS.findall(f.read())]


def one_process(prompts_file: str, out: str):
    """The global minibatches of the two workers on one process: per iteration, rank 0's and rank 1's rollouts
    (their prompts, their sampling seeds, the current policy), the experience built from all 8 with this process's
    KL controller and score moments, then ONE step on the 8 rows, each rank's in the row order its ``train_on``
    uses. Returns (initial and final policy parameters, losses, generated tokens of each rank's minibatch per
    iteration, the final KL coefficient and score moments)."""
    set_mode("graph")
    cfg = dp_config(out)
    width, _ = prompt_source(prompts_file, cfg, 0, 1)
    sources = [prompt_source(prompts_file, cfg, rank, 2)[1] for rank in range(2)]
    models = build_ppo_models(cfg.model.model_config, cfg.ppo, target_reward, seed=cfg.seed)
    trainer = PPOTrainer(cfg, models, width, sources[0])
    maker, size = trainer.maker, cfg.ppo.num_rollouts
    initial = {name: value.copy() for name, value in parameter_arrays(models.policy).items()}
    losses, tokens = [], []
    for iteration in range(cfg.ppo.epochs):
        raws = []
        for rank in range(2):
            maker.rank_id = rank
            raws.append(maker.rollouts(sources[rank](iteration), iteration, cfg.seed))
        raw = {key: np.concatenate([part[key] for part in raws]) for key in raws[0]}
        data = build_experience(raw, cfg.ppo, maker.kl_controller, maker.score_moments)[0].as_dict()
        (rows,) = trainer.minibatches(size, iteration, 0)  # each rank's one minibatch, in its row order
        tokens.append([float(token_counts(data, part, width)[0]) for part in (rows, size + rows)])
        both = np.concatenate([rows, size + rows])
        loss, overflow, _, _ = trainer.step(*trainer.step_inputs(data, both, token_counts(data, both, width)))
        assert not bool(overflow.asnumpy())
        losses.append(float(loss.asnumpy()))
    moments = maker.score_moments
    state = dict(zip(STATE, (maker.kl_controller.value, moments.mean, moments.var, moments.count)))
    return initial, parameter_arrays(models.policy), losses, tokens, state


def test_two_ppo_workers_match_one_process(tmp_dir):
    prompts_file = write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"), count=16)
    parallel = os.path.join(tmp_dir, "parallel")
    proc, logs = run_two_msrun_workers(tmp_dir, [WORKER, prompts_file, parallel])
    assert proc.returncode == 0, logs
    assert "data parallel: rank 1 of 2" in logs
    assert "worker 0 done at iteration 3" in logs and "worker 1 done at iteration 3" in logs

    rank0, rank1 = (read_ckpt(os.path.join(parallel, FINAL.format(f"rank_{r}", "policy_model"))) for r in range(2))
    assert rank0.keys() == rank1.keys()
    rank_diff = max(float(np.abs(rank0[k] - rank1[k]).max()) for k in rank0)
    assert rank_diff <= 1e-7, rank_diff
    states = [read_ckpt(os.path.join(parallel, FINAL.format(f"rank_{r}", "ppo_state"))) for r in range(2)]
    states = [{name: float(s[f"ppo_state.{name}"]) for name in STATE} for s in states]
    assert states[0] == states[1]  # the controller and the score moments saw the same global statistics

    # the ranks trained on different rollouts (their local losses differ), yet hold one policy
    local = [rank_losses(parallel, rank) for rank in range(2)]
    assert all(len(v) == 3 for v in local), local
    assert all(a != b for a, b in zip(*local)), local

    initial, reference, losses, tokens, state = one_process(prompts_file, os.path.join(tmp_dir, "single"))
    assert any(a != b for a, b in tokens), tokens  # the ranks' minibatches hold different token counts
    assert reference.keys() == rank0.keys()
    single_diff = max(float(np.abs(rank0[k] - reference[k]).max()) for k in rank0)
    print(
        f"rank0 vs rank1: {rank_diff:.3g}, ranks vs one process: {single_diff:.3g}, losses {local} vs {losses}, "
        f"tokens {tokens}, state {states[0]} vs {state}"
    )
    assert single_diff <= 1e-5, single_diff
    assert min(float(np.abs(reference[k] - initial[k]).max()) for k in rank0) > 5e-4  # every tensor moved 50x more
    for name in STATE:
        assert states[0][name] == pytest.approx(state[name], rel=1e-9), name
    assert state["kl_coef"] != dp_config("").ppo.kl_coef and state["score_count"] == 24  # both moved, globally
    # each rank divides its token sums by half the global count: the one-process loss is the ranks' mean
    np.testing.assert_allclose(losses, np.mean(local, axis=0), atol=1e-5)
