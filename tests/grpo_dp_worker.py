"""One msrun worker of tests/test_grpo.py's data-parallel test: join the group, then run the tiny GRPO of
:func:`dp_config` in graph mode with the dense toy reward of tests/test_grpo.py.

Usage (under msrun): ``python tests/grpo_dp_worker.py PROMPTS OUTPUT_DIR``.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.test_grpo import low_share, run_config  # noqa: E402


def dp_config(out: str):
    """2 iterations of 2 prompts x 4 completions per rank, one minibatch of all 8 rollouts per iteration, with the
    statistics that span the ranks: REINFORCE++'s advantage scale (the std over every rank's rollouts) and the
    token-level loss's normaliser (the global token count). The eos id 2 lies in the 64-token vocabulary, so some
    responses end before ``max_new_tokens`` and the ranks' minibatches hold different numbers of generated
    tokens. Adam eps 1e-6 (see tests/test_data_parallel.py). The policy's LM head is untied, so its 64-row token
    table's gradient is reduced in the backward pass (``parallel_config.embedding_grad_rows``; with more tokens per
    batch than table rows, as one all-reduce there) and the gradient all-reduce skips it."""
    cfg = run_config(
        out,
        epochs=2,
        num_prompts=2,
        num_generations=4,
        batch_size=8,
        num_iterations=1,
        loss_type="token",
        advantage_estimator="reinforce_baseline",
        beta=0.04,
        eps=1e-6,
    )
    cfg.model.model_config.tie_word_embeddings = False
    return cfg


def main(prompts: str, out: str) -> None:
    import mindspore as ms

    from mindrlhf.context import init_distributed
    from mindrlhf.train.grpo import train_grpo

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    rank_id, rank_size = init_distributed()
    assert rank_size == 2, rank_size
    trainer = train_grpo(dp_config(out), prompts, low_share, rank_id=rank_id, rank_size=rank_size)
    print(f"worker {rank_id} done at iteration {trainer.state.iteration}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
