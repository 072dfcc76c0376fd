"""DPO and its offline family (conservative DPO, IPO, hinge, and the reference-free SimPO and ORPO) on the supervised
train loop (:class:`~mindrlhf.train.trainer.Trainer`: loss scale, overflow skip, clipping, checkpoints with exact
resume, the step line, TensorBoard, progress bar).

Data: a preference MindRecord with the prompt/response boundary (``convert-preference``; older files are refused
with the command that reconverts them). Each batch of ``B`` pairs is ``input_ids``, ``attention_mask`` and
``response_mask`` ``(2B, S)``, the B chosen rows first (:func:`mindrlhf.data.datasets.dpo_dataset`), plus
``ref_logps (2B,)``, the reference model's log-probability of each response summed over its tokens:

- ``dpo.precompute_ref_log_probs: True``: one first pass over the whole file (each rank scores its share, an exact
  float64 all-reduce gives every rank the table), then the reference model is released: none is in memory while
  training;
- ``False``: each batch's reference log-probs are computed on the fly by the reference model kept beside the policy;
- reference-free losses (``simpo``, ``orpo``): no reference model at all, ``ref_logps`` is 0.

The reference is the weights the policy starts from (``sft_checkpoint``; the same seeded random init without one)
or ``dpo.ref_checkpoint``. A resumed run rebuilds it from the same path, so it continues exactly.

Each optimizer step logs TRL's metrics (:data:`mindrlhf.losses.PREFERENCE_METRICS`) of this rank's pairs.
:func:`evaluate_preferences` gives them on held-out pairs (``rewards/accuracies``: the implicit-reward accuracy) and
:func:`win_rate` the policy's win rate against the reference on held-out prompts under a reward function or model.
"""

from __future__ import annotations

import dataclasses
import gc
import logging
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Optional, Tuple, Union

import numpy as np
import mindspore as ms
from mindspore import Tensor, nn, ops

from mindrlhf.config import DPOConfig, GenerationConfig, RunConfig
from mindrlhf.losses import PREFERENCE_METRICS, preference_loss, preference_metrics
from mindrlhf.models import CausalLM
from mindrlhf.models.convert import CheckpointError, load_weights
from mindrlhf.models.lora import reference_scorer
from mindrlhf.models.policy import token_logprobs
from mindrlhf.train.distributed import AllReduceSum
from mindrlhf.train.trainer import FitResult, Trainer, mindrecord_source

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = ("input_ids", "attention_mask", "response_mask", "ref_logps")


class ResponseLogProbs(nn.Cell):
    """``(input_ids (N, S), attention_mask (N, S), response_mask (N, S)) -> (logps (N,), lengths (N,))``: each
    sequence's response log-probability ``sum_t m_t log p(x_t | x_<t)`` and its number of response tokens (the
    mask of the predicted tokens, ``response_mask[:, 1:]``), float32."""

    def __init__(self, lm: CausalLM):
        super().__init__(auto_prefix=False)
        self.lm = lm

    def construct(self, input_ids, attention_mask, response_mask):
        hidden = self.lm.backbone(input_ids, attention_mask)
        logp = token_logprobs(self.lm.logits(hidden[:, :-1]), input_ids[:, 1:])
        mask = ops.cast(response_mask[:, 1:], ms.float32)
        return ops.reduce_sum(logp * mask, 1), ops.reduce_sum(mask, 1)


class DPOLoss(nn.Cell):
    """``(input_ids (2B, S), attention_mask (2B, S), response_mask (2B, S), ref_logps (2B,)) -> (loss, metrics)``,
    ``metrics`` the float32 vector of :data:`PREFERENCE_METRICS`; rows ``0..B-1`` chosen, ``B..2B-1`` rejected.
    The loss is :func:`mindrlhf.losses.preference_loss` with the ``dpo`` section's type and coefficients."""

    def __init__(self, policy: CausalLM, dpo: DPOConfig):
        super().__init__(auto_prefix=False)
        self.scorer = ResponseLogProbs(policy)
        self.loss_type, self.beta = dpo.loss_type, float(dpo.beta)
        self.label_smoothing, self.simpo_gamma = float(dpo.label_smoothing), float(dpo.simpo_gamma)

    def construct(self, input_ids, attention_mask, response_mask, ref_logps):
        logps, lengths = self.scorer(input_ids, attention_mask, response_mask)
        pairs = input_ids.shape[0] // 2
        loss, chosen, rejected = preference_loss(
            logps[:pairs],
            logps[pairs:],
            lengths[:pairs],
            lengths[pairs:],
            ref_logps[:pairs],
            ref_logps[pairs:],
            self.loss_type,
            self.beta,
            self.label_smoothing,
            self.simpo_gamma,
        )
        return loss, preference_metrics(chosen, rejected, logps[:pairs], logps[pairs:])


# ---------------------------------------------------------------------------------------------------------------
# The reference


def reference_model(model_cfg, checkpoint: str, seed: int) -> CausalLM:
    """A frozen reference: the weights of ``checkpoint``, else the seeded random init a policy built after
    ``ms.set_seed(seed)`` starts from. A checkpoint that does not fit the policy's shape is a
    :class:`CheckpointError` naming it."""
    from mindrlhf.train.ppo import weights_file, without_dropout

    ms.set_seed(seed)
    ref = CausalLM(without_dropout(model_cfg))
    if checkpoint:
        try:
            load_weights(ref, weights_file(checkpoint), model_cfg)
        except CheckpointError as err:
            raise CheckpointError(
                f"reference checkpoint {checkpoint} does not fit the policy (model.model_config): {err}"
            ) from None
        logger.info("reference model from %s", checkpoint)
    ref.set_train(False)
    for param in ref.get_parameters():
        param.requires_grad = False
    return ref


def padded_rows(batch: Dict[str, np.ndarray], rows: int) -> Tuple[Dict[str, np.ndarray], int]:
    """A DPO batch of fewer than ``rows`` pairs filled up by repeating its last pair (one compiled shape);
    returns it and the number of real pairs."""
    real = len(batch["input_ids"]) // 2
    if real == rows:
        return batch, real
    take = np.concatenate([np.arange(real), np.full(rows - real, real - 1)])
    take = np.concatenate([take, take + real])
    return {name: value[take] for name, value in batch.items()}, real


def reference_table(ref: CausalLM, path: str, batch_size: int, rank_id: int = 0, rank_size: int = 1) -> np.ndarray:
    """``(n, 2)`` float64: the reference's chosen / rejected response log-probs of every record of ``path``. Rank
    ``r`` scores records ``r::rank_size``; the table is summed over the ranks (each entry has one author)."""
    from mindrlhf.data.datasets import check_dpo_file, dpo_batches

    count = check_dpo_file(path)
    scorer = reference_scorer(ResponseLogProbs(ref), ref)
    table = np.zeros((count, 2), np.float64)
    mine = np.arange(rank_id, count, rank_size)
    start = 0
    for batch in dpo_batches(path, mine, batch_size, drop_remainder=False).create_dict_iterator(
        num_epochs=1, output_numpy=True
    ):
        full, real = padded_rows(batch, batch_size)
        logps = scorer(*(Tensor(full[c]) for c in ("input_ids", "attention_mask", "response_mask")))[0].asnumpy()
        rows = mine[start : start + real]
        table[rows, 0], table[rows, 1] = logps[:real], logps[batch_size : batch_size + real]
        start += real
    return AllReduceSum(rank_size)(table)


def with_reference(
    source,
    indices_of: Callable[[int, int], np.ndarray],
    batch_size: int,
    table: Optional[np.ndarray],
    ref_scorer: Optional[nn.Cell],
):
    """``source`` whose batches gain ``ref_logps (2B,)``: from ``table`` by record index, from ``ref_scorer`` on
    the fly, or zeros (reference-free losses)."""

    def batches(epoch: int, skip: int) -> Iterable[Dict[str, np.ndarray]]:
        indices = indices_of(epoch, skip)
        for k, batch in enumerate(source(epoch, skip)):
            if table is not None:
                rows = indices[k * batch_size : (k + 1) * batch_size]
                ref = np.concatenate([table[rows, 0], table[rows, 1]])
            elif ref_scorer is not None:
                ref = ref_scorer(*(Tensor(batch[c]) for c in ("input_ids", "attention_mask", "response_mask")))[
                    0
                ].asnumpy()
            else:
                ref = np.zeros(len(batch["input_ids"]))
            yield {**batch, "ref_logps": ref.astype(np.float32)}

    return batches


# ---------------------------------------------------------------------------------------------------------------
# Training


def dpo_source(cfg: RunConfig, path: str, ref: Optional[CausalLM], rank_id: int, rank_size: int):
    """``(batch size, steps per epoch, source)`` of DPO batches with their reference log-probs (see the module
    docstring); with ``precompute_ref_log_probs`` the table is computed here."""
    from mindrlhf.data.datasets import check_dpo_file, dpo_dataset, epoch_indices
    from mindrlhf.data.schemas import DPO_FILE_COLUMNS

    data = cfg.train_dataset
    batch_size, steps, source = mindrecord_source(cfg, path, dpo_dataset, DPO_FILE_COLUMNS, rank_id, rank_size)
    count = check_dpo_file(path)

    def indices_of(epoch: int, skip: int) -> np.ndarray:
        return epoch_indices(
            count,
            batch_size,
            epoch=epoch,
            seed=cfg.seed,
            shuffle=data.data_loader.shuffle,
            rank_id=rank_id,
            rank_size=rank_size,
            skip_batches=skip,
            num_samples=data.data_loader.num_samples,
        )

    table = scorer = None
    if ref is not None and cfg.dpo.precompute_ref_log_probs:
        table = reference_table(ref, path, batch_size, rank_id, rank_size)
        logger.info("reference log-probs of %d pairs precomputed", len(table))
    elif ref is not None:
        scorer = reference_scorer(ResponseLogProbs(ref), ref)
    return batch_size, steps, with_reference(source, indices_of, batch_size, table, scorer)


def train_dpo(
    cfg: RunConfig,
    train_path: Optional[str] = None,
    sft_checkpoint: Optional[str] = None,
    resume: str = "",
    rank_id: int = 0,
    rank_size: int = 1,
    stop_at_step: Optional[int] = None,
    progress: Union[bool, str] = False,
) -> Tuple[CausalLM, FitResult]:
    """Train a policy with the ``dpo`` section's loss on a preference MindRecord.

    Args:
        cfg: the recipe (model, optimizer, schedule, epochs, batch size in pairs, checkpoints, ``dpo``).
        train_path: the ``.mindrecord`` (default: ``train_dataset.data_loader.dataset_dir``).
        sft_checkpoint: the weights the policy (and the reference) start from: .ckpt, checkpoint root or Hugging
            Face folder (default: ``load_checkpoint``; "" = seeded random init).
        resume: a DPO checkpoint root (with ``rank_<id>/``) to continue from exactly.
        rank_id, rank_size: this process in a data-parallel group.
        stop_at_step: stop (and save) once the global step reaches it.
    Returns:
        ``(policy, fit result)``; ``fit.metrics`` holds each step's :data:`PREFERENCE_METRICS`.
    """
    from mindrlhf.data.datasets import check_dpo_file
    from mindrlhf.train.grpo import build_policy_and_ref
    from mindrlhf.train.ppo import weights_file

    path = train_path or cfg.train_dataset.data_loader.dataset_dir
    if not path:
        raise ValueError("no training data: pass --train_dataset or set train_dataset.data_loader.dataset_dir")
    check_dpo_file(path)
    start = cfg.load_checkpoint if sft_checkpoint is None else sft_checkpoint
    model_cfg = cfg.model.model_config
    policy, ref = build_policy_and_ref(model_cfg, start, cfg.seed, cfg.recompute_config.recompute, cfg.lora)
    if cfg.dpo.ref_checkpoint:
        ref = reference_model(model_cfg, cfg.dpo.ref_checkpoint, cfg.seed)
    if cfg.dpo.reference_free:
        ref = None
    cfg = dataclasses.replace(cfg, load_checkpoint=resume)  # the Trainer resumes from it; start weights are loaded
    batch_size, steps, source = dpo_source(cfg, path, ref, rank_id, rank_size)
    if ref is not None and cfg.dpo.precompute_ref_log_probs:
        ref = None  # nothing holds the reference any more: it leaves memory before training
        gc.collect()
    trainer = Trainer(
        cfg,
        DPOLoss(policy, cfg.dpo),
        TRAIN_COLUMNS,
        source,
        steps,
        rank_id,
        rank_size,
        progress,
        metric_names=PREFERENCE_METRICS,
        base_weights=weights_file(start, rank_id) if start else "",
    )
    logger.info(
        "DPO (%s, beta %g): %d epochs x %d steps, batch %d pairs per device, reference %s",
        cfg.dpo.loss_type,
        cfg.dpo.beta,
        cfg.runner_config.epochs,
        steps,
        batch_size,
        "none" if cfg.dpo.reference_free else "precomputed" if cfg.dpo.precompute_ref_log_probs else "on the fly",
    )
    return policy, trainer.fit(stop_at_step)


# ---------------------------------------------------------------------------------------------------------------
# Evaluation


def response_logps(model: CausalLM, path: str, batch_size: int) -> np.ndarray:
    """``(n, 2, 2)`` float64: per record of ``path`` ``[[chosen logps, chosen length], [rejected ...]]`` under
    ``model`` (``logps`` summed over the response tokens)."""
    from mindrlhf.data.datasets import check_dpo_file, dpo_batches

    count = check_dpo_file(path)
    model.set_train(False)
    scorer = ResponseLogProbs(model)
    out, start = np.zeros((count, 2, 2), np.float64), 0
    for batch in dpo_batches(path, np.arange(count), batch_size, drop_remainder=False).create_dict_iterator(
        num_epochs=1, output_numpy=True
    ):
        full, real = padded_rows(batch, batch_size)
        logps, lengths = (
            x.asnumpy() for x in scorer(*(Tensor(full[c]) for c in ("input_ids", "attention_mask", "response_mask")))
        )
        for side, offset in ((0, 0), (1, batch_size)):
            out[start : start + real, side, 0] = logps[offset : offset + real]
            out[start : start + real, side, 1] = lengths[offset : offset + real]
        start += real
    return out


def evaluate_preferences(
    policy: CausalLM, ref: Optional[CausalLM], path: str, dpo: DPOConfig, batch_size: int = 8
) -> Dict[str, float]:
    """Held-out metrics of ``policy`` on every pair of ``path``: ``loss`` and :data:`PREFERENCE_METRICS`, with the
    same loss and implicit rewards as training (``ref`` None for the reference-free losses).
    ``rewards/accuracies`` is the held-out implicit-reward accuracy: the share of pairs whose chosen response gets
    the strictly higher implicit reward."""
    ours = response_logps(policy, path, batch_size)
    theirs = np.zeros_like(ours) if ref is None else response_logps(ref, path, batch_size)
    t = [
        Tensor(x.astype(np.float32))
        for x in (ours[:, 0, 0], ours[:, 1, 0], ours[:, 0, 1], ours[:, 1, 1], theirs[:, 0, 0], theirs[:, 1, 0])
    ]
    loss, chosen, rejected = preference_loss(*t, dpo.loss_type, dpo.beta, dpo.label_smoothing, dpo.simpo_gamma)
    metrics = preference_metrics(chosen, rejected, t[0], t[1]).asnumpy()
    return {
        "loss": float(loss.asnumpy()),
        **{k: float(v) for k, v in zip(PREFERENCE_METRICS, metrics)},
        "pairs": float(len(ours)),
    }


@dataclass
class WinRate:
    """The policy against the reference on held-out prompts, one sampled response each per prompt."""

    win_rate: float  # share of prompts where the policy's response scores higher; a tie counts one half
    policy_score: float  # mean score of the policy's responses
    reference_score: float  # mean score of the reference's responses
    prompts: int


def win_rate(
    policy: CausalLM,
    ref: CausalLM,
    prompts: Dict[str, object],
    score: Callable,
    gen: GenerationConfig,
    eos_token_id: int,
    pad_token_id: int,
    seed: int = 0,
) -> WinRate:
    """Sample one response per prompt from ``policy`` and from ``ref`` (the same seed) and compare their scores.

    Args:
        prompts: as :func:`mindrlhf.data.datasets.read_prompts` returns them (``prompt_ids (R, P)`` left-aligned,
            ``prompt_length``, ``answer``).
        score: ``score(prompt token lists, response token lists, answers) -> (R,)``, e.g. the weighted sum of a
            :class:`mindrlhf.rewards.CombinedReward`'s functions.
        gen: the sampling settings (``max_new_tokens``, temperature, ...).
    """
    from mindrlhf.models.generation import Generator
    from mindrlhf.train.rollout import left_align_prompts

    rows = [[int(t) for t in ids[:n]] for ids, n in zip(prompts["prompt_ids"], prompts["prompt_length"])]
    ids, mask = left_align_prompts(prompts["prompt_ids"], prompts["prompt_length"], pad_token_id)
    scores = []
    for model in (policy, ref):
        model.set_train(False)
        out = Generator(model, gen, eos_token_id, pad_token_id).generate(ids, mask, seed=[seed, 104729])
        responses = [[int(t) for t in r[:n]] for r, n in zip(out.response_ids, out.response_lengths)]
        scores.append(np.asarray(score(rows, responses, list(prompts["answer"])), np.float64))
    ours, theirs = scores
    wins = np.mean((ours > theirs) + 0.5 * (ours == theirs))
    return WinRate(float(wins), float(ours.mean()), float(theirs.mean()), len(rows))
