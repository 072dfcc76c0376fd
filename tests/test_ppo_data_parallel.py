"""PPO data parallel for real: two msrun CPU workers run 2 PPO iterations (graph mode, analytic reward) and end
with identical policies, equal to one process that makes both ranks' experience with the same policy and takes
one step on their concatenation each iteration."""
from __future__ import annotations

import os
import re
import subprocess
import sys

import numpy as np
from mindspore import Tensor

from mindrlhf.train.checkpoint import read_ckpt
from mindrlhf.train.experience import Experience
from mindrlhf.train.ppo import TRAIN_COLUMNS, PPOTrainer, build_ppo_models, prompt_source
from tests.helpers import parameter_arrays, set_mode
from tests.ppo_dp_worker import dp_config
from tests.test_data_parallel import free_port
from tests.test_ppo import target_reward, write_prompts

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "ppo_dp_worker.py")
FINAL = os.path.join("checkpoint", "{}", "policy_model_epoch_1.ckpt")
LOSS = re.compile(r"PPO Batch: 0 \| PPO Epoch: 0 \| loss: \[([^\]]+)\]")


def rank_losses(out: str, rank: int) -> list:
    with open(os.path.join(out, "log", f"rank_{rank}", "info.log"), encoding="utf-8") as f:
        return [float(v) for v in LOSS.findall(f.read())]


def one_process(prompts_file: str, out: str):
    """The global minibatches of the two workers on one process: per iteration, rank 0's and rank 1's experience
    (their prompts, their sampling seeds, the current policy), each in the row order the rank's ``train_on`` uses,
    then ONE step on the 8 rows. Returns (initial and final policy parameters, losses, response lengths seen)."""
    set_mode("graph")
    cfg = dp_config(out)
    width, _ = prompt_source(prompts_file, cfg, 0, 1)
    sources = [prompt_source(prompts_file, cfg, rank, 2)[1] for rank in range(2)]
    models = build_ppo_models(cfg.model.model_config, cfg.ppo, target_reward, seed=cfg.seed)
    trainer = PPOTrainer(cfg, models, width, sources[0])
    initial = {name: value.copy() for name, value in parameter_arrays(models.policy).items()}
    losses, lengths = [], set()
    for iteration in range(cfg.ppo.epochs):
        parts = []
        order = np.random.default_rng([cfg.seed, iteration, 0]).permutation(cfg.ppo.num_rollouts)
        for rank in range(2):
            trainer.maker.rank_id = rank
            experience, _ = trainer.maker.make_experience(sources[rank](iteration), iteration, cfg.seed)
            lengths.update(experience.response_mask.sum(1).tolist())
            parts.append(experience.select(order))
        data = Experience.concat(parts).as_dict()
        loss, overflow, _, _ = trainer.step(*[Tensor(data[name]) for name in TRAIN_COLUMNS])
        assert not bool(overflow.asnumpy())
        losses.append(float(loss.asnumpy()))
    return initial, parameter_arrays(models.policy), losses, lengths


def test_two_ppo_workers_match_one_process(tmp_dir):
    prompts_file = write_prompts(os.path.join(tmp_dir, "prompts.mindrecord"), count=16)
    parallel = os.path.join(tmp_dir, "parallel")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
    proc = subprocess.run([msrun, "--worker_num=2", "--local_worker_num=2", f"--master_port={free_port()}",
                           f"--log_dir={tmp_dir}/msrun_log", "--join=True", WORKER, prompts_file, parallel],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_dir)
    logs = "".join(open(os.path.join(tmp_dir, "msrun_log", f), encoding="utf-8", errors="replace").read()[-3000:]
                   for f in os.listdir(os.path.join(tmp_dir, "msrun_log")))
    assert proc.returncode == 0, logs
    assert "data parallel: rank 1 of 2" in logs
    assert "worker 0 done at iteration 2" in logs and "worker 1 done at iteration 2" in logs

    rank0 = read_ckpt(os.path.join(parallel, FINAL.format("rank_0")))
    rank1 = read_ckpt(os.path.join(parallel, FINAL.format("rank_1")))
    assert rank0.keys() == rank1.keys()
    rank_diff = max(float(np.abs(rank0[k] - rank1[k]).max()) for k in rank0)
    assert rank_diff <= 1e-7, rank_diff

    # the ranks trained on different rollouts (their local losses differ), yet hold one policy
    local = [rank_losses(parallel, rank) for rank in range(2)]
    assert all(len(v) == 2 for v in local), local
    assert all(a != b for a, b in zip(*local)), local

    initial, reference, losses, lengths = one_process(prompts_file, os.path.join(tmp_dir, "single"))
    assert lengths == {8}  # every response is max_new_tokens long: equal token counts on both ranks
    assert reference.keys() == rank0.keys()
    single_diff = max(float(np.abs(rank0[k] - reference[k]).max()) for k in rank0)
    print(f"rank0 vs rank1: {rank_diff:.3g}, ranks vs one process: {single_diff:.3g}, losses {local} vs {losses}")
    assert single_diff <= 1e-5, single_diff
    assert min(float(np.abs(reference[k] - initial[k]).max()) for k in rank0) > 5e-4  # every tensor moved 50x more
    # the one-process loss over all 64 tokens is the mean of the two ranks' token means
    np.testing.assert_allclose(losses, np.mean(local, axis=0), atol=1e-5)
