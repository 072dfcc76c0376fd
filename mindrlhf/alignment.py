"""The gold-judge alignment protocol on a real pretrained model (reward-model over-optimisation studies, Gao et al.,
2022): a fixed gold judge labels preferences, a proxy reward model learns them, RL optimises the proxy, and the gold
judge measures what was really gained on held-out prompts.

On the bundled TinyStories-656K and the VADER sentiment judge (:func:`mindrlhf.rewards.vader_sentiment`):

1. **Prompts**: story openings the pretrained model writes from bos (``1 + opening_tokens`` tokens, seeded), split
   into train and held-out.
2. **Pairs**: two samples per train prompt from the pretrained policy; chosen = the higher gold score (ties
   dropped). Each side is the rollout as generated, with eos appended when the sample was cut at
   ``new_tokens`` (the tokenization contract: a reward model is trained and read at eos).
3. **Proxy reward model**: the pretrained backbone with a new score head, trained on those pairs; its accuracy on
   pairs from the held-out prompts is measured against the gold labels.
4. **RL** (PPO here) against the proxy; **evaluation**: ``eval_samples`` samples per held-out prompt before and
   after, their gold mean / std, the proxy score, and the KL to the reference ``sum_t (logp_t - ref_logp_t)`` per
   sample.

Used by ``benchmarks/alignment_quality.py`` and ``mindrlhf demo``.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from mindspore import Tensor

from mindrlhf.config import GenerationConfig, ModelConfig
from mindrlhf.models.generation import Generator, GenerationOutput
from mindrlhf.rewards import vader_sentiment

logger = logging.getLogger(__name__)


@dataclass
class StoryProtocol:
    """Sizes of the protocol (the defaults are the benchmark's)."""

    opening_tokens: int = 8  # tokens of each story opening after bos (the prompt is 1 + this many tokens)
    train_prompts: int = 256  # openings whose sample pairs train the proxy reward model and feed RL
    eval_prompts: int = 32  # held-out openings (their pairs measure the proxy's accuracy; their samples the gain)
    eval_samples: int = 4  # samples per held-out opening for the before / after gold mean
    new_tokens: int = 48  # tokens generated per continuation
    temperature: float = 1.0  # sampling temperature of pairs, rollouts and evaluation
    seed: int = 0


@dataclass
class PolicyEvaluation:
    """Held-out samples of one policy and what the judges say of them."""

    gold_mean: float  # gold judge, mean over all held-out samples
    gold_std: float
    proxy_mean: float  # proxy reward model at each sample's eos
    kl: float  # mean over samples of sum_t (logp_t - ref_logp_t)
    response_length: float  # mean generated tokens
    texts: List[str] = field(default_factory=list)  # decoded continuations (prompt order, eval_samples each)
    gold: List[float] = field(default_factory=list)


def sampling_config(protocol: StoryProtocol, seed: int) -> GenerationConfig:
    """Full-distribution sampling at the protocol's temperature (no top-k / top-p: RL needs the policy's own
    distribution)."""
    return GenerationConfig(
        max_new_tokens=protocol.new_tokens,
        do_sample=True,
        temperature=protocol.temperature,
        top_k=0,
        top_p=1.0,
        seed=seed,
    )


def story_openings(policy, cfg: ModelConfig, count: int, opening_tokens: int, seed: int) -> np.ndarray:
    """``(count, 1 + opening_tokens)`` int32 distinct openings sampled from bos; openings that end (eos) early are
    dropped. Sampling continues with new seeds until ``count`` are found."""
    found: Dict[Tuple[int, ...], None] = {}
    gen = GenerationConfig(
        max_new_tokens=opening_tokens, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, seed=seed
    )
    generator = Generator(policy, gen, cfg.eos_token_id, cfg.pad_token_id)  # compiled once for every draw
    draw = 0
    while len(found) < count:
        out = generator.generate(np.full((count, 1), cfg.bos_token_id, np.int32), seed=[seed, draw])
        for row, length in zip(out.sequences, out.response_lengths):
            if length == opening_tokens and cfg.eos_token_id not in row[1:]:
                found.setdefault(tuple(int(t) for t in row), None)
        draw += 1
        if draw > 50:
            raise RuntimeError(f"found only {len(found)} of {count} distinct story openings")
    return np.asarray(list(found)[:count], np.int32)


def story_sampler(policy, cfg: ModelConfig, protocol: StoryProtocol) -> Generator:
    """The protocol's sampler for ``policy``: ``generate(prompts (B, P), seed=...)`` gives one continuation per
    row (openings have equal length: no padding); its compiled steps are reused across calls of one shape."""
    return Generator(policy, sampling_config(protocol, 0), cfg.eos_token_id, cfg.pad_token_id)


def responses_with_eos(out: GenerationOutput, eos_token_id: int) -> List[List[int]]:
    """Each row's generated tokens, ending in eos (appended when the sample was cut at ``max_new_tokens``)."""
    rows = []
    for ids, length in zip(out.response_ids, out.response_lengths):
        row = [int(t) for t in ids[:length]]
        rows.append(row if row and row[-1] == eos_token_id else row + [eos_token_id])
    return rows


def decode_all(tokenizer, rows: Sequence[Sequence[int]]) -> List[str]:
    return [tokenizer.decode(r) for r in rows]


@dataclass
class GoldPairs:
    """Preference pairs labelled by the gold judge (token lists include the prompt and end in eos)."""

    chosen: List[List[int]]
    rejected: List[List[int]]
    margins: List[float]  # gold(chosen) - gold(rejected) > 0
    ties: int  # pairs dropped because both samples scored the same


def gold_pairs(
    policy, cfg: ModelConfig, tokenizer, prompts: np.ndarray, protocol: StoryProtocol, seed: int, judge=vader_sentiment
) -> GoldPairs:
    """Two samples per prompt, chosen = the higher gold score."""
    sampler = story_sampler(policy, cfg, protocol)
    sides = [sampler.generate(prompts, seed=[seed, side]) for side in (0, 1)]
    rows = [responses_with_eos(out, cfg.eos_token_id) for out in sides]
    gold = [judge(decode_all(tokenizer, r)) for r in rows]
    pairs = GoldPairs([], [], [], 0)
    for i, prompt in enumerate(prompts.tolist()):
        margin = float(gold[0][i] - gold[1][i])
        if margin == 0.0:
            pairs.ties += 1
            continue
        first, second = (0, 1) if margin > 0 else (1, 0)
        pairs.chosen.append(prompt + rows[first][i])
        pairs.rejected.append(prompt + rows[second][i])
        pairs.margins.append(abs(margin))
    return pairs


def write_pairs(pairs: GoldPairs, path: str, seq_length: int, pad_token_id: int, prompt_length: int) -> str:
    """The pairs as a preference MindRecord (the fields of ``convert_preference``, response masks after the
    ``prompt_length`` prompt tokens included), written atomically."""
    from mindrlhf.data.convert_preference import pair_fields
    from mindrlhf.data.records import atomic_mindrecord, write_in_chunks
    from mindrlhf.data.schemas import FILE_SCHEMA

    samples = (
        pair_fields(c, r, seq_length, pad_token_id, prompt_length=prompt_length)
        for c, r in zip(pairs.chosen, pairs.rejected)
    )
    with atomic_mindrecord(path, FILE_SCHEMA) as writer:
        write_in_chunks(writer, (s for s in samples if s is not None))
    return path


def write_prompts(prompts: np.ndarray, path: str, pad_token_id: int) -> str:
    """Openings as a PPO prompt MindRecord (``prompt_ids``, ``prompt_length``; no ptx answer), atomically."""
    from mindrlhf.data.records import atomic_mindrecord, write_in_chunks
    from mindrlhf.data.schemas import PROMPT_SCHEMA

    width = prompts.shape[1]
    samples = (
        {
            "prompt_ids": row.astype(np.int64),
            "prompt_length": np.int64(width),
            "pretrain_ids": np.full(width + 1, pad_token_id, np.int64),
            "loss_mask": np.zeros(width + 1, np.int64),
        }
        for row in prompts
    )
    with atomic_mindrecord(path, PROMPT_SCHEMA, "story openings") as writer:
        write_in_chunks(writer, samples)
    return path


def pairwise_accuracy(reward_model, pairs: GoldPairs, seq_length: int, pad_token_id: int) -> float:
    """Share of gold-labelled pairs the proxy ranks the same way (scores at each sequence's eos)."""
    from mindrlhf.train.reward import score_texts

    chosen = score_texts(reward_model, pairs.chosen, seq_length, pad_token_id)
    rejected = score_texts(reward_model, pairs.rejected, seq_length, pad_token_id)
    return float(np.mean(chosen > rejected))


class HeldOutJudge:
    """Judges policies on the held-out openings: ``eval_samples`` continuations per opening (seeded: the same draws
    for every policy judged), their gold score, the proxy's score (read at eos, as PPO reads it) and the KL to
    ``ref``. The compiled generation and scoring cells are kept per policy, so judging after every iteration costs
    no recompilation."""

    def __init__(
        self,
        ref,
        reward_model,
        cfg: ModelConfig,
        tokenizer,
        prompts: np.ndarray,
        protocol: StoryProtocol,
        judge=vader_sentiment,
    ):
        self.ref, self.reward_model, self.cfg, self.tokenizer = ref, reward_model, cfg, tokenizer
        self.prompts = np.repeat(prompts, protocol.eval_samples, axis=0)
        self.width, self.protocol, self.judge = prompts.shape[1], protocol, judge
        self._cells: Dict[int, tuple] = {}

    def _cells_of(self, policy):
        from mindrlhf.train.experience import RolloutScorer

        if id(policy) not in self._cells:
            generator = story_sampler(policy, self.cfg, self.protocol)
            scorer = RolloutScorer(policy, self.width, with_values=False, temperature=self.protocol.temperature)
            self._cells[id(policy)] = (policy, generator, scorer)
        return self._cells[id(policy)][1:]

    def logprobs(self, policy, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """``(B, N)`` log-probs of the sampled tokens under ``policy`` at the sampling temperature."""
        policy.set_train(False)
        return self._cells_of(policy)[1](Tensor(tokens), Tensor(mask)).asnumpy()

    def proxy_scores(self, tokens: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The proxy reward model's score of each sample at its eos (appended when the sample was cut)."""
        from mindrlhf.data.contract import close_with_eos

        if self.reward_model is None:
            return np.zeros(len(tokens), np.float32)
        closed, closed_mask = close_with_eos(tokens, mask, self.cfg.eos_token_id, self.cfg.seq_length)
        return self.reward_model(Tensor(closed), Tensor(closed_mask)).asnumpy()

    def __call__(self, policy) -> PolicyEvaluation:
        generator = self._cells_of(policy)[0]
        out = generator.generate(self.prompts, seed=[self.protocol.seed, 7919])
        mask = np.concatenate([np.ones_like(self.prompts), out.response_mask], 1).astype(np.int32)
        kl = (
            (self.logprobs(policy, out.sequences, mask) - self.logprobs(self.ref, out.sequences, mask))
            * out.response_mask
        ).sum(1)
        texts = decode_all(self.tokenizer, responses_with_eos(out, self.cfg.eos_token_id))
        gold = self.judge(texts)
        proxy = self.proxy_scores(out.sequences, mask)
        return PolicyEvaluation(
            gold_mean=float(gold.mean()),
            gold_std=float(gold.std()),
            proxy_mean=float(proxy.mean()),
            kl=float(kl.mean()),
            response_length=float(out.response_lengths.mean()),
            texts=texts,
            gold=[float(g) for g in gold],
        )


@dataclass
class StoryData:
    """What :func:`prepare_story_data` made."""

    train_prompts: np.ndarray  # (n_train, P)
    eval_prompts: np.ndarray  # (n_eval, P)
    train_pairs: GoldPairs
    eval_pairs: GoldPairs
    files: Dict[str, str]  # pairs / eval_pairs / prompts MindRecords


def prepare_story_data(policy, cfg: ModelConfig, tokenizer, protocol: StoryProtocol, folder: str) -> StoryData:
    """Openings, gold-labelled pairs (train and held-out) and the MindRecords the stages read."""
    os.makedirs(folder, exist_ok=True)
    total = protocol.train_prompts + protocol.eval_prompts
    openings = story_openings(policy, cfg, total, protocol.opening_tokens, protocol.seed)
    order = np.random.default_rng(protocol.seed).permutation(total)
    train, held_out = openings[order[: protocol.train_prompts]], openings[order[protocol.train_prompts :]]
    train_pairs = gold_pairs(policy, cfg, tokenizer, train, protocol, protocol.seed + 1)
    eval_pairs = gold_pairs(policy, cfg, tokenizer, held_out, protocol, protocol.seed + 2)
    seq_length = pair_seq_length(protocol)
    width = openings.shape[1]
    files = {
        "pairs": write_pairs(
            train_pairs, os.path.join(folder, "pairs.mindrecord"), seq_length, cfg.pad_token_id, width
        ),
        "eval_pairs": write_pairs(
            eval_pairs, os.path.join(folder, "eval_pairs.mindrecord"), seq_length, cfg.pad_token_id, width
        ),
        "prompts": write_prompts(train, os.path.join(folder, "prompts.mindrecord"), cfg.pad_token_id),
    }
    logger.info(
        "story data: %d train / %d held-out openings, %d train pairs (%d ties dropped), %d held-out pairs",
        len(train),
        len(held_out),
        len(train_pairs.chosen),
        train_pairs.ties,
        len(eval_pairs.chosen),
    )
    return StoryData(train, held_out, train_pairs, eval_pairs, files)


def pair_seq_length(protocol: StoryProtocol) -> int:
    """Length of a stored pair: bos + opening + continuation + eos."""
    return 1 + protocol.opening_tokens + protocol.new_tokens + 1


def summary_row(
    name: str, before: PolicyEvaluation, after: PolicyEvaluation, wall_s: float, extra: Optional[dict] = None
) -> dict:
    """One ``results`` entry of the benchmark JSON."""
    return {
        "algorithm": name,
        "gold_before": before.gold_mean,
        "gold_after": after.gold_mean,
        "gold_std_before": before.gold_std,
        "gold_gain": after.gold_mean - before.gold_mean,
        "proxy_before": before.proxy_mean,
        "proxy_after": after.proxy_mean,
        "kl": after.kl,
        "samples": len(after.gold),
        "wall_s": wall_s,
        **(extra or {}),
    }
