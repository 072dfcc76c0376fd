"""One msrun worker of tests/test_ppo_data_parallel.py: join the group, then run the tiny PPO of
:func:`dp_config` in graph mode with the analytic reward of tests/test_ppo.py.

Usage (under msrun): ``python tests/ppo_dp_worker.py PROMPTS OUTPUT_DIR``.
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.test_ppo import run_config, target_reward  # noqa: E402


def dp_config(out: str):
    """3 iterations of 4 rollouts per rank, one minibatch of all 4 per iteration, with every statistic that spans
    the ranks switched on: the adaptive KL controller (horizon 8: with the 8 rollouts of both ranks it moves the
    coefficient by up to 20% per iteration), advantage whitening, running reward scaling, and the missing-eos
    penalty. The eos id 2 lies in the 64-token vocabulary, so some responses end before ``max_new_tokens`` and the
    ranks' minibatches hold different numbers of generated tokens. Adam eps 1e-6 (see tests/test_data_parallel.py)."""
    return run_config(
        out,
        epochs=3,
        num_rollouts=4,
        chunk_size=4,
        batch_size=4,
        ppo_epochs=1,
        whiten_advantages=True,
        reward_scaling="running",
        adaptive_kl=True,
        target=1.0,
        horizon=8,
        missing_eos_penalty=0.5,
        eps=1e-6,
    )


def main(prompts: str, out: str) -> None:
    import mindspore as ms

    from mindrlhf.context import init_distributed
    from mindrlhf.train.ppo import train_ppo

    logging.basicConfig(level=logging.INFO, format="%(name)s %(levelname)s %(message)s")
    ms.set_context(mode=ms.GRAPH_MODE, device_target="CPU")
    rank_id, rank_size = init_distributed()
    assert rank_size == 2, rank_size
    trainer = train_ppo(dp_config(out), prompts, target_reward, rank_id=rank_id, rank_size=rank_size)
    print(f"worker {rank_id} done at iteration {trainer.state.iteration}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
