"""Reward functions of text: judges that need no trained weights.

``vader_sentiment`` is the gold judge of the alignment benchmark and the story demo: the VADER compound sentiment
score (Hutto and Gilbert, 2014; ``vaderSentiment``, MIT licence, rule-based, no weights) of each text, in
``[-1, 1]``. A judge the policy and the proxy reward model are never trained on measures what optimising a learned
reward really gained (the protocol of reward-model over-optimisation studies, Gao et al., 2022).

:class:`TokenReward` adapts a text judge to PPO's reward-function interface (token lists in, one score per
rollout out) through a tokenizer.

Reward functions as configuration (GRPO's ``reward_funcs``). A reward function follows TRL's protocol::

    fn(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> Sequence[float]

one finite float per completion (``B`` of each list; ``answers[i]`` is the reference answer of row ``i``'s prompt,
None when it has none). :data:`BUILTIN_REWARDS` holds ``accuracy``, ``format``, ``length`` and ``sentiment``;
any other function is named ``"module:function"``. :func:`load_reward_funcs` resolves a list of
:class:`RewardFuncSpec` (before any model is built) and :class:`CombinedReward` decodes token rollouts, calls each
function, checks what it returned and sums the weighted scores.
"""

from __future__ import annotations

import difflib
import functools
import importlib
import inspect
import math
import re
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from mindrlhf.errors import UserError

TextJudge = Callable[[Sequence[str]], np.ndarray]
RewardFunc = Callable[[List[str], List[str], List[Optional[str]]], Sequence[float]]


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


# ---------------------------------------------------------------------------------------------------------------
# Answer extraction

_NUMBER = re.compile(r"[-+]?(?:\d[\d,]*(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_GSM8K_MARK = "####"
_BOXED = "\\boxed{"


def last_boxed(text: str) -> Optional[str]:
    """Content of the last ``\\boxed{...}`` in ``text`` (nested braces matched), None when there is none or it is
    not closed."""
    start = text.rfind(_BOXED)
    if start < 0:
        return None
    depth, begin = 1, start + len(_BOXED)
    for k in range(begin, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[begin:k].strip()
    return None


def marked_answer(text: str) -> Optional[str]:
    """The explicitly marked final answer: the rest of the line after the last ``####`` (GSM8K), else the last
    ``\\boxed{...}``; None when there is neither."""
    mark = text.rfind(_GSM8K_MARK)
    if mark >= 0:
        return text[mark + len(_GSM8K_MARK) :].split("\n", 1)[0].strip()
    return last_boxed(text)


def extract_answer(completion: str) -> Optional[str]:
    """A completion's final answer: :func:`marked_answer`, else the last number in the text, else None."""
    marked = marked_answer(completion)
    if marked is not None:
        return marked
    numbers = _NUMBER.findall(completion)
    return numbers[-1] if numbers else None


def reference_answer(reference: str) -> str:
    """A reference's final answer: :func:`marked_answer` of a worked solution (GSM8K ``... #### 72``), else the
    whole (stripped) text, a plain answer."""
    marked = marked_answer(reference)
    return reference.strip() if marked is None else marked


def parse_number(text: str) -> Optional[float]:
    """``text`` as a number when it is one: ``"1,234"``, ``"$1,234."``, ``"-0.5"``, ``"3e2"``; commas are
    thousands separators. None otherwise."""
    cleaned = text.strip().lstrip("$").strip().rstrip(".")
    return float(cleaned.replace(",", "")) if _NUMBER.fullmatch(cleaned) else None


def normalize_text(text: str) -> str:
    """Lower case, whitespace runs collapsed, outer spaces and trailing periods removed."""
    return " ".join(text.lower().split()).rstrip(".").strip()


def answers_match(predicted: Optional[str], reference: str) -> bool:
    """Whether an extracted answer equals the reference's final answer: numerically (relative tolerance 1e-6)
    when the reference is a number (the predicted text's first number is used when it has words around it,
    ``"72 clips"``), else as :func:`normalize_text` strings."""
    if predicted is None:
        return False
    target = reference_answer(reference)
    target_number = parse_number(target)
    if target_number is None:
        return normalize_text(predicted) == normalize_text(target)
    number = parse_number(predicted)
    if number is None:
        found = _NUMBER.search(predicted)
        number = parse_number(found.group()) if found else None
    return number is not None and math.isclose(number, target_number, rel_tol=1e-6, abs_tol=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# Built-in reward functions

DEFAULT_FORMAT_PATTERN = r"<think>.+?</think>\s*\S.*"
NO_ANSWER = (
    "no reference answer for this prompt; accuracy needs prompts converted from {question, answer} or "
    "{prompt, solution} records"
)


def accuracy_reward(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> List[float]:
    """1.0 where the completion's final answer (:func:`extract_answer`) equals the reference answer
    (:func:`answers_match`), else 0.0. Raises ``ValueError`` when a row has no reference answer."""
    del prompts
    if any(not a for a in answers):
        raise ValueError(NO_ANSWER)
    return [float(answers_match(extract_answer(c), a)) for c, a in zip(completions, answers)]


def format_reward(
    prompts: List[str], completions: List[str], answers: List[Optional[str]], *, pattern: str = DEFAULT_FORMAT_PATTERN
) -> List[float]:
    """1.0 where the whole stripped completion matches the regular expression ``pattern`` (``re.DOTALL``: ``.``
    spans lines), else 0.0. The default asks for a non-empty ``<think>...</think>`` block first, then an answer."""
    del prompts, answers
    regex = re.compile(pattern, re.DOTALL)
    return [float(regex.fullmatch(c.strip()) is not None) for c in completions]


def length_reward(
    prompts: List[str], completions: List[str], answers: List[Optional[str]], *, scale: float = 1000.0
) -> List[float]:
    """A length penalty: ``-len(completion) / scale``, the length in characters of the decoded text (``-0.1`` for
    100 characters at the default ``scale``); characters, not tokens, so it does not depend on the tokenizer."""
    del prompts, answers
    if not scale > 0:
        raise ValueError(f"length: scale must be > 0, got {scale}")
    return [-len(c) / scale for c in completions]


def sentiment_reward(prompts: List[str], completions: List[str], answers: List[Optional[str]]) -> List[float]:
    """:func:`vader_sentiment` of each completion, in ``[-1, 1]``."""
    del prompts, answers
    return vader_sentiment(completions).tolist()


BUILTIN_REWARDS: Dict[str, RewardFunc] = {
    "accuracy": accuracy_reward,
    "format": format_reward,
    "length": length_reward,
    "sentiment": sentiment_reward,
}


# ---------------------------------------------------------------------------------------------------------------
# Configuration: specs -> callables


@dataclass
class RewardFuncSpec:
    """One reward function of the configuration (an entry of GRPO's ``reward_funcs``)."""

    name: str  # a built-in of BUILTIN_REWARDS or "module:function"
    weight: float = 1.0  # factor of its scores in the summed reward
    kwargs: Dict[str, Any] = field(default_factory=dict)  # keyword options bound to it (format: pattern)

    def __post_init__(self):
        if not isinstance(self.name, str) or not self.name.strip():
            raise ValueError(f"reward function name must be a non-empty string, got {self.name!r}")
        number = isinstance(self.weight, (int, float)) and not isinstance(self.weight, bool)
        if not number or not math.isfinite(self.weight):
            raise ValueError(f"reward function '{self.name}': weight must be a finite number, got {self.weight!r}")
        if not isinstance(self.kwargs, Mapping):
            raise ValueError(
                f"reward function '{self.name}': kwargs must be a mapping, got {type(self.kwargs).__name__}"
            )
        self.weight, self.kwargs = float(self.weight), dict(self.kwargs)

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Any]) -> "RewardFuncSpec":
        """A spec from a YAML mapping ``{name, weight, kwargs}``; an unknown key is a ``ValueError`` naming the
        nearest valid one."""
        if not isinstance(mapping, Mapping):
            raise ValueError(f"a reward function entry must be a mapping {{name, weight, kwargs}}, got {mapping!r}")
        valid = [f.name for f in fields(cls)]
        for key in mapping:
            if key not in valid:
                raise ValueError(
                    f"reward function entry: unknown key {key!r}{_did_you_mean(str(key), valid)}; "
                    f"valid keys: {', '.join(valid)}"
                )
        if "name" not in mapping:
            raise ValueError(f"reward function entry {dict(mapping)!r}: missing 'name'")
        return cls(**mapping)


LoadedReward = Tuple[str, float, RewardFunc]


def load_reward_funcs(specs: Sequence[Union[RewardFuncSpec, Mapping[str, Any]]]) -> List[LoadedReward]:
    """Resolve reward function specs into ``(name, weight, callable)`` triples, in order.

    A name is a built-in of :data:`BUILTIN_REWARDS` or ``"module:function"`` (imported with ``importlib``; the
    module must be importable, e.g. on ``PYTHONPATH``). ``kwargs`` are bound with ``functools.partial``. Every
    problem is a ``ValueError`` raised here, before any model is built: an unknown name (naming the nearest
    built-in), a module that fails to import (naming it and its error), a missing or non-callable attribute,
    options the function does not take, a name listed twice; built-ins are also called once on an empty batch so
    that a bad option (an invalid ``pattern``) fails now.
    """
    loaded: List[LoadedReward] = []
    for spec in specs:
        spec = spec if isinstance(spec, RewardFuncSpec) else RewardFuncSpec.from_mapping(spec)
        if any(name == spec.name for name, _, _ in loaded):
            raise ValueError(f"reward function '{spec.name}' is listed twice")
        fn = _resolve(spec.name)
        _check_options(spec, fn)
        fn = functools.partial(fn, **spec.kwargs) if spec.kwargs else fn
        if spec.name in BUILTIN_REWARDS:
            try:
                fn([], [], [])
            except Exception as err:  # noqa: BLE001 - any failure of a bad option is reported the same way
                raise ValueError(f"reward function '{spec.name}': bad options {spec.kwargs}: {err}") from err
        loaded.append((spec.name, spec.weight, fn))
    return loaded


def _did_you_mean(name: str, valid: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(valid), n=1, cutoff=0.5)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _resolve(name: str) -> Callable:
    """The callable of a built-in name or a ``"module:function"`` reference (``function`` may be dotted)."""
    if name in BUILTIN_REWARDS:
        return BUILTIN_REWARDS[name]
    if ":" not in name:
        raise ValueError(
            f"unknown reward function '{name}'{_did_you_mean(name, BUILTIN_REWARDS)}; built-ins: "
            f"{', '.join(BUILTIN_REWARDS)}, or give 'module:function'"
        )
    module_name, _, attr = name.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward function '{name}': expected 'module:function'")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as err:  # noqa: BLE001 - whatever the module raises while importing
        hint = " (is its folder on PYTHONPATH?)" if isinstance(err, ModuleNotFoundError) else ""
        raise ValueError(
            f"reward function '{name}': cannot import module '{module_name}': {type(err).__name__}: {err}{hint}"
        ) from err
    for part in attr.split("."):
        if not hasattr(target, part):
            public = [n for n in dir(target) if not n.startswith("_")]
            raise ValueError(
                f"reward function '{name}': '{getattr(target, '__name__', module_name)}' has no "
                f"attribute '{part}'{_did_you_mean(part, public)}"
            )
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"reward function '{name}': {type(target).__name__} object is not callable")
    return target


def _check_options(spec: RewardFuncSpec, fn: Callable) -> None:
    """The function must accept ``(prompts, completions, answers, **spec.kwargs)``."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):  # some builtins have no signature: nothing to check
        return
    try:
        signature.bind([], [], [], **spec.kwargs)
    except TypeError as err:
        raise ValueError(
            f"reward function '{spec.name}' cannot be called as fn(prompts, completions, answers"
            f"{''.join(f', {k}=...' for k in spec.kwargs)}): {err}"
        ) from err


# ---------------------------------------------------------------------------------------------------------------
# Scoring token rollouts


class RewardFunctionError(UserError):
    """A reward function failed or returned something other than one finite float per completion."""


class CombinedReward:
    """The weighted sum of reward functions, scoring token rollouts.

    Args:
        funcs: ``(name, weight, callable)`` triples, from :func:`load_reward_funcs`.
        tokenizer: decodes prompts and responses (special tokens skipped).
    """

    def __init__(self, funcs: Sequence[LoadedReward], tokenizer):
        if not funcs:
            raise ValueError("CombinedReward needs at least one reward function")
        self.funcs = list(funcs)
        self.tokenizer = tokenizer

    def __call__(
        self, prompt_ids: List[List[int]], response_ids: List[List[int]], answers: List[Optional[str]]
    ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """Score ``B`` rollouts.

        Args:
            prompt_ids: ``B`` prompt token lists (padding removed).
            response_ids: ``B`` response token lists.
            answers: ``B`` reference answers; ``""`` (what ``read_prompts`` gives a prompt without one) is passed
                on as None.
        Returns:
            ``scores (B,) float32``, the weighted sum ``sum_f weight_f * score_f``, and ``{name: (B,) float32}``,
            each function's unweighted scores.
        Raises:
            RewardFunctionError: a function raised (naming it and the prompt index that fails on its own, or the
                batch), returned a count other than ``B``, a non-number, or NaN / inf (naming the prompt index).
        """
        count = len(response_ids)
        if len(prompt_ids) != count or len(answers) != count:
            raise ValueError(
                f"need one prompt and one answer per response, got {len(prompt_ids)} prompts, "
                f"{count} responses and {len(answers)} answers"
            )
        prompts = self._decode_prompts(prompt_ids)
        completions = [self.tokenizer.decode(list(r)) for r in response_ids]
        return self.score_texts(prompts, completions, answers)

    def score_texts(
        self, prompts: List[str], completions: List[str], answers: List[Optional[str]]
    ) -> Tuple[np.ndarray, Dict[str, np.ndarray]]:
        """:meth:`__call__` on texts: ``B`` prompts, completions and reference answers (``""`` or None: none)."""
        count = len(completions)
        refs = [a if a else None for a in answers]
        total = np.zeros(count, np.float64)
        per_function: Dict[str, np.ndarray] = {}
        for name, weight, fn in self.funcs:
            scores = _call_checked(name, fn, prompts, completions, refs)
            per_function[name] = scores.astype(np.float32)
            total += weight * scores
        return total.astype(np.float32), per_function

    def _decode_prompts(self, prompt_ids: List[List[int]]) -> List[str]:
        """Each distinct prompt decoded once (a group's ``G`` rows share it)."""
        texts: Dict[Tuple[int, ...], str] = {}
        keys = [tuple(int(t) for t in p) for p in prompt_ids]
        for key in keys:
            if key not in texts:
                texts[key] = self.tokenizer.decode(list(key))
        return [texts[key] for key in keys]


def _call_checked(
    name: str, fn: RewardFunc, prompts: List[str], completions: List[str], answers: List[Optional[str]]
) -> np.ndarray:
    """``fn``'s scores as ``(B,)`` float64, or a :class:`RewardFunctionError` saying what went wrong."""
    count = len(completions)
    try:
        raw = fn(prompts, completions, answers)
    except Exception as err:  # noqa: BLE001 - a user function may raise anything
        index, cause = _failing_index(fn, prompts, completions, answers)
        where = f"prompt index {index}" if index is not None else f"the batch of {count}"
        cause = cause or err
        raise RewardFunctionError(
            f"reward function '{name}' failed on {where}: {type(cause).__name__}: {cause}"
        ) from err
    scores = _as_numbers(name, raw, count)
    if scores.shape != (count,):
        raise RewardFunctionError(
            f"reward function '{name}' returned shape {scores.shape}, expected {count} scores (one per completion)"
        )
    bad = np.flatnonzero(~np.isfinite(scores))
    if bad.size:
        raise RewardFunctionError(
            f"reward function '{name}' returned {scores[bad[0]]} for prompt index {int(bad[0])} (scores must be finite)"
        )
    return scores


def _as_numbers(name: str, raw: Any, count: int) -> np.ndarray:
    """``raw`` as a float64 array, or a :class:`RewardFunctionError` for None (entries) and non-numbers."""
    expected = f"reward function '{name}' must return {count} numbers (one per completion)"
    if raw is None:
        raise RewardFunctionError(f"{expected}, got None")
    try:
        values = np.asarray(raw)
    except (TypeError, ValueError) as err:  # ragged nesting
        raise RewardFunctionError(f"{expected}, got {type(raw).__name__}: {err}") from err
    if values.dtype == object:
        missing = [i for i, v in enumerate(values.reshape(-1)) if v is None]
        if missing:
            raise RewardFunctionError(
                f"reward function '{name}' returned None for prompt index {missing[0]} "
                f"(every completion needs a float score)"
            )
    elif values.dtype.kind not in "biuf":
        raise RewardFunctionError(f"{expected}, got values of dtype {values.dtype}")
    try:
        return values.astype(np.float64)
    except (TypeError, ValueError) as err:
        raise RewardFunctionError(f"{expected}, got {type(raw).__name__}: {err}") from err


def _failing_index(
    fn: RewardFunc, prompts: List[str], completions: List[str], answers: List[Optional[str]]
) -> Tuple[Optional[int], Optional[BaseException]]:
    """After a batch call failed: the first row that fails on its own, and its error; ``(None, None)`` when every
    row passes alone (the failure needs the batch)."""
    for i in range(len(completions)):
        try:
            fn(prompts[i : i + 1], completions[i : i + 1], answers[i : i + 1])
        except Exception as err:  # noqa: BLE001
            return i, err
    return None, None
