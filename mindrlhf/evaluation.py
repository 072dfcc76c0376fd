"""Judging a trained policy (the *candidate*) against its start (the *baseline*) on a question set.

Both policies answer every question (the same prompts, the same decoding settings and, when sampling, the same
seeds); a judge scores each answer; each question is a win, tie or loss for the candidate::

    d_q = mean_t judge(candidate, q, t) - mean_t judge(baseline, q, t)        (t: the question's turns)
    verdict_q = +1 (win) if d_q > tie_margin, -1 (loss) if d_q < -tie_margin, else 0 (tie)
    win_rate = (wins + ties / 2) / questions                                  (0.5: no difference)

The confidence interval of ``win_rate`` is the percentile bootstrap over questions (``bootstrap_samples``
resamples with replacement, seeded). A policy judged against itself gets 0.5.

**Question sets** (:func:`load_question_set`): ``mt_bench`` (MT-Bench's 80 two-turn questions in 8 categories,
bundled from FastChat, Apache-2.0), ``cvalues`` (the 664 CValues responsibility prompts, category = domain) or a
JSONL file whose lines have ``prompt`` (or GSM8K's ``question``, or a ``turns`` list), optionally ``category`` and a
reference ``answer`` (passed to reward functions such as ``accuracy``). A multi-turn
question is asked turn by turn: each policy sees its own earlier answers (:func:`conversation_text`).

**Judges.** Pointwise judges score one answer at a time, so the order of the two policies cannot matter:
:class:`RewardModelJudge` (a reward model read at the eos of prompt + answer, under the tokenization contract
:func:`mindrlhf.data.contract.encode_for_reward`) and :class:`FunctionJudge` (reward functions of text, the
built-ins of :mod:`mindrlhf.rewards` or ``module:function``, weighted sum). A :class:`PairwiseJudge` sees both
answers at once and may favour a position, so it is asked in both orders and its preferences averaged::

    pref = (judge(q, candidate, baseline) - judge(q, baseline, candidate)) / 2      (in [-1, 1])

(the candidate's score is ``pref``, the baseline's 0). ``position_agreement`` in the summary is the share of pairs
on whose winner the two orders agree.

:func:`write_evaluation` writes ``answers.jsonl`` (every answer and score), ``summary.json``, ``report.md`` and
``win_rate.png``.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from mindrlhf.config import ConfigError, GenerationConfig
from mindrlhf.data.templates import CHATML_SYSTEM, TEMPLATE_NAMES, format_prompt

logger = logging.getLogger(__name__)

DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "data")
BUILTIN_SETS = {
    "mt_bench": os.path.join(DATA_DIR, "mt_bench_questions.jsonl"),
    "cvalues": os.path.join(DATA_DIR, "cvalues_responsibility_prompts.jsonl"),
}
ID_KEYS = ("question_id", "id", "id_")
CATEGORY_KEYS = ("category", "domain_en")
PROMPT_KEYS = ("turns", "prompt", "question")  # the first present is the question's text (GSM8K: question)
ANSWER_KEYS = ("answer", "solution", "reference")
WIDTH_BUCKET = 64  # prompts are left-padded to a multiple of this (one decoding graph for most turns)


# ---------------------------------------------------------------------------------------------------------------
# Settings


@dataclass
class EvalConfig:
    """Settings of one evaluation (the ``mindrlhf eval`` flags)."""

    question_set: str = "mt_bench"  # mt_bench, cvalues or a JSONL file with a prompt (or turns) field per line
    max_questions: int = 0  # evaluate this many questions, evenly spaced over the set (0 = all)
    template: str = "qa"  # prompt template: qa (the project's), chatml or none
    max_new_tokens: int = 64  # tokens generated per answer
    do_sample: bool = False  # False: greedy decoding (the default); True: seeded sampling
    temperature: float = 1.0  # sampling temperature (with do_sample)
    top_k: int = 0  # sampling top-k (0 = off)
    top_p: float = 1.0  # sampling top-p (1.0 = off)
    seed: int = 0  # seed of the sampling draws (the same for both policies) and of the bootstrap
    batch_size: int = 8  # questions generated together
    tie_margin: float = 0.0  # |score difference| <= this is a tie
    bootstrap_samples: int = 1000  # resamples of the questions for the win-rate interval
    confidence: float = 0.95  # level of the win-rate interval

    def __post_init__(self):
        if self.template not in TEMPLATE_NAMES:
            raise ConfigError(f"template must be one of {', '.join(TEMPLATE_NAMES)}, got {self.template!r}")
        for name in ("max_new_tokens", "batch_size", "bootstrap_samples"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_questions < 0:
            raise ConfigError(f"max_questions must be >= 0 (0 = all), got {self.max_questions}")
        if self.tie_margin < 0:
            raise ConfigError(f"tie_margin must be >= 0, got {self.tie_margin}")
        if not 0.0 < self.confidence < 1.0:
            raise ConfigError(f"confidence must be in (0, 1), got {self.confidence}")
        self.generation()  # sampling values are checked by GenerationConfig

    def generation(self) -> GenerationConfig:
        """The decoding settings both policies answer with."""
        return GenerationConfig(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.do_sample,
            temperature=self.temperature,
            top_k=self.top_k,
            top_p=self.top_p,
            seed=self.seed,
        )


# ---------------------------------------------------------------------------------------------------------------
# Question sets


@dataclass
class Question:
    """One question: one or more turns asked in order."""

    id: str
    category: str  # "" when the set has no categories
    turns: List[str]
    references: List[Optional[str]]  # a reference answer per turn (None: none), passed to reward functions


def _text_list(value, where: str, key: str) -> List[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value or not all(isinstance(v, str) and v.strip() for v in value):
        raise ValueError(f"{where}: '{key}' must be a non-empty string or a list of non-empty strings")
    return [v.strip() for v in value]


def parse_question(record, where: str, number: int) -> Question:
    """A :class:`Question` from one JSON object: ``prompt`` (or GSM8K's ``question``: a string) or ``turns`` (a
    list of strings), optional ``question_id``/``id``/``id_``, ``category``/``domain_en`` and the reference
    ``answer``/``solution``/``reference`` (a string or a list per turn). ``where`` names the file and line in
    errors."""
    if not isinstance(record, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(record).__name__}")
    key = next((k for k in PROMPT_KEYS if k in record), None)
    if key is None:
        raise ValueError(
            f"{where}: no 'prompt' field (a question needs 'prompt' text, GSM8K's 'question' or a 'turns' list)"
        )
    turns = _text_list(record[key], where, key)
    qid = next((str(record[k]) for k in ID_KEYS if k in record), str(number))
    category = next((str(record[k]) for k in CATEGORY_KEYS if record.get(k)), "")
    reference = next((record[k] for k in ANSWER_KEYS if record.get(k)), None)
    references = reference if isinstance(reference, list) else [reference] * len(turns)
    references = [None if r is None else str(r) for r in references][: len(turns)]
    return Question(qid, category, turns, references + [None] * (len(turns) - len(references)))


def read_questions(path: str) -> List[Question]:
    """Every question of a JSONL file (blank lines skipped); errors name the file and line."""
    if not os.path.isfile(path):
        raise ValueError(f"question set {path!r} is neither a built-in ({', '.join(BUILTIN_SETS)}) nor a file")
    questions = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON: {err.msg}") from None
            questions.append(parse_question(record, f"{path}:{number}", number))
    if not questions:
        raise ValueError(f"{path}: no questions (a JSONL file with one object with a 'prompt' field per line)")
    return questions


def load_question_set(name: str, max_questions: int = 0) -> List[Question]:
    """A built-in set (:data:`BUILTIN_SETS`) or a JSONL file; with ``max_questions`` a subset evenly spaced over
    the set (so every category of a set grouped by category keeps its share)."""
    questions = read_questions(BUILTIN_SETS.get(name, name))
    if 0 < max_questions < len(questions):
        keep = np.unique(np.linspace(0, len(questions) - 1, max_questions).round().astype(int))
        questions = [questions[i] for i in keep]
    return questions


def conversation_text(template: str, turns: Sequence[str], answers: Sequence[str]) -> str:
    """The prompt of the last of ``turns``: the earlier turns with their ``answers`` (one fewer than the turns),
    then the last turn, in ``template`` (``qa``: the QA template per turn, blocks joined by a blank line;
    ``chatml``: user / assistant messages after the system message; ``none``: texts joined by a blank line). With
    one turn it is exactly :func:`mindrlhf.data.templates.apply_template` of it."""
    if len(answers) != len(turns) - 1:
        raise ValueError(f"{len(turns)} turns need {len(turns) - 1} earlier answers, got {len(answers)}")
    if template == "qa":
        done = [format_prompt(q, a) for q, a in zip(turns, answers)]
        return "\n\n".join(done + [format_prompt(turns[-1])])
    if template == "chatml":
        text = f"<|im_start|>system\n{CHATML_SYSTEM}<|im_end|>\n"
        for q, a in zip(turns, answers):
            text += f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{a}<|im_end|>\n"
        return text + f"<|im_start|>user\n{turns[-1]}<|im_end|>\n<|im_start|>assistant\n"
    if template == "none":
        return "\n\n".join([t for pair in zip(turns, answers) for t in pair] + [turns[-1]])
    raise ValueError(f"unknown template {template!r}; expected one of {', '.join(TEMPLATE_NAMES)}")


# ---------------------------------------------------------------------------------------------------------------
# Answering


@dataclass
class Policy:
    """A policy under evaluation: its causal LM, tokenizer and where its weights came from."""

    name: str  # "baseline" or "candidate"
    checkpoint: str  # as given (a Hugging Face folder, bundled name, .ckpt, or "" for fresh weights)
    lm: object  # mindrlhf.models.CausalLM
    tokenizer: object  # mindrlhf.data.tokenizer.Tokenizer


@dataclass
class Answers:
    """A policy's answers, indexed ``[question][turn]``."""

    prompts: List[List[str]] = field(default_factory=list)  # the prompt text each turn was answered after
    texts: List[List[str]] = field(default_factory=list)  # decoded answers (special tokens dropped, stripped)
    tokens: List[List[int]] = field(default_factory=list)  # generated tokens per answer (eos included)
    ended: List[List[bool]] = field(default_factory=list)  # the answer ended in eos (not cut at max_new_tokens)


def _batches(count: int, size: int):
    """Index lists of consecutive batches of ``size`` (the last may be shorter)."""
    for start in range(0, count, size):
        yield list(range(start, min(start + size, count)))


def generate_texts(policy: Policy, generator, rows: List[List[int]], cfg: EvalConfig, turn: int):
    """Answers to token rows (prompts), ``cfg.batch_size`` at a time. Every batch has the same shape (the last is
    filled up by repeating its final row; all are left-padded to the longest prompt rounded up to a multiple of
    :data:`WIDTH_BUCKET`, within the prompt budget), so the decoding graph is compiled once, and usually once for
    all turns; batch ``b`` of turn ``t`` samples with seed ``[seed, t, b]``, for either policy.
    Returns ``(texts, token counts, ended in eos)``."""
    from mindrlhf.data.tokenizer import left_pad

    budget = policy.lm.config.seq_length - cfg.max_new_tokens
    width = min(-(-max(len(r) for r in rows) // WIDTH_BUCKET) * WIDTH_BUCKET, budget)
    texts, counts, ended = [], [], []
    for b, index in enumerate(_batches(len(rows), cfg.batch_size)):
        batch = [rows[i] for i in index] + [rows[index[-1]]] * (cfg.batch_size - len(index))
        ids, mask = left_pad(batch, policy.lm.config.pad_token_id, width)
        out = generator.generate(ids, mask, seed=[cfg.seed, turn, b])
        for i in range(len(index)):
            length = int(out.response_lengths[i])
            texts.append(policy.tokenizer.decode(out.response_ids[i, :length].tolist()).strip())
            counts.append(length)
            ended.append(bool(out.response_ids[i, length - 1] == generator.eos_token_id))
    return texts, counts, ended


def answer_questions(policy: Policy, questions: Sequence[Question], cfg: EvalConfig) -> Answers:
    """``policy``'s answers to every turn of every question, turn by turn (turn ``t`` of a question is asked after
    the policy's own answers to its earlier turns). Prompts keep their last ``seq_length - max_new_tokens`` tokens
    (the tokenization contract's prompt rule)."""
    from mindrlhf.data.contract import tokenize_prompt
    from mindrlhf.models.generation import Generator

    model_cfg = policy.lm.config
    budget = model_cfg.seq_length - cfg.max_new_tokens
    if budget < 2:
        raise ValueError(
            f"{policy.name}: max_new_tokens {cfg.max_new_tokens} leaves no room for a prompt in the "
            f"model's seq_length {model_cfg.seq_length}"
        )
    generator = Generator(policy.lm, cfg.generation(), model_cfg.eos_token_id, model_cfg.pad_token_id)
    answers = Answers(*([[] for _ in questions] for _ in range(4)))
    for turn in range(max(len(q.turns) for q in questions)):
        asked = [i for i, q in enumerate(questions) if len(q.turns) > turn]
        prompts = [conversation_text(cfg.template, questions[i].turns[: turn + 1], answers.texts[i]) for i in asked]
        rows = [tokenize_prompt(policy.tokenizer, p, budget) for p in prompts]
        texts, counts, ended = generate_texts(policy, generator, rows, cfg, turn)
        for i, prompt, text, count, end in zip(asked, prompts, texts, counts, ended):
            answers.prompts[i].append(prompt)
            answers.texts[i].append(text)
            answers.tokens[i].append(count)
            answers.ended[i].append(end)
        logger.info("%s: answered turn %d of %d questions", policy.name, turn + 1, len(asked))
    return answers


# ---------------------------------------------------------------------------------------------------------------
# Judges


class Judge:
    """What every judge has: a ``name`` for the report and a check that it can read a policy's answers."""

    name = "judge"

    def check_vocabulary(self, policy: Policy) -> None:
        """Raise ``ValueError`` when the judge cannot read ``policy``'s answers (a judge of text reads any)."""
        del policy


class PointwiseJudge(Judge):
    """A judge that scores each (prompt, answer) on its own: subclasses define ``__call__(prompts, answers,
    references) -> (N,) scores``."""

    def score(self, questions: Sequence[Question], answers: Dict[str, Answers]) -> Dict[str, List[List[float]]]:
        """The score of every answer, ``{policy: [question][turn]}``."""
        return judge_answers(self, questions, answers)


class RewardModelJudge(PointwiseJudge):
    """A reward model as the judge: each (prompt, answer) is encoded with
    :func:`mindrlhf.data.contract.encode_for_reward` (prompt and answer tokenized apart, eos appended and kept) and
    scored at that eos, exactly as ``mindrlhf rm infer`` scores it.

    Args:
        model: a :class:`mindrlhf.models.RewardModel` with its weights.
        tokenizer: the tokenizer the reward model was trained with.
        name: how the report names the judge (its checkpoint).
    """

    def __init__(self, model, tokenizer, name: str):
        self.model, self.tokenizer, self.name = model, tokenizer, name
        self.model.set_train(False)

    def check_vocabulary(self, policy: Policy) -> None:
        """``ValueError`` unless the judge reads the policy's token ids: the same vocabulary size for the two
        models and their tokenizers."""
        judge_cfg, policy_cfg = self.model.config, policy.lm.config
        if judge_cfg.vocab_size != policy_cfg.vocab_size or self.tokenizer.vocab_size != policy.tokenizer.vocab_size:
            raise ValueError(
                f"the judge's vocabulary differs from the {policy.name} policy's: reward model {self.name} has "
                f"vocab_size {judge_cfg.vocab_size} (tokenizer {self.tokenizer.path}, {self.tokenizer.vocab_size} "
                f"ids), the policy {policy.checkpoint or 'fresh weights'} has vocab_size {policy_cfg.vocab_size} "
                f"(tokenizer {policy.tokenizer.path}, {policy.tokenizer.vocab_size} ids); use a reward model "
                f"trained with the policies' tokenizer"
            )

    def __call__(self, prompts: List[str], answers: List[str], references: List[Optional[str]]) -> np.ndarray:
        """``(N,)`` float64 scores of ``N`` (prompt, answer) texts."""
        from mindrlhf.data.contract import encode_for_reward
        from mindrlhf.train.reward import score_texts

        del references
        seq_length = self.model.config.seq_length
        rows = [encode_for_reward(self.tokenizer, p, a, seq_length).ids for p, a in zip(prompts, answers)]
        return score_texts(self.model, rows, seq_length, self.model.config.pad_token_id).astype(np.float64)


class FunctionJudge(PointwiseJudge):
    """Reward functions of text as the judge (the weighted sum of
    :class:`mindrlhf.rewards.CombinedReward`); ``references`` reach them as their ``answers``."""

    def __init__(self, combined, name: str):
        self.combined, self.name = combined, name

    def __call__(self, prompts: List[str], answers: List[str], references: List[Optional[str]]) -> np.ndarray:
        return self.combined.score_texts(prompts, answers, references)[0].astype(np.float64)


class PairwiseJudge(Judge):
    """A judge of two answers at once: ``fn(questions, first, second) -> (N,)`` preferences in ``[-1, 1]``
    (positive: ``first`` is better), one per pair, ``questions`` the user turn each pair answers. It is asked in
    both orders (see the module docstring), so a judge that favours a position cannot favour a policy."""

    def __init__(self, fn, name: str):
        self.fn, self.name = fn, name

    def _preferences(self, questions: List[str], first: List[str], second: List[str]) -> np.ndarray:
        try:
            values = np.asarray(self.fn(questions, first, second), np.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{self.name}: must return {len(first)} numbers, got {err}") from None
        if values.shape != (len(first),) or not np.all(np.abs(values) <= 1.0):
            raise ValueError(
                f"{self.name}: must return {len(first)} preferences in [-1, 1], got shape "
                f"{values.shape} with values in [{values.min(initial=0):g}, {values.max(initial=0):g}]"
            )
        return values

    def score(self, questions: Sequence[Question], answers: Dict[str, Answers]) -> Dict[str, List[List[float]]]:
        """``{"candidate": preference, "baseline": 0, "candidate_first": raw, "baseline_first": raw}`` per
        ``[question][turn]``; the raw entries are the judge's answers in each order."""
        flat = [(i, t) for i, q in enumerate(questions) for t in range(len(q.turns))]
        asked = [questions[i].turns[t] for i, t in flat]
        cand = [answers["candidate"].texts[i][t] for i, t in flat]
        base = [answers["baseline"].texts[i][t] for i, t in flat]
        orders = {
            "candidate_first": self._preferences(asked, cand, base),
            "baseline_first": self._preferences(asked, base, cand),
        }
        values = {
            **orders,
            "candidate": (orders["candidate_first"] - orders["baseline_first"]) / 2,
            "baseline": np.zeros(len(flat)),
        }
        return {name: nest([float(v) for v in column], flat, len(questions)) for name, column in values.items()}


def nest(values: List[float], flat: List[Tuple[int, int]], count: int) -> List[List[float]]:
    """Values of flattened ``(question, turn)`` pairs back to ``[question][turn]``."""
    nested: List[List[float]] = [[] for _ in range(count)]
    for (i, _), value in zip(flat, values):
        nested[i].append(value)
    return nested


def position_agreement(scores: Dict[str, List[List[float]]]) -> float:
    """Share of a pairwise judge's pairs where both orders name the same winner (or both a tie)."""
    first = np.asarray([v for row in scores["candidate_first"] for v in row])
    second = np.asarray([v for row in scores["baseline_first"] for v in row])
    return float(np.mean(np.sign(first) == -np.sign(second)))


def judge_answers(judge, questions: Sequence[Question], answers: Dict[str, Answers]) -> Dict[str, List[List[float]]]:
    """The judge's score of every answer of every policy, ``{policy: [question][turn]}``, in one call (a reward
    model's scoring cell is compiled once)."""
    flat = [(name, i, t) for name in answers for i, q in enumerate(questions) for t in range(len(q.turns))]
    scores = judge(
        [answers[n].prompts[i][t] for n, i, t in flat],
        [answers[n].texts[i][t] for n, i, t in flat],
        [questions[i].references[t] for _, i, t in flat],
    )
    return {
        name: nest(
            [float(v) for (n, _, _), v in zip(flat, scores) if n == name],
            [(i, t) for n, i, t in flat if n == name],
            len(questions),
        )
        for name in answers
    }


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def verdicts(baseline: np.ndarray, candidate: np.ndarray, tie_margin: float = 0.0) -> np.ndarray:
    """``(Q,)`` int: +1 where the candidate's score beats the baseline's by more than ``tie_margin``, -1 where it
    trails by more, 0 otherwise (a tie)."""
    diff = np.asarray(candidate, np.float64) - np.asarray(baseline, np.float64)
    return np.where(diff > tie_margin, 1, np.where(diff < -tie_margin, -1, 0)).astype(np.int64)


def win_rate(verdict: np.ndarray) -> float:
    """``(wins + ties / 2) / Q`` of ``(Q,)`` verdicts in {-1, 0, 1}."""
    return float(np.mean((np.asarray(verdict) + 1) / 2))


def bootstrap_interval(verdict: np.ndarray, samples: int, confidence: float, seed: int) -> Tuple[float, float]:
    """Percentile bootstrap interval of :func:`win_rate`: ``samples`` resamples of the ``Q`` questions with
    replacement (``numpy.random.default_rng(seed)``), the ``(1 - confidence) / 2`` and ``(1 + confidence) / 2``
    quantiles of their win rates."""
    points = (np.asarray(verdict, np.float64) + 1) / 2
    index = np.random.default_rng(seed).integers(0, len(points), (samples, len(points)))
    rates = points[index].mean(1)
    low, high = np.quantile(rates, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


def outcome(verdict: np.ndarray, cfg: EvalConfig) -> Dict[str, float]:
    """Counts, win rate and its interval of ``(Q,)`` verdicts."""
    low, high = bootstrap_interval(verdict, cfg.bootstrap_samples, cfg.confidence, cfg.seed)
    return {
        "questions": int(len(verdict)),
        "wins": int((verdict > 0).sum()),
        "ties": int((verdict == 0).sum()),
        "losses": int((verdict < 0).sum()),
        "win_rate": win_rate(verdict),
        "ci_low": low,
        "ci_high": high,
    }


def paired_outcome(
    baseline: Sequence[float], candidate: Sequence[float], cfg: Optional[EvalConfig] = None
) -> Dict[str, float]:
    """:func:`outcome` of two score lists paired item by item (the same prompt and sampling seed), with ``cfg``'s
    tie margin and bootstrap settings (default: :class:`EvalConfig`'s)."""
    cfg = cfg or EvalConfig()
    return outcome(verdicts(np.asarray(baseline), np.asarray(candidate), cfg.tie_margin), cfg)


def length_stats(answers: Answers) -> Dict[str, float]:
    """Generated tokens per answer (mean, median, std, max), words per answer (mean) and the share of answers
    that ended in eos rather than at ``max_new_tokens``."""
    tokens = np.asarray([n for row in answers.tokens for n in row], np.float64)
    words = np.asarray([len(t.split()) for row in answers.texts for t in row], np.float64)
    ended = np.asarray([e for row in answers.ended for e in row], np.float64)
    return {
        "tokens_mean": float(tokens.mean()),
        "tokens_median": float(np.median(tokens)),
        "tokens_std": float(tokens.std()),
        "tokens_max": int(tokens.max()),
        "words_mean": float(words.mean()),
        "eos_rate": float(ended.mean()),
    }


# ---------------------------------------------------------------------------------------------------------------
# The evaluation


@dataclass
class EvalResult:
    """Everything one evaluation measured (``summary`` is what summary.json and the report show)."""

    questions: List[Question]
    answers: Dict[str, Answers]  # "baseline" / "candidate"
    scores: Dict[str, List[List[float]]]  # judge score per [question][turn]
    verdicts: np.ndarray  # (Q,) int in {-1, 0, 1}, for the candidate
    summary: Dict[str, object]


def summarize(
    questions: Sequence[Question], answers: Dict[str, Answers], scores: Dict[str, List[List[float]]], cfg: EvalConfig
) -> Tuple[np.ndarray, Dict[str, object]]:
    """``(verdicts, summary)``: overall and per-category outcomes, mean judge scores and length statistics."""
    means = {name: np.asarray([np.mean(s) for s in scores[name]]) for name in ("baseline", "candidate")}
    verdict = verdicts(means["baseline"], means["candidate"], cfg.tie_margin)
    categories = sorted({q.category for q in questions if q.category})
    per_category = {}
    for category in categories:
        pick = np.asarray([q.category == category for q in questions])
        per_category[category] = {
            **outcome(verdict[pick], cfg),
            "baseline_score": float(means["baseline"][pick].mean()),
            "candidate_score": float(means["candidate"][pick].mean()),
        }
    summary = {
        "overall": outcome(verdict, cfg),
        "scores": {name: float(m.mean()) for name, m in means.items()},
        "score_difference": float((means["candidate"] - means["baseline"]).mean()),
        "lengths": {name: length_stats(a) for name, a in answers.items()},
        "categories": per_category,
    }
    return verdict, summary


def evaluate(
    baseline: Policy, candidate: Policy, judge: Judge, questions: Sequence[Question], cfg: EvalConfig
) -> EvalResult:
    """Both policies answer ``questions``; ``judge`` scores every answer; the candidate's wins, ties and losses
    are counted per question. The judge's vocabulary is checked against both policies before anything runs."""
    for policy in (baseline, candidate):
        judge.check_vocabulary(policy)
    answers = {p.name: answer_questions(p, questions, cfg) for p in (baseline, candidate)}
    scores = judge.score(questions, answers)
    verdict, summary = summarize(questions, answers, scores, cfg)
    if "candidate_first" in scores:
        summary["position_agreement"] = position_agreement(scores)
    overall = summary["overall"]
    logger.info(
        "candidate vs baseline on %d questions: %d wins, %d ties, %d losses, win rate %.3f [%.3f, %.3f]",
        overall["questions"],
        overall["wins"],
        overall["ties"],
        overall["losses"],
        overall["win_rate"],
        overall["ci_low"],
        overall["ci_high"],
    )
    return EvalResult(list(questions), answers, scores, verdict, summary)


# ---------------------------------------------------------------------------------------------------------------
# Outputs


def answer_records(result: EvalResult) -> List[dict]:
    """One JSON record per question: its turns, both policies' prompts, answers, lengths and scores, the
    verdict."""
    records = []
    for i, (q, v) in enumerate(zip(result.questions, result.verdicts)):
        record = {"id": q.id, "category": q.category, "turns": q.turns, "verdict": ["loss", "tie", "win"][v + 1]}
        for name, answers in result.answers.items():
            record[name] = {
                "prompts": answers.prompts[i],
                "answers": answers.texts[i],
                "tokens": answers.tokens[i],
                "ended_in_eos": answers.ended[i],
                "scores": result.scores[name][i],
            }
        if "candidate_first" in result.scores:  # a pairwise judge's preference in each order
            record["pairwise"] = {k: result.scores[k][i] for k in ("candidate_first", "baseline_first")}
        records.append(record)
    return records


def _cell(text: str, limit: int = 90) -> str:
    text = " ".join(str(text).split()).replace("|", "/")
    return text if len(text) <= limit else text[:limit] + "…"


def outcome_table(summary: Dict[str, object]) -> List[str]:
    """Markdown rows: win / tie / loss, win rate and interval, overall and per category."""
    lines = ["| questions | n | wins | ties | losses | win rate | interval |", "|---|---:|---:|---:|---:|---:|---|"]
    for label, o in {"all": summary["overall"], **summary["categories"]}.items():
        lines.append(
            f"| {label} | {o['questions']} | {o['wins']} | {o['ties']} | {o['losses']} "
            f"| **{o['win_rate']:.3f}** | [{o['ci_low']:.3f}, {o['ci_high']:.3f}] |"
        )
    return lines


def score_table(summary: Dict[str, object]) -> List[str]:
    """Markdown rows: each policy's mean judge score and answer lengths."""
    lines = [
        "| policy | mean judge score | tokens mean | tokens median | tokens max | words mean | ended in eos |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, stats in summary["lengths"].items():
        lines.append(
            f"| {name} | {summary['scores'][name]:.4f} | {stats['tokens_mean']:.1f} "
            f"| {stats['tokens_median']:.0f} | {stats['tokens_max']} | {stats['words_mean']:.1f} "
            f"| {stats['eos_rate']:.2f} |"
        )
    return lines


def examples_table(result: EvalResult, count: int) -> List[str]:
    """Markdown rows: the first turn of the first ``count`` questions, both answers and their scores."""
    lines = ["| question | baseline | candidate | score baseline | score candidate |", "|---|---|---|---:|---:|"]
    base, cand = result.answers["baseline"], result.answers["candidate"]
    for i, q in enumerate(result.questions[:count]):
        lines.append(
            f"| {_cell(q.turns[0], 50)} | {_cell(base.texts[i][0])} | {_cell(cand.texts[i][0])} "
            f"| {result.scores['baseline'][i][0]:.3f} | {result.scores['candidate'][i][0]:.3f} |"
        )
    return lines


def report_markdown(result: EvalResult, header: Dict[str, str], cfg: EvalConfig, examples: int = 4) -> str:
    """The report: what was compared (``header``: models, checkpoints, judge), the settings, win / tie / loss
    overall and per category, mean scores, lengths and a few answers side by side."""
    s = result.summary
    lines = ["# Evaluation: candidate vs baseline", ""] + [f"- **{k}**: {v}" for k, v in header.items()]
    lines += [
        "",
        "Settings: " + ", ".join(f"{k}={v}" for k, v in asdict(cfg).items()),
        "",
        f"Win rate = (wins + ties / 2) / questions for the candidate; {cfg.confidence:.0%} percentile-bootstrap "
        f"interval over questions ({cfg.bootstrap_samples} resamples).",
        "",
    ]
    lines += outcome_table(s) + [""] + score_table(s)
    lines += ["", f"Mean score difference (candidate - baseline): {s['score_difference']:+.4f}", ""]
    if "position_agreement" in s:
        lines += [
            f"Pairwise judge asked in both orders; the orders agree on the winner of "
            f"{s['position_agreement']:.0%} of the pairs.",
            "",
        ]
    lines += ["## Answers (first turn of the first questions)", ""] + examples_table(result, examples)
    lines += ["", "Every answer and score: `answers.jsonl`. Plot: `win_rate.png`.", ""]
    return "\n".join(lines)


def write_win_rate_png(summary: Dict[str, object], path: str) -> str:
    """Stacked bars of the wins, ties and losses per category and overall, with the win rate and its interval."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from mindrlhf.tools.loss_plot import save_png

    rows = {"all": summary["overall"], **summary["categories"]}
    labels = list(rows)[::-1]
    fig = Figure(figsize=(8, 1.6 + 0.45 * len(labels)), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    y = np.arange(len(labels))
    left = np.zeros(len(labels))
    for key, color in (("wins", "tab:green"), ("ties", "lightgray"), ("losses", "tab:red")):
        share = np.asarray([rows[c][key] / rows[c]["questions"] for c in labels])
        ax.barh(y, share, left=left, color=color, label=key)
        left += share
    rate = np.asarray([rows[c]["win_rate"] for c in labels])
    err = np.asarray(
        [
            [rows[c]["win_rate"] - rows[c]["ci_low"] for c in labels],
            [rows[c]["ci_high"] - rows[c]["win_rate"] for c in labels],
        ]
    )
    ax.errorbar(rate, y, xerr=err, fmt="o", color="black", capsize=3, label="win rate (interval)")
    ax.axvline(0.5, color="black", linewidth=0.8, linestyle="--")
    ax.set_yticks(y, labels)
    ax.set_xlim(0, 1)
    ax.set_xlabel("share of questions (candidate vs baseline)")
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=4, fontsize=8, frameon=False)
    fig.tight_layout()
    save_png(fig, path)
    return path


def write_evaluation(result: EvalResult, header: Dict[str, str], cfg: EvalConfig, folder: str) -> Dict[str, str]:
    """``answers.jsonl``, ``summary.json``, ``report.md`` and ``win_rate.png`` in ``folder``, each written
    atomically; returns their paths."""
    from mindrlhf.atomic import write_json, write_jsonl, write_text

    os.makedirs(folder, exist_ok=True)
    files = {
        name: os.path.join(folder, name) for name in ("answers.jsonl", "summary.json", "report.md", "win_rate.png")
    }
    write_jsonl(files["answers.jsonl"], answer_records(result))
    write_json(
        files["summary.json"], {**result.summary, "compared": header, "settings": asdict(cfg)}, ensure_ascii=False
    )
    write_text(files["report.md"], report_markdown(result, header, cfg))
    write_win_rate_png(result.summary, files["win_rate.png"])
    return files
