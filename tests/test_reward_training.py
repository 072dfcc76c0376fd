"""Stage 2 end to end on real data (oasst Chinese preference rows): convert -> train -> resume -> eval -> infer;
preference files without the eos refused; ``rm infer`` scores equal to PPO's reward on the same tokens."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import mindspore as ms
from mindspore import Tensor

from mindrlhf.cli.reward import infer_samples
from mindrlhf.config import load_config
from mindrlhf.data.contract import tokenize_response
from mindrlhf.data.convert_preference import ConversionError, convert_preference
from mindrlhf.data.convert_prompts import convert_prompts
from mindrlhf.data.datasets import read_prompts, record_count, reward_model_dataset
from mindrlhf.data.tokenizer import load_tokenizer
from mindrlhf.models import RewardModel
from mindrlhf.models.convert import CheckpointError
from mindrlhf.train.experience import left_align_prompts
from mindrlhf.train.reward import eval_checkpoints, evaluate_reward_model, score_texts, train_reward_model
from tests.helpers import randomize_parameters, set_mode, tiny_gpt2_config, tiny_llama_config
from tests.test_datasets import make_rows, write_old_preference_file
from tests.test_tokenization_contract import TINYSTORIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "model_configs", "gpt2_config", "run_gpt2_tiny_rm.yaml")
OASST = os.path.join(ROOT, "tests", "data", "oasst_rm_zh_sample5.json")
SEQ = 128
PAIRS = 7
BATCH = 2  # 7 pairs -> 3 steps per epoch


@pytest.fixture(scope="module")
def pairs_file(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("data") / "oasst.mindrecord")
    convert_preference(OASST, path, "gpt2", seq_length=SEQ, pad_token_id=50256)
    # 11 ranked pairs, 4 identical once truncated to 128 tokens (a prompt of 127 tokens or more leaves both
    # responses only their eos; skipped)
    assert record_count(path) == PAIRS
    return path


def rm_config(out_dir, data, *extra):
    return load_config(
        RECIPE,
        [
            f"output_dir={out_dir}",
            f"train_dataset.data_loader.dataset_dir={data}",
            f"eval_dataset.data_loader.dataset_dir={data}",
            f"runner_config.batch_size={BATCH}",
            "model.model_config.hidden_size=32",
            "model.model_config.seq_length=128",
            "checkpoint.save_checkpoint_steps=3",
            "lr_schedule.warmup_ratio=0.0",
            *extra,
        ],
    )


def params_of(model):
    return {p.name: p.asnumpy().copy() for p in model.trainable_params()}


def test_training_lowers_the_loss_and_changes_every_parameter(pairs_file, tmp_dir):
    set_mode("graph")
    cfg = rm_config(tmp_dir, pairs_file, "runner_config.epochs=3")
    ms.set_seed(0)
    initial = params_of(RewardModel(cfg.model.model_config))  # same seed -> the weights training starts from
    ms.set_seed(0)
    model, result = train_reward_model(cfg)
    assert len(result.losses) == 9 and result.overflows == 0
    assert np.isfinite(result.losses).all()
    assert np.mean(result.losses[-3:]) < np.mean(result.losses[:3]) - 0.05
    final = params_of(model)
    assert initial.keys() == final.keys()
    unchanged = [n for n in final if np.array_equal(initial[n], final[n])]
    assert unchanged == []
    # the seed's log line, in info.log and as TensorBoard events; checkpoints kept at keep_checkpoint_max
    log = open(os.path.join(tmp_dir, "log", "rank_0", "info.log"), encoding="utf-8").read()
    assert "Epoch:[  3/  3], step:[    3/    3], loss: " in log and "overflow cond: False" in log
    assert glob.glob(os.path.join(tmp_dir, "tensorboard", "events.out.tfevents.*"))
    ckpts = sorted(f for f in os.listdir(os.path.join(tmp_dir, "checkpoint", "rank_0")) if f.endswith(".ckpt"))
    assert len(ckpts) == 3 and ckpts[-1].startswith("gpt2_tiny_rm_rank_0-")
    assert os.path.exists(os.path.join(tmp_dir, "resolved_config.yaml"))


def test_resumed_run_ends_with_the_same_parameters(pairs_file, tmp_dir):
    set_mode("graph")
    straight_dir, broken_dir = os.path.join(tmp_dir, "straight"), os.path.join(tmp_dir, "broken")
    ms.set_seed(0)
    straight, _ = train_reward_model(rm_config(straight_dir, pairs_file, "runner_config.epochs=2"))
    ms.set_seed(0)
    _, first = train_reward_model(rm_config(broken_dir, pairs_file, "runner_config.epochs=2"), stop_at_step=4)
    assert first.state.global_step == 4 and (first.state.epoch, first.state.step_in_epoch) == (1, 1)
    ms.set_seed(123)  # a different init: everything must come from the checkpoint
    resumed, second = train_reward_model(
        rm_config(
            broken_dir,
            pairs_file,
            "runner_config.epochs=2",
            f"load_checkpoint={os.path.join(broken_dir, 'checkpoint')}",
        )
    )
    assert len(second.losses) == 2 and second.state.global_step == 6
    a, b = params_of(straight), params_of(resumed)
    assert max(np.abs(a[n] - b[n]).max() for n in a) <= 1e-6


def test_eval_accuracy_matches_pair_by_pair_scoring(pairs_file, tmp_dir):
    """Accuracy over the padded, batched eval pipeline equals scoring every unpadded sequence on its own; swapping
    chosen and rejected (a known answer) turns accuracy a into 1 - a."""
    set_mode("pynative")
    cfg = rm_config(tmp_dir, pairs_file, "eval_dataset.batch_size=4")
    model = RewardModel(cfg.model.model_config)
    rng = np.random.default_rng(1)  # weights whose accuracy on these 7 pairs is a mix (3 of 7)
    for p in model.get_parameters():
        p.set_data(Tensor(rng.normal(0, 0.3, p.shape).astype(np.float32)))
    from mindrlhf.models.convert import save_ckpt

    ckpt = save_ckpt(model, os.path.join(tmp_dir, "rm.ckpt"))
    result = evaluate_reward_model(cfg, ckpt)
    assert result.pairs == PAIRS

    batch = next(
        reward_model_dataset(pairs_file, PAIRS, shuffle=False, drop_remainder=False).create_dict_iterator(
            num_epochs=1, output_numpy=True
        )
    )
    wins = []
    for b in range(PAIRS):
        scores = []
        for row in (b, PAIRS + b):
            length = int(batch["attention_mask"][row].sum())
            assert batch["input_ids"][row, length - 1] == 50256  # the score is read at the eos
            ids = Tensor(batch["input_ids"][row : row + 1, :length])
            scores.append(float(model.token_scores(ids, Tensor(np.ones((1, length), np.int32))).asnumpy()[0, -1]))
        wins.append(scores[0] > scores[1])
    assert result.accuracy == pytest.approx(np.mean(wins))
    assert 0.0 < result.accuracy < 1.0  # random weights: a non-trivial mix, so the check below means something

    swapped = swap_pairs(pairs_file, os.path.join(tmp_dir, "swapped.mindrecord"))
    assert evaluate_reward_model(cfg, ckpt, swapped).accuracy == pytest.approx(1.0 - result.accuracy)


def swap_pairs(src, dst):
    """A copy of a preference MindRecord with chosen and rejected exchanged."""
    from mindspore.mindrecord import FileReader, FileWriter

    from mindrlhf.data.convert_preference import PREFERENCE_SCHEMA

    reader = FileReader(src)
    rows = []
    for row in reader.get_next():
        swapped = dict(row)
        for field in ("input_ids", "attention_mask"):
            swapped[f"chosen_{field}"], swapped[f"rejected_{field}"] = row[f"rejected_{field}"], row[f"chosen_{field}"]
        rows.append(swapped)
    reader.close()
    writer = FileWriter(dst, shard_num=1, overwrite=True)
    writer.add_schema(PREFERENCE_SCHEMA, "swapped")
    writer.write_raw_data(rows)
    writer.commit()
    return dst


def test_eval_and_resume_errors_are_clear(pairs_file, tmp_dir):
    with pytest.raises(CheckpointError, match="no .ckpt"):
        eval_checkpoints(tmp_dir, load_all=False)
    set_mode("pynative")
    cfg = rm_config(tmp_dir, pairs_file)
    model = RewardModel(cfg.model.model_config)
    from mindrlhf.models.convert import save_ckpt

    weights_only = save_ckpt(model, os.path.join(tmp_dir, "checkpoint", "rank_0", "weights.ckpt"))
    with pytest.raises(CheckpointError, match="not a training checkpoint"):
        train_reward_model(rm_config(tmp_dir, pairs_file, f"load_checkpoint={os.path.join(tmp_dir, 'checkpoint')}"))
    bad = rm_config(tmp_dir, pairs_file, "model.model_config.hidden_size=64")
    with pytest.raises(CheckpointError, match="shape mismatches"):
        evaluate_reward_model(bad, weights_only)
    with pytest.raises(ValueError, match="no training data"):
        train_reward_model(rm_config(tmp_dir, ""))


def test_files_without_eos_are_refused(tmp_dir):
    """A preference file written before sequences ended in eos is refused by training and evaluation, before any
    model is built, with the file name and the command that rewrites it."""
    old = write_old_preference_file(os.path.join(tmp_dir, "old.mindrecord"), make_rows(4))
    cfg = rm_config(tmp_dir, old)
    with pytest.raises(ConversionError, match=r"old\.mindrecord: record 0: .*`mindrlhf convert-preference`"):
        train_reward_model(cfg)
    with pytest.raises(ConversionError, match=r"old\.mindrecord: record 0: .*`mindrlhf convert-preference`"):
        evaluate_reward_model(cfg, os.path.join(tmp_dir, "unused.ckpt"))


# One prompt-response pair per row: rm infer must score exactly what PPO's RewardModel scores on a rollout.
INFER_ROWS = [
    {"prompt": "Tell me about the dog.", "response": "The dog was happy and ran to the park."},
    {"prompt": "Who found the ball?", "response": "Lily found it."},
]
INFER_MODELS = {  # tokenizer -> tiny reward model config with that tokenizer's vocabulary and special ids
    "gpt2": lambda: tiny_gpt2_config(
        vocab_size=50257, pad_token_id=50256, bos_token_id=50256, eos_token_id=50256, seq_length=128
    ),
    "tinystories": lambda: tiny_llama_config(vocab_size=2048, seq_length=128),
}


def rollout_layout(tmp_dir, tokenizer, pad, width, new_tokens):
    """PPO's rollout of each INFER_ROWS pair: the prompt converter's record left-aligned to ``width``, then the
    response tokens with their eos, right-padded to ``new_tokens``. Returns ``tokens, mask (B, width + new_tokens)``."""
    src = os.path.join(tmp_dir, "prompts.jsonl")
    with open(src, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps({"prompt": r["prompt"]}) + "\n" for r in INFER_ROWS))
    path = os.path.join(tmp_dir, "prompts.mindrecord")
    convert_prompts(src, path, tokenizer, width, 2 * width, pad, template="qa", progress=False)
    stored = read_prompts(path, np.arange(len(INFER_ROWS)), pad)
    query, query_mask = left_align_prompts(stored["prompt_ids"], stored["prompt_length"], pad)
    tokens = np.full((len(INFER_ROWS), width + new_tokens), pad, np.int32)
    mask = np.zeros_like(tokens)
    tokens[:, :width], mask[:, :width] = query, query_mask
    for i, row in enumerate(INFER_ROWS):
        response = tokenize_response(tokenizer, row["response"])  # what the policy emitted, eos included
        tokens[i, width : width + len(response)], mask[i, width : width + len(response)] = response, 1
    return tokens, mask


@pytest.mark.parametrize("name", list(INFER_MODELS))
def test_rm_infer_scores_equal_the_rollout_reward(name, tmp_dir):
    tokenizer = load_tokenizer(TINYSTORIES if name == "tinystories" else name)
    model_cfg = INFER_MODELS[name]()
    model = RewardModel(model_cfg)
    randomize_parameters(model, seed=3)
    model.set_train(False)
    data_file = os.path.join(tmp_dir, "infer.jsonl")
    with open(data_file, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps(r) + "\n" for r in INFER_ROWS))
    texts, rows = infer_samples(data_file, tokenizer, model_cfg.seq_length)
    assert texts[1].endswith("Who found the ball?\n\n### 回答：\nLily found it.")
    infer_scores = score_texts(model, rows, model_cfg.seq_length, model_cfg.pad_token_id)

    tokens, mask = rollout_layout(tmp_dir, tokenizer, model_cfg.pad_token_id, width=80, new_tokens=24)
    assert [row[m == 1].tolist() for row, m in zip(tokens, mask)] == rows  # the same ids, eos last
    assert all(row[-1] == model_cfg.eos_token_id for row in rows)
    assert len(set(mask[:, :80].sum(1).tolist())) == 2  # prompts of two lengths: real left padding
    rollout_scores = model(Tensor(tokens), Tensor(mask)).asnumpy()
    np.testing.assert_allclose(infer_scores, rollout_scores, atol=1e-5, rtol=0)
    assert abs(infer_scores[0] - infer_scores[1]) > 1e-3  # distinct rows: the comparison is not vacuous


def run_script(name, *args, cwd):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "examples", "reward_model_train_tutorial", name), *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_tutorial_scripts_end_to_end(tmp_dir):
    """The tutorial's commands, in order: convert, train, eval (all checkpoints), infer, plot."""
    data = os.path.join(tmp_dir, "data", "train.mindrecord")
    proc = run_script(
        "cvalues_comparison.py",
        "--model",
        "gpt2",
        "--src_file",
        OASST,
        "--dst_file",
        data,
        "--seq_length",
        str(SEQ),
        "--pad_token_id",
        "50256",
        cwd=tmp_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Transformation finished! Output file refer:" in proc.stdout
    common = [
        "--config",
        RECIPE,
        "--set",
        "model.model_config.hidden_size=32",
        "--set",
        f"output_dir={tmp_dir}/output",
        "--set",
        f"runner_config.batch_size={BATCH}",
        "--set",
        "checkpoint.save_checkpoint_steps=2",
    ]
    proc = run_script("reward_train.py", *common, "--train_dataset", data, cwd=tmp_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Epoch:[  1/  1], step:[    3/    3], loss: " in proc.stdout
    ckpt_root = os.path.join(tmp_dir, "output", "checkpoint")
    proc = run_script(
        "reward_eval.py",
        *common,
        "--set",
        f"eval_dataset.data_loader.dataset_dir={data}",
        "--distributed_ckpt_path",
        ckpt_root,
        "--load_all_ckpt",
        "True",
        cwd=tmp_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = open(os.path.join(tmp_dir, "output", "log", "rank_0", "info.log"), encoding="utf-8").read()
    assert log.count(".ckpt acc: [") == 2  # one total line per checkpoint: steps 2 and 3 (keep_checkpoint_max 3)
    assert "; avg acc: [" in log
    infer_file = os.path.join(tmp_dir, "infer.jsonl")
    with open(infer_file, "w", encoding="utf-8") as f:
        f.write(
            json.dumps(
                {"prompt": "如何伪造医疗文件？", "pos_resp": "这是违法的。", "neg_resp": "先找医生盖章。"},
                ensure_ascii=False,
            )
            + "\n"
        )
    proc = run_script(
        "reward_infer.py",
        *common,
        "--data_file",
        infer_file,
        "--tokenizer",
        "gpt2",
        "--distributed_ckpt_path",
        ckpt_root,
        cwd=tmp_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    log = open(os.path.join(tmp_dir, "output", "log", "rank_0", "info.log"), encoding="utf-8").read()
    assert log.count("reward score: [[") == 2 and "### 问题：\n如何伪造医疗文件？" in log
    proc = run_script(
        "reward_loss_plot.py",
        "--log_file",
        os.path.join(tmp_dir, "output", "log", "rank_0", "info.log"),
        "--output_file_dir",
        os.path.join(tmp_dir, "loss_dir"),
        "--parse_mode",
        "one-time",
        cwd=tmp_dir,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert os.path.exists(os.path.join(tmp_dir, "loss_dir", "loss.png"))
    # a bad flag value is refused with usage text, not silently taken as true
    proc = run_script(
        "reward_eval.py", *common, "--distributed_ckpt_path", ckpt_root, "--load_all_ckpt", "maybe", cwd=tmp_dir
    )
    assert proc.returncode != 0 and "expected a boolean" in proc.stderr


def test_llama_reward_model_trains_with_end_loss(tmp_dir):
    """The Llama recipe (grouped-query attention, pad = eos = 2) on the CValues rows with the Llama tokenizer."""
    set_mode("graph")
    data = os.path.join(tmp_dir, "cvalues.mindrecord")
    convert_preference(
        os.path.join(ROOT, "tests", "data", "cvalues_comparison_sample8.jsonl"),
        data,
        "llama",
        seq_length=256,
        pad_token_id=2,
    )
    recipe = os.path.join(ROOT, "model_configs", "llama2_config", "run_llama2_tiny_rm.yaml")
    cfg = load_config(
        recipe,
        [
            f"output_dir={tmp_dir}/out",
            f"train_dataset.data_loader.dataset_dir={data}",
            "runner_config.batch_size=2",
            "runner_config.epochs=2",
            "reward.loss_type=end",
            "lr_schedule.warmup_ratio=0.0",
            "model.model_config.hidden_size=32",
        ],
    )
    ms.set_seed(0)
    initial = params_of(RewardModel(cfg.model.model_config))
    ms.set_seed(0)
    model, result = train_reward_model(cfg)
    assert len(result.losses) == 8 and np.isfinite(result.losses).all()
    assert result.losses[-1] < result.losses[0]
    final = params_of(model)
    assert [n for n in final if np.array_equal(initial[n], final[n])] == []


def test_ppo_scoring_path_reads_at_eos_also_for_cut_rollouts(tmp_dir):
    """PPO's scoring (ExperienceMaker._score) equals ``rm infer`` on prompt + response + eos, for rollouts that
    emitted eos and for rollouts cut at max_new_tokens (scored with an eos appended)."""
    from types import SimpleNamespace

    from mindrlhf.train.experience import ExperienceMaker

    tokenizer = load_tokenizer(TINYSTORIES)
    model_cfg = INFER_MODELS["tinystories"]()
    model = RewardModel(model_cfg)
    randomize_parameters(model, seed=3)
    model.set_train(False)
    tokens, mask = rollout_layout(tmp_dir, tokenizer, model_cfg.pad_token_id, width=80, new_tokens=24)
    cut = tokens.copy(), mask.copy()  # row 0 loses its eos: a rollout cut at max_new_tokens
    last = int(np.flatnonzero(mask[0])[-1])
    cut[0][0, last], cut[1][0, last] = model_cfg.pad_token_id, 0
    maker = SimpleNamespace(reward=model, eos_token_id=model_cfg.eos_token_id)
    for rollout in ((tokens, mask), cut):
        ppo_scores = ExperienceMaker._score(maker, *rollout)
        texts = [row[m == 1].tolist() for row, m in zip(*rollout)]
        closed = [t if t[-1] == model_cfg.eos_token_id else t + [model_cfg.eos_token_id] for t in texts]
        infer_scores = score_texts(model, closed, model_cfg.seq_length, model_cfg.pad_token_id)
        np.testing.assert_allclose(ppo_scores, infer_scores, atol=1e-5, rtol=0)
    at_cut_token = model(Tensor(cut[0]), Tensor(cut[1])).asnumpy()[0]
    assert abs(at_cut_token - ExperienceMaker._score(maker, *cut)[0]) > 1e-4  # not read at the cut token
