"""Stage 2: the reward model. Pairwise training on preference MindRecords, accuracy evaluation, scoring.

Batches come from :func:`mindrlhf.data.datasets.reward_model_dataset`: ``input_ids (2B, S)`` with the B chosen rows
first, ``attention_mask (2B, S)``, ``loss_mask (B, S)``, ``end_ind (2B,)`` (each row's own length).

Every preference sequence ends in eos (the tokenization contract, :mod:`mindrlhf.data.contract`), so the end-token
loss, the accuracy of ``rm eval`` and the scores of ``rm infer`` are read at the eos: the last real token, the
column PPO's :class:`~mindrlhf.models.RewardModel` reads on a rollout. Training and evaluation first check that the
file's sequences end in the model's eos id (:func:`~mindrlhf.data.datasets.check_preference_ends`) and refuse files
written by the older converter, which ended them at the last response token.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import List, Optional, Tuple, Union

import numpy as np
from mindspore import Tensor, nn

from mindrlhf.config import RunConfig
from mindrlhf.losses import pairwise_end_loss, pairwise_span_loss
from mindrlhf.models import RewardModel
from mindrlhf.models.convert import CheckpointError, is_hf_folder, load_ckpt, load_weights
from mindrlhf.models.lora import prepare_lora
from mindrlhf.models.heads import gather_rows
from mindrlhf.train.checkpoint import initial_weights, latest_checkpoint, list_checkpoints, rank_dir
from mindrlhf.train.trainer import FitResult, Trainer, mindrecord_source

logger = logging.getLogger(__name__)

TRAIN_COLUMNS = ("input_ids", "attention_mask", "loss_mask", "end_ind")


class RewardLoss(nn.Cell):
    """``(input_ids (2B,S), attention_mask (2B,S), loss_mask (B,S), end_ind (2B,)) -> loss``.

    ``span``: :func:`pairwise_span_loss` over the per-token scores; ``end``: :func:`pairwise_end_loss` on the score
    of each sequence at its own last token (``end_ind - 1``, the eos).
    """

    def __init__(self, model: RewardModel, loss_type: str = "span"):
        super().__init__(auto_prefix=False)
        self.model = model
        self.loss_type = loss_type

    def construct(self, input_ids, attention_mask, loss_mask, end_ind):
        scores = self.model.token_scores(input_ids, attention_mask)
        pairs = loss_mask.shape[0]
        if self.loss_type == "span":
            loss, _ = pairwise_span_loss(scores[:pairs], scores[pairs:], loss_mask)
        else:
            ends = gather_rows(scores, end_ind - 1)
            loss, _ = pairwise_end_loss(ends[:pairs], ends[pairs:])
        return loss


class EndScores(nn.Cell):
    """``(input_ids (N,S), attention_mask (N,S), end_ind (N,)) -> score at each row's own last token (N,)``
    (``end_ind - 1``: the eos of a sequence encoded under the tokenization contract)."""

    def __init__(self, model: RewardModel):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, attention_mask, end_ind):
        return gather_rows(self.model.token_scores(input_ids, attention_mask), end_ind - 1)


def init_weights(model: RewardModel, cfg: RunConfig, rank_id: int) -> None:
    """Start from ``load_checkpoint`` when it names weights (a .ckpt or Hugging Face folder, e.g. the SFT model);
    a checkpoint root with ``rank_<id>`` is a resume and is handled by the trainer (with LoRA, the base its
    checkpoint records is loaded here)."""
    path = initial_weights(model, cfg.load_checkpoint, rank_id)
    if path:
        kept = load_weights(model, path, model.config, new_heads=True)
        logger.info("reward model initialised from %s (fresh: %s)", path, ", ".join(kept) or "none")


def train_reward_model(
    cfg: RunConfig,
    train_path: Optional[str] = None,
    rank_id: int = 0,
    rank_size: int = 1,
    stop_at_step: Optional[int] = None,
    progress: Union[bool, str] = False,
) -> Tuple[RewardModel, FitResult]:
    """Train a reward model on a preference MindRecord (``train_path`` or ``train_dataset.data_loader.dataset_dir``);
    ``progress`` shows a progress bar (see :class:`Trainer`)."""
    from mindrlhf.data.datasets import PREFERENCE_COLUMNS, check_preference_ends, reward_model_dataset

    batch_size, steps, source = mindrecord_source(
        cfg, train_path, reward_model_dataset, PREFERENCE_COLUMNS, rank_id, rank_size
    )
    path = train_path or cfg.train_dataset.data_loader.dataset_dir
    check_preference_ends(path, cfg.model.model_config.eos_token_id)
    model = RewardModel(cfg.model.model_config, recompute=cfg.recompute_config.recompute)
    init_weights(model, cfg, rank_id)
    prepare_lora(model, cfg.lora, heads=("score",))
    trainer = Trainer(
        cfg, RewardLoss(model, cfg.reward.loss_type), TRAIN_COLUMNS, source, steps, rank_id, rank_size, progress
    )
    logger.info(
        "reward model training: %d epochs x %d steps, batch %d pairs per device, loss %s",
        cfg.runner_config.epochs,
        steps,
        batch_size,
        cfg.reward.loss_type,
    )
    return model, trainer.fit(stop_at_step)


@dataclass
class EvalResult:
    """Pairwise accuracy of one checkpoint."""

    checkpoint: str
    accuracy: float  # correct pairs / all pairs
    pairs: int


def eval_checkpoints(distributed_ckpt_path: str, load_all: bool, rank_id: int = 0) -> List[str]:
    """The checkpoints to evaluate: a .ckpt file, or the newest (or every) file under ``<path>/rank_<id>``."""
    if os.path.isfile(distributed_ckpt_path) or is_hf_folder(distributed_ckpt_path):
        return [distributed_ckpt_path]
    folder = rank_dir(distributed_ckpt_path, rank_id)
    if not os.path.isdir(folder):
        folder = distributed_ckpt_path
    files = list_checkpoints(folder) if load_all else [latest_checkpoint(folder)]
    files = [f for f in files if f]
    if not files:
        raise CheckpointError(f"{distributed_ckpt_path}: no .ckpt files (looked in {folder})")
    return files


def evaluate_reward_model(
    cfg: RunConfig, checkpoint: str, eval_path: Optional[str] = None, log_batches: bool = True
) -> EvalResult:
    """Accuracy = share of pairs whose chosen score (at its own last token) beats the rejected one, over all pairs.

    Logs ``acc: [batch]; avg acc: [running]`` per batch and ``<checkpoint> acc: [total]`` at the end.
    """
    from mindrlhf.data.datasets import check_preference_ends, reward_model_dataset

    data = cfg.eval_dataset
    path = eval_path or data.data_loader.dataset_dir
    if not path:
        raise ValueError("no evaluation data: set eval_dataset.data_loader.dataset_dir")
    check_preference_ends(path, cfg.model.model_config.eos_token_id)
    model = RewardModel(cfg.model.model_config)
    if is_hf_folder(checkpoint):
        load_weights(model, checkpoint, model.config)
    else:
        load_ckpt(model, checkpoint)
    model.set_train(False)
    scorer = EndScores(model)
    batch_size = data.batch_size or cfg.runner_config.batch_size
    dataset = reward_model_dataset(
        path, batch_size, shuffle=False, drop_remainder=data.drop_remainder, num_samples=data.data_loader.num_samples
    )
    correct, pairs = 0, 0
    for batch in dataset.create_dict_iterator(num_epochs=1, output_numpy=True):
        scores = scorer(Tensor(batch["input_ids"]), Tensor(batch["attention_mask"]), Tensor(batch["end_ind"]))
        scores = scores.asnumpy()
        half = len(scores) // 2
        hits = int(np.sum(scores[:half] > scores[half:]))
        correct, pairs = correct + hits, pairs + half
        if log_batches:
            logger.info("acc: [%s]; avg acc: [%s]", hits / half, correct / pairs)
    if pairs == 0:
        raise ValueError(f"{path}: no evaluation pairs")
    logger.info("%s acc: [%s]", checkpoint, correct / pairs)
    return EvalResult(checkpoint, correct / pairs, pairs)


def score_texts(model: RewardModel, token_rows: List[List[int]], seq_length: int, pad_id: int) -> np.ndarray:
    """Reward of each token list, scored at its own last token (the eos, for rows encoded with
    :func:`mindrlhf.data.contract.encode_for_reward`); rows are right-padded to ``seq_length`` so every call has one
    shape (graph mode compiles once). Returns ``(N,)`` float32."""
    scorer = EndScores(model)
    scores = []
    for row in token_rows:
        row = list(row)[:seq_length]
        ids = np.full((1, seq_length), pad_id, np.int32)
        mask = np.zeros((1, seq_length), np.int32)
        ids[0, : len(row)], mask[0, : len(row)] = row, 1
        out = scorer(Tensor(ids), Tensor(mask), Tensor(np.array([len(row)], np.int32)))
        scores.append(float(out.asnumpy()[0]))
    return np.asarray(scores, np.float32)
