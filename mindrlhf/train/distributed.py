"""Sums of host-side (numpy) statistics over the data-parallel ranks.

PPO computes its experience statistics on the host: the mean KL the adaptive controller reads, the score moments
of reward scaling, the advantage whitening moments and the token count that normalises each minibatch's loss.
With data parallelism they must describe the rollouts of every rank, as one process on the global batch would
see them. :class:`AllReduceSum` is the one communication call they need: each rank passes its local sums, every
rank gets the same totals back. It is the identity on one process.

MindSpore's ``AllReduce`` has no float64, and float32 totals would make the statistics differ from the float64
numpy ones of a single process by float32 rounding. So each rank's float64 values travel bit for bit, viewed as
int32 pairs, through one ``AllGather``, and every rank adds the ``rank_size`` rows in rank order: an exact float64
all-reduce (sum) whose result is the same on every rank.
"""

from __future__ import annotations

import numpy as np


class AllReduceSum:
    """``values (any shape) -> (same shape)`` float64 sums over the ranks of the world group: a ``reduce`` for
    the statistics of :mod:`mindrlhf.rl`.

    Args:
        rank_size: the number of data-parallel ranks; 1 = identity (the communication group is never touched).
    """

    def __init__(self, rank_size: int = 1):
        self.rank_size = int(rank_size)
        self._gather = None

    def __call__(self, values) -> np.ndarray:
        values = np.array(values, np.float64)
        if self.rank_size == 1 or values.size == 0:
            return values
        from mindspore import Tensor, ops

        if self._gather is None:
            self._gather = ops.AllGather()
        bits = np.ascontiguousarray(values.reshape(-1)).view(np.int32)  # (2K,) int32: the float64 bits
        gathered = np.ascontiguousarray(self._gather(Tensor(bits)).asnumpy())  # (rank_size * 2K,)
        rows = gathered.view(np.float64).reshape(self.rank_size, -1)  # (rank_size, K), row r = rank r's values
        total = rows[0].copy()
        for row in rows[1:]:  # rank order, the same additions on every rank
            total += row
        return total.reshape(values.shape)
