"""mindrlhf: MindSpore-native RLHF (SFT, reward model, PPO) for GPT-2 and Llama-2."""

__version__ = "0.1.0"
