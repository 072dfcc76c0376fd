"""Reward functions that tests name as ``"tests.reward_helpers:<function>"`` (the ``module:function`` form of
GRPO's ``reward_funcs``), among them functions that misbehave in each way :class:`mindrlhf.rewards.CombinedReward`
must report."""

from __future__ import annotations

from typing import List, Optional

MARKER = "BOOM"


def contains_answer(
    prompts: List[str], completions: List[str], answers: List[Optional[str]], *, bonus: float = 1.0
) -> List[float]:
    """``bonus`` where the reference answer occurs in the completion, else 0."""
    del prompts
    return [bonus if a and a in c else 0.0 for c, a in zip(completions, answers)]


def prompt_words(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> List[float]:
    """The number of words of the prompt (checks the prompts reach the function)."""
    del completions, answers
    return [float(len(p.split())) for p in prompts]


def fails_on_marker(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> List[float]:
    """Raises on a completion containing :data:`MARKER`."""
    del prompts, answers
    for c in completions:
        if MARKER in c:
            raise ValueError("cannot score this completion")
    return [0.0] * len(completions)


def fails_on_batches(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> List[float]:
    """Raises whenever called with more than one completion (every row passes alone)."""
    del prompts, answers
    if len(completions) > 1:
        raise RuntimeError("batch too large")
    return [0.0] * len(completions)


def one_too_many(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> List[float]:
    del prompts, answers
    return [0.0] * (len(completions) + 1)


def nan_on_second(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> List[float]:
    del prompts, answers
    return [float("nan") if i == 1 else 0.0 for i in range(len(completions))]


def inf_on_last(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> List[float]:
    del prompts, answers
    return [float("-inf") if i == len(completions) - 1 else 0.0 for i in range(len(completions))]


def none_entry(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> List[Optional[float]]:
    del prompts, answers
    return [None] * len(completions)


def text_scores(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> List[str]:
    del prompts, answers
    return ["1.0"] * len(completions)


def two_arguments(prompts: List[str], completions: List[str]) -> List[float]:
    """Does not take the answers: refused at load."""
    del prompts
    return [0.0] * len(completions)


NOT_CALLABLE = 3
