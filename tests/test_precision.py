"""Compute dtype: float16 runs on CPU close to float32; bfloat16 on CPU is refused with a clear error."""

from __future__ import annotations

import numpy as np
import pytest

from mindrlhf.config import ConfigError
from mindrlhf.models import CausalLM
from tests.helpers import TINY_CONFIGS, padded_batch, set_mode


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_float16_compute_is_close_to_float32(family):
    set_mode("graph")
    make = TINY_CONFIGS[family]
    ref, half = CausalLM(make()), CausalLM(make(compute_dtype="float16"))
    for src, dst in zip(ref.get_parameters(), half.get_parameters()):
        assert src.name == dst.name
        dst.set_data(src.data)
    from mindspore import Tensor

    for side in ("right", "left"):  # left padding: the pad queries' fully masked rows stay finite in float16
        ids, mask = padded_batch(ref.config, side=side)
        full = ref(Tensor(ids), Tensor(mask)).asnumpy()
        low = half(Tensor(ids), Tensor(mask)).asnumpy()
        assert low.dtype == np.float32  # logits leave the head in float32 whatever the compute dtype
        valid = mask.astype(bool)
        diff = np.abs(full[valid] - low[valid]).max()
        assert 0 < diff < 5e-3, side


def test_bfloat16_on_cpu_is_a_clear_error():
    set_mode("pynative")
    with pytest.raises(ConfigError, match="bfloat16.*CPU"):
        CausalLM(TINY_CONFIGS["llama"](compute_dtype="bfloat16"))
