"""Shared builders for the test suite: tiny model configs, padded batches and Hugging Face references.

Tiny shapes keep MindSpore graph compilation to a few seconds per network on a 2-core CPU. Token ids: 0 is the
pad id, 1/2 are bos/eos, text tokens are drawn from ``[3, vocab)`` so a pad id never occurs inside text (Hugging
Face's sequence classifiers find the last real token by looking for ``pad_token_id``).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import mindspore as ms
from mindspore import Tensor

from mindrlhf import rl
from mindrlhf.config import LossScaleConfig, LrScheduleConfig, ModelConfig, OptimizerConfig

PAD, BOS, EOS = 0, 1, 2
FIRST_TEXT_ID = 3
SEQ_LEN = 8  # the one sequence length most tests use, so graph mode compiles each network once
LENGTHS = (8, 5, 2)  # real tokens per row of the standard padded batch (one full row, two padded ones)


def tiny_gpt2_config(**overrides) -> ModelConfig:
    """A 2-layer GPT-2 with hidden size 32, 4 heads and vocab 100 (untied options via ``overrides``)."""
    base = dict(
        type="gpt2",
        vocab_size=100,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        intermediate_size=64,
        seq_length=32,
        hidden_act="gelu",
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return ModelConfig(**{**base, **overrides})


def tiny_llama_config(**overrides) -> ModelConfig:
    """A 2-layer Llama with grouped-query attention (4 query heads, 2 key/value heads), hidden 32, MLP 64."""
    base = dict(
        type="llama",
        vocab_size=100,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        seq_length=32,
        hidden_act="silu",
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return ModelConfig(**{**base, **overrides})


TINY_CONFIGS = {"gpt2": tiny_gpt2_config, "llama": tiny_llama_config}


def tiny_qwen2_config(**overrides) -> ModelConfig:
    """A 2-layer Qwen2 (q/k/v biases) with grouped-query attention (4 query heads, 2 key/value heads), hidden 32,
    MLP 64, Qwen2's rotary base 1e6, untied embeddings (``tie_word_embeddings=True`` via ``overrides``)."""
    base = dict(
        type="qwen2",
        vocab_size=100,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        num_kv_heads=2,
        intermediate_size=64,
        seq_length=64,
        hidden_act="silu",
        rope_theta=1e6,
        tie_word_embeddings=False,
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return ModelConfig(**{**base, **overrides})


def tiny_gptj_config(**overrides) -> ModelConfig:
    """A 2-layer GPT-J with hidden 32, 4 heads of 8 dims, rotary on the first 4 of them, MLP 64."""
    base = dict(
        type="gptj",
        vocab_size=100,
        hidden_size=32,
        num_layers=2,
        num_heads=4,
        rotary_dim=4,
        intermediate_size=64,
        seq_length=64,
        hidden_act="gelu",
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return ModelConfig(**{**base, **overrides})


def tiny_bloom_config(**overrides) -> ModelConfig:
    """A 2-layer BLOOM with hidden 48 and 6 heads (not a power of two: the ALiBi slopes' second sequence)."""
    base = dict(
        type="bloom",
        vocab_size=100,
        hidden_size=48,
        num_layers=2,
        num_heads=6,
        seq_length=64,
        hidden_act="gelu",
        pad_token_id=PAD,
        bos_token_id=BOS,
        eos_token_id=EOS,
    )
    return ModelConfig(**{**base, **overrides})


# the families added beside GPT-2 and Llama, tested in tests/test_families.py
NEW_FAMILY_CONFIGS = {"qwen2": tiny_qwen2_config, "gptj": tiny_gptj_config, "bloom": tiny_bloom_config}


def rl_training_sections(lr: float, weight_decay: float = 0.01, eps: float = 1e-8) -> dict:
    """The ``optimizer``, ``lr_schedule`` and ``runner_wrapper`` of the RL trainer tests (``RunConfig`` keywords):
    AdamW at a constant ``lr`` (a cosine from ``lr`` to ``lr``), float32 without loss scaling."""
    return {
        "optimizer": OptimizerConfig(learning_rate=lr, eps=eps, weight_decay=weight_decay),
        "lr_schedule": LrScheduleConfig(type="cosine", learning_rate=lr, lr_end=lr),
        "runner_wrapper": LossScaleConfig(loss_scale_value=1.0),
    }


def padded_batch(
    cfg: ModelConfig, lengths: Sequence[int] = LENGTHS, seq_len: int = SEQ_LEN, side: str = "right", seed: int = 0
) -> Tuple[np.ndarray, np.ndarray]:
    """Random text padded with ``cfg.pad_token_id`` on ``side``: ``input_ids, attention_mask`` both ``(B, S)`` int32."""
    rng = np.random.default_rng(seed)
    ids = np.full((len(lengths), seq_len), cfg.pad_token_id, np.int32)
    mask = np.zeros((len(lengths), seq_len), np.int32)
    for row, length in enumerate(lengths):
        span = slice(0, length) if side == "right" else slice(seq_len - length, seq_len)
        ids[row, span] = rng.integers(FIRST_TEXT_ID, cfg.vocab_size, length)
        mask[row, span] = 1
    return ids, mask


def positions_from_mask(mask: np.ndarray) -> np.ndarray:
    """numpy twin of the model's position ids: ``clip(cumsum(mask) - 1, 0)``."""
    return np.maximum(np.cumsum(mask, 1) - 1, 0)


def randomize_parameters(cell, seed: int = 0, scale: float = 0.2) -> None:
    """Overwrite every parameter with ``N(0, scale)`` noise (norm weights around 1), so biases and norm weights
    are not at their zero/one initial values and a mapping mistake changes the outputs."""
    rng = np.random.default_rng(seed)
    for param in cell.get_parameters():
        noise = rng.normal(0.0, scale, param.shape).astype(np.float32)
        if "norm" in param.name or ".ln_" in param.name:
            noise += 1.0
        param.set_data(Tensor(noise, param.dtype))


def parameter_arrays(cell) -> dict:
    """``{name: numpy array}`` of every parameter of ``cell``."""
    return {p.name: p.asnumpy() for p in cell.get_parameters()}


def ms_numpy(cell, *arrays):
    """Call ``cell`` on numpy arrays and return numpy output(s)."""
    out = cell(*(Tensor(a) for a in arrays))
    return tuple(o.asnumpy() for o in out) if isinstance(out, tuple) else out.asnumpy()


def torch_forward(hf_model, ids: np.ndarray, mask: np.ndarray, position_ids: np.ndarray = None, **kwargs):
    """Run a ``transformers`` model without gradients on numpy inputs (int64 as torch expects)."""
    import torch

    extra = {} if position_ids is None else {"position_ids": torch.from_numpy(position_ids.astype(np.int64))}
    with torch.no_grad():
        return hf_model(
            input_ids=torch.from_numpy(ids.astype(np.int64)),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            **extra,
            **kwargs,
        )


def load_transformers(folder: str, reward: bool = False):
    """Load a folder with ``transformers`` (eager attention, float32, eval mode)."""
    import transformers

    auto = transformers.AutoModelForSequenceClassification if reward else transformers.AutoModelForCausalLM
    return auto.from_pretrained(folder, attn_implementation="eager").eval()


def max_abs_diff(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """Largest ``|a - b|`` over the positions where ``where`` is true (broadcast over trailing axes)."""
    where = where.astype(bool)
    return float(np.abs(a[where] - b[where]).max())


def set_mode(name: str) -> None:
    """Switch MindSpore to ``graph`` or ``pynative`` on CPU."""
    mode = {"graph": ms.GRAPH_MODE, "pynative": ms.PYNATIVE_MODE}[name]
    ms.set_context(mode=mode, device_target="CPU")


def t32(x) -> Tensor:
    """``x`` as a float32 Tensor."""
    return Tensor(np.asarray(x, np.float32))


def mask_from_lengths(lengths, n) -> np.ndarray:
    """``(len(lengths), n)`` float32: row ``i`` has ones on its first ``lengths[i]`` columns."""
    return (np.arange(n)[None, :] < np.asarray(lengths)[:, None]).astype(np.float32)


class ThreadRanks:
    """``size`` simulated ranks, one thread each; ``reduce(rank)`` sums an array over them in rank order."""

    def __init__(self, size: int = 2):
        self.size = size
        self.barrier = threading.Barrier(size, timeout=60)
        self.slots: List[np.ndarray] = [None] * size

    def reduce(self, rank: int) -> rl.Reduce:
        def all_reduce(values):
            self.slots[rank] = np.array(values, np.float64)
            self.barrier.wait()
            total = self.slots[0].copy()
            for part in self.slots[1:]:
                total += part
            self.barrier.wait()
            return total

        return all_reduce

    def run(self, fn: Callable[[int, rl.Reduce], object]) -> list:
        """``fn(rank, reduce)`` on every rank at once; their results in rank order."""
        results, errors = [None] * self.size, []

        def target(rank):
            try:
                results[rank] = fn(rank, self.reduce(rank))
            except BaseException as err:  # noqa: BLE001 - re-raised below
                errors.append(err)
                self.barrier.abort()

        threads = [threading.Thread(target=target, args=(rank,)) for rank in range(self.size)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        if errors:
            raise errors[0]
        return results


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for msrun's scheduler)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def venv_env(**extra: str) -> Dict[str, str]:
    """This environment with the running interpreter's folder first on PATH (msrun starts ``python`` from PATH)."""
    return dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""), **extra)


def run_two_msrun_workers(
    tmp_dir: str, script_and_args: Sequence[str], extra_env: Optional[Dict[str, str]] = None
) -> Tuple[subprocess.CompletedProcess, str]:
    """``msrun`` with two local CPU workers running ``script_and_args`` in ``tmp_dir`` (logs under
    ``tmp_dir/msrun_log``); returns the finished process and the last 3000 characters of every worker log, joined."""
    msrun = os.path.join(os.path.dirname(sys.executable), "msrun")
    proc = subprocess.run(
        [
            msrun,
            "--worker_num=2",
            "--local_worker_num=2",
            f"--master_port={free_port()}",
            f"--log_dir={tmp_dir}/msrun_log",
            "--join=True",
            *script_and_args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=venv_env(**(extra_env or {})),
        cwd=tmp_dir,
    )
    logs = "".join(
        open(os.path.join(tmp_dir, "msrun_log", f), encoding="utf-8", errors="replace").read()[-3000:]
        for f in os.listdir(os.path.join(tmp_dir, "msrun_log"))
    )
    return proc, logs
