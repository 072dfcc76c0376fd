"""Typed run configuration: mindformers-style ``run_*.yaml`` in, dataclasses out.

One dataclass per concern (model, generation, context, parallel, runner, optimizer, lr schedule, loss scale);
:class:`RunConfig` gathers them under the YAML section names mindformers users know
(``model.model_config``, ``context``, ``parallel_config``, ``runner_config``, ``optimizer``, ``lr_schedule``,
``runner_wrapper``, ``recompute_config``) plus ``generation``, the RL sections ``ppo`` and ``grpo`` and ``dpo``.

Loading rules:
- ``base_config: other.yaml`` (or a list) inherits from files relative to the YAML; later files and keys win.
- Unknown keys are an error that names the file, the dotted key and the nearest valid name. The mindformers
  settings with no effect here (``runner_config.sink_mode``, ``sink_size``, ``parallel_config.micro_batch_num``,
  ``vocab_emb_dp``, ``gradient_aggregation_group``: ``MINDFORMERS_ONLY_KEYS``) are dropped with a warning instead.
- Values are type-checked against the field annotations; an int is accepted where a float is expected.
- ``key.path=value`` overrides (from the command line) are applied after the files, parsed as YAML scalars.
- Every stage reads its optimizer, learning-rate schedule and loss scale from ``optimizer``, ``lr_schedule`` and
  ``runner_wrapper``. The predecessor's names for them in the ``ppo`` / ``grpo`` sections (``start_lr``,
  ``warmup_step``, ...) are mapped there as each file (and the override list) is read; one file setting a value
  under both names is an error naming both.
- A stage's command refuses a section only other stages read (``ppo`` for ``mindrlhf sft``, ``reward`` for
  ``mindrlhf dpo``, ``train_dataset`` for PPO, ...: ``STAGE_SECTIONS``) when the recipe file itself or an override
  sets it; sections inherited through ``base_config`` are not checked, as shared base recipes carry several.
"""

from __future__ import annotations

import copy
import dataclasses
import difflib
import logging
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import yaml

from mindrlhf.errors import UserError

DTYPES = ("float32", "float16", "bfloat16")
HIDDEN_ACTS = ("gelu", "gelu_exact", "silu", "relu")  # model_config.hidden_act
ADVANTAGE_ESTIMATORS = ("grpo", "dr_grpo", "rloo", "reinforce_baseline")  # grpo.advantage_estimator
GRPO_LOSS_TYPES = ("grpo", "token", "dr_grpo")  # grpo.loss_type
DPO_LOSS_TYPES = ("sigmoid", "ipo", "hinge", "simpo", "orpo")  # dpo.loss_type
# mindformers settings with no effect here (no dataset sinking: one host call per step; no pipeline or embedding
# sharding; gradient all-reduces fused by size), accepted in a recipe and dropped with a warning
MINDFORMERS_ONLY_KEYS = {
    "runner_config": ("sink_mode", "sink_size"),
    "parallel_config": ("micro_batch_num", "vocab_emb_dp", "gradient_aggregation_group"),
}
# what does that job here, named in the warning
MINDFORMERS_KEY_HINTS = {
    "gradient_aggregation_group": "gradient all-reduces are fused by size: parallel_config.allreduce_bucket_mb",
    "vocab_emb_dp": "the token table is replicated; in data parallel its gradient travels as the looked-up rows "
    "(parallel_config.embedding_grad_rows)",
}
# The sections only some stages read, per stage. Every stage also reads (or tolerates, as a model recipe carries
# them) the model run sections: model, generation, context, parallel_config, runner_config, optimizer, lr_schedule,
# runner_wrapper, recompute_config, checkpoint and lora.
STAGE_SECTIONS = {
    "sft": ("train_dataset",),
    "rm": ("train_dataset", "eval_dataset", "reward"),
    "dpo": ("train_dataset", "dpo"),
    "ppo": ("ppo",),
    "grpo": ("grpo",),
}

logger = logging.getLogger(__name__)


class ConfigError(UserError):
    """A configuration file or override that cannot be turned into a valid config."""


def require_positive(value: float, name: str, why: str = "") -> None:
    """Refuse a ``value`` of setting ``name`` that is not a finite number > 0 (``why``: what it is, for the
    message)."""
    if not value > 0 or not math.isfinite(value):
        raise ConfigError(f"{name} must be > 0{why}, got {value}")


def require_below(value: float, name: str, high: float) -> None:
    """Refuse a ``value`` of setting ``name`` outside ``[0, high)``."""
    if not 0 <= value < high:
        raise ConfigError(f"{name} must be in [0, {high}), got {value}")


@dataclass
class ModelConfig:
    """Network shape and numerics of one backbone (any registered family)."""

    type: str = "gpt2"  # registry name of the backbone family: gpt2 | llama | qwen2 | gptj | bloom
    vocab_size: int = 50257  # rows of the token embedding
    hidden_size: int = 768  # width of the residual stream H
    num_layers: int = 12  # transformer blocks
    num_heads: int = 12  # query heads; head_dim = hidden_size // num_heads
    num_kv_heads: Optional[int] = None  # key/value heads (grouped-query attention); None = num_heads
    intermediate_size: Optional[int] = None  # MLP width; None = derived (GPT-2: expand_ratio*H, Llama: multiple_of)
    expand_ratio: int = 4  # GPT-2 MLP width factor when intermediate_size is None
    multiple_of: int = 256  # Llama: MLP width is 2/3*4H rounded up to a multiple of this when intermediate_size is None
    seq_length: int = 1024  # maximum sequence length (GPT-2: learned position table size)
    hidden_act: Optional[str] = None  # MLP activation: gelu (tanh approximation, GPT-2's gelu_new) | gelu_exact
    #                                   (erf) | silu | relu; None = the family's: gelu for GPT-2, GPT-J and BLOOM,
    #                                   silu (gating the SwiGLU MLP) for Llama and Qwen2
    layernorm_epsilon: float = 1e-5  # LayerNorm epsilon (GPT-2, GPT-J, BLOOM)
    rms_norm_eps: float = 1e-5  # RMSNorm epsilon (Llama, Qwen2)
    rope_theta: float = 10000.0  # rotary base (Llama, Qwen2, GPT-J)
    rotary_dim: Optional[int] = None  # GPT-J: rotary on the first rotary_dim dims of each head; None = all of them
    hidden_dropout_rate: float = 0.0  # dropout on embeddings, attention output and MLP output (training only)
    attention_dropout_rate: float = 0.0  # dropout on attention probabilities (training only)
    initializer_range: float = 0.02  # std of the normal initialiser for weights built from scratch
    tie_word_embeddings: Optional[bool] = None  # LM head shares the token embedding; None = family default
    pad_token_id: int = 50256  # padding id
    bos_token_id: int = 50256  # beginning-of-sequence id
    eos_token_id: int = 50256  # end-of-sequence id (generation stops on it)
    compute_dtype: str = "float32"  # matmul dtype: float32 on CPU; float16/bfloat16 on GPU/Ascend
    param_init_type: str = "float32"  # dtype parameters are stored in
    layernorm_compute_type: str = "float32"  # dtype of LayerNorm/RMSNorm arithmetic
    softmax_compute_type: str = "float32"  # dtype of attention softmax

    def __post_init__(self):
        if self.num_kv_heads is None:
            self.num_kv_heads = self.num_heads
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "num_kv_heads", "seq_length"):
            if getattr(self, name) < 1:
                raise ConfigError(f"model_config.{name} must be >= 1, got {getattr(self, name)}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(
                f"model_config: hidden_size {self.hidden_size} must be a multiple of num_heads {self.num_heads}"
            )
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"model_config: num_heads {self.num_heads} must be a multiple of num_kv_heads {self.num_kv_heads}"
            )
        if self.hidden_act is not None and self.hidden_act not in HIDDEN_ACTS:
            raise ConfigError(f"model_config.hidden_act: {self.hidden_act!r} is not one of {', '.join(HIDDEN_ACTS)}")
        for name in ("compute_dtype", "param_init_type", "layernorm_compute_type", "softmax_compute_type"):
            if getattr(self, name) not in DTYPES:
                raise ConfigError(f"model_config.{name}: {getattr(self, name)!r} is not one of {', '.join(DTYPES)}")

    @property
    def head_dim(self) -> int:
        """Width of one attention head (derived)."""
        return self.hidden_size // self.num_heads


@dataclass
class ModelSection:
    """The YAML ``model`` section."""

    model_config: ModelConfig = field(default_factory=ModelConfig)


@dataclass
class GenerationConfig:
    """Sampling settings for :meth:`mindrlhf.models.generation.Generator.generate`."""

    max_new_tokens: int = 64  # tokens generated after the prompt (the predecessor's max_decode_length)
    do_sample: bool = True  # False = greedy decoding
    temperature: float = 1.0  # logits are divided by this before sampling
    top_k: int = 0  # keep the k most likely tokens; 0 = off
    top_p: float = 1.0  # keep the smallest set whose probability reaches top_p; 1.0 = off
    seed: int = 0  # seed of the sampling generator (same seed, same tokens)
    use_cache: bool = True  # KV-cache decoding; False recomputes the whole sequence each step

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ConfigError(f"generation.max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature <= 0:
            raise ConfigError(f"generation.temperature must be > 0, got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise ConfigError(f"generation.top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ConfigError(f"generation.top_k must be >= 0, got {self.top_k}")


@dataclass
class ContextConfig:
    """Device and execution mode (the YAML ``context`` section)."""

    mode: int = 0  # 0 = GRAPH_MODE (compiled), 1 = PYNATIVE_MODE (eager)
    device_target: str = "CPU"  # CPU | GPU | Ascend
    device_id: int = 0  # device used by a single-process run
    max_device_memory: Optional[str] = None  # e.g. "31GB" (GPU/Ascend)
    max_call_depth: int = 10000  # graph-mode recursion limit
    # CPU, GPT-2 reward-model step: 2.9x less peak memory and 1.3x faster; first compiles take a few seconds more.
    enable_graph_kernel: bool = False  # graph-kernel fusion (AKG): elementwise ops, norms, GELU, Adam fused; graph mode
    kernel_cache_dir: str = "~/.cache/mindrlhf/kernels"  # compiled fused kernels, reused by later runs

    def __post_init__(self):
        if self.mode not in (0, 1):
            raise ConfigError(f"context.mode must be 0 (graph) or 1 (pynative), got {self.mode}")
        if self.device_target not in ("CPU", "GPU", "Ascend"):
            raise ConfigError(f"context.device_target {self.device_target!r} is not one of CPU, GPU, Ascend")


@dataclass
class ParallelConfig:
    """Device layout (the YAML ``parallel_config`` section)."""

    data_parallel: int = 1  # replicas that split the batch
    model_parallel: int = 1  # tensor-parallel degree (Ascend semi_auto_parallel)
    pipeline_stage: int = 1  # pipeline stages (Ascend semi_auto_parallel)
    optimizer_shard: bool = False  # shard optimizer states across data-parallel ranks
    allreduce_bucket_mb: int = 25  # gradients fused into data-parallel all-reduces of up to this many MB; 0 = off
    # data parallel: an untied token table's gradient travels as the rows the batch looked up, not the whole table
    embedding_grad_rows: bool = True  # gather looked-up embedding rows instead of all-reducing the table's gradient

    def __post_init__(self):
        if self.allreduce_bucket_mb < 0:
            raise ConfigError(
                f"parallel_config.allreduce_bucket_mb must be >= 0 (0 = one all-reduce per gradient), "
                f"got {self.allreduce_bucket_mb}"
            )


@dataclass
class RunnerConfig:
    """Loop sizes (the YAML ``runner_config`` section)."""

    epochs: int = 1  # passes over the training data
    batch_size: int = 1  # per-device batch (pairs for the reward model)


@dataclass
class OptimizerConfig:
    """AdamW settings (the YAML ``optimizer`` section)."""

    type: str = "AdamWeightDecay"  # AdamWeightDecay | FP32StateAdamWeightDecay | FusedAdamWeightDecay (all AdamW)
    learning_rate: float = 1e-5  # peak learning rate when lr_schedule does not set one
    beta1: float = 0.9  # first-moment decay
    beta2: float = 0.95  # second-moment decay
    eps: float = 1e-8  # denominator epsilon
    weight_decay: float = 0.0  # decoupled weight decay (not applied to norms and biases)


@dataclass
class LrScheduleConfig:
    """Learning-rate schedule (the YAML ``lr_schedule`` section)."""

    type: str = "constant"  # constant | cosine | polynomial (linear decay), each with linear warmup
    learning_rate: Optional[float] = None  # peak lr; None = optimizer.learning_rate
    lr_end: float = 0.0  # lr at total_steps
    warmup_steps: int = 0  # linear warmup steps from 0
    warmup_ratio: float = 0.0  # warmup as a share of total steps (used when warmup_steps is 0)
    total_steps: int = -1  # decay horizon; -1 = the run's total steps

    def __post_init__(self):
        if self.type not in ("constant", "cosine", "polynomial"):
            raise ConfigError(f"lr_schedule.type {self.type!r} is not one of constant, cosine, polynomial")


@dataclass
class LossScaleConfig:
    """Dynamic loss scale and gradient clipping (the YAML ``runner_wrapper`` section)."""

    loss_scale_value: float = 128.0  # initial loss scale
    scale_factor: float = 2.0  # divide on overflow, multiply after scale_window clean steps
    scale_window: int = 1000  # clean steps before the scale grows
    use_clip_grad: bool = True  # clip gradients by global norm
    max_grad_norm: float = 1.0  # global-norm clip threshold


@dataclass
class RecomputeConfig:
    """Activation recomputation (the YAML ``recompute_config`` section)."""

    recompute: bool = False  # recompute each transformer block in the backward pass to save memory


@dataclass
class DataLoaderConfig:
    """Where records come from (``<split>_dataset.data_loader``)."""

    type: str = "MindDataset"  # only MindRecord files are read
    dataset_dir: str = ""  # a .mindrecord file (its .db index beside it)
    shuffle: bool = True  # reshuffle every epoch (seeded by `seed` and the epoch number)
    num_samples: Optional[int] = None  # use only the first N records (None = all)

    def __post_init__(self):
        if self.type != "MindDataset":
            raise ConfigError(f"data_loader.type {self.type!r} is not supported (MindDataset)")


@dataclass
class DatasetConfig:
    """One data split (the YAML ``train_dataset`` / ``eval_dataset`` sections)."""

    data_loader: DataLoaderConfig = field(default_factory=DataLoaderConfig)
    batch_size: Optional[int] = None  # per device (pairs for the reward model); None = runner_config.batch_size
    drop_remainder: bool = True  # drop a last incomplete batch
    num_parallel_workers: int = 1  # dataset worker threads


@dataclass
class RewardConfig:
    """Reward-model loss (the YAML ``reward`` section)."""

    loss_type: str = "span"  # span: mean -log sigmoid(c_t - r_t) over the divergence span (MindRLHF/DeepSpeed-Chat);
    #                         end: -log sigmoid(c - r) at each sequence's own last token (Bradley-Terry, TRL)

    def __post_init__(self):
        if self.loss_type not in ("span", "end"):
            raise ConfigError(f"reward.loss_type {self.loss_type!r} is not one of span, end")


@dataclass
class CheckpointConfig:
    """Checkpoint saving (the YAML ``checkpoint`` section; mindformers' CheckpointMonitor)."""

    prefix: str = "mindrlhf"  # file names: <prefix>_rank_<id>-<global step>_<epoch>.ckpt
    save_checkpoint_steps: int = 1000  # save every this many optimizer steps (and at the end of training)
    keep_checkpoint_max: int = 3  # newest files kept per rank; older ones are deleted
    log_interval: int = 1  # log (stdout, info.log, tensorboard) every this many steps

    def __post_init__(self):
        if self.save_checkpoint_steps < 1 or self.keep_checkpoint_max < 1 or self.log_interval < 1:
            raise ConfigError("checkpoint: save_checkpoint_steps, keep_checkpoint_max and log_interval must be >= 1")


class _OnPolicySampling:
    """What the RL sections (``ppo``, ``grpo``) share: the on-policy sampling check. Subclasses set ``_section``
    (the YAML section name) and ``_why_full_vocabulary`` (why the sampling must not be truncated). Their optimizer,
    learning rate and loss scale come from the recipe's ``optimizer``, ``lr_schedule`` and ``runner_wrapper``
    sections, as for every stage (seed names in the section are mapped there: :data:`SEED_NAMES`)."""

    _section = ""
    _why_full_vocabulary = ""

    def check_sampling(self) -> None:
        """The RL log-probs (old policy, reference, training) are those of ``softmax(logits / temperature)`` over
        the whole vocabulary, so the rollouts must be sampled from exactly that distribution.

        Raises:
            ConfigError: for greedy decoding, ``top_k`` > 0 or ``top_p`` < 1, saying why and what to set.
        """
        gen, name, why = self.generation, f"{self._section}.generation", self._why_full_vocabulary
        if not gen.do_sample:
            raise ConfigError(
                f"{name}.do_sample is False (greedy decoding): {why}. Set {name}.do_sample: True "
                f"(lower {name}.temperature for less random rollouts)"
            )
        if gen.top_k != 0 or gen.top_p != 1.0:
            raise ConfigError(
                f"{name}.top_k {gen.top_k} / top_p {gen.top_p} truncate the sampling distribution: "
                f"{why}. Set {name}.top_k: 0 and top_p: 1.0 (lower {name}.temperature to sharpen "
                f"the distribution instead)"
            )


@dataclass
class PPOConfig(_OnPolicySampling):
    """Stage 3, every PPO knob (the YAML ``ppo`` section of the policy recipe). The optimizer, learning rate and
    loss scale come from the recipe's ``optimizer``, ``lr_schedule`` and ``runner_wrapper`` sections; the
    predecessor's names for them (``start_lr``, ``warmup_step``, ...) may be written here instead. Rollouts are
    sampled from softmax(logits / generation.temperature) over the full vocabulary, the distribution every PPO
    log-prob is taken from: top-k, top-p and greedy decoding are refused.

    One iteration (``epochs`` of them) = make ``num_rollouts`` experiences on this rank in chunks of ``chunk_size``
    prompts, then ``ppo_epochs`` passes over them in minibatches of ``batch_size``.
    """

    epochs: int = 1  # PPO iterations (experience, then training on it)
    num_rollouts: int = 8  # experiences (prompts) per iteration and rank
    chunk_size: int = 1  # prompts per generation and scoring call
    batch_size: int = 1  # experiences per optimizer step (per rank)
    ppo_epochs: int = 1  # passes over the same experiences per iteration (reshuffled each pass)
    kl_coef: float = 0.02  # per-token KL penalty: r_t = -kl_coef * (logp_t - ref_logp_t) (initial value if adaptive)
    adaptive_kl: bool = False  # adapt kl_coef towards `target` (Ziegler et al.)
    target: float = 6.0  # adaptive KL: target KL per response (sum over its tokens)
    horizon: int = 10000  # adaptive KL: horizon in rollouts (of all data-parallel ranks together)
    gamma: float = 1.0  # GAE discount
    lam: float = 0.95  # GAE lambda
    cliprange: float = 0.2  # policy ratio clip epsilon
    cliprange_value: float = 0.2  # value clip around the old values
    vf_coef: float = 1.0  # weight of the value loss
    pretrain_coef: float = 0.0  # weight of the ptx (pretraining LM) loss on pretrain_ids; 0 = off
    reward_clip: Optional[float] = None  # clip scores to [-reward_clip, reward_clip] (after scaling)
    missing_eos_penalty: Optional[float] = None  # subtract from the score of a rollout cut at max_new_tokens
    #                                              without eos, before scaling (TRL's name); None = off
    reward_scaling: str = "none"  # none | running (divide by the running std of scores) | whiten (per iteration);
    #                               statistics over the scores of all data-parallel ranks
    whiten_advantages: bool = True  # normalise advantages over the iteration's experiences (of all ranks)
    is_shared_backbone: bool = True  # value head on the policy backbone; False = separate critic (reward-model init)
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=64, top_k=0))
    save_checkpoint_epochs: int = 1  # save policy (and critic) every this many iterations (and after the last)

    _section = "ppo"
    _why_full_vocabulary = (
        "PPO's probability ratio and KL penalty are computed from the log-probs of "
        "softmax(logits / temperature) over the full vocabulary, so they would be estimated "
        "from samples of another distribution"
    )

    def __post_init__(self):
        for name in (
            "epochs",
            "num_rollouts",
            "chunk_size",
            "batch_size",
            "ppo_epochs",
            "horizon",
            "save_checkpoint_epochs",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"ppo.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_rollouts % self.chunk_size:
            raise ConfigError(
                f"ppo.num_rollouts {self.num_rollouts} must be a multiple of chunk_size {self.chunk_size}"
            )
        if self.num_rollouts < self.batch_size:
            raise ConfigError(f"ppo.batch_size {self.batch_size} is larger than num_rollouts {self.num_rollouts}")
        if self.reward_scaling not in ("none", "running", "whiten"):
            raise ConfigError(f"ppo.reward_scaling {self.reward_scaling!r} is not one of none, running, whiten")
        if self.reward_clip is not None and self.reward_clip <= 0:
            raise ConfigError(f"ppo.reward_clip must be > 0 or null, got {self.reward_clip}")
        if self.missing_eos_penalty is not None and self.missing_eos_penalty < 0:
            raise ConfigError(f"ppo.missing_eos_penalty must be >= 0 or null, got {self.missing_eos_penalty}")
        for name in ("kl_coef", "cliprange", "cliprange_value", "vf_coef", "pretrain_coef"):
            if getattr(self, name) < 0:
                raise ConfigError(f"ppo.{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.gamma <= 1.0 or not 0.0 <= self.lam <= 1.0:
            raise ConfigError(f"ppo.gamma and ppo.lam must be in [0, 1], got {self.gamma} and {self.lam}")
        self.check_sampling()

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per iteration: ``ppo_epochs * (num_rollouts // batch_size)``."""
        return self.ppo_epochs * (self.num_rollouts // self.batch_size)


@dataclass
class GRPOConfig(_OnPolicySampling):
    """Every GRPO knob (the YAML ``grpo`` section): group-relative policy optimisation without a critic, with the
    DAPO and Dr. GRPO variants. As for ``ppo``, the optimizer, learning rate and loss scale come from the recipe's
    training sections (or the seed names written here), and top-k, top-p and greedy decoding are refused.

    One iteration (``epochs`` of them) = sample ``num_generations`` completions for each of ``num_prompts``
    prompts on this rank, score them with the reward functions, turn the scores into advantages within each
    prompt's group, then ``num_iterations`` passes over the rollouts in minibatches of ``batch_size``.
    """

    epochs: int = 1  # GRPO iterations (sampling and scoring, then training on the rollouts)
    num_prompts: int = 8  # prompts per iteration and rank
    num_generations: int = 4  # completions sampled per prompt: the group size G
    batch_size: int = 8  # rollouts per optimizer step (per rank): a multiple of num_generations that divides
    #                      num_prompts * num_generations
    num_iterations: int = 1  # policy updates per rollout batch (mu): passes over the same rollouts
    advantage_estimator: str = "grpo"  # grpo: (r - group mean) / (group std + 1e-4), unbiased std; dr_grpo:
    #                                    r - group mean; rloo: r - mean of the group's other scores;
    #                                    reinforce_baseline: r - group mean, whitened over the batch of all ranks
    scale_rewards: bool = True  # grpo estimator: divide by the group std; False = Dr. GRPO's unscaled advantages
    loss_type: str = "grpo"  # grpo: mean over sequences of token means; token: mean over all tokens (DAPO);
    #                          dr_grpo: token sum / (sequences * generation.max_new_tokens) (Dr. GRPO)
    epsilon_low: float = 0.2  # ratio clipped below at 1 - epsilon_low
    epsilon_high: float = 0.2  # ratio clipped above at 1 + epsilon_high (>= epsilon_low; larger = DAPO clip-higher)
    beta: float = 0.04  # KL coefficient towards the reference policy; 0 = no reference model
    kl_in_reward: bool = False  # False: beta * k3 KL estimate per token in the loss; True: -beta * (logp - ref_logp)
    #                             summed over the tokens and added to the score before the advantages
    dynamic_sampling: bool = False  # drop the groups whose scores are all equal (zero advantage) from the update
    #                                 (DAPO dynamic sampling)
    overlong_buffer: int = 0  # DAPO soft overlong penalty: the last this many of generation.max_new_tokens are
    #                           penalised linearly, down to -overlong_penalty_factor; 0 = off
    overlong_penalty_factor: float = 1.0  # the soft overlong penalty at generation.max_new_tokens tokens
    reward_funcs: List[Dict[str, Any]] = field(default_factory=list)  # each {name, weight (1.0), kwargs ({})}:
    #                                   a built-in reward or "module:function"; the score is the weighted sum
    use_reward_model: bool = False  # score the rollouts with a trained reward model as well as reward_funcs
    generation: GenerationConfig = field(default_factory=lambda: GenerationConfig(max_new_tokens=64, top_k=0))
    save_checkpoint_epochs: int = 1  # save the policy every this many iterations (and after the last)

    _section = "grpo"
    _why_full_vocabulary = (
        "GRPO's probability ratio and KL term are computed from the log-probs of "
        "softmax(logits / temperature) over the full vocabulary, so they would be estimated "
        "from samples of another distribution"
    )

    def __post_init__(self):
        for name in (
            "epochs",
            "num_prompts",
            "num_generations",
            "batch_size",
            "num_iterations",
            "save_checkpoint_epochs",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"grpo.{name} must be >= 1, got {getattr(self, name)}")
        self._check_batch()
        self._check_choices()
        for name in ("epsilon_low", "beta", "overlong_penalty_factor"):
            if getattr(self, name) < 0:
                raise ConfigError(f"grpo.{name} must be >= 0, got {getattr(self, name)}")
        if self.epsilon_low >= 1:
            raise ConfigError(
                f"grpo.epsilon_low must be < 1 (the ratio is clipped below at 1 - epsilon_low), got {self.epsilon_low}"
            )
        if self.epsilon_high < self.epsilon_low:
            raise ConfigError(
                f"grpo.epsilon_high {self.epsilon_high} must be >= epsilon_low {self.epsilon_low}: "
                f"clip-higher only widens the upper clip; set epsilon_high: {self.epsilon_low} for "
                f"the symmetric clip"
            )
        if not 0 <= self.overlong_buffer <= self.generation.max_new_tokens:
            raise ConfigError(
                f"grpo.overlong_buffer must be in [0, generation.max_new_tokens = "
                f"{self.generation.max_new_tokens}], got {self.overlong_buffer}"
            )
        for i, spec in enumerate(self.reward_funcs):
            self._check_reward_func(i, spec)
        self.check_sampling()

    def _check_batch(self) -> None:
        """Optimizer steps take whole groups and split the iteration's rollouts evenly."""
        group, batch, rollouts = self.num_generations, self.batch_size, self.rollouts_per_epoch
        if batch % group:
            raise ConfigError(
                f"grpo.batch_size {batch} must be a multiple of num_generations {group} (an optimizer "
                f"step takes whole groups): try batch_size {max(batch // group, 1) * group}"
            )
        if rollouts % batch:
            raise ConfigError(
                f"grpo.batch_size {batch} must divide the rollouts of an iteration, num_prompts * "
                f"num_generations = {self.num_prompts} * {group} = {rollouts}"
            )

    def _check_choices(self) -> None:
        """Known estimator and loss type; RLOO's baseline needs another completion in the group."""
        for name, choices in (("advantage_estimator", ADVANTAGE_ESTIMATORS), ("loss_type", GRPO_LOSS_TYPES)):
            value = getattr(self, name)
            if value not in choices:
                near = difflib.get_close_matches(str(value), choices, n=1, cutoff=0.5)
                hint = f"; did you mean {near[0]!r}?" if near else ""
                raise ConfigError(f"grpo.{name} {value!r} is not one of {', '.join(choices)}{hint}")
        if self.advantage_estimator == "rloo" and self.num_generations < 2:
            raise ConfigError(
                f"grpo.advantage_estimator rloo needs num_generations >= 2 (each completion's baseline "
                f"is the mean score of the other completions of its prompt), got "
                f"{self.num_generations}"
            )

    @staticmethod
    def _check_reward_func(index: int, spec: Any) -> None:
        """One ``reward_funcs`` entry: a mapping with a string ``name``, a number ``weight`` and a mapping
        ``kwargs`` (both optional). Whether the name resolves is checked when the functions are loaded."""
        where = f"grpo.reward_funcs[{index}]"
        if not isinstance(spec, dict):
            raise ConfigError(f"{where}: expected a mapping {{name, weight, kwargs}}, got {spec!r}")
        unknown = sorted(set(spec) - {"name", "weight", "kwargs"})
        if unknown:
            raise ConfigError(f"{where}: unknown key {unknown[0]!r}; valid keys: name, weight, kwargs")
        if not isinstance(spec.get("name"), str) or not spec["name"]:
            raise ConfigError(
                f'{where}: needs a name (a built-in reward or "module:function"), got {spec.get("name")!r}'
            )
        weight = spec.get("weight", 1.0)
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ConfigError(f"{where}.weight: expected a finite number, got {weight!r}")
        if not isinstance(spec.get("kwargs", {}), dict):
            raise ConfigError(f"{where}.kwargs: expected a mapping, got {spec['kwargs']!r}")

    def check_rewards(self) -> None:
        """A GRPO run needs something to score with (not checked in ``__post_init__``: every recipe has a default
        ``grpo`` section, used or not).

        Raises:
            ConfigError: when ``reward_funcs`` is empty and ``use_reward_model`` is False.
        """
        if not self.reward_funcs and not self.use_reward_model:
            raise ConfigError(
                "grpo: no reward: list reward functions in grpo.reward_funcs (e.g. "
                "[{name: accuracy}]) or set grpo.use_reward_model: true"
            )

    @property
    def rollouts_per_epoch(self) -> int:
        """Rollouts per iteration and rank: ``num_prompts * num_generations``."""
        return self.num_prompts * self.num_generations

    @property
    def steps_per_epoch(self) -> int:
        """Optimizer steps per iteration: ``num_iterations * (num_prompts * num_generations // batch_size)``
        (before dynamic sampling drops any group)."""
        return self.num_iterations * (self.rollouts_per_epoch // self.batch_size)


@dataclass
class DPOConfig:
    """Offline preference optimisation (the YAML ``dpo`` section): DPO and its family on preference MindRecords
    with the prompt/response boundary. Optimizer, learning rate, loss scale, epochs and batch size come from the
    recipe's training sections, as for SFT; ``runner_config.batch_size`` counts pairs."""

    loss_type: str = "sigmoid"  # sigmoid: DPO (with label_smoothing > 0: conservative DPO); ipo; hinge; simpo and
    #                             orpo: reference-free (no reference model at all)
    beta: float = 0.1  # inverse temperature of the implicit reward beta * (logp - ref_logp) (ORPO: its odds-ratio
    #                    weight lambda; IPO: tau)
    label_smoothing: float = 0.0  # probability that a label is flipped (conservative DPO, SimPO), in [0, 0.5)
    simpo_gamma: float = 0.5  # SimPO's target reward margin
    precompute_ref_log_probs: bool = True  # True: the reference's log-probs of every pair in one first pass, then
    #                                        no reference model in memory while training; False: each batch's on
    #                                        the fly
    ref_checkpoint: str = ""  # reference weights (.ckpt, checkpoint root, Hugging Face folder); "" = the weights
    #                           the policy starts from

    def __post_init__(self):
        if self.loss_type not in DPO_LOSS_TYPES:
            near = difflib.get_close_matches(str(self.loss_type), DPO_LOSS_TYPES, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else ""
            raise ConfigError(f"dpo.loss_type {self.loss_type!r} is not one of {', '.join(DPO_LOSS_TYPES)}{hint}")
        require_positive(self.beta, "dpo.beta", " (the implicit reward is beta * log-ratio)")
        require_below(self.label_smoothing, "dpo.label_smoothing", 0.5)

    @property
    def reference_free(self) -> bool:
        """SimPO and ORPO use no reference model."""
        return self.loss_type in ("simpo", "orpo")


@dataclass
class LoRAConfig:
    """Low-rank adapters (the YAML ``lora`` section), read by every training stage: with ``r`` > 0 the base weights
    are frozen and only the adapters (and ``trainable``) are trained."""

    r: int = 0  # adapter rank; 0 = no adapters (full fine-tuning)
    alpha: float = 16.0  # the update is scaled by alpha / r
    dropout: float = 0.0  # dropout on each adapter's input (training only)
    target_modules: List[str] = field(default_factory=list)  # dense layers to adapt: a name (c_attn, q_proj), a
    #                                                          dotted suffix, or a regex over the full dotted name
    trainable: List[str] = field(default_factory=list)  # other parameters trained in full (name prefixes or
    #                                                     regexes); the stage adds its head (v_head, score)
    adapter: str = ""  # start from these adapters (a PEFT folder or a LoRA .ckpt): their r, alpha and layers
    critic_r: Optional[int] = None  # PPO's separate critic: its adapter rank; None = r, 0 = critic trained in full
    critic_alpha: Optional[float] = None  # the critic's alpha; None = alpha
    critic_target_modules: Optional[List[str]] = None  # the critic's adapted layers; None = target_modules

    def __post_init__(self):
        if self.r < 0 or (self.r == 0 and self.target_modules):
            raise ConfigError(f"lora.r must be >= 1 to adapt lora.target_modules (0 = no adapters), got {self.r}")
        if self.critic_r is not None or self.critic_alpha is not None or self.critic_target_modules is not None:
            try:
                self.for_critic()
            except ConfigError as err:
                raise ConfigError(f"lora.critic_r / critic_alpha / critic_target_modules: {err}") from None
        if self.r > 0 and self.adapter:
            raise ConfigError(
                "lora.adapter brings its own rank and layers: leave lora.r and lora.target_modules unset with it"
            )
        if self.r > 0 and not self.target_modules:
            raise ConfigError(
                "lora.target_modules: name the dense layers to adapt (e.g. [c_attn] for GPT-2, "
                "[q_proj, v_proj] for Llama) when lora.r > 0"
            )
        require_positive(self.alpha, "lora.alpha")
        require_below(self.dropout, "lora.dropout", 1)

    @property
    def enabled(self) -> bool:
        """Adapters are in use."""
        return self.r > 0 or bool(self.adapter)

    def for_critic(self) -> "LoRAConfig":
        """The adapters of PPO's separate critic: these settings with the ``critic_*`` overrides applied (an
        override also drops ``adapter``, which holds the policy's adapters)."""
        if self.critic_r is None and self.critic_alpha is None and self.critic_target_modules is None:
            return self
        r = self.r if self.critic_r is None else self.critic_r
        targets = self.target_modules if self.critic_target_modules is None else self.critic_target_modules
        return LoRAConfig(
            r=r,
            alpha=self.alpha if self.critic_alpha is None else self.critic_alpha,
            dropout=self.dropout,
            target_modules=list(targets) if r or self.critic_target_modules is not None else [],
            trainable=list(self.trainable),
        )


@dataclass
class RunConfig:
    """Everything one run reads, as loaded from a ``run_*.yaml`` recipe."""

    seed: int = 0  # global seed (parameter init, data order)
    output_dir: str = "./output"  # logs, checkpoints and the resolved config go here
    load_checkpoint: str = ""  # a checkpoint folder with rank_<id>/ to resume from, or a .ckpt / Hugging Face folder
    #                             whose weights start the run ("" = fresh weights)
    model: ModelSection = field(default_factory=ModelSection)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    context: ContextConfig = field(default_factory=ContextConfig)
    parallel_config: ParallelConfig = field(default_factory=ParallelConfig)
    runner_config: RunnerConfig = field(default_factory=RunnerConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lr_schedule: LrScheduleConfig = field(default_factory=LrScheduleConfig)
    runner_wrapper: LossScaleConfig = field(default_factory=LossScaleConfig)
    recompute_config: RecomputeConfig = field(default_factory=RecomputeConfig)
    train_dataset: DatasetConfig = field(default_factory=DatasetConfig)
    eval_dataset: DatasetConfig = field(
        default_factory=lambda: DatasetConfig(data_loader=DataLoaderConfig(shuffle=False), drop_remainder=False)
    )
    reward: RewardConfig = field(default_factory=RewardConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    ppo: PPOConfig = field(default_factory=PPOConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    dpo: DPOConfig = field(default_factory=DPOConfig)
    lora: LoRAConfig = field(default_factory=LoRAConfig)


# ---------------------------------------------------------------------------------------------------------------
# YAML reading


# ``1e-5``: a float to users, a string to YAML 1.1 (which wants ``1.0e-5``).
_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads ``1e-5`` (no dot) as a float, as users write learning rates."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    _FLOAT_WITHOUT_DOT,
    list("-+0123456789."),
)


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes strings :class:`_Loader` would read as floats, so saved configs load back equal."""


_Dumper.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    _FLOAT_WITHOUT_DOT,
    list("-+0123456789."),
)


def yaml_error_message(path: str, err: yaml.YAMLError) -> str:
    """``<file>:<line>: not valid YAML: <problem>`` on one line (a ``!!python`` tag is refused here: the loader is
    safe and constructs plain data only)."""
    mark = getattr(err, "problem_mark", None)
    where = f"{path}:{mark.line + 1}" if mark is not None else path
    problem = getattr(err, "problem", None) or str(err)
    return f"{where}: not valid YAML: {' '.join(str(problem).split())}"


def read_yaml(path: str) -> Dict[str, Any]:
    """Read one YAML file (without following ``base_config``) as a dict."""
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.load(f, Loader=_Loader)  # noqa: S506 - _Loader is a SafeLoader
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(yaml_error_message(path, err)) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping, got {type(data).__name__}")
    return data


def _deep_merge(base: Dict[str, Any], top: Dict[str, Any]) -> Dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


# The predecessor's names (MindRLHF's PPOConfig) for training settings, accepted in the ``ppo`` and ``grpo``
# sections of a recipe and mapped once, as each file is read, onto the sections every stage reads. A name
# describing the learning-rate schedule also selects the predecessor's schedule (cosine after linear warmup steps)
# unless the same file sets ``lr_schedule.type`` / ``warmup_ratio`` itself.
SEED_SECTIONS = ("ppo", "grpo")
SEED_NAMES: Dict[str, Tuple[str, ...]] = {
    "start_lr": ("optimizer.learning_rate", "lr_schedule.learning_rate"),
    "end_lr": ("lr_schedule.lr_end",),
    "warmup_step": ("lr_schedule.warmup_steps",),
    "decay_steps": ("lr_schedule.total_steps",),
    "beta1": ("optimizer.beta1",),
    "beta2": ("optimizer.beta2",),
    "eps": ("optimizer.eps",),
    "weight_decay": ("optimizer.weight_decay",),
    "loss_scale_value": ("runner_wrapper.loss_scale_value",),
    "scale_factor": ("runner_wrapper.scale_factor",),
    "scale_window": ("runner_wrapper.scale_window",),
    "use_clip_grad": ("runner_wrapper.use_clip_grad",),
    "max_grad_norm": ("runner_wrapper.max_grad_norm",),
}
_SEED_SCHEDULE = {"lr_schedule.type": "cosine", "lr_schedule.warmup_ratio": 0.0}  # implied by the lr names
_SEED_LR_NAMES = ("start_lr", "end_lr", "warmup_step", "decay_steps")


_MISSING = object()


def _get_dotted(data: Dict[str, Any], dotted: str) -> Any:
    section, key = dotted.split(".")
    node = data.get(section)
    return node.get(key, _MISSING) if isinstance(node, dict) else _MISSING


def map_seed_names(data: Dict[str, Any], where: str) -> Dict[str, Any]:
    """Move the seed names of :data:`SEED_NAMES` found in one file's (or one override list's) ``ppo`` / ``grpo``
    sections to the sections they name.

    Args:
        data: the mapping read from one file, before ``base_config`` merging (not changed).
        where: the file name (or ``"--set"`` for the overrides) for error messages.

    Returns:
        A copy with the seed names removed and their values set under ``optimizer``, ``lr_schedule`` and
        ``runner_wrapper``.

    Raises:
        ConfigError: when the same file sets a setting twice: a seed name and its section key, or one seed name
            in both ``ppo`` and ``grpo``; the message names both keys.
    """
    out = {key: dict(value) if isinstance(value, dict) else value for key, value in data.items()}
    found = {
        f"{sec}.{name}": out[sec].pop(name)
        for sec in SEED_SECTIONS
        if isinstance(out.get(sec), dict)
        for name in list(out[sec])
        if name in SEED_NAMES
    }
    set_by: Dict[str, str] = {}
    for source, value in found.items():
        for target in SEED_NAMES[source.split(".")[1]]:
            other = set_by.get(target) or (target if _get_dotted(data, target) is not _MISSING else None)
            if other:
                raise ConfigError(
                    f"{where}: {source} and {other} both set {target}; keep one ({source} is the "
                    f"predecessor's name for {' and '.join(SEED_NAMES[source.split('.')[1]])})"
                )
            set_by[target] = source
            section, key = target.split(".")
            if not isinstance(out.get(section, {}), dict):
                raise ConfigError(f"{where}: {section} is not a section")
            out.setdefault(section, {})[key] = value
    if any(source.split(".")[1] in _SEED_LR_NAMES for source in found):
        for target, value in _SEED_SCHEDULE.items():
            if _get_dotted(data, target) is _MISSING:
                section, key = target.split(".")
                out.setdefault(section, {})[key] = value
    return out


def read_yaml_with_bases(path: str, _seen: Sequence[str] = ()) -> Dict[str, Any]:
    """Read a YAML file and merge the files named by its ``base_config`` key underneath it."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"{path}: base_config cycle through {' -> '.join(_seen)}")
    data = map_seed_names(read_yaml(path), path)
    bases = data.pop("base_config", None) or []
    if isinstance(bases, str):
        bases = [bases]
    merged: Dict[str, Any] = {}
    for base in bases:
        base_path = os.path.join(os.path.dirname(path), base)
        merged = _deep_merge(merged, read_yaml_with_bases(base_path, (*_seen, path)))
    return _deep_merge(merged, data)


def apply_overrides(data: Dict[str, Any], overrides: Sequence[str]) -> Dict[str, Any]:
    """Apply ``dotted.key=value`` overrides to a copy of ``data``; values are parsed as YAML scalars (``3``,
    ``1e-4``, ``true``)."""
    data = copy.deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.load(raw, Loader=_Loader) if raw.strip() else ""  # noqa: S506
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {err}") from None
        node = data
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        node[parts[-1]] = value
    return data


# ---------------------------------------------------------------------------------------------------------------
# dict -> dataclass with type checks


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _check_value(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_value(arg, value, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: expected {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__} {value!r}")
        return [_check_value(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)] if args else value
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__} {value!r}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a section (mapping), got {type(value).__name__} {value!r}")
        return from_dict(tp, value, where)
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is Any:
        return value
    if tp in (int, float) and isinstance(value, bool) or not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__} {value!r}")
    return value


def from_dict(cls: type, data: Dict[str, Any], where: str = ""):
    """Build dataclass ``cls`` from ``data``, rejecting unknown keys and wrong types.

    Args:
        cls: the dataclass to build.
        data: its values; nested dataclass fields take nested mappings.
        where: dotted path of ``data`` for error messages.
    """
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        path = f"{where}.{key}" if where else str(key)
        if key not in names:
            near = difflib.get_close_matches(str(key), names, n=1, cutoff=0.5)
            hint = f"; did you mean {near[0]!r}?" if near else f"; valid keys: {', '.join(names)}"
            raise ConfigError(f"{path}: unknown key{hint}")
        kwargs[key] = _check_value(hints[key], value, path)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise ConfigError(f"{where}: {err}" if where and not str(err).startswith(where) else str(err)) from None


def drop_mindformers_only(data: Dict[str, Any], where: str) -> Dict[str, Any]:
    """A copy of ``data`` without the :data:`MINDFORMERS_ONLY_KEYS`, each logged as a warning naming ``where``."""
    out = dict(data)
    for section, keys in MINDFORMERS_ONLY_KEYS.items():
        if isinstance(out.get(section), dict) and set(keys) & set(out[section]):
            out[section] = {k: v for k, v in out[section].items() if k not in keys}
            for key in sorted(set(keys) & set(data[section])):
                hint = f" ({MINDFORMERS_KEY_HINTS[key]})" if key in MINDFORMERS_KEY_HINTS else ""
                logger.warning(
                    "%s: %s.%s is a mindformers setting with no effect here; ignored%s", where, section, key, hint
                )
    return out


def check_stage_sections(stage: str, path: Optional[str], overrides: Sequence[str]) -> None:
    """Refuse a section of :data:`STAGE_SECTIONS` that ``stage`` never reads, set in the recipe file itself or in
    the overrides. Sections inherited through ``base_config`` are not checked: shared base recipes legitimately
    carry the sections of several stages.

    Raises:
        ConfigError: ``<file>: section 'ppo' is not read by the sft stage``.
    """
    if stage not in STAGE_SECTIONS:
        raise ConfigError(f"stage {stage!r} is not one of {', '.join(STAGE_SECTIONS)}")
    unread = {name for names in STAGE_SECTIONS.values() for name in names} - set(STAGE_SECTIONS[stage])
    for where, data in ((path, read_yaml(path) if path else {}), ("--set", apply_overrides({}, overrides))):
        found = [key for key in data if key in unread]
        if found:
            raise ConfigError(f"{where}: section '{found[0]}' is not read by the {stage} stage")


def load_config(path: Optional[str] = None, overrides: Sequence[str] = (), stage: Optional[str] = None) -> RunConfig:
    """Load a :class:`RunConfig` from a YAML recipe plus ``key=value`` overrides.

    Errors name the file and the dotted key, for example
    ``run_gpt2_tiny.yaml: model.model_config.hiden_size: unknown key; did you mean 'hidden_size'?``. With
    ``stage`` (sft, rm, dpo, ppo, grpo), a section that stage never reads is refused
    (:func:`check_stage_sections`); without it (a recipe read for its model only) nothing is refused.
    """
    if stage is not None:
        check_stage_sections(stage, path, overrides)
    data = read_yaml_with_bases(path) if path else {}
    apply_overrides(data, overrides)  # a malformed override is refused here, against the files' sections
    data = _deep_merge(data, map_seed_names(apply_overrides({}, overrides), "--set"))
    data = drop_mindformers_only(data, path or "--set")
    try:
        return from_dict(RunConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}" if path else str(err)) from None


def save_config(config: RunConfig, path: str) -> None:
    """Write the resolved config as YAML, atomically (a temporary file renamed into place)."""
    from mindrlhf.atomic import atomic_open

    with atomic_open(path) as f:
        yaml.dump(dataclasses.asdict(config), f, Dumper=_Dumper, sort_keys=False, allow_unicode=True)
