"""Model cells: backbones (registered by family), heads, policy, reward/critic, generation, HF conversion."""

from mindrlhf.models.registry import build_backbone, family, list_backbones, register_family
from mindrlhf.models import bloom, gpt2, gptj, llama, qwen2  # noqa: F401  (fill the registry)
from mindrlhf.models.policy import CausalLM, TokenLogProbs, token_logprobs
from mindrlhf.models.reward import Critic, RewardModel
from mindrlhf.models.convert import load_weights

__all__ = [
    "CausalLM",
    "Critic",
    "RewardModel",
    "TokenLogProbs",
    "build_backbone",
    "list_backbones",
    "family",
    "load_weights",
    "register_family",
    "token_logprobs",
]
