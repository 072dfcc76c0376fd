"""One msrun worker of tests/test_data_parallel.py's shape-change test, and the batches and train step both sides
build: a tiny reward model takes train steps on batches of two sequence lengths, so the data-parallel train step
compiles its graph twice; each compile must keep the token table's row-gathered gradient reduction."""

from __future__ import annotations

import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

PAIRS = 2  # per rank and step
VOCAB = 1000  # 2 ranks x 2 pairs x 2 rows x 16 tokens = 128 looked-up rows < 1000: the gathered branch
LENGTHS = (16, 16, 8, 8)  # one sequence length per step: the step recompiles at the third
LR = 1.0


def batch(rank: int, step: int) -> tuple:
    """``(input_ids (2P, S), attention_mask, loss_mask (P, S), end_ind (2P,))`` of ``rank`` at ``step``: chosen
    rows first, then the rejected ones; every row full length."""
    rng = np.random.default_rng(100 * step + rank)
    length = LENGTHS[step]
    ids = rng.integers(3, VOCAB, (2 * PAIRS, length)).astype(np.int32)
    mask = np.ones_like(ids)
    loss_mask = np.ones((PAIRS, length), np.float32)
    return ids, mask, loss_mask, np.full(2 * PAIRS, length, np.int32)


def global_batch(step: int) -> tuple:
    """Both ranks' pairs as one batch, chosen rows (rank 0's, then rank 1's) before the rejected ones."""
    parts = [batch(rank, step) for rank in range(2)]
    rows = [np.concatenate([p[i][:PAIRS] for p in parts] + [p[i][PAIRS:] for p in parts]) for i in (0, 1, 3)]
    return rows[0], rows[1], np.concatenate([p[2] for p in parts]), rows[2]


def train_step():
    """``(TrainStep, reward model)``: a 2-layer GPT-2 reward model (untied token table), end loss, seeded initial
    weights, AdamW with ``eps`` 1: with gradients far below 1 its update is nearly linear in them (momentum SGD),
    so a wrongly scaled table gradient shows, where Adam's usual update is almost scale-free and would hide one."""
    import mindspore as ms

    from mindrlhf.config import LossScaleConfig, LrScheduleConfig, OptimizerConfig
    from mindrlhf.models import RewardModel
    from mindrlhf.train.optim import build_optimizer
    from mindrlhf.train.reward import RewardLoss
    from mindrlhf.train.step import TrainStep
    from tests.helpers import tiny_gpt2_config

    ms.set_seed(0)
    model = RewardModel(tiny_gpt2_config(vocab_size=VOCAB, seq_length=16))
    loss_net = RewardLoss(model, "end")
    optimizer = build_optimizer(
        loss_net.trainable_params(),
        OptimizerConfig(learning_rate=LR, eps=1.0, weight_decay=0.0),
        LrScheduleConfig(type="constant", learning_rate=LR, warmup_ratio=0.0),
        len(LENGTHS),
    )
    step = TrainStep(loss_net, optimizer, LossScaleConfig(loss_scale_value=1.0, use_clip_grad=False))
    step.set_train(True)
    return step, model


def main(out: str) -> None:
    import mindspore as ms
    from mindspore import Tensor

    from mindrlhf.context import init_distributed
    from mindrlhf.train.step import untied_token_embeddings

    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    rank_id, rank_size = init_distributed()
    assert rank_size == 2, rank_size
    step, model = train_step()
    assert [e.weight.name for e in untied_token_embeddings(model)] == ["backbone.wte.weight"]
    for i in range(len(LENGTHS)):
        step(*(Tensor(a) for a in batch(rank_id, i)))[0].asnumpy()
    np.savez(os.path.join(out, f"rank_{rank_id}.npz"), **{p.name: p.asnumpy() for p in model.get_parameters()})
    print(f"worker {rank_id} done", flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
