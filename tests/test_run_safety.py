"""Checkpoint manifests (verified on load, a corrupt newest skipped with a warning, 0644 files), RL checkpoint
pruning, the output-folder lock (held, refused, a killed holder's lock taken over), fresh / resume / overwrite, and
the trust boundaries (no pickle, safe YAML only)."""

from __future__ import annotations

import json
import logging
import os
import pickle
import re
import signal
import subprocess
import sys
import time

import pytest

from mindrlhf.cli.main import main
from mindrlhf.errors import LaunchError
from mindrlhf.manifest import manifest_path, read_manifest
from mindrlhf.models import CausalLM
from mindrlhf.models.convert import CheckpointError, load_ckpt, save_ckpt, save_tensors
from mindrlhf.runlock import claim_output_dir, config_hash
from mindrlhf.train.checkpoint import latest_checkpoint, newest_iteration_state, prune_iterations, read_ckpt
from mindrlhf.train.monitor import append_jsonl, trim_jsonl
from tests.helpers import tiny_gpt2_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SFT_RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_sft.yaml")


@pytest.fixture(scope="module")
def model():
    return CausalLM(tiny_gpt2_config())


def flip_byte(path: str, offset: int = -100) -> None:
    with open(path, "r+b") as f:
        f.seek(offset, os.SEEK_END)
        byte = f.read(1)
        f.seek(offset, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_manifest_describes_the_file_and_files_are_0644(model, tmp_dir):
    old = os.umask(0o022)
    try:
        path = save_ckpt(model, os.path.join(tmp_dir, "sft_rank_0-12_1.ckpt"))
    finally:
        os.umask(old)
    manifest = read_manifest(path)
    assert manifest["file"] == "sft_rank_0-12_1.ckpt" and manifest["step"] == 12
    assert manifest["size"] == os.path.getsize(path) and re.fullmatch(r"[0-9a-f]{64}", manifest["sha256"])
    assert os.stat(path).st_mode & 0o777 == 0o644
    assert sorted(os.listdir(tmp_dir)) == ["sft_rank_0-12_1.ckpt", "sft_rank_0-12_1.ckpt.manifest.json"]


def test_a_corrupt_checkpoint_is_refused_on_every_load_path(model, tmp_dir):
    path = save_ckpt(model, os.path.join(tmp_dir, "lm.ckpt"))
    flip_byte(path)
    for load in (lambda: load_ckpt(CausalLM(tiny_gpt2_config()), path), lambda: read_ckpt(path)):
        with pytest.raises(CheckpointError, match=re.escape(f"{path}: SHA-256 differs from its manifest")):
            load()
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: 100 bytes, its manifest says")):
        read_ckpt(path)


def test_corrupt_or_partial_newest_is_skipped_with_a_warning(model, tmp_dir, caplog):
    folder = os.path.join(tmp_dir, "rank_0")
    paths = [save_ckpt(model, os.path.join(folder, f"m_rank_0-{step}_1.ckpt")) for step in (2, 4, 6)]
    assert latest_checkpoint(folder) == paths[2]
    flip_byte(paths[2])
    os.remove(manifest_path(paths[1]))  # written, killed before its manifest would have been renamed in
    with caplog.at_level(logging.WARNING):
        assert latest_checkpoint(folder) == paths[0]
    assert f"skipping checkpoint {paths[2]}" in caplog.text and f"skipping checkpoint {paths[1]}" in caplog.text


def test_newest_means_last_written_not_highest_step(model, tmp_dir):
    """A folder holding two runs' files: the newer run's lower step is the newest checkpoint."""
    folder = os.path.join(tmp_dir, "rank_0")
    save_ckpt(model, os.path.join(folder, "old_rank_0-80_1.ckpt"))
    time.sleep(0.01)
    newer = save_ckpt(model, os.path.join(folder, "new_rank_0-4_1.ckpt"))
    assert latest_checkpoint(folder) == newer


def test_rl_sets_pruned_to_keep_max_and_a_corrupt_set_skipped(model, tmp_dir, caplog):
    folder = os.path.join(tmp_dir, "checkpoint", "rank_0")
    for n in range(5):
        save_ckpt(model, os.path.join(folder, f"policy_model_epoch_{n}.ckpt"))
        save_tensors({}, os.path.join(folder, f"ppo_state_epoch_{n}.ckpt"), append_dict={"n": n})
        prune_iterations(folder, keep_max=2)
    assert sorted(f for f in os.listdir(folder) if f.endswith(".ckpt")) == [
        "policy_model_epoch_3.ckpt",
        "policy_model_epoch_4.ckpt",
        "ppo_state_epoch_3.ckpt",
        "ppo_state_epoch_4.ckpt",
    ]
    assert len(os.listdir(folder)) == 8  # and their manifests, no other
    flip_byte(os.path.join(folder, "policy_model_epoch_4.ckpt"))
    with caplog.at_level(logging.WARNING):
        assert newest_iteration_state(os.path.join(tmp_dir, "checkpoint"), 0, "ppo_state_epoch_")[1:] == (
            3,
            "ppo_state_epoch_3.ckpt",
        )
    assert "policy_model_epoch_4.ckpt" in caplog.text


def test_manifest_names_the_run_and_config(model, tmp_dir):
    cfg = {"seed": 1}
    record = claim_output_dir(tmp_dir, cfg, "fresh")
    path = save_ckpt(model, os.path.join(tmp_dir, "checkpoint", "rank_0", "a_rank_0-1_1.ckpt"))
    manifest = read_manifest(path)
    assert manifest["run_id"] == record["run_id"] and manifest["config_hash"] == config_hash(cfg)
    with pytest.raises(LaunchError, match="already holds a run"):
        claim_output_dir(tmp_dir, cfg, "fresh")
    assert claim_output_dir(tmp_dir, cfg, "resume")["run_id"] == record["run_id"]


HOLD = (
    "import sys, time; from mindrlhf.runlock import acquire_lock; acquire_lock(sys.argv[1], 'holder'); "
    "print('held', flush=True); time.sleep(600)"
)


def test_second_run_refused_while_the_first_lives_and_a_killed_ones_lock_taken_over(tmp_dir, caplog):
    out = os.path.join(tmp_dir, "out")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    holder = subprocess.Popen([sys.executable, "-c", HOLD, out], stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LaunchError, match=rf"{re.escape(out)}: in use by process {holder.pid} on .*: holder\)"):
            claim_output_dir(out, {}, "fresh")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        with caplog.at_level(logging.WARNING):
            assert claim_output_dir(out, {}, "fresh")["run_id"]
        assert f"took over the stale lock of process {holder.pid} (no longer running)" in caplog.text
    finally:
        if holder.poll() is None:
            holder.kill()


def test_fresh_run_refused_in_a_used_folder_resume_and_overwrite_allowed(tmp_dir, capsys):
    out = os.path.join(tmp_dir, "used")
    os.makedirs(os.path.join(out, "checkpoint", "rank_0"))
    open(os.path.join(out, "checkpoint", "rank_0", "tiny_sft_rank_0-4_1.ckpt"), "wb").close()
    append_jsonl(os.path.join(out, "ppo_metrics.jsonl"), {"iteration": 0})
    with open(os.path.join(out, "notes.txt"), "w", encoding="utf-8") as f:
        f.write("the user's own file")
    assert main(["sft", "--config", SFT_RECIPE, "--output_dir", out, "--train_dataset", "x.mindrecord"]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"error: {out}: already holds a run") and "--overwrite_output_dir" in last
    assert f"--load_checkpoint {os.path.join(out, 'checkpoint')}" in last
    claim_output_dir(out, {}, "overwrite")
    assert sorted(os.listdir(out)) == [".mindrlhf.lock", "notes.txt", "run.json"]


def test_metrics_file_keeps_only_the_iterations_before_the_start(tmp_dir):
    path = os.path.join(tmp_dir, "ppo_metrics.jsonl")
    for i in (0, 1, 2, 1, 2):  # a run killed after logging iteration 2, then resumed at 1
        append_jsonl(path, {"iteration": i})
    with open(path, "a", encoding="utf-8") as f:
        f.write('{"iteration": 0, "reward_mean"')  # killed while writing a line
    trim_jsonl(path, 1)
    assert [json.loads(line)["iteration"] for line in open(path, encoding="utf-8")] == [0]
    trim_jsonl(path, 0)
    assert open(path, encoding="utf-8").read() == ""


# -- trust boundaries ----------------------------------------------------------------------------------------


def test_pickle_bearing_files_are_never_unpickled(tmp_dir):
    marker = os.path.join(tmp_dir, "unpickled")

    class Payload:
        def __reduce__(self):
            return (open, (marker, "w"))

    path = os.path.join(tmp_dir, "weights.ckpt")
    with open(path, "wb") as f:
        pickle.dump({"backbone.wte.embedding_table": Payload()}, f)
    with pytest.raises(CheckpointError, match=re.escape(path)):
        read_ckpt(path)
    with pytest.raises(CheckpointError, match=re.escape(path)):
        load_ckpt(CausalLM(tiny_gpt2_config()), path)
    assert not os.path.exists(marker)


def test_no_load_path_can_unpickle_or_construct_python_objects():
    """Every file the package reads goes through MindSpore's protobuf checkpoints, safetensors, JSON, MindRecord
    or the safe YAML loader: no pickle, no torch.load, no unsafe YAML, no numpy object arrays."""
    forbidden = re.compile(
        r"\bimport pickle|\bpickle\.|torch\.load|allow_pickle\s*=\s*True|yaml\.unsafe_load|"
        r"yaml\.full_load|Loader=yaml\.(Full|Unsafe)?Loader|\beval\(|\bexec\("
    )
    hits = []
    for folder, _, names in os.walk(os.path.join(ROOT, "mindrlhf")):
        for name in names:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, encoding="utf-8") as f:
                    hits += [f"{path}:{i}" for i, line in enumerate(f, 1) if forbidden.search(line)]
    assert hits == []


def test_python_yaml_tags_are_refused(tmp_dir):
    from mindrlhf.config import ConfigError, load_config

    marker = os.path.join(tmp_dir, "ran")
    path = os.path.join(tmp_dir, "evil.yaml")
    with open(path, "w", encoding="utf-8") as f:
        f.write(f"seed: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(ConfigError, match=re.escape(f"{path}:1: not valid YAML: could not determine a constructor")):
        load_config(path)
    with pytest.raises(ConfigError, match="could not determine a constructor"):
        load_config(None, [f"seed=!!python/object/apply:os.system ['touch {marker}']"])
    assert not os.path.exists(marker)
