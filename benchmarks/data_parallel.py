"""Reward-model training throughput with 1 and 2 data-parallel CPU workers (msrun), and the share of a 2-worker step
spent communicating.

Setup: the tiny GPT-2 reward recipe (model_configs/gpt2_config/run_gpt2_tiny_rm.yaml) widened with ``--set`` to
4 layers x 256 (4 heads; vocab 50257, seq 256, fp32, span loss, AdamW), so one step on this 2-core machine takes
about 0.25 s; data: ``mindrlhf convert-preference`` on mindrlhf/assets/data/oasst_rm_zh.json (seq 256). Weak
scaling: every worker takes ``--batch`` pairs per step, so 2 workers process twice the pairs per step. Every run is
the tutorial's entry point (examples/reward_model_train_tutorial/reward_train.py) in its own process(es):

  one        1 process (``--use_parallel False``), ``--batch`` pairs per step.
  two        ``msrun --worker_num=2 --local_worker_num=2``: data parallel, ``--batch`` pairs per worker, gradients
             mean all-reduced and the overflow flag all-reduced every step.
  two_alone  two independent single processes started together, each ``--batch`` pairs per step: the same compute
             on the same shapes with the two cores shared the same way, but no communication.
  profile    (unless ``--no-profile``) 2 msrun workers run the same TrainStep (built as the reward trainer builds
             it) under MindSpore's profiler, which works on CPU (it writes per-op host times to
             ``FRAMEWORK/cpu_op_detail_info_<rank>.csv``): the communication kernels' (AllReduce, AllGather) count
             and time per step, the gradients' count and bytes, each worker's peak RSS (``VmHWM``). One pass per
             ``--profile-passes`` entry ``BUCKET_MB:dense|rows``: ``parallel_config.allreduce_bucket_mb`` (0 = one
             all-reduce per gradient) and ``parallel_config.embedding_grad_rows`` (``rows``: the token table's
             gradient reduced as the gathered rows the batch looked up; ``dense``: all-reduced as a whole). The
             default passes: unfused and dense (the first round's step), fused and dense, fused with rows.

The timed runs use ``--bucket-mb`` and ``--embedding-rows`` (default: the config defaults).

Step times are the ``time:... ms`` field of the step lines every rank writes to ``output/log/rank_<id>/info.log``
(mindrlhf/train/monitor.py: the step call until the loss is on the host; data loading and logging excluded); the
first ``WARMUP_STEPS`` steps (graph compilation, allocator growth) are dropped. Per run: ``two`` takes per step
the slower rank's time; ``two_alone`` keeps only steps that ran while both processes were past their warm-up and
still running (from the log timestamps). ``wall_s_per_step`` is the median gap between consecutive step lines
(data loading and logging included). Each figure is the median over ``--repeats`` runs (run in turn one, two,
two_alone) of the per-run median step time.

Shared machines: around every run the benchmark takes the machine's busy CPU time (``/proc/stat``) minus its own
and its children's (``getrusage``), i.e. what other processes used; a run where that exceeds ``--max-other-cpu``
(default 5 % of all cores) is run again after a pause, at most ``--retries`` times, and the last attempt is kept.
Each run's share, attempt number and load average before it are in the JSON, the worst share in the table.

Derived: pairs/s = pairs per step / s per step; scaling efficiency = pairs/s(two) / (2 x pairs/s(one)) =
s/step(one) / s/step(two); communication share = 1 - s/step(two_alone) / s/step(two), the part of a data-parallel
step that the same work without communication does not need (all-reduce transfers, waiting for the slower rank,
msrun's scheduler); the profiler's share = AllReduce kernel time / profiled step time (a kernel's time includes
waiting for the other rank to arrive).

On 2 cores two workers each get one core, where one process alone uses both: ``two`` cannot be faster per pair
than ``one``, and the efficiency figure measures the framework's data-parallel overhead on a shared machine, not a
speed-up. Run on an otherwise idle machine (the load average is recorded).

    python benchmarks/data_parallel.py [--repeats 3] [--steps 30] [--batch 4] [--max-other-cpu 0.05] [--retries 3]
        [--bucket-mb 25] [--embedding-rows 1]
        [--profile-passes 0:dense 25:dense 25:rows] [--no-profile] [--keep DIR] [--json out.json]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import glob
import json
import logging
import os
import platform
import re
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_common import rss_mb  # noqa: E402 - shared with the other benchmarks

from mindrlhf.config import ParallelConfig  # noqa: E402

logger = logging.getLogger("data_parallel")

SCRIPT = os.path.join(ROOT, "examples", "reward_model_train_tutorial", "reward_train.py")
RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_rm.yaml")
SOURCE = os.path.join(ROOT, "mindrlhf", "assets", "data", "oasst_rm_zh.json")
SEQ, HIDDEN, LAYERS = 256, 256, 4
WARMUP_STEPS = 8  # the step time settles about 6 steps after compilation
PROFILED_STEPS = 5
RETRY_PAUSE_S = 30
BIN = os.path.dirname(sys.executable)  # msrun starts `python` from PATH: this venv's
STEP_LINE = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*step:\[\s*(\d+)/\s*\d+\].*time:([0-9.]+) ms")


def overrides(out: str, batch: int, samples: int, bucket_mb: int, rows: bool = True) -> list:
    """``--set`` flags: the widened model, ``batch`` pairs per worker, the first ``samples`` records, no
    checkpoint before the end, gradient all-reduces fused into ``bucket_mb`` MB buckets (0: one per gradient), the
    token table's gradient as gathered rows (``rows``) or all-reduced whole."""
    values = {
        "parallel_config.allreduce_bucket_mb": bucket_mb,
        "parallel_config.embedding_grad_rows": bool(rows),
        "output_dir": out,
        "model.model_config.hidden_size": HIDDEN,
        "model.model_config.num_layers": LAYERS,
        "model.model_config.seq_length": SEQ,
        "runner_config.batch_size": batch,
        "runner_config.epochs": 1,
        "train_dataset.data_loader.num_samples": samples,
        "checkpoint.save_checkpoint_steps": 10**9,
        "checkpoint.log_interval": 1,
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def child_env() -> dict:
    return dict(os.environ, PATH=BIN + os.pathsep + os.environ.get("PATH", ""), PYTHONPATH=ROOT)


def convert_data(work: str) -> str:
    """``mindrlhf convert-preference`` on the bundled oasst rankings; returns the MindRecord path."""
    dst = os.path.join(work, "data", f"oasst_{SEQ}.mindrecord")
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    cmd = [
        os.path.join(BIN, "mindrlhf"),
        "convert-preference",
        "--model",
        "gpt2",
        "--src_file",
        SOURCE,
        "--dst_file",
        dst,
        "--seq_length",
        str(SEQ),
        "--pad_token_id",
        "50256",
    ]
    subprocess.run(cmd, check=True, capture_output=True, env=child_env())
    return dst


def record_count(path: str) -> int:
    from mindrlhf.data.datasets import record_count as count

    return count(path)


def run_checked(procs: list, what: str, logs: list) -> None:
    """Wait for ``procs`` (Popen with stdout to a file); on failure raise with the tail of ``logs``."""
    codes = [p.wait() for p in procs]
    if any(codes):
        tails = "".join(open(f, encoding="utf-8", errors="replace").read()[-2000:] for f in logs if os.path.exists(f))
        raise RuntimeError(f"{what} failed (exit codes {codes}):\n{tails}")


def start(cmd: list, log: str, cwd: str) -> subprocess.Popen:
    with open(log, "w", encoding="utf-8") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=child_env(), cwd=cwd)


def msrun_cmd(log_dir: str, args: list) -> list:
    return [
        os.path.join(BIN, "msrun"),
        "--worker_num=2",
        "--local_worker_num=2",
        f"--master_port={free_port()}",
        f"--log_dir={log_dir}",
        "--join=True",
        *args,
    ]


def run_case(case: str, work: str, data: str, batch: int, steps: int, bucket_mb: int, rows: bool = True) -> list:
    """Run one configuration; returns the info.log paths of its processes (one per rank or process)."""
    total = WARMUP_STEPS + steps
    folder = tempfile.mkdtemp(prefix=f"{case}_", dir=work)
    if case == "one":
        cmd = [
            sys.executable,
            SCRIPT,
            "--config",
            RECIPE,
            "--train_dataset",
            data,
            "--use_parallel",
            "False",
            *overrides(folder, batch, batch * total, bucket_mb),
        ]
        log = os.path.join(folder, "stdout.log")
        run_checked([start(cmd, log, folder)], case, [log])
        return [os.path.join(folder, "log", "rank_0", "info.log")]
    if case == "two":
        cmd = msrun_cmd(
            os.path.join(folder, "msrun_log"),
            [
                SCRIPT,
                "--config",
                RECIPE,
                "--train_dataset",
                data,
                *overrides(folder, batch, 2 * batch * total, bucket_mb, rows),
            ],
        )
        logs = [os.path.join(folder, "msrun_log", f"worker_{r}.log") for r in range(2)]
        run_checked([start(cmd, os.path.join(folder, "stdout.log"), folder)], case, logs)
        return [os.path.join(folder, "log", f"rank_{r}", "info.log") for r in range(2)]
    procs, outs = [], []
    for name in ("a", "b"):
        out = os.path.join(folder, name)
        os.makedirs(out)
        cmd = [
            sys.executable,
            SCRIPT,
            "--config",
            RECIPE,
            "--train_dataset",
            data,
            "--use_parallel",
            "False",
            *overrides(out, batch, batch * total, bucket_mb),
        ]
        procs.append(start(cmd, os.path.join(out, "stdout.log"), out))
        outs.append(out)
    run_checked(procs, case, [os.path.join(o, "stdout.log") for o in outs])
    return [os.path.join(o, "log", "rank_0", "info.log") for o in outs]


def busy_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy since boot (``/proc/stat``, all cores)."""
    with open("/proc/stat", encoding="ascii") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, _, _, irq, softirq, steal = fields[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_s() -> float:
    """CPU seconds of this process and its finished children (msrun's workers included: msrun waits for them)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def with_usage(fn, *args) -> tuple:
    """``(fn(*args), usage)``: usage holds the wall time and the share of the machine's CPU that other processes
    used meanwhile (busy CPU seconds of the whole machine minus this benchmark's, over ``cores x wall``)."""
    wall, busy, own = time.perf_counter(), busy_cpu_s(), own_cpu_s()
    result = fn(*args)
    wall = time.perf_counter() - wall
    other = (busy_cpu_s() - busy) - (own_cpu_s() - own)
    return result, {"run_wall_s": wall, "other_cpu_share": max(other, 0.0) / (os.cpu_count() * wall)}


def parse_steps(info_log: str) -> list:
    """``[(end time in s since the epoch, step number, step seconds), ...]`` from a rank's info.log."""
    rows = []
    with open(info_log, encoding="utf-8") as f:
        for line in f:
            match = STEP_LINE.match(line)
            if match:
                stamp = datetime.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f").timestamp()
                rows.append((stamp, int(match.group(2)), float(match.group(3)) / 1000.0))
    return rows


def median_gap(rows: list) -> float:
    stamps = [r[0] for r in rows]
    return statistics.median(b - a for a, b in zip(stamps, stamps[1:]))


def summarise(case: str, logs: list) -> dict:
    """Per-run step statistics of one configuration (see the module docstring for each case's rule)."""
    runs = [[r for r in parse_steps(path) if r[1] > WARMUP_STEPS] for path in logs]
    if case == "one":
        kept = runs[0]
        times = [r[2] for r in kept]
    elif case == "two":
        by_step = [{r[1]: r[2] for r in rows} for rows in runs]
        common = sorted(set(by_step[0]) & set(by_step[1]))
        times = [max(b[s] for b in by_step) for s in common]
        kept = [r for r in runs[0] if r[1] in common]
    else:  # two_alone: only steps during which both processes were in their steady phase
        begin = max(rows[0][0] - rows[0][2] for rows in runs)
        end = min(rows[-1][0] for rows in runs)
        runs = [[r for r in rows if r[0] - r[2] >= begin and r[0] <= end] for rows in runs]
        times = [r[2] for rows in runs for r in rows]
        kept = runs[0]
    if len(kept) < 3:
        raise RuntimeError(f"{case}: only {len(kept)} steady steps to time; raise --steps")
    return {
        "step_s": statistics.median(times),
        "steps_timed": len(times),
        "wall_s_per_step": median_gap(kept),
        "step_s_min": min(times),
        "step_s_max": max(times),
    }


# ---------------------------------------------------------------------------------------------------------------
# profiler pass (its workers run this file with --profile-worker under msrun)


def profile_worker(out: str, data: str, batch: int, bucket_mb: int, rows: bool) -> None:
    """One msrun worker: the reward trainer's TrainStep on this rank's batches, ``WARMUP_STEPS`` steps, then
    ``PROFILED_STEPS`` steps under the profiler; writes ``profile_rank_<id>.json`` (with the gradients' count and
    bytes and this worker's RSS high-water mark)."""
    from mindspore import Profiler, Tensor

    from mindrlhf.config import load_config
    from mindrlhf.context import init_context, init_distributed
    from mindrlhf.data.datasets import reward_model_dataset
    from mindrlhf.models import RewardModel
    from mindrlhf.train.optim import build_optimizer
    from mindrlhf.train.reward import TRAIN_COLUMNS, RewardLoss
    from mindrlhf.train.step import TrainStep

    total = WARMUP_STEPS + PROFILED_STEPS
    cfg = load_config(RECIPE, [s for s in overrides(out, batch, 2 * batch * total, bucket_mb, rows) if s != "--set"])
    init_context(cfg.context, cfg.seed)
    rank_id, rank_size = init_distributed(cfg.parallel_config, cfg.context.device_target)
    loss_net = RewardLoss(RewardModel(cfg.model.model_config), cfg.reward.loss_type)
    optimizer = build_optimizer(loss_net.trainable_params(), cfg.optimizer, cfg.lr_schedule, total)
    step = TrainStep(loss_net, optimizer, cfg.runner_wrapper, gather_embedding_rows=rows)
    step.set_train(True)
    batches = reward_model_dataset(data, batch, rank_id=rank_id, rank_size=rank_size, num_samples=2 * batch * total)
    inputs = [
        [Tensor(b[c]) for c in TRAIN_COLUMNS] for b in batches.create_dict_iterator(num_epochs=1, output_numpy=True)
    ]
    for item in inputs[:WARMUP_STEPS]:
        step(*item)[0].asnumpy()
    profiler = Profiler(output_path=os.path.join(out, f"profiler_rank_{rank_id}"))
    begin = time.perf_counter()
    for item in inputs[WARMUP_STEPS:total]:
        step(*item)[0].asnumpy()
    seconds = (time.perf_counter() - begin) / PROFILED_STEPS
    profiler.stop()
    profiler.analyse()
    with open(os.path.join(out, f"profile_rank_{rank_id}.json"), "w", encoding="utf-8") as f:
        json.dump(
            {
                "rank": rank_id,
                "rank_size": rank_size,
                "step_s": seconds,
                "bucket_mb": bucket_mb,
                "embedding_grad_rows": rows,
                "gradients": len(optimizer.parameters),
                "gradient_bytes": sum(4 * p.size for p in optimizer.parameters),
                "peak_rss_mb": rss_mb(),
                **op_times(os.path.join(out, f"profiler_rank_{rank_id}")),
            },
            f,
        )


def op_times(folder: str) -> dict:
    """Communication (AllReduce and AllGather) and all-op host time per profiled step from the profiler's per-op
    CSV; ``allreduce_ops`` counts the gradient all-reduces (one per bucket when fused) plus the step's
    overflow-flag all-reduce, ``allgather_ops`` the gathered embedding rows and their ids."""
    found = glob.glob(os.path.join(folder, "**", "cpu_op_detail_info_*.csv"), recursive=True)
    if not found:
        raise RuntimeError(f"no cpu_op_detail_info_*.csv under {folder}")
    with open(found[0], encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    per_step = {r["full_op_name"]: float(r["op_total_time(ms)"]) / PROFILED_STEPS for r in rows}
    reduce = {k: v for k, v in per_step.items() if "/AllReduce-op" in k}
    gather = {k: v for k, v in per_step.items() if "/AllGather-op" in k}
    biggest = sorted({**reduce, **gather}.items(), key=lambda kv: -kv[1])[:3]
    # the ops' names do not tell a fused gradient bucket from the overflow flag's all-reduce: only the total counts
    return {
        "all_ops_ms": sum(per_step.values()),
        "allreduce_ms": sum(reduce.values()),
        "allreduce_ops": len(reduce),
        "allgather_ms": sum(gather.values()),
        "allgather_ops": len(gather),
        "comm_ms": sum(reduce.values()) + sum(gather.values()),
        "largest_allreduce_ms": [[k, v] for k, v in biggest],
    }


def run_profile(work: str, data: str, batch: int, bucket_mb: int, rows: bool) -> dict:
    """The profiler pass on 2 msrun workers; returns both ranks' figures and the mean communication share."""
    folder = tempfile.mkdtemp(prefix=f"profile_{bucket_mb}mb_{'rows' if rows else 'dense'}_", dir=work)
    cmd = msrun_cmd(
        os.path.join(folder, "msrun_log"),
        [
            os.path.abspath(__file__),
            "--profile-worker",
            folder,
            "--data",
            data,
            "--batch",
            str(batch),
            "--bucket-mb",
            str(bucket_mb),
            "--embedding-rows",
            str(int(rows)),
        ],
    )
    logs = [os.path.join(folder, "msrun_log", f"worker_{r}.log") for r in range(2)]
    run_checked([start(cmd, os.path.join(folder, "stdout.log"), folder)], "profile", logs)
    ranks = []
    for rank in range(2):
        with open(os.path.join(folder, f"profile_rank_{rank}.json"), encoding="utf-8") as f:
            ranks.append(json.load(f))
    share = statistics.mean(r["comm_ms"] / 1000.0 / r["step_s"] for r in ranks)
    return {"ranks": ranks, "comm_share": share, "profiled_steps": PROFILED_STEPS, "warmup_steps": WARMUP_STEPS}


# ---------------------------------------------------------------------------------------------------------------
# report


def combine(per_run: dict, batch: int) -> dict:
    """Medians over repeats, pairs/s, scaling efficiency and communication share."""
    cases = {}
    for case, runs in per_run.items():
        step = statistics.median(r["step_s"] for r in runs)
        pairs = batch if case == "one" else 2 * batch
        cases[case] = {
            "workers": 1 if case == "one" else 2,
            "pairs_per_step": pairs,
            "step_s": step,
            "pairs_per_s": pairs / step,
            "wall_s_per_step": statistics.median(r["wall_s_per_step"] for r in runs),
            "runs": runs,
        }
    one, two, alone = cases["one"], cases["two"], cases["two_alone"]
    return {
        "cases": cases,
        "scaling_efficiency": two["pairs_per_s"] / (2 * one["pairs_per_s"]),
        "communication_share": 1.0 - alone["step_s"] / two["step_s"],
        "two_alone_efficiency": alone["pairs_per_s"] / (2 * one["pairs_per_s"]),
    }


def markdown_table(result: dict, profile: dict | None) -> str:
    rows = [
        "| run | workers | pairs / step | s / step | pairs/s | wall s / step | other processes' CPU |",
        "|---|---|---|---|---|---|---|",
    ]
    for case, entry in result["cases"].items():
        other = max(r["other_cpu_share"] for r in entry["runs"])
        rows.append(
            f"| {case} | {entry['workers']} | {entry['pairs_per_step']} | {entry['step_s']:.3f} | "
            f"{entry['pairs_per_s']:.1f} | {entry['wall_s_per_step']:.3f} | <= {100 * other:.0f} % |"
        )
    rows.append("")
    rows.append(
        f"scaling efficiency (pairs/s two / 2 x one): {result['scaling_efficiency']:.2f}; "
        f"two_alone / 2 x one: {result['two_alone_efficiency']:.2f}"
    )
    rows.append(f"communication share of a 2-worker step (1 - two_alone / two): {result['communication_share']:.2f}")
    for label, entry in (profile or {}).items():
        ms_ = statistics.mean(r["comm_ms"] for r in entry["ranks"])
        step = statistics.mean(r["step_s"] for r in entry["ranks"])
        rank0 = entry["ranks"][0]
        rows.append(
            f"profiler, {label}: AllReduce + AllGather {ms_:.0f} ms of a {step * 1000:.0f} ms profiled step "
            f"({entry['comm_share']:.2f}), {rank0['allreduce_ops']} AllReduce + {rank0['allgather_ops']} AllGather "
            f"ops/step for {rank0['gradients']} gradients ({rank0['gradient_bytes'] / 2**20:.1f} MiB); peak RSS "
            f"per rank {' / '.join(str(round(r['peak_rss_mb'])) for r in entry['ranks'])} MiB"
        )
    return "\n".join(rows)


def versions_info() -> dict:
    try:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from bench_common import versions

        return versions()
    except ImportError:  # rm_train's versions() also names torch and transformers
        import mindspore as ms

        return {"python": platform.python_version(), "mindspore": ms.__version__}


def clean_run(case: str, work: str, data: str, args) -> dict:
    """One run of ``case``; run again (after a pause, up to ``--retries`` times) while other processes took more
    than ``--max-other-cpu`` of the machine. Returns the last attempt's statistics with its attempt number."""
    for attempt in range(1, args.retries + 2):
        load = os.getloadavg()
        logs, usage = with_usage(
            run_case, case, work, data, args.batch, args.steps, args.bucket_mb, args.embedding_rows
        )
        entry = {**summarise(case, logs), **usage, "load_avg_before": load, "attempt": attempt}
        logger.info(
            "%s: %.3f s/step (load before %.2f, other processes %.0f %% of the CPU, attempt %d)",
            case,
            entry["step_s"],
            load[0],
            100 * usage["other_cpu_share"],
            attempt,
        )
        if usage["other_cpu_share"] <= args.max_other_cpu:
            break
        time.sleep(RETRY_PAUSE_S)
    return entry


def profile_pass(label: str) -> tuple:
    """``"25:rows"`` -> ``(25, True)``: all-reduce bucket MB and whether the token table's gradient is gathered rows."""
    bucket, _, kind = label.partition(":")
    if not bucket.isdigit() or kind not in ("dense", "rows"):
        raise SystemExit(f"--profile-passes: {label!r} is not BUCKET_MB:dense or BUCKET_MB:rows")
    return int(bucket), kind == "rows"


def run_all(args, work: str) -> tuple:
    data = convert_data(work)
    needed = 2 * args.batch * (WARMUP_STEPS + args.steps)
    if record_count(data) < needed:
        raise SystemExit(f"{data}: {record_count(data)} pairs, the 2-worker run needs {needed}; lower --steps")
    per_run = {"one": [], "two": [], "two_alone": []}
    for _ in range(args.repeats):
        for case in per_run:
            per_run[case].append(clean_run(case, work, data, args))
    profile = {}
    for label in args.profile_passes if args.profile else ():
        bucket_mb, rows = profile_pass(label)
        logger.info("profiler pass, allreduce_bucket_mb %d, embedding rows %s", bucket_mb, rows)
        profile[label], usage = with_usage(run_profile, work, data, args.batch, bucket_mb, rows)
        profile[label].update(usage)
    return combine(per_run, args.batch), profile


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (median reported)")
    parser.add_argument("--steps", type=int, default=30, help="timed steps per run, after the warm-up steps")
    parser.add_argument("--batch", type=int, default=4, help="pairs per worker per step")
    parser.add_argument(
        "--max-other-cpu",
        type=float,
        default=0.05,
        help="re-run a run while other processes used more than this share of the CPU",
    )
    parser.add_argument("--retries", type=int, default=3, help="re-runs allowed per run (see --max-other-cpu)")
    parser.add_argument(
        "--bucket-mb",
        type=int,
        default=ParallelConfig.allreduce_bucket_mb,
        help="parallel_config.allreduce_bucket_mb of the timed runs (0: one all-reduce per gradient)",
    )
    parser.add_argument(
        "--embedding-rows",
        type=int,
        choices=(0, 1),
        default=int(ParallelConfig.embedding_grad_rows),
        help="parallel_config.embedding_grad_rows of the timed runs (1: gathered rows, 0: the whole table)",
    )
    fused = ParallelConfig.allreduce_bucket_mb
    parser.add_argument(
        "--profile-passes",
        nargs="+",
        default=["0:dense", f"{fused}:dense", f"{fused}:rows"],
        help="one profiler pass per BUCKET_MB:dense|rows (allreduce_bucket_mb, embedding_grad_rows)",
    )
    parser.add_argument("--no-profile", dest="profile", action="store_false", help="skip the profiler passes")
    parser.add_argument("--json", metavar="PATH", help="write the full report here")
    parser.add_argument("--keep", metavar="DIR", help="work in DIR and keep the runs' logs (default: a temp dir)")
    parser.add_argument("--profile-worker", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.profile_worker:
        profile_worker(args.profile_worker, args.data, args.batch, args.bucket_mb, bool(args.embedding_rows))
        return
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    load_start = os.getloadavg()
    work = os.path.abspath(args.keep) if args.keep else tempfile.mkdtemp(prefix="data_parallel_")
    os.makedirs(work, exist_ok=True)
    try:
        result, profile = run_all(args, work)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(markdown_table(result, profile))
    if args.json:
        report = {
            "machine": {
                "cpu_count": os.cpu_count(),
                "processor": platform.processor() or platform.machine(),
                "platform": platform.platform(),
                "load_avg_at_start": load_start,
                "load_avg_at_end": os.getloadavg(),
            },
            "versions": versions_info(),
            "setup": {
                "recipe": os.path.relpath(RECIPE, ROOT),
                "model": f"gpt2 {LAYERS}x{HIDDEN}, 4 heads, vocab 50257, seq {SEQ}, fp32, span loss",
                "data": os.path.relpath(SOURCE, ROOT),
                "batch_pairs_per_worker": args.batch,
                "steps_per_run": args.steps,
                "allreduce_bucket_mb": args.bucket_mb,
                "embedding_grad_rows": bool(args.embedding_rows),
                "warmup_steps": WARMUP_STEPS,
                "repeats": args.repeats,
                "statistic": "median over repeats of each run's median step time (info.log time:)",
            },
            **result,
            "profile": profile,
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(report, f, indent=2)
        logger.info("wrote %s", args.json)


if __name__ == "__main__":
    main()
