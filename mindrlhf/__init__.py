"""mindrlhf: MindSpore-native RLHF (SFT, reward model, PPO) for GPT-2 and Llama-2."""

import os

__version__ = "0.1.0"

# MindSpore's graph-kernel CPU kernels (``context.enable_graph_kernel``) run on OpenMP, whose default active wait
# keeps its threads spinning after each fused kernel and takes the cores from the MatMul that follows (a reward-model
# step ran 0.94 s instead of 0.60 s on 2 cores). libgomp reads this once, when ``import mindspore`` loads it, so it is
# set here, before any module of the package imports MindSpore; a value the user exported is kept.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
