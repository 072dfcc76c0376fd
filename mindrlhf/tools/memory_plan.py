"""Memory planner: how much device memory a recipe needs per device, full training and LoRA, before it runs.

    mindrlhf plan-memory --config model_configs/llama2_config/run_llama2_7b_ppo.yaml --stage ppo \
        --devices 8 --device_memory 32GB

For the stage a recipe configures (SFT, reward model, PPO, GRPO, DPO), each model the stage holds (policy,
reference, critic, reward) is costed as

- weights: ``P * bytes(param_init_type)``, ``P`` from :func:`parameter_shapes` (the exact Parameters the cells make);
- gradients: ``P_train * bytes(param_init_type)`` (every data-parallel rank holds the full reduced gradient);
- optimizer states: AdamW's two fp32 moments, ``8 * P_train`` bytes, divided by the data-parallel degree when
  ``parallel_config.optimizer_shard`` is on;
- activations kept for the backward pass, without and with per-block recomputation (:func:`activation_bytes`);
- the KV cache of rollouts (:func:`kv_cache_bytes`), for the policy of PPO and GRPO.

With LoRA only the adapters and the stage's head are trainable, and the reference is the policy with its adapters
off (no second copy of the base). The model cells carry no tensor or pipeline sharding strategies, so every device
holds whole models and the devices split the batch (data parallel).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence, Tuple

from mindrlhf.config import ConfigError, LoRAConfig, ModelConfig, RunConfig, load_config, read_yaml_with_bases

DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}
ADAM_STATE_BYTES = 8  # AdamW: first and second moment in float32 for every trainable parameter
STAGES = ("sft", "rm", "ppo", "grpo", "dpo")
# a LoRA column for recipes without a lora section: rank 16 on the attention input projections
DEFAULT_LORA_TARGETS = {
    "gpt2": ["c_attn"],
    "llama": ["q_proj", "v_proj"],
    "qwen2": ["q_proj", "v_proj"],
    "gptj": ["q_proj", "v_proj"],
    "bloom": ["query_key_value"],
}
DEFAULT_LORA_RANK = 16
GIB = 1 << 30
_UNITS = {
    "": GIB,
    "b": 1,
    "kb": 1 << 10,
    "kib": 1 << 10,
    "mb": 1 << 20,
    "mib": 1 << 20,
    "gb": GIB,
    "gib": GIB,
    "tb": 1 << 40,
    "tib": 1 << 40,
}

Shapes = List[Tuple[str, Tuple[int, ...]]]


# ---------------------------------------------------------------------------------------------------------------
# parameters


def mlp_width(cfg: ModelConfig) -> int:
    """MLP width ``I``: ``intermediate_size`` if set; Llama/Qwen2: ``2/3 * 4H`` rounded up to ``multiple_of``;
    the others: ``expand_ratio * H``."""
    if cfg.intermediate_size:
        return cfg.intermediate_size
    if cfg.type in ("llama", "qwen2"):
        width = int(2 * 4 * cfg.hidden_size / 3)
        return cfg.multiple_of * ((width + cfg.multiple_of - 1) // cfg.multiple_of)
    return cfg.expand_ratio * cfg.hidden_size


def _dense(name: str, n_in: int, n_out: int, bias: bool) -> Shapes:
    """A dense layer's Parameters: ``weight (out, in)`` [+ ``bias (out,)``]."""
    return [(f"{name}.weight", (n_out, n_in))] + ([(f"{name}.bias", (n_out,))] if bias else [])


def _norm(name: str, h: int, bias: bool) -> Shapes:
    return [(f"{name}.weight", (h,))] + ([(f"{name}.bias", (h,))] if bias else [])


def _block_shapes(cfg: ModelConfig, p: str) -> Shapes:
    """One transformer block's Parameters under prefix ``p`` (Hugging Face names, as the cells use)."""
    h, kv, width = cfg.hidden_size, cfg.num_kv_heads * cfg.head_dim, mlp_width(cfg)
    if cfg.type == "gpt2":
        return (
            _norm(f"{p}.ln_1", h, True)
            + _dense(f"{p}.attn.c_attn", h, 3 * h, True)
            + _dense(f"{p}.attn.c_proj", h, h, True)
            + _norm(f"{p}.ln_2", h, True)
            + _dense(f"{p}.mlp.c_fc", h, width, True)
            + _dense(f"{p}.mlp.c_proj", width, h, True)
        )
    if cfg.type in ("llama", "qwen2"):
        qkv_bias = cfg.type == "qwen2"
        return (
            _norm(f"{p}.input_layernorm", h, False)
            + _dense(f"{p}.self_attn.q_proj", h, h, qkv_bias)
            + _dense(f"{p}.self_attn.k_proj", h, kv, qkv_bias)
            + _dense(f"{p}.self_attn.v_proj", h, kv, qkv_bias)
            + _dense(f"{p}.self_attn.o_proj", h, h, False)
            + _norm(f"{p}.post_attention_layernorm", h, False)
            + _dense(f"{p}.mlp.gate_proj", h, width, False)
            + _dense(f"{p}.mlp.up_proj", h, width, False)
            + _dense(f"{p}.mlp.down_proj", width, h, False)
        )
    if cfg.type == "gptj":
        attn = [s for n in ("q_proj", "k_proj", "v_proj", "out_proj") for s in _dense(f"{p}.attn.{n}", h, h, False)]
        return (
            _norm(f"{p}.ln_1", h, True)
            + attn
            + _dense(f"{p}.mlp.fc_in", h, width, True)
            + _dense(f"{p}.mlp.fc_out", width, h, True)
        )
    if cfg.type == "bloom":
        return (
            _norm(f"{p}.input_layernorm", h, True)
            + _dense(f"{p}.self_attention.query_key_value", h, 3 * h, True)
            + _dense(f"{p}.self_attention.dense", h, h, True)
            + _norm(f"{p}.post_attention_layernorm", h, True)
            + _dense(f"{p}.mlp.dense_h_to_4h", h, width, True)
            + _dense(f"{p}.mlp.dense_4h_to_h", width, h, True)
        )
    raise ConfigError(f"model_config.type {cfg.type!r}: the memory planner knows gpt2, llama, qwen2, gptj, bloom")


def backbone_shapes(cfg: ModelConfig) -> Shapes:
    """Every Parameter of the backbone: token table ``(V, H)`` (GPT-2 also positions ``(S, H)``), ``L`` blocks, the
    final norm (BLOOM also a norm after the embedding)."""
    h = cfg.hidden_size
    if cfg.type == "gpt2":
        head = [("backbone.wte.weight", (cfg.vocab_size, h)), ("backbone.wpe.weight", (cfg.seq_length, h))]
        blocks, final = "backbone.h", _norm("backbone.ln_f", h, True)
    elif cfg.type in ("llama", "qwen2"):
        head = [("backbone.embed_tokens.weight", (cfg.vocab_size, h))]
        blocks, final = "backbone.layers", _norm("backbone.norm", h, False)
    elif cfg.type == "gptj":
        head = [("backbone.wte.weight", (cfg.vocab_size, h))]
        blocks, final = "backbone.h", _norm("backbone.ln_f", h, True)
    else:
        head = [("backbone.word_embeddings.weight", (cfg.vocab_size, h))] + _norm(
            "backbone.word_embeddings_layernorm", h, True
        )
        blocks, final = "backbone.h", _norm("backbone.ln_f", h, True)
    layers = [s for i in range(cfg.num_layers) for s in _block_shapes(cfg, f"{blocks}.{i}")]
    return head + layers + final


def parameter_shapes(cfg: ModelConfig, kind: str) -> Shapes:
    """Every Parameter of one model as ``(name, shape)``, named as the MindSpore cells name them.

    Args:
        cfg: the backbone's config.
        kind: ``lm`` (causal LM: backbone + LM head ``(V, H)`` unless tied, GPT-J with a bias ``(V,)``),
            ``lm_value`` (the same + value head ``v_head`` ``(1, H)`` + bias ``(1,)``: PPO's shared critic) or
            ``scalar`` (reward model / critic: backbone + ``score`` ``(1, H)``, no bias).
    """
    shapes = backbone_shapes(cfg)
    if kind == "scalar":
        return shapes + [("score.weight", (1, cfg.hidden_size))]
    tied = {"gpt2": True, "qwen2": True, "bloom": True}.get(cfg.type, False)
    if cfg.tie_word_embeddings is not None:
        tied = cfg.tie_word_embeddings
    if not tied:
        shapes = shapes + _dense("lm_head", cfg.hidden_size, cfg.vocab_size, cfg.type == "gptj")
    if kind == "lm_value":
        shapes = shapes + _dense("v_head", cfg.hidden_size, 1, True)
    return shapes


def numel(shape: Sequence[int]) -> int:
    """Elements of a tensor of ``shape``."""
    out = 1
    for dim in shape:
        out *= dim
    return out


def _matches(name: str, patterns: Sequence[str]) -> bool:
    """PEFT's target rule (as :func:`mindrlhf.models.lora.matches`): equal, a dotted suffix, or a full regex."""
    return any(name == p or name.endswith("." + p) or re.fullmatch(p, name) for p in patterns)


def lora_shapes(shapes: Shapes, lora: LoRAConfig) -> Shapes:
    """The adapters LoRA adds to the dense layers ``lora.target_modules`` names (layers inside ``backbone``):
    ``lora_A (r, in)`` and ``lora_B (out, r)`` per layer, plus the frozen scalar ``lora_scale``.

    Raises:
        ConfigError: a pattern that matches no dense layer, or ``r`` larger than ``min(in, out)`` of a layer.
    """
    dense = {
        n[: -len(".weight")]: s
        for n, s in shapes
        if n.endswith(".weight")
        and len(s) == 2
        and n.startswith("backbone.")
        and ".wte" not in n
        and ".wpe" not in n
        and "embed" not in n
    }
    for pattern in lora.target_modules:
        if not any(_matches(name, [pattern]) for name in dense):
            kinds = sorted({re.sub(r"\.\d+\.", ".<i>.", n) for n in dense})
            raise ConfigError(
                f"lora.target_modules: {pattern!r} matches no dense layer; the model has: {', '.join(kinds)}"
            )
    out: Shapes = []
    for name, (n_out, n_in) in dense.items():
        if _matches(name, lora.target_modules):
            if lora.r > min(n_in, n_out):
                raise ConfigError(f"lora.r: rank {lora.r} is larger than layer {name!r} ({n_in} -> {n_out}) allows")
            out += [(f"{name}.lora_A", (lora.r, n_in)), (f"{name}.lora_B", (n_out, lora.r)), (f"{name}.lora_scale", ())]
    return out


def trainable_count(shapes: Shapes, adapters: Shapes, trainable: Sequence[str]) -> int:
    """Trainable elements under LoRA: the adapters' ``lora_A``/``lora_B`` plus the Parameters ``trainable`` names
    (a name, a name prefix, or a full regex; the stage's heads are in it)."""
    count = sum(numel(s) for n, s in adapters if not n.endswith("lora_scale"))
    return count + sum(
        numel(s) for n, s in shapes if any(n == p or n.startswith(p + ".") or re.fullmatch(p, n) for p in trainable)
    )


# ---------------------------------------------------------------------------------------------------------------
# activations and caches


def layer_activation_elements(cfg: ModelConfig, batch: int, seq: int) -> int:
    """Elements one block keeps for its backward pass (dropout off), after Korthikanti et al. 2022 (their
    ``34 s b h + 5 a s^2 b`` bytes at fp16 with dropout masks):

    ``s b (6 H + 2 KV + m I) + a s^2 b``: the two norm inputs and outputs, Q, output-projection input (``H`` each),
    K and V (``KV`` = kv heads * head_dim each), the MLP's inner tensors (``m`` = 2 for GELU: fc input and output;
    4 for SwiGLU: gate, up, activation, product) and the softmax probabilities of the ``a`` heads.
    """
    kv = cfg.num_kv_heads * cfg.head_dim
    inner = 4 if cfg.type in ("llama", "qwen2") else 2  # the gated MLP of the Llama layout
    sb = seq * batch
    return sb * (6 * cfg.hidden_size + 2 * kv + inner * mlp_width(cfg)) + cfg.num_heads * seq * seq * batch


def activation_bytes(
    cfg: ModelConfig,
    batch: int,
    seq: int,
    recompute: bool,
    with_logits: bool = True,
    lora_rank: int = 0,
    adapted_per_layer: int = 0,
) -> int:
    """Activation bytes of one training forward pass kept for the backward pass.

    Without recomputation: ``L * layer * d``; with per-block recomputation each block keeps only its input
    ``s b H * d`` and one block's activations are rebuilt at a time: ``(L s b H + layer) * d``, ``d`` =
    bytes(compute_dtype). LoRA adds ``2 s b r`` per adapted layer (the adapter input and its rank-``r``
    projection). A causal LM adds its float32 logits and log-softmax: ``2 * s b V * 4``.

    Args:
        cfg: the backbone's config; batch: sequences per step on one device; seq: tokens per sequence.
        recompute: per-block recomputation; with_logits: the model has an LM head (not a scalar model).
        lora_rank, adapted_per_layer: LoRA rank and the adapted dense layers per block (0: no adapters).
    """
    d = DTYPE_BYTES[cfg.compute_dtype]
    layer = layer_activation_elements(cfg, batch, seq) + adapted_per_layer * 2 * seq * batch * lora_rank
    if recompute:
        kept = cfg.num_layers * seq * batch * cfg.hidden_size + layer
    else:
        kept = cfg.num_layers * layer
    logits = 2 * seq * batch * cfg.vocab_size * 4 if with_logits else 0
    return kept * d + logits


def kv_cache_bytes(cfg: ModelConfig, batch: int, length: int) -> int:
    """KV cache of decoding ``batch`` sequences of up to ``length`` tokens: ``2 L * batch * kv_heads * length *
    head_dim * d`` (``d`` = 2 for float16 compute, else 4, as :class:`mindrlhf.models.generation.Generator`)."""
    d = 2 if cfg.compute_dtype == "float16" else 4
    return 2 * cfg.num_layers * batch * cfg.num_kv_heads * length * cfg.head_dim * d


# ---------------------------------------------------------------------------------------------------------------
# models of a stage


@dataclass
class ModelMemory:
    """Bytes one device holds for one model of a stage."""

    role: str  # policy | reference | critic | reward
    params: int  # Parameters held (elements); 0 for a reference that shares the policy's base
    trainable: int  # elements the optimizer updates
    weights: int  # params * bytes(param_init_type)
    gradients: int  # trainable * bytes(param_init_type)
    optimizer: int  # AdamW moments: 8 * trainable (/ data parallel with optimizer_shard)
    activations: int  # kept for the backward pass, no recomputation
    activations_recompute: int  # kept for the backward pass, per-block recomputation
    kv_cache: int  # rollout KV cache (policy of PPO and GRPO)

    def total(self, recompute: bool) -> int:
        """All of the above, with the activations of the given recompute setting."""
        act = self.activations_recompute if recompute else self.activations
        return self.weights + self.gradients + self.optimizer + act + self.kv_cache


@dataclass
class Layout:
    """How a stage's models sit on the devices."""

    data_parallel: int  # devices splitting the batch
    optimizer_shard: bool  # optimizer states split across the data-parallel devices


@dataclass
class ModelSpec:
    """One model of a stage: what it is and how it is used."""

    role: str  # policy | reference | critic | reward
    cfg: ModelConfig
    kind: str  # lm | lm_value | scalar (see parameter_shapes)
    train_batch: int = 0  # sequences per training step on one device; 0 = frozen (forward only)
    heads: Tuple[str, ...] = ()  # Parameters trained in full under LoRA (the stage's head)
    shares_base: bool = False  # LoRA reference: the policy with adapters off, no weights of its own
    kv_batch: int = 0  # sequences decoded together (KV cache); 0 = no generation


def model_memory(spec: ModelSpec, lora: Optional[LoRAConfig], layout: Layout) -> ModelMemory:
    """Cost one model (see the module docstring for each formula); ``lora`` None = full training."""
    cfg = spec.cfg
    shapes = parameter_shapes(cfg, spec.kind)
    adapters = lora_shapes(shapes, lora) if lora is not None and (spec.train_batch or spec.role == "policy") else []
    params = sum(numel(s) for _, s in shapes + adapters)
    if not spec.train_batch:
        trainable = 0
    elif lora is None:
        trainable = params
    else:
        trainable = trainable_count(shapes, adapters, [*spec.heads, *lora.trainable])
    if spec.shares_base and lora is not None:
        params = 0
    p_bytes = DTYPE_BYTES[cfg.param_init_type]
    optimizer = ADAM_STATE_BYTES * trainable
    if layout.optimizer_shard:
        optimizer = -(-optimizer // layout.data_parallel)
    adapted = len(adapters) // 3 // cfg.num_layers if adapters else 0
    rank = lora.r if adapters else 0
    act = {
        flag: activation_bytes(cfg, spec.train_batch, cfg.seq_length, flag, spec.kind != "scalar", rank, adapted)
        if spec.train_batch
        else 0
        for flag in (False, True)
    }
    kv = kv_cache_bytes(cfg, spec.kv_batch, cfg.seq_length) if spec.kv_batch else 0
    return ModelMemory(
        spec.role, params, trainable, params * p_bytes, trainable * p_bytes, optimizer, act[False], act[True], kv
    )


def _data_batch(config: RunConfig) -> int:
    return config.train_dataset.batch_size or config.runner_config.batch_size


def stage_models(stage: str, config: RunConfig, reward_cfg: Optional[ModelConfig] = None) -> List[ModelSpec]:
    """The models ``stage`` holds on each device, with their batch sizes.

    SFT: the policy. Reward model: the scalar model on ``2 * batch`` sequences (pairs). DPO: the policy on
    ``2 * batch`` and a frozen reference unless ``precompute_ref_log_probs`` or a reference-free loss. PPO: the
    policy (value head when ``is_shared_backbone``) on ``ppo.batch_size``, decoding ``chunk_size`` prompts; a
    frozen reference; a separate critic otherwise; a frozen reward model (``reward_cfg``, default the policy's
    shape). GRPO: the policy on ``grpo.batch_size``, decoding ``num_prompts * num_generations``; a reference when
    ``beta`` > 0; a reward model when ``use_reward_model``.
    """
    cfg = config.model.model_config
    reward_cfg = reward_cfg or cfg
    if stage == "sft":
        return [ModelSpec("policy", cfg, "lm", _data_batch(config))]
    if stage == "rm":
        return [ModelSpec("reward", cfg, "scalar", 2 * _data_batch(config), ("score",))]
    if stage == "dpo":
        specs = [ModelSpec("policy", cfg, "lm", 2 * _data_batch(config))]
        if not (config.dpo.precompute_ref_log_probs or config.dpo.reference_free):
            specs.append(ModelSpec("reference", cfg, "lm", shares_base=True))
        return specs
    if stage == "ppo":
        ppo = config.ppo
        kind, heads = ("lm_value", ("v_head",)) if ppo.is_shared_backbone else ("lm", ())
        specs = [
            ModelSpec("policy", cfg, kind, ppo.batch_size, heads, kv_batch=ppo.chunk_size),
            ModelSpec("reference", cfg, "lm", shares_base=True),
        ]
        if not ppo.is_shared_backbone:
            specs.append(ModelSpec("critic", reward_cfg, "scalar", ppo.batch_size, ("score",)))
        return specs + [ModelSpec("reward", reward_cfg, "scalar")]
    if stage == "grpo":
        grpo = config.grpo
        specs = [ModelSpec("policy", cfg, "lm", grpo.batch_size, kv_batch=grpo.rollouts_per_epoch)]
        if grpo.beta > 0:
            specs.append(ModelSpec("reference", cfg, "lm", shares_base=True))
        if grpo.use_reward_model:
            specs.append(ModelSpec("reward", reward_cfg, "scalar"))
        return specs
    raise ConfigError(f"--stage {stage!r} is not one of {', '.join(STAGES)}")


def infer_stage(path: str) -> str:
    """The stage a recipe configures: its file name's last word (``run_gpt2_tiny_rm.yaml`` -> rm), else the
    most specific section it has (dpo, grpo, reward, ppo in that order), else SFT."""
    words = os.path.splitext(os.path.basename(path))[0].lower().split("_")
    for word in reversed(words):
        if word in STAGES:
            return word
    sections = read_yaml_with_bases(path)
    for section, stage in (("dpo", "dpo"), ("grpo", "grpo"), ("reward", "rm"), ("ppo", "ppo")):
        if section in sections:
            return stage
    return "sft"


def default_lora(cfg: ModelConfig, lora: LoRAConfig) -> LoRAConfig:
    """The recipe's ``lora`` section when it sets one, else rank 16 (alpha 32) on the family's attention input
    projections (GPT-2 ``c_attn``, Llama/Qwen2/GPT-J ``q_proj`` and ``v_proj``, BLOOM ``query_key_value``)."""
    if lora.r > 0:
        return lora
    return LoRAConfig(
        r=DEFAULT_LORA_RANK,
        alpha=2.0 * DEFAULT_LORA_RANK,
        target_modules=DEFAULT_LORA_TARGETS.get(cfg.type, ["q_proj", "v_proj"]),
        trainable=list(lora.trainable),
        critic_r=lora.critic_r,
        critic_alpha=lora.critic_alpha,
        critic_target_modules=lora.critic_target_modules,
    )


def lora_of(spec: ModelSpec, lora: LoRAConfig) -> Optional[LoRAConfig]:
    """The adapters of ``spec``'s model in the LoRA column: PPO's separate critic takes ``lora.for_critic()``
    (None: ``critic_r: 0``, the critic trained in full), every other model ``lora``."""
    if spec.role != "critic":
        return lora
    critic = lora.for_critic()
    return critic if critic.r > 0 else None


def plan(
    stage: str, config: RunConfig, layout: Layout, reward_cfg: Optional[ModelConfig] = None
) -> Dict[str, List[ModelMemory]]:
    """Per-device memory of every model of ``stage``: ``{"full": [...], "lora": [...]}``."""
    specs = stage_models(stage, config, reward_cfg)
    lora = default_lora(config.model.model_config, config.lora)
    return {
        "full": [model_memory(s, None, layout) for s in specs],
        "lora": [model_memory(s, lora_of(s, lora), layout) for s in specs],
    }


# ---------------------------------------------------------------------------------------------------------------
# command


def parse_memory(text: str) -> int:
    """``"64GB"``, ``"31.5GiB"``, ``"500MB"``, ``"64"`` (GB) -> bytes; GB means 2**30 bytes, as MindSpore's
    ``max_device_memory``.

    Raises:
        ConfigError: text that is not a positive number with an optional unit.
    """
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match.group(2).lower() if match else ""
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ConfigError(f"--device_memory {text!r}: expected a size such as 32GB, 64GB, 31.5GiB or 500MB")
    return int(float(match.group(1)) * _UNITS[unit])


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _count(n: int) -> str:
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{suffix}"
    return str(n)


def format_table(result: Dict[str, List[ModelMemory]], recompute: bool, capacity: int) -> List[str]:
    """The table (GiB per device) and one fits / does not fit line per mode."""
    head = (
        f"{'mode':<5} {'model':<10} {'params':>9} {'trainable':>9} {'weights':>8} {'grads':>8} "
        f"{'optimizer':>9} {'act':>8} {'act_rc':>8} {'kv_cache':>8} {'total':>8}"
    )
    lines, verdicts = [head], []
    for mode, models in result.items():
        for m in models:
            lines.append(
                f"{mode:<5} {m.role:<10} {_count(m.params):>9} {_count(m.trainable):>9} "
                f"{_gib(m.weights):>8} {_gib(m.gradients):>8} {_gib(m.optimizer):>9} "
                f"{_gib(m.activations):>8} {_gib(m.activations_recompute):>8} {_gib(m.kv_cache):>8} "
                f"{_gib(m.total(recompute)):>8}"
            )
        total = sum(m.total(recompute) for m in models)
        fits = "fits" if total <= capacity else "does not fit"
        verdicts.append(f"{mode}: {_gib(total)} GiB per device of {_gib(capacity)} GiB: {fits}")
    return lines + verdicts


def critic_note(stage: str, config: RunConfig, lora: LoRAConfig) -> str:
    """``", critic r <r> on <layers>"`` (or ``", critic trained in full"``) when PPO's separate critic has its own
    LoRA settings, else ""."""
    critic = lora.for_critic()
    if stage != "ppo" or config.ppo.is_shared_backbone or critic is lora:
        return ""
    return f", critic r {critic.r} on {', '.join(critic.target_modules)}" if critic.r else ", critic trained in full"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mindrlhf plan-memory",
        description="Per-device memory of a recipe's "
        "stage (weights, gradients, optimizer states, activations with and without "
        "recomputation, rollout KV cache), full training and LoRA; says if it fits.",
    )
    parser.add_argument("--config", required=True, help="run_*.yaml recipe")
    parser.add_argument(
        "--stage",
        choices=("auto",) + STAGES,
        default="auto",
        help="stage to plan (default: from the recipe's name, else its sections)",
    )
    parser.add_argument(
        "--reward_config", default=None, help="PPO/GRPO: the reward model's recipe (default: the policy's model shape)"
    )
    parser.add_argument(
        "--devices", type=int, default=None, help="devices, all data parallel (default: parallel_config.data_parallel)"
    )
    parser.add_argument(
        "--device_memory",
        default=None,
        help="memory per device, e.g. 32GB (default: context.max_device_memory, else 64GB)",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set lora.r=64 (repeatable)",
    )
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Command line entry: prints the table and the fits lines; a bad recipe or size raises ConfigError."""
    args = build_parser().parse_args(argv)
    config = load_config(args.config, args.overrides)
    stage = infer_stage(args.config) if args.stage == "auto" else args.stage
    reward_cfg = load_config(args.reward_config).model.model_config if args.reward_config else None
    if args.devices is not None and args.devices < 1:
        raise ConfigError(f"--devices must be >= 1, got {args.devices}")
    capacity = parse_memory(args.device_memory or config.context.max_device_memory or "64GB")
    layout = Layout(args.devices or config.parallel_config.data_parallel, config.parallel_config.optimizer_shard)
    result = plan(stage, config, layout, reward_cfg)
    recompute = config.recompute_config.recompute
    lora = default_lora(config.model.model_config, config.lora)
    sys.stdout.write(
        f"{args.config}: stage {stage}, {layout.data_parallel} device(s) data parallel, optimizer "
        f"states {'sharded' if layout.optimizer_shard else 'replicated'}, recompute "
        f"{'on' if recompute else 'off'} (total uses it); LoRA r {lora.r} on "
        f"{', '.join(lora.target_modules)}{critic_note(stage, config, lora)}; GiB per device\n"
    )
    sys.stdout.write("\n".join(format_table(result, recompute, capacity)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
