"""Qwen2 / Qwen2.5 backbone: the Llama layout (RMSNorm, rotary positions, SwiGLU MLP, grouped-query attention) with
biases on the q/k/v projections, a large ``rope_theta`` and, for the small sizes, tied embeddings (Hugging Face
``Qwen2Model``)."""

from __future__ import annotations

from mindrlhf.config import ModelConfig
from mindrlhf.models.llama import LlamaModel, rotary_config_from_hf, rotary_config_to_hf
from mindrlhf.models.registry import CheckpointError, HFLayout, ModelFamily, register_family

QWEN2_EOS = 151643  # <|endoftext|>: Qwen2's bos, eos and pad when config.json does not say


class Qwen2Model(LlamaModel):
    """Qwen2 transformer without the LM head: :class:`LlamaModel` with ``q_proj``/``k_proj``/``v_proj`` biases."""

    qkv_bias = True


def qwen2_config_from_hf(hf: dict, source: str) -> ModelConfig:
    """``Qwen2Config`` fields -> :class:`ModelConfig`; sliding-window attention is refused (the released Qwen2 and
    Qwen2.5 checkpoints attend over the full context)."""
    if hf.get("use_sliding_window"):
        raise CheckpointError(f"{source}: field 'use_sliding_window' true is not supported (full attention only)")
    return rotary_config_from_hf(hf, source, "qwen2", (None, QWEN2_EOS, None))


def qwen2_config_to_hf(cfg: ModelConfig) -> dict:
    """:class:`ModelConfig` -> ``Qwen2Config`` fields."""
    return {**rotary_config_to_hf(cfg), "use_sliding_window": False}


QWEN2 = register_family(
    ModelFamily(
        name="qwen2",
        backbone=Qwen2Model,
        hf=HFLayout(
            "qwen2",
            "model.",
            "embed_tokens.weight",
            "Qwen2ForCausalLM",
            "Qwen2ForSequenceClassification",
            ignored=(".rotary_emb.inv_freq",),
        ),
        config_from_hf=qwen2_config_from_hf,
        config_to_hf=qwen2_config_to_hf,
        tied_default=False,
        tokenizer=None,
        add_bos=False,
        chat_template="chatml",
    )
)
