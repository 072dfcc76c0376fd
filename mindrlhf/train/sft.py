"""Stage 1: supervised fine-tuning of a causal LM on SFT MindRecords (prompt + response, loss on the response).

Batches come from :func:`mindrlhf.data.datasets.sft_dataset`: ``input_ids``, ``attention_mask`` and ``loss_mask``,
each ``(B, S) int32``, right-padded; ``loss_mask`` is 1 on the response tokens and their eos.
"""

from __future__ import annotations

import logging
from typing import Optional, Tuple, Union

import mindspore as ms
from mindspore import nn, ops

from mindrlhf.config import RunConfig
from mindrlhf.data.datasets import SFT_COLUMNS, sft_dataset
from mindrlhf.losses import causal_lm_loss
from mindrlhf.models.convert import load_weights
from mindrlhf.models.lora import prepare_lora
from mindrlhf.models.policy import CausalLM
from mindrlhf.train.checkpoint import initial_weights
from mindrlhf.train.trainer import FitResult, Trainer, mindrecord_source

logger = logging.getLogger(__name__)


class SFTLoss(nn.Cell):
    """``(input_ids (B,S), attention_mask (B,S), loss_mask (B,S)) -> loss``: next-token cross-entropy.

    The logits of positions ``0..S-2`` are scored against ``input_ids[:, 1:]`` and weighted by ``loss_mask[:, 1:]``
    (:func:`causal_lm_loss`), so only response tokens (and their eos) count. A batch without one such token has no
    loss (NaN, not 0): the train step skips it rather than take an optimizer step on nothing. ``auto_prefix=False``
    keeps the parameter names of the wrapped model (``backbone.*``, ``lm_head.*``).
    """

    def __init__(self, model: CausalLM):
        super().__init__(auto_prefix=False)
        self.model = model

    def construct(self, input_ids, attention_mask, loss_mask):
        hidden = self.model.backbone(input_ids, attention_mask)
        logits = self.model.logits(hidden[:, :-1])
        loss = causal_lm_loss(logits, input_ids[:, 1:], loss_mask[:, 1:])
        return ops.select(
            ops.reduce_sum(ops.cast(loss_mask[:, 1:], ms.float32)) > 0,
            loss,
            ops.fill(loss.dtype, loss.shape, float("nan")),
        )


def init_weights(model: CausalLM, cfg: RunConfig, rank_id: int) -> None:
    """Start from ``load_checkpoint`` when it names weights (a .ckpt or Hugging Face folder, e.g. a pretrained
    model); a checkpoint root with ``rank_<id>`` is a resume and is handled by the trainer (with LoRA, the base its
    checkpoint records is loaded here)."""
    path = initial_weights(model, cfg.load_checkpoint, rank_id)
    if path:
        load_weights(model, path, model.config)
        logger.info("SFT model initialised from %s", path)


def train_sft(
    cfg: RunConfig,
    train_path: Optional[str] = None,
    rank_id: int = 0,
    rank_size: int = 1,
    stop_at_step: Optional[int] = None,
    progress: Union[bool, str] = False,
) -> Tuple[CausalLM, FitResult]:
    """Fine-tune a causal LM on an SFT MindRecord (``train_path`` or ``train_dataset.data_loader.dataset_dir``).

    Args:
        cfg: the run config (model, optimizer, schedule, epochs, batch size, checkpoints, ``load_checkpoint``).
        train_path: the ``.mindrecord`` written by :mod:`mindrlhf.data.convert_sft`; overrides the config.
        rank_id, rank_size: this process in a data-parallel group.
        stop_at_step: stop (and save) once the global step reaches it.
        progress: a progress bar over the steps (see :class:`Trainer`).
    Returns:
        ``(model, fit result)``.
    """
    batch_size, steps, source = mindrecord_source(cfg, train_path, sft_dataset, SFT_COLUMNS, rank_id, rank_size)
    model = CausalLM(cfg.model.model_config, recompute=cfg.recompute_config.recompute)
    init_weights(model, cfg, rank_id)
    prepare_lora(model, cfg.lora)
    trainer = Trainer(cfg, SFTLoss(model), SFT_COLUMNS, source, steps, rank_id, rank_size, progress)
    logger.info(
        "SFT training: %d epochs x %d steps, batch %d sequences per device", cfg.runner_config.epochs, steps, batch_size
    )
    return model, trainer.fit(stop_at_step)
