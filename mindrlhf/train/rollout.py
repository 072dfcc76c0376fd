"""The RL core every online algorithm shares: prompts -> generation (KV cache) -> reward (a reward model, read at
eos, and/or reward functions) -> policy and reference log-probs at the sampling temperature [-> values].

Layout of one rollout (``P`` prompt width, ``N = max_new_tokens``, ``L = P + N``)::

    response_tensors  [pad .. pad | prompt | r_0 r_1 .. r_{n-1} | pad .. pad]     (L,)
    attention_mask    [ 0  ..  0  |  1..1  |  1   1  ..    1    |  0  ..  0 ]     (L,)
    window t = 0..N-1: logprobs[t] = log p_T(r_t | tokens before it), values[t] = V(state before r_t)

:class:`RolloutMaker` returns the raw arrays of one batch; the algorithm modules turn them into their own records
(PPO: :mod:`mindrlhf.train.experience`, GRPO and its family: :mod:`mindrlhf.train.grpo`).
"""

from __future__ import annotations

import inspect
import time
from typing import Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from mindspore import Tensor, nn

from mindrlhf.config import GenerationConfig
from mindrlhf.data.contract import close_with_eos
from mindrlhf.data.tokenizer import left_pad
from mindrlhf.models import CausalLM, RewardModel
from mindrlhf.models.generation import Generator
from mindrlhf.models.lora import WithoutAdapters, reference_scorer
from mindrlhf.models.policy import token_logprobs

# reward_fn(prompt token lists, response token lists[, answers]) -> one score per rollout
RewardFunction = Callable[..., Sequence[float]]

RESPONSE_FIELDS = ("response_tensors", "attention_mask", "response_mask", "logprobs", "ref_logprobs")


class RolloutScorer(nn.Cell):
    """``(tokens (B, L), mask (B, L)) -> logprobs (B, N)`` [, ``values (B, N)``] over the response window.

    Log-probs are those of ``softmax(logits / temperature)``, the sampling distribution. Only the ``N`` window
    positions go through the LM head (not all ``L``). Values come from the shared value head, or from ``critic``
    (``(B, L)`` per position) when given.
    """

    def __init__(
        self,
        lm: CausalLM,
        prompt_width: int,
        with_values: bool,
        critic: Optional[nn.Cell] = None,
        temperature: float = 1.0,
    ):
        super().__init__(auto_prefix=False)
        self.lm = lm
        self.critic = critic
        self.start = prompt_width - 1
        self.with_values = with_values
        self.temperature = float(temperature)

    def construct(self, tokens, mask):
        length = tokens.shape[1]
        hidden = self.lm.backbone(tokens, mask)
        window = hidden[:, self.start : length - 1]
        logprobs = token_logprobs(self.lm.logits(window), tokens[:, self.start + 1 :], self.temperature)
        if not self.with_values:
            return logprobs
        if self.critic is None:
            return logprobs, self.lm.values(window)
        return logprobs, self.critic(tokens, mask)[:, self.start : length - 1]


class FirstOutput:
    """``scorer(*inputs)``'s first output when it returns several (log-probs without the values), else its output."""

    def __init__(self, scorer):
        self.scorer = scorer

    def __call__(self, *inputs):
        out = self.scorer(*inputs)
        return out[0] if isinstance(out, tuple) else out


def left_align_prompts(prompt_ids: np.ndarray, prompt_length: np.ndarray, pad_token_id: int):
    """Right-padded stored prompts ``(B, P)`` + lengths -> left-padded ``ids, mask (B, P)`` int32."""
    width = prompt_ids.shape[1]
    lengths = np.asarray(prompt_length).astype(int)
    for i, n in enumerate(lengths):
        if not 1 <= n <= width:
            raise ValueError(f"prompt {i} has length {n}, outside [1, {width}]")
    return left_pad([row[:n] for row, n in zip(prompt_ids, lengths)], pad_token_id, width)


def ends_with_eos(response_ids: np.ndarray, lengths: np.ndarray, eos_token_id: Optional[int]) -> np.ndarray:
    """``(B, N)`` generated ids + ``(B,)`` lengths -> ``(B,)`` bool: the row's last generated token is eos (False
    for every row without an eos id)."""
    if eos_token_id is None:
        return np.zeros(len(response_ids), bool)
    return response_ids[np.arange(len(response_ids)), np.asarray(lengths) - 1] == eos_token_id


def reward_model_scores(
    model: RewardModel, tokens: np.ndarray, mask: np.ndarray, eos_token_id: Optional[int]
) -> np.ndarray:
    """A reward model's ``(B,)`` scores of rollouts ``(B, L)``, read at the eos they are closed with
    (:func:`close_with_eos`: appended to a rollout cut at ``max_new_tokens``)."""
    tokens, mask = close_with_eos(tokens, mask, eos_token_id, model.config.seq_length)
    return model(Tensor(tokens), Tensor(mask)).asnumpy().astype(np.float32)


class RewardMix:
    """Reward functions (:class:`mindrlhf.rewards.CombinedReward`) and / or a reward model as one reward: a
    rollout's score is their sum. The rollout maker scores each part in its own layout (token lists for the
    functions, ``close_with_eos`` rows for the model) and leaves each part's scores of the last call in
    ``last_components`` (the ``reward/<name>`` metrics)."""

    def __init__(self, functions=None, reward_model: Optional[RewardModel] = None):
        if functions is None and reward_model is None:
            raise ValueError("the reward needs reward functions (grpo.reward_funcs) or a reward model")
        self.functions, self.reward_model = functions, reward_model
        self.last_components: Dict[str, np.ndarray] = {}


def _takes_answers(fn) -> bool:
    try:
        return "answers" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


class RolloutMaker:
    """Makes one rank's rollouts of one iteration.

    Args:
        policy: the actor (with a value head when ``with_values`` and no ``critic``).
        ref: the frozen reference.
        reward: a :class:`RewardModel` (read at eos, :func:`close_with_eos`), a :data:`RewardFunction` of token
            lists (one with an ``answers`` parameter also gets each prompt's reference answer), or a
            :class:`RewardMix` of reward functions and a reward model.
        generation: sampling settings (full distribution: the log-probs are those of the sampler).
        prompt_width: ``P``.
        pad_token_id, eos_token_id: of the policy's tokenizer.
        chunk_size: prompts per generation and scoring call.
        with_values: also return ``values`` (PPO); GRPO and its family need none.
        critic: the separate value network, or None.
        rank_id: this rank (sampling seeds differ per rank).
    """

    def __init__(
        self,
        policy: CausalLM,
        ref: CausalLM,
        reward: Union[RewardModel, RewardFunction],
        generation: GenerationConfig,
        prompt_width: int,
        pad_token_id: int,
        eos_token_id: Optional[int],
        chunk_size: int,
        with_values: bool = False,
        critic: Optional[nn.Cell] = None,
        rank_id: int = 0,
    ):
        self.rank_id = rank_id
        self.prompt_width = prompt_width
        self.pad_token_id = pad_token_id
        self.eos_token_id = eos_token_id
        self.chunk_size = chunk_size
        self.with_values = with_values
        temperature = generation.temperature
        self.generator = Generator(policy, generation, eos_token_id, pad_token_id)
        self.policy_scorer = RolloutScorer(
            policy, prompt_width, with_values=with_values, critic=critic, temperature=temperature
        )
        if ref is policy and critic is None:
            # LoRA: the reference is the policy with its adapters off, so the policy's compiled scorer serves it
            # too (a second graph of the same model held about 1.5 GiB more on CPU at GPT-2 124M)
            self.ref_scorer = FirstOutput(WithoutAdapters(self.policy_scorer, policy))
        else:
            self.ref_scorer = reference_scorer(
                RolloutScorer(ref, prompt_width, with_values=False, temperature=temperature), ref
            )
        self.reward = reward
        self.policy, self.critic, self.ref = policy, critic, ref
        self.timings: Dict[str, float] = {}

    def _score(self, tokens: np.ndarray, mask: np.ndarray, answers: Optional[List[str]] = None) -> np.ndarray:
        """``(B,)`` score of each rollout."""
        if isinstance(self.reward, RewardMix):
            return self._mixed_scores(self.reward, tokens, mask, answers)
        if isinstance(self.reward, nn.Cell):
            return reward_model_scores(self.reward, tokens, mask, self.eos_token_id)
        prompts, responses = self._token_lists(tokens, mask)
        if _takes_answers(self.reward):
            answers = list(answers) if answers is not None else [""] * len(tokens)
            scores = np.asarray(self.reward(prompts, responses, answers=answers), np.float32)
        else:
            scores = np.asarray(self.reward(prompts, responses), np.float32)
        if scores.shape != (len(tokens),) or not np.isfinite(scores).all():
            raise ValueError(f"the reward function must return {len(tokens)} finite scores, got {scores!r}")
        return scores

    def _token_lists(self, tokens: np.ndarray, mask: np.ndarray):
        """``(prompt token lists, response token lists)`` of the rollouts, padding removed."""
        width = self.prompt_width
        prompts = [row[m == 1].tolist() for row, m in zip(tokens[:, :width], mask[:, :width])]
        responses = [row[m == 1].tolist() for row, m in zip(tokens[:, width:], mask[:, width:])]
        return prompts, responses

    def _mixed_scores(
        self, mix: RewardMix, tokens: np.ndarray, mask: np.ndarray, answers: Optional[List[str]]
    ) -> np.ndarray:
        total, parts = np.zeros(len(tokens), np.float32), {}
        if mix.functions is not None:
            answers = list(answers) if answers is not None else [""] * len(tokens)
            scores, components = mix.functions(*self._token_lists(tokens, mask), answers)
            total, parts = total + scores, dict(components)
        if mix.reward_model is not None:
            parts["reward_model"] = reward_model_scores(mix.reward_model, tokens, mask, self.eos_token_id)
            total = total + parts["reward_model"]
        mix.last_components = parts
        return total

    def _rollout(self, prompts: Dict[str, np.ndarray], seed) -> Dict[str, np.ndarray]:
        """Generate and score one chunk; returns the raw per-rollout arrays."""
        query, query_mask = left_align_prompts(prompts["prompt_ids"], prompts["prompt_length"], self.pad_token_id)
        tick = time.perf_counter()
        out = self.generator.generate(query, query_mask, seed=seed)
        tokens = out.sequences
        mask = np.concatenate([query_mask, out.response_mask], 1).astype(np.int32)
        tock = time.perf_counter()
        scores = self._score(tokens, mask, prompts.get("answer"))
        tock2 = time.perf_counter()
        for cell in (self.policy, self.ref) + ((self.critic,) if self.critic is not None else ()):
            cell.set_train(False)
        scored = self.policy_scorer(Tensor(tokens), Tensor(mask))
        ref_logprobs = self.ref_scorer(Tensor(tokens), Tensor(mask))
        chunk = {
            "query_tensors": query,
            "response_tensors": tokens,
            "attention_mask": mask,
            "response_mask": out.response_mask.astype(np.float32),
            "scores": scores,
            "ends_with_eos": ends_with_eos(out.response_ids, out.response_lengths, self.eos_token_id),
            "response_lengths": out.response_lengths.astype(np.int32),
            "ref_logprobs": ref_logprobs.asnumpy(),
        }
        if self.with_values:
            chunk["logprobs"], chunk["values"] = scored[0].asnumpy(), scored[1].asnumpy()
        else:
            chunk["logprobs"] = scored.asnumpy()
        for name in ("pretrain_ids", "loss_mask"):
            if name in prompts:
                chunk[name] = prompts[name].astype(np.int32)
        done = time.perf_counter()
        for name, seconds in (("generation", tock - tick), ("scoring", tock2 - tock), ("logprobs", done - tock2)):
            self.timings[name] = self.timings.get(name, 0.0) + seconds
        return chunk

    def rollouts(self, prompts: Dict[str, np.ndarray], iteration: int, seed: int = 0) -> Dict[str, np.ndarray]:
        """Generate, score and evaluate this rank's rollouts, chunk by chunk.

        Args:
            prompts: ``prompt_ids (R, P)``, ``prompt_length (R,)`` [, ``pretrain_ids``, ``loss_mask (R, T)``,
                ``answer`` (R strings)] for this rank's ``R`` rollouts (a prompt repeated for each sample of it).
            iteration: the iteration (the sampling seed of each chunk mixes ``seed``, ``iteration``, the rank and
                the chunk index).
        Returns:
            ``query_tensors (R, P)``, ``response_tensors (R, L)``, ``attention_mask (R, L)``, ``response_mask
            (R, N)``, ``scores (R,)``, ``ends_with_eos (R,)``, ``response_lengths (R,)``, ``logprobs``,
            ``ref_logprobs (R, N)``, with values ``values (R, N)``, and ``pretrain_ids``, ``loss_mask (R, T)`` when
            given.
        """
        total = len(prompts["prompt_ids"])
        chunks = []
        for i, start in enumerate(range(0, total, self.chunk_size)):
            part = {k: v[start : start + self.chunk_size] for k, v in prompts.items()}
            chunks.append(self._rollout(part, seed=[seed, iteration, self.rank_id, i]))
        return {k: np.concatenate([c[k] for c in chunks]) for k in chunks[0]}
