"""Reward functions of text: judges that need no trained weights.

``vader_sentiment`` is the gold judge of the alignment benchmark and the story demo: the VADER compound sentiment
score (Hutto and Gilbert, 2014; ``vaderSentiment``, MIT licence, rule-based, no weights) of each text, in
``[-1, 1]``. A judge the policy and the proxy reward model are never trained on measures what optimising a learned
reward really gained (the protocol of reward-model over-optimisation studies, Gao et al., 2022).

:class:`TokenReward` adapts a text judge to PPO's reward-function interface (token lists in, one score per
rollout out) through a tokenizer.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable, List, Sequence

import numpy as np

TextJudge = Callable[[Sequence[str]], np.ndarray]


@lru_cache(maxsize=1)
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def vader_sentiment(texts: Sequence[str]) -> np.ndarray:
    """VADER compound score of each text: ``(N,)`` float32 in ``[-1, 1]`` (0 for an empty text)."""
    analyzer = _vader()
    return np.asarray([analyzer.polarity_scores(t)["compound"] if t.strip() else 0.0 for t in texts], np.float32)


class TokenReward:
    """A text judge as a PPO reward function: ``(prompt token lists, response token lists) -> (B,)`` scores of the
    decoded responses (special tokens dropped)."""

    def __init__(self, judge: TextJudge, tokenizer):
        self.judge = judge
        self.tokenizer = tokenizer

    def __call__(self, prompts: List[List[int]], responses: List[List[int]]) -> np.ndarray:
        del prompts  # the judge scores the continuation alone
        return self.judge([self.tokenizer.decode(r) for r in responses])
