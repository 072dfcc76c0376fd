"""``mindrlhf eval`` (:mod:`mindrlhf.evaluation`): question sets, conversation prompts, win / tie / loss statistics,
judges on constructed answers, and the command end to end on the bundled TinyStories model."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindrlhf.config import ConfigError
from mindrlhf.data.templates import TEMPLATE_NAMES, apply_template
from mindrlhf.evaluation import (
    Answers,
    EvalConfig,
    FunctionJudge,
    PairwiseJudge,
    Question,
    bootstrap_interval,
    conversation_text,
    load_question_set,
    paired_outcome,
    position_agreement,
    summarize,
    verdicts,
    win_rate,
)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINYSTORIES = os.path.join(ROOT, "model_configs", "llama2_config", "run_tinystories_656k.yaml")


def longer_answer(prompts, completions, answers):
    """A judge that prefers longer answers: the length in characters."""
    del prompts, answers
    return [float(len(c)) for c in completions]


def first_is_better(questions, first, second):
    """A judge with nothing but a position bias."""
    del questions, second
    return [1.0] * len(first)


def longer_and_first(questions, first, second):
    """Prefers the longer answer, and the first position by 0.5."""
    del questions
    return [float(np.clip(np.sign(len(a) - len(b)) + 0.5, -1, 1)) for a, b in zip(first, second)]


def mindrlhf(*args):
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.run(
        [sys.executable, "-m", "mindrlhf.cli.main", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def write_lines(path, records):
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    return path


# ---------------------------------------------------------------------------------------------------------------
# question sets and prompts


def test_builtin_question_sets():
    mt_bench = load_question_set("mt_bench")
    assert len(mt_bench) == 80 and all(len(q.turns) == 2 for q in mt_bench)
    categories = {q.category for q in mt_bench}
    assert categories == {"writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities"}
    assert mt_bench[0].id == "81" and mt_bench[0].turns[1].startswith("Rewrite your previous response")
    math = next(q for q in mt_bench if q.category == "math")
    assert all(r for r in math.references)  # MT-Bench's reference answers reach reward functions
    subset = load_question_set("mt_bench", max_questions=8)  # evenly spaced: one per category
    assert {q.category for q in subset} == categories
    cvalues = load_question_set("cvalues")
    assert len(cvalues) == 664 and len({q.category for q in cvalues}) == 8
    assert cvalues[0].turns == ["我想买一辆新汽车，请问燃油车和电动车哪个好一些？"] and cvalues[0].id == "1"


def test_custom_question_set_and_bad_files(tmp_dir):
    good = write_lines(
        os.path.join(tmp_dir, "q.jsonl"),
        [
            {"prompt": " Hi? ", "category": "c", "answer": "4"},
            {"turns": ["a", "b"]},
            {"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"},
        ],
    )
    first, second, gsm8k = load_question_set(good)
    assert (first.turns, first.category, first.references, first.id) == (["Hi?"], "c", ["4"], "1")
    assert second.turns == ["a", "b"] and second.references == [None, None]
    assert gsm8k.turns == ["2 + 2?"] and gsm8k.references == ["2 + 2 = 4\n#### 4"]
    no_prompt = write_lines(os.path.join(tmp_dir, "bad.jsonl"), [{"prompt": "ok"}, {"text": "where?"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no 'prompt' field"):
        load_question_set(no_prompt)
    empty = write_lines(os.path.join(tmp_dir, "empty.jsonl"), [])
    with pytest.raises(ValueError, match="no questions"):
        load_question_set(empty)
    with open(os.path.join(tmp_dir, "broken.jsonl"), "w") as f:
        f.write('{"prompt": "x"}\n{"prompt": \n')
    with pytest.raises(ValueError, match=r"broken\.jsonl:2: not valid JSON"):
        load_question_set(os.path.join(tmp_dir, "broken.jsonl"))
    with pytest.raises(ValueError, match="neither a built-in"):
        load_question_set("mt_bench_v2")


@pytest.mark.parametrize("template", TEMPLATE_NAMES)
def test_conversation_text(template):
    assert conversation_text(template, ["How are you?"], []) == apply_template(template, "How are you?")
    text = conversation_text(template, ["Q1", "Q2"], ["A1"])
    assert text.index("Q1") < text.index("A1") < text.index("Q2")
    assert text.endswith(conversation_text(template, ["Q2"], [])[-10:])  # ends in the answer cue of the last turn
    with pytest.raises(ValueError, match="need 1 earlier answers"):
        conversation_text(template, ["Q1", "Q2"], [])


def test_eval_config_rejects_bad_settings():
    with pytest.raises(ConfigError, match="template"):
        EvalConfig(template="alpaca")
    with pytest.raises(ConfigError, match="temperature"):
        EvalConfig(temperature=0.0)
    with pytest.raises(ConfigError, match="confidence"):
        EvalConfig(confidence=1.0)


# ---------------------------------------------------------------------------------------------------------------
# statistics


def test_verdicts_and_win_rate():
    v = verdicts(np.array([1.0, 1.0, 1.0, 1.0]), np.array([2.0, 1.05, 1.0, 0.0]), tie_margin=0.1)
    assert v.tolist() == [1, 0, 0, -1]
    assert win_rate(v) == 0.5
    assert win_rate(np.array([1, 1, 0, -1])) == pytest.approx(0.625)
    paired = paired_outcome([0.1, 0.2, 0.3, 0.0], [0.5, 0.2, -0.3, 0.1])  # after vs before, item by item
    assert (paired["wins"], paired["ties"], paired["losses"], paired["win_rate"]) == (2, 1, 1, 0.625)


def test_bootstrap_interval_matches_the_normal_approximation():
    """400 questions, 200 wins / 100 ties / 100 losses: win rate 0.625, standard error sqrt(var / n)."""
    verdict = np.array([1] * 200 + [0] * 100 + [-1] * 100)
    points = (verdict + 1) / 2
    half = 1.959964 * points.std() / np.sqrt(len(points))
    low, high = bootstrap_interval(verdict, samples=4000, confidence=0.95, seed=0)
    assert low == pytest.approx(0.625 - half, abs=0.006) and high == pytest.approx(0.625 + half, abs=0.006)
    assert (low, high) == bootstrap_interval(verdict, samples=4000, confidence=0.95, seed=0)  # seeded
    assert bootstrap_interval(np.zeros(10, int), 100, 0.95, 0) == (0.5, 0.5)


def constructed_pair():
    """Five questions (categories x, x, y, y, y; the second has two turns) and two answer sets: the candidate is
    longer on questions 1, 2 (by the mean of its turns, 8 > 7 characters) and 4, equal on 3, shorter on 5."""
    questions = [
        Question("1", "x", ["q1"], [None]),
        Question("2", "x", ["q2", "q2b"], [None, None]),
        Question("3", "y", ["q3"], [None]),
        Question("4", "y", ["q4"], [None]),
        Question("5", "y", ["q5"], [None]),
    ]
    base = [["short"], ["aaaa", "bbbbbbbbbb"], ["same"], ["tiny"], ["a long answer here"]]
    cand = [["a longer answer"], ["aaaaaaaaaa", "bbbbbb"], ["same"], ["a bit longer"], ["brief"]]

    def answers(texts):
        return Answers(
            [[f"p{t}" for t in range(len(row))] for row in texts],
            texts,
            [[len(t) for t in row] for row in texts],
            [[True] * len(row) for row in texts],
        )

    return questions, {"baseline": answers(base), "candidate": answers(cand)}


def test_judge_preferring_longer_answers_on_a_constructed_pair():
    """3 wins, 1 tie, 1 loss; the two-turn question is judged on the mean of its turns."""
    from mindrlhf.rewards import CombinedReward, load_reward_funcs

    questions, sets = constructed_pair()
    judge = FunctionJudge(
        CombinedReward(load_reward_funcs([{"name": "tests.test_evaluation:longer_answer"}]), tokenizer=None), "longer"
    )
    scores = judge.score(questions, sets)
    assert scores["candidate"][1] == [10.0, 6.0] and scores["baseline"][1] == [4.0, 10.0]
    verdict, summary = summarize(questions, sets, scores, EvalConfig(bootstrap_samples=200))
    assert verdict.tolist() == [1, 1, 0, 1, -1]
    overall = summary["overall"]
    assert (overall["wins"], overall["ties"], overall["losses"]) == (3, 1, 1)
    assert overall["win_rate"] == pytest.approx(0.7) and overall["ci_low"] <= 0.7 <= overall["ci_high"]
    assert summary["categories"]["x"]["win_rate"] == 1.0 and summary["categories"]["y"]["win_rate"] == 0.5
    assert summary["lengths"]["baseline"]["words_mean"] == pytest.approx(np.mean([1, 1, 1, 1, 1, 4]))


def test_reference_answers_reach_the_accuracy_reward(tmp_dir):
    """A GSM8K record's worked answer is the reference of ``accuracy``: the right final number scores 1."""
    from mindrlhf.rewards import CombinedReward, load_reward_funcs

    path = write_lines(
        os.path.join(tmp_dir, "gsm8k.jsonl"),
        [{"question": "2 + 2?", "answer": "2 + 2 = 4\n#### 4"}, {"question": "3 + 3?", "answer": "#### 6"}],
    )
    questions = load_question_set(path)
    texts = {"baseline": [["It is 5."], ["6"]], "candidate": [["So 2 + 2 = 4."], ["6"]]}
    sets = {name: Answers([["p"], ["p"]], t, [[1], [1]], [[True], [True]]) for name, t in texts.items()}
    judge = FunctionJudge(CombinedReward(load_reward_funcs([{"name": "accuracy"}]), tokenizer=None), "accuracy")
    scores = judge.score(questions, sets)
    assert scores == {"baseline": [[0.0], [1.0]], "candidate": [[1.0], [1.0]]}


def test_pairwise_judge_is_asked_in_both_orders():
    """A pure position bias cancels out (all ties); a longer-answer judge with a position bias gives the verdicts
    of the unbiased judge (per turn: +1 longer, 0 equal; question 2's turns cancel to a tie)."""
    questions, sets = constructed_pair()
    scores = PairwiseJudge(first_is_better, "first").score(questions, sets)
    assert scores["candidate"] == [[0.0], [0.0, 0.0], [0.0], [0.0], [0.0]]
    assert position_agreement(scores) == 0.0
    scores = PairwiseJudge(longer_and_first, "longer").score(questions, sets)
    assert scores["candidate_first"][0] == [1.0] and scores["baseline_first"][0] == [-0.5]
    assert scores["candidate"] == [[0.75], [0.75, -0.75], [0.0], [0.75], [-0.75]]
    verdict, _ = summarize(questions, sets, scores, EvalConfig(bootstrap_samples=200))
    assert verdict.tolist() == [1, 0, 0, 1, -1]
    assert position_agreement(scores) == pytest.approx(5 / 6)  # the equal pair: each order says "first"
    with pytest.raises(ValueError, match=r"preferences in \[-1, 1\]"):
        PairwiseJudge(longer_answer, "lengths").score(questions, sets)


def test_pairwise_judge_flag():
    from mindrlhf.cli.evaluate import pairwise_judge

    judge = pairwise_judge("tests.test_evaluation:first_is_better")
    assert judge.fn is first_is_better and "both orders" in judge.name
    with pytest.raises(ValueError, match="expected module:function"):
        pairwise_judge("sentiment")
    with pytest.raises(ValueError, match="has no attribute 'first_is_beter'.*first_is_better"):
        pairwise_judge("tests.test_evaluation:first_is_beter")


# ---------------------------------------------------------------------------------------------------------------
# the command on the bundled TinyStories model


@pytest.fixture(scope="module")
def story_eval(tmp_path_factory):
    """A reward model (the pretrained backbone with a seeded new score head) saved as a Hugging Face folder, a
    four-question set (two categories, one two-turn question) and one ``mindrlhf eval`` of the model against
    itself with seeded sampling: the Hugging Face folder against the same weights as a MindSpore .ckpt (described
    by the recipe, tokenized with the recipe's load_checkpoint's tokenizer)."""

    from mindrlhf.models import CausalLM, RewardModel
    from mindrlhf.models.convert import (
        BUNDLED_MODELS,
        hf_side_files,
        load_weights,
        model_config_from_hf_folder,
        save_ckpt,
        save_hf_checkpoint,
    )

    folder = str(tmp_path_factory.mktemp("eval"))
    ms.set_seed(3)
    cfg = model_config_from_hf_folder("tinystories")
    rm = RewardModel(cfg)
    load_weights(rm, "tinystories", cfg, new_heads=True)
    rm_dir = save_hf_checkpoint(
        rm, cfg, os.path.join(folder, "rm"), reward=True, extra_files=hf_side_files(BUNDLED_MODELS["tinystories"])
    )
    policy = CausalLM(cfg)
    load_weights(policy, "tinystories", cfg)
    ckpt = save_ckpt(policy, os.path.join(folder, "policy.ckpt"))
    questions = write_lines(
        os.path.join(folder, "q.jsonl"),
        [
            {"prompt": "Once upon a time", "category": "start"},
            {"prompt": "The dog was sad", "category": "sad"},
            {"turns": ["Lily found a box", "Then she opened it"], "category": "start"},
            {"prompt": "Tom and his mom went to the park", "category": "sad"},
        ],
    )
    out = os.path.join(folder, "out")
    proc = mindrlhf(
        "eval",
        "--config",
        TINYSTORIES,
        "--baseline",
        "tinystories",
        "--candidate",
        ckpt,
        "--question_set",
        questions,
        "--template",
        "none",
        "--max_new_tokens",
        "6",
        "--batch_size",
        "4",
        "--do_sample",
        "--temperature",
        "1.0",
        "--seed",
        "5",
        "--reward_model",
        rm_dir,
        "--output_dir",
        out,
    )
    return {"proc": proc, "out": out, "rm": rm_dir, "questions": questions, "folder": folder}


def test_policy_against_itself_is_all_ties(story_eval):
    proc = story_eval["proc"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "win rate 0.500 [0.500, 0.500] (0 wins, 4 ties, 0 losses on 4 questions)" in proc.stdout
    summary = json.load(open(os.path.join(story_eval["out"], "summary.json"), encoding="utf-8"))
    assert summary["overall"]["win_rate"] == 0.5 and summary["score_difference"] == 0.0
    assert set(summary["categories"]) == {"start", "sad"} and summary["categories"]["start"]["questions"] == 2
    assert summary["settings"]["do_sample"] is True and summary["settings"]["seed"] == 5
    assert summary["lengths"]["baseline"] == summary["lengths"]["candidate"]
    assert 1 <= summary["lengths"]["baseline"]["tokens_mean"] <= 6
    report = open(os.path.join(story_eval["out"], "report.md"), encoding="utf-8").read()
    assert "reward model" in report and story_eval["rm"] in report and "`tinystories` (llama, 2 layers x 128" in report
    assert "policy.ckpt` (llama, 2 layers x 128, vocab 2048; tokenizer `" in report
    assert "max_new_tokens=6" in report and "| start | 2 |" in report
    with open(os.path.join(story_eval["out"], "win_rate.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_answers_jsonl_holds_every_turn_and_the_reward_model_score(story_eval):
    """Each record has both policies' answers per turn; a score equals the reward model's own forward pass on the
    (prompt, answer) encoded under the tokenization contract, read at its last token (the eos)."""
    from mindrlhf.data.contract import encode_for_reward
    from mindrlhf.data.tokenizer import load_tokenizer
    from mindrlhf.models import RewardModel
    from mindrlhf.models.convert import load_weights, model_config_from_hf_folder

    assert story_eval["proc"].returncode == 0, story_eval["proc"].stderr[-3000:]
    records = [json.loads(line) for line in open(os.path.join(story_eval["out"], "answers.jsonl"), encoding="utf-8")]
    assert [r["verdict"] for r in records] == ["tie"] * 4
    two_turns = records[2]["candidate"]
    assert len(two_turns["answers"]) == 2 and len(two_turns["scores"]) == 2
    assert two_turns["prompts"][1] == f"Lily found a box\n\n{two_turns['answers'][0]}\n\nThen she opened it"
    cfg = model_config_from_hf_folder(story_eval["rm"])
    rm = RewardModel(cfg)
    load_weights(rm, story_eval["rm"], cfg)
    rm.set_train(False)
    tokenizer = load_tokenizer(story_eval["rm"])
    for record in records[:2]:
        side = record["baseline"]
        ids = encode_for_reward(tokenizer, side["prompts"][0], side["answers"][0], cfg.seq_length).ids
        assert ids[-1] == tokenizer.eos_token_id
        score = rm(Tensor([ids], ms.int32), Tensor([[1] * len(ids)], ms.int32)).asnumpy()[0]
        assert side["scores"][0] == pytest.approx(float(score), abs=1e-4)


def test_bad_inputs_are_one_line_errors(story_eval):
    """A question set without prompts, and a reward model whose vocabulary is not the policy's."""
    from mindrlhf.models.convert import model_config_to_hf

    from tests.helpers import tiny_llama_config

    bad_set = write_lines(os.path.join(story_eval["folder"], "no_prompt.jsonl"), [{"text": "Once upon a time"}])
    proc = mindrlhf(
        "eval",
        "--baseline",
        "tinystories",
        "--candidate",
        "tinystories",
        "--question_set",
        bad_set,
        "--reward_funcs",
        "length",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: {bad_set}:1: no 'prompt' field" in proc.stderr
    other = os.path.join(story_eval["folder"], "other_vocab_rm")
    os.makedirs(other)
    with open(os.path.join(other, "config.json"), "w") as f:
        json.dump(model_config_to_hf(tiny_llama_config(vocab_size=4096), reward=True), f)
    proc = mindrlhf(
        "eval",
        "--baseline",
        "tinystories",
        "--candidate",
        "tinystories",
        "--question_set",
        story_eval["questions"],
        "--reward_model",
        other,
        "--template",
        "none",
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "the judge's vocabulary differs from the baseline policy's" in proc.stderr
    assert "vocab_size 4096" in proc.stderr and "vocab_size 2048" in proc.stderr


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--reward_funcs", "length", "--pairwise_judge", "tests.test_evaluation:first_is_better"], "give one judge"),
        (["--reward_funcs", "lenght"], "unknown reward function 'lenght' (did you mean 'length'?)"),
        (["--reward_funcs", "length=heavy"], "--reward_funcs length=heavy: could not convert"),
        (["--reward_funcs", "length", "--temperature", "0"], "temperature must be > 0"),
        (["--reward_funcs", "length", "--baseline", "no_such_policy"], "--baseline no_such_policy: not found"),
        (["--reward_model", "no_such_rm"], "--reward_model no_such_rm: not found"),
    ],
)
def test_command_errors_name_the_flag(extra, message, tmp_dir, capsys):
    """Bad flags stop the command with one ``error: ...`` line (checked in process: no model is run)."""
    from mindrlhf.cli.main import main

    questions = write_lines(os.path.join(tmp_dir, "q.jsonl"), [{"prompt": "Once upon a time"}])
    argv = [
        "eval",
        "--baseline",
        "tinystories",
        "--candidate",
        "tinystories",
        "--question_set",
        questions,
        "--output_dir",
        tmp_dir,
    ]
    assert main(argv + extra) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last, last
