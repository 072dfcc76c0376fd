"""Data parallel for real: two msrun CPU workers train the reward model through the tutorial's entry point and end
with the parameters of one process that sees the same global batches."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import numpy as np

from mindrlhf.data.convert_preference import convert_preference
from mindrlhf.train.checkpoint import latest_checkpoint, read_ckpt
from tests.helpers import run_two_msrun_workers, set_mode, venv_env

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "reward_model_train_tutorial", "reward_train.py")
SHAPES_WORKER = os.path.join(ROOT, "tests", "rm_shapes_dp_worker.py")
RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_rm.yaml")
OASST = os.path.join(ROOT, "tests", "data", "oasst_rm_zh_sample5.json")


def train_args(data, out, batch):
    # eps 1e-6: with Adam's 1e-8 a gradient entry that is zero up to rounding turns summation-order noise into a
    # full-size update; the check here is gradient averaging, not Adam's behaviour at zero gradients
    return [
        "--config",
        RECIPE,
        "--train_dataset",
        data,
        "--set",
        f"output_dir={out}",
        "--set",
        f"runner_config.batch_size={batch}",
        "--set",
        "runner_config.epochs=2",
        "--set",
        "model.model_config.hidden_size=32",
        "--set",
        "model.model_config.seq_length=128",
        "--set",
        "lr_schedule.warmup_ratio=0.0",
        "--set",
        "optimizer.eps=1e-6",
    ]


def model_params(folder):
    entries = read_ckpt(latest_checkpoint(folder))
    return {k: v for k, v in entries.items() if k.startswith(("backbone.", "score."))}


def compiled_collectives(folder, name="AllReduce"):
    """``[(ops, [(op, tensors it takes) ...]) ...]`` for the ``name`` collectives (AllReduce, AllGather) of each
    final compiled graph of rank 0 that has any."""
    found = []
    for path in sorted(glob.glob(os.path.join(folder, "rank_0", "hwopt_common_final_graph_*.ir"))):
        with open(path, encoding="utf-8") as f:
            ops = re.findall(rf"= {name}\(([^)]*)\)", f.read())
        if ops:
            found.append((len(ops), [(i, op.count("%")) for i, op in enumerate(ops)]))
    return found


def test_two_workers_match_one_process(tmp_dir):
    data = os.path.join(tmp_dir, "pairs.mindrecord")
    convert_preference(OASST, data, "gpt2", seq_length=128, pad_token_id=50256, progress=False)
    env = venv_env()
    single = os.path.join(tmp_dir, "single")
    proc = subprocess.run(
        [sys.executable, SCRIPT, *train_args(data, single, 2)], capture_output=True, text=True, timeout=300, env=env
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Epoch:[  2/  2], step:[    3/    3]" in proc.stdout  # 6 pairs used per epoch: 3 steps of 2

    parallel = os.path.join(tmp_dir, "parallel")
    graphs = os.path.join(tmp_dir, "graphs")  # the compiled graphs, to count their all-reduces
    proc, logs = run_two_msrun_workers(
        tmp_dir,
        [SCRIPT, *train_args(data, parallel, 1), "--use_parallel", "True"],
        extra_env={"MS_DEV_SAVE_GRAPHS": "1", "MS_DEV_SAVE_GRAPHS_PATH": graphs},
    )
    assert proc.returncode == 0, logs
    assert "data parallel: rank 1 of 2" in logs
    assert "Epoch:[  2/  2], step:[    3/    3]" in logs  # the same 3 steps per epoch, 1 pair per worker

    reference = model_params(os.path.join(single, "checkpoint", "rank_0"))
    rank0 = model_params(os.path.join(parallel, "checkpoint", "rank_0"))
    rank1 = model_params(os.path.join(parallel, "checkpoint", "rank_1"))
    assert reference.keys() == rank0.keys() == rank1.keys()
    assert max(np.abs(rank0[k] - rank1[k]).max() for k in rank0) == 0.0
    assert max(np.abs(rank0[k] - reference[k]).max() for k in rank0) <= 1e-5
    # parallel_config.allreduce_bucket_mb (25 MB): the 28 dense gradients in one fused all-reduce, plus the step's
    # overflow-flag all-reduce, where the unfused graph has one per gradient; the 50257 x 32 token table's
    # gradient (parallel_config.embedding_grad_rows) travels as the 2 x 256 rows looked up and their ids
    counts = compiled_collectives(graphs)
    assert len(counts) == 1 and counts[0][0] == 2, counts
    assert sum(n for _, n in counts[0][1]) >= len(reference) - 1
    assert [n for n, _ in compiled_collectives(graphs, "AllGather")] == [2]
    # rank 0 alone prints the step line and writes TensorBoard; every rank writes its own info.log
    assert os.path.exists(os.path.join(parallel, "log", "rank_1", "info.log"))
    assert len(glob.glob(os.path.join(parallel, "tensorboard", "events.out.tfevents.*"))) == 1


def test_a_step_recompiled_for_new_shapes_keeps_the_gathered_embedding_rows(tmp_dir):
    """Steps at sequence length 16, then 8: the data-parallel train step compiles twice, and both graphs must
    reduce the untied token table's gradient as gathered rows (the gradient all-reduce skips that table, so a
    graph without them would leave each rank with its own table). Two workers end equal to each other and to one
    process on the concatenated batches."""
    from mindspore import Tensor

    from tests.rm_shapes_dp_worker import LENGTHS, global_batch, train_step

    proc, logs = run_two_msrun_workers(tmp_dir, [SHAPES_WORKER, tmp_dir])
    assert proc.returncode == 0, logs
    assert "worker 0 done" in logs and "worker 1 done" in logs
    rank0, rank1 = (dict(np.load(os.path.join(tmp_dir, f"rank_{r}.npz"))) for r in range(2))
    assert max(float(np.abs(rank0[k] - rank1[k]).max()) for k in rank0) <= 1e-7

    set_mode("graph")
    step, model = train_step()
    initial = model.backbone.wte.weight.asnumpy().copy()  # asnumpy shares the parameter's memory on CPU
    for i in range(len(LENGTHS)):
        step(*(Tensor(a) for a in global_batch(i)))[0].asnumpy()
    reference = {p.name: p.asnumpy() for p in model.get_parameters()}
    diffs = {k: float(np.abs(rank0[k] - reference[k]).max()) for k in rank0}
    assert max(diffs.values()) <= 1e-5, diffs
    assert float(np.abs(reference["backbone.wte.weight"] - initial).max()) > 1e-3  # the table did train
