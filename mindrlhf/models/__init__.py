"""Model cells: backbones (registered by family), heads, policy, reward/critic, generation, HF conversion."""
from mindrlhf.models.registry import build_backbone, list_backbones, register_backbone
from mindrlhf.models import gpt2, llama  # noqa: F401  (fill the registry)
from mindrlhf.models.policy import CausalLM, TokenLogProbs, token_logprobs
from mindrlhf.models.reward import Critic, RewardModel
from mindrlhf.models.convert import load_weights

__all__ = ["CausalLM", "Critic", "RewardModel", "TokenLogProbs", "build_backbone", "list_backbones",
           "load_weights", "register_backbone", "token_logprobs"]
