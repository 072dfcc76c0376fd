"""Reward functions as configuration: the built-ins against hand-computed values (GSM8K "#### 1,234" and
"\\boxed{42}" answers, worked solutions as references, non-numeric answers, the format regex, the length penalty),
loading specs (built-ins, "module:function", every error), and CombinedReward on token rollouts (weighted sum,
every way a function can misbehave, answers read from a converted GSM8K-style prompt file)."""

from __future__ import annotations

import json
import math
import os

import numpy as np
import pytest

from mindrlhf.data.convert_prompts import convert_prompts
from mindrlhf.data.datasets import read_prompts
from mindrlhf.data.tokenizer import load_tokenizer
from mindrlhf.rewards import (
    BUILTIN_REWARDS,
    CombinedReward,
    RewardFuncSpec,
    RewardFunctionError,
    accuracy_reward,
    extract_answer,
    format_reward,
    length_reward,
    load_reward_funcs,
    parse_number,
    reference_answer,
    sentiment_reward,
    vader_sentiment,
)

GSM8K_SOLUTION = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)
HELPERS = "tests.reward_helpers"


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer("gpt2")


def accuracy(completions, answers):
    return accuracy_reward([""] * len(completions), completions, answers)


# ---------------------------------------------------------------------------------------------------------------
# Answer extraction and the built-ins


@pytest.mark.parametrize(
    "text, expected",
    [
        ("so 3 + 4 = 7\n#### 1,234", "1,234"),
        ("#### 5\nmore text\n#### 6 apples\nbye", "6 apples"),  # the last mark, the rest of its line
        ("first \\boxed{41}, then \\boxed{42}.", "42"),
        ("\\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),  # nested braces
        ("\\boxed{7} but #### 8", "8"),  # #### before \boxed
        ("I had 3 apples, ate 1, so 2.", "2."),  # no mark: the last number
        ("\\boxed{12", "12"),  # an unclosed box is not an answer: the last number
        ("no digits at all", None),
    ],
)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


def test_reference_answer_and_numbers():
    assert reference_answer(GSM8K_SOLUTION) == "72"
    assert reference_answer("  Paris \n") == "Paris"
    assert reference_answer("The answer is \\boxed{3/4}") == "3/4"
    assert parse_number("1,234") == 1234.0
    assert parse_number(" $1,234. ") == 1234.0
    assert parse_number("-0.5") == -0.5 and parse_number(".5") == 0.5 and parse_number("3e2") == 300.0
    for text in ("72 clips", "Paris", "", "1/2", "$"):
        assert parse_number(text) is None, text


@pytest.mark.parametrize(
    "completion, answer, expected",
    [
        ("She sold 24 then 72 in total.\n#### 72", GSM8K_SOLUTION, 1.0),  # a worked solution as the reference
        ("She sold 24 then 72 in total.\n#### 71", GSM8K_SOLUTION, 0.0),
        ("#### 1,234", "1234", 1.0),  # commas removed on both sides
        ("#### 1234", "#### 1,234", 1.0),
        ("#### $1,234.00", "1234", 1.0),
        ("#### 72 clips", "72", 1.0),  # words around a numeric answer: its first number
        ("so the total is \\boxed{42}", "42", 1.0),
        ("\\boxed{41} no wait \\boxed{42}", "42", 1.0),  # the last box
        ("\\boxed{42} no wait \\boxed{41}", "42", 0.0),
        ("The answer is 42.", "#### 42", 1.0),  # no mark: the last number
        ("42 is wrong, the answer is 43", "42", 0.0),
        ("0.50", ".5", 1.0),  # numerically equal
        ("#### 1e3", "1000", 1.0),
        ("I cannot tell", "42", 0.0),  # nothing to extract
        ("#### Paris", "paris", 1.0),  # non-numeric: normalised strings
        ("#### The  Eiffel Tower.", "the eiffel tower", 1.0),
        ("#### London", "Paris", 0.0),
        ("The capital is Paris", "Paris", 0.0),  # a non-numeric answer must be marked
        ("\\boxed{\\frac{1}{2}}", "\\boxed{\\frac{1}{2}}", 1.0),
        ("\\boxed{\\frac{1}{3}}", "\\frac{1}{2}", 0.0),
        ("#### 72", "72 clips", 0.0),  # a non-numeric reference is compared as a string
    ],
)
def test_accuracy(completion, answer, expected):
    assert accuracy([completion], [answer]) == [expected]


def test_accuracy_batch_and_missing_answer():
    assert accuracy(["#### 3", "#### 4", "\\boxed{5}"], ["3", "#### 3", "5"]) == [1.0, 0.0, 1.0]
    for missing in (None, ""):
        with pytest.raises(ValueError, match="no reference answer"):
            accuracy(["#### 3", "#### 4"], ["3", missing])


@pytest.mark.parametrize(
    "completion, expected",
    [
        ("<think>48 / 2 = 24, 48 + 24 = 72</think> #### 72", 1.0),
        ("  <think>line one\nline two</think>\n\nThe answer is 72.\n", 1.0),  # stripped, '.' spans lines
        ("<think></think> 72", 0.0),  # empty reasoning
        ("<think>reasoning</think>", 0.0),  # no answer after it
        ("<think>reasoning</think>   \n ", 0.0),
        ("The answer is 72 <think>late</think> 72", 0.0),  # must start with the block
        ("<think>unclosed 72", 0.0),
        ("#### 72", 0.0),
    ],
)
def test_format_default_pattern(completion, expected):
    assert format_reward([""], [completion], [None]) == [expected]


def test_format_custom_pattern_and_length():
    pattern = r".*#### -?\d+"
    assert format_reward(["", ""], ["so #### 72", "so #### seventy"], [None, None], pattern=pattern) == [1.0, 0.0]
    assert length_reward(["p", "p", "p"], ["", "abc", "x" * 250], [None] * 3) == [0.0, -0.003, -0.25]
    assert length_reward(["p"], ["abcd"], [None], scale=8.0) == [-0.5]
    with pytest.raises(ValueError, match="scale"):
        length_reward([], [], [], scale=0)


def test_sentiment_is_vader():
    texts = ["What a wonderful, happy day!", "This is terrible and I hate it.", ""]
    got = sentiment_reward(["p"] * 3, texts, [None] * 3)
    np.testing.assert_allclose(got, vader_sentiment(texts))
    assert got[0] > 0.5 and got[1] < -0.5 and got[2] == 0.0


# ---------------------------------------------------------------------------------------------------------------
# Specs and loading


def test_load_builtins_and_module_function():
    loaded = load_reward_funcs(
        [
            RewardFuncSpec("accuracy"),
            {"name": "format", "weight": 0.5},
            {"name": "length", "weight": 2, "kwargs": {"scale": 10.0}},
            RewardFuncSpec(f"{HELPERS}:contains_answer", -1.5, {"bonus": 3.0}),
        ]
    )
    assert [name for name, _, _ in loaded] == ["accuracy", "format", "length", f"{HELPERS}:contains_answer"]
    assert [weight for _, weight, _ in loaded] == [1.0, 0.5, 2.0, -1.5]
    assert all(isinstance(w, float) for _, w, _ in loaded)
    assert loaded[0][2] is BUILTIN_REWARDS["accuracy"]
    assert loaded[2][2](["p"], ["abc"], [None]) == [-0.3]  # the bound scale
    assert loaded[3][2](["p", "p"], ["it is 72", "it is 7"], ["72", "72"]) == [3.0, 0.0]  # the bound bonus
    assert load_reward_funcs([]) == []


@pytest.mark.parametrize(
    "spec, words",
    [
        ({"name": "acuracy"}, ["unknown reward function 'acuracy'", "did you mean 'accuracy'", "module:function"]),
        ({"name": "formats"}, ["did you mean 'format'"]),
        ({"name": "zzzz"}, ["unknown reward function 'zzzz'", "accuracy, format, length, sentiment"]),
        (
            {"name": "tests.no_such_module:fn"},
            ["cannot import module 'tests.no_such_module'", "ModuleNotFoundError", "PYTHONPATH"],
        ),
        (
            {"name": f"{HELPERS}:contain_answer"},
            ["has no attribute 'contain_answer'", "did you mean 'contains_answer'"],
        ),
        ({"name": f"{HELPERS}:NOT_CALLABLE"}, ["not callable"]),
        ({"name": f"{HELPERS}:two_arguments"}, [f"'{HELPERS}:two_arguments' cannot be called"]),
        ({"name": ":fn"}, ["expected 'module:function'"]),
        ({"name": "format", "kwargs": {"patern": "x"}}, ["'format' cannot be called", "patern"]),
        ({"name": "format", "kwargs": {"pattern": "(unclosed"}}, ["'format': bad options", "unclosed"]),
        ({"name": "length", "kwargs": {"scale": -1}}, ["'length': bad options", "scale must be > 0"]),
        ({"name": "accuracy", "wieght": 2}, ["unknown key 'wieght'", "did you mean 'weight'"]),
        ({"weight": 2}, ["missing 'name'"]),
        ({"name": "accuracy", "weight": float("nan")}, ["'accuracy': weight must be a finite number"]),
        ({"name": "accuracy", "weight": "1"}, ["weight must be a finite number"]),
        ({"name": ""}, ["non-empty string"]),
        ({"name": "accuracy", "kwargs": [1]}, ["kwargs must be a mapping"]),
    ],
)
def test_load_errors(spec, words):
    with pytest.raises(ValueError) as info:
        load_reward_funcs([spec])
    for word in words:
        assert word in str(info.value)


def test_load_module_that_fails_to_import(tmp_path, monkeypatch):
    (tmp_path / "broken_rewards.py").write_text(
        "import math\nraise RuntimeError('needs a GPU judge')\ndef score(p, c, a):\n    return [0.0] * len(c)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ValueError) as info:
        load_reward_funcs([{"name": "broken_rewards:score"}])
    message = str(info.value)
    assert "reward function 'broken_rewards:score'" in message
    assert "cannot import module 'broken_rewards'" in message and "RuntimeError: needs a GPU judge" in message
    (tmp_path / "syntax_rewards.py").write_text("def score(p, c, a:\n    return []\n")
    with pytest.raises(ValueError, match="cannot import module 'syntax_rewards': SyntaxError"):
        load_reward_funcs([{"name": "syntax_rewards:score"}])


def test_load_refuses_a_name_twice():
    with pytest.raises(ValueError, match="'format' is listed twice"):
        load_reward_funcs([{"name": "format"}, {"name": "format", "kwargs": {"pattern": ".*"}}])


# ---------------------------------------------------------------------------------------------------------------
# CombinedReward


def rollouts(tok, prompts, completions):
    return [tok.encode(p) for p in prompts], [tok.encode(c) + [tok.eos_token_id] for c in completions]


def test_combined_weighted_sum(tok):
    prompts = ["Natalia sold clips to 48 of her friends.", "What is 2 + 3?", "What is 2 + 3?"]
    completions = ["<think>48 + 24</think> #### 72", "The answer is 6", "<think>2 + 3 = 5</think>\\boxed{5}"]
    answers = [GSM8K_SOLUTION, "5", "#### 5"]
    funcs = load_reward_funcs(
        [
            {"name": "accuracy", "weight": 1.0},
            {"name": "format", "weight": 0.5},
            {"name": "length", "weight": 2.0},
            {"name": f"{HELPERS}:prompt_words", "weight": 0},
        ]
    )
    scores, parts = CombinedReward(funcs, tok)(*rollouts(tok, prompts, completions), answers)
    # by hand: accuracy 1, 0, 1; format 1, 0, 1; length -30/1000, -15/1000, -33/1000 (characters); prompt words
    # 8, 5, 5 (weight 0: reported, not summed)
    expected = {
        "accuracy": [1.0, 0.0, 1.0],
        "format": [1.0, 0.0, 1.0],
        "length": [-0.030, -0.015, -0.033],
        f"{HELPERS}:prompt_words": [8.0, 5.0, 5.0],
    }
    assert list(parts) == list(expected)
    for name, values in expected.items():
        assert parts[name].dtype == np.float32 and parts[name].shape == (3,)
        np.testing.assert_allclose(parts[name], values, rtol=1e-6, err_msg=name)
    assert scores.dtype == np.float32 and scores.shape == (3,)
    np.testing.assert_allclose(scores, [1 + 0.5 - 0.060, -0.030, 1 + 0.5 - 0.066], rtol=1e-6)


def test_combined_passes_empty_answers_as_none(tok):
    funcs = load_reward_funcs([{"name": "accuracy"}])
    with pytest.raises(RewardFunctionError) as info:
        CombinedReward(funcs, tok)(*rollouts(tok, ["q"] * 3, ["#### 1"] * 3), ["1", "1", ""])
    assert "reward function 'accuracy' failed on prompt index 2" in str(info.value)
    assert "no reference answer" in str(info.value)


@pytest.mark.parametrize(
    "function, words",
    [
        ("fails_on_marker", ["failed on prompt index 2", "ValueError: cannot score this completion"]),
        ("fails_on_batches", ["failed on the batch of 4", "RuntimeError: batch too large"]),
        ("one_too_many", ["returned shape (5,)", "expected 4 scores"]),
        ("nan_on_second", ["returned nan for prompt index 1"]),
        ("inf_on_last", ["returned -inf for prompt index 3"]),
        ("none_entry", ["returned None for prompt index 0"]),
        ("text_scores", ["must return 4 numbers", "dtype <U"]),
    ],
)
def test_combined_reports_a_misbehaving_function(tok, function, words):
    name = f"{HELPERS}:{function}"
    funcs = load_reward_funcs([{"name": "length"}, {"name": name}])
    completions = ["fine", "also fine", "this one goes BOOM", "fine again"]
    with pytest.raises(RewardFunctionError) as info:
        CombinedReward(funcs, tok)(*rollouts(tok, ["q"] * 4, completions), ["1"] * 4)
    message = str(info.value)
    assert f"reward function '{name}'" in message
    for word in words:
        assert word in message
    assert isinstance(info.value, ValueError)


def test_combined_argument_checks(tok):
    with pytest.raises(ValueError, match="at least one"):
        CombinedReward([], tok)
    combined = CombinedReward(load_reward_funcs([{"name": "length"}]), tok)
    with pytest.raises(ValueError, match="2 prompts, 2 responses and 1 answers"):
        combined(*rollouts(tok, ["a", "b"], ["c", "d"]), ["x"])


def test_accuracy_on_answers_read_from_a_converted_prompt_file(tok, tmp_path):
    """GSM8K-style records -> convert-prompts -> read_prompts -> CombinedReward, as GRPO scores a group."""
    records = [
        {
            "question": "Tom has 1,200 marbles and buys 34 more. How many does he have?",
            "answer": "Tom has 1200 + 34 = <<1200+34=1234>>1234 marbles.\n#### 1,234",
        },
        {"prompt": "What is 6 times 7?", "solution": "\\boxed{42}"},
    ]
    src = tmp_path / "gsm8k.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    out = str(tmp_path / "prompts.mindrecord")
    convert_prompts(str(src), out, tok, 128, 136, tok.eos_token_id, template="chatml", progress=False)
    group = 2  # two completions per prompt, rows of one prompt consecutive
    stored = read_prompts(out, np.repeat(np.arange(2), group), tok.eos_token_id)
    prompt_ids = [row[:n].tolist() for row, n in zip(stored["prompt_ids"], stored["prompt_length"])]
    completions = ["He has 1234 marbles.\n#### 1,234", "#### 1,243", "6 * 7 = \\boxed{42}", "the answer is 48"]
    scores, parts = CombinedReward(load_reward_funcs([{"name": "accuracy"}]), tok)(
        prompt_ids, [tok.encode(c) for c in completions], stored["answer"]
    )
    assert scores.tolist() == [1.0, 0.0, 1.0, 0.0]
    assert math.isclose(float(parts["accuracy"].sum()), 2.0)
    assert os.path.isfile(out + ".db")
