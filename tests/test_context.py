"""parallel_config against the devices of a run: the settings handed to MindSpore, and clear errors."""

from __future__ import annotations

import mindspore as ms
import pytest

from mindrlhf.config import ConfigError, ParallelConfig, load_config
from mindrlhf.context import parallel_settings


def test_default_is_data_parallel_over_every_device():
    settings = parallel_settings(ParallelConfig(), 4, "CPU")
    assert settings == dict(
        parallel_mode=ms.ParallelMode.DATA_PARALLEL,
        gradients_mean=True,
        device_num=4,
        comm_fusion={"allreduce": {"mode": "size", "config": 25}},
    )
    assert parallel_settings(ParallelConfig(data_parallel=2), 2, "CPU")["device_num"] == 2


def test_allreduce_bucket_size_reaches_mindspore_fusion():
    assert parallel_settings(ParallelConfig(allreduce_bucket_mb=4), 2, "CPU")["comm_fusion"] == {
        "allreduce": {"mode": "size", "config": 4}
    }
    assert "comm_fusion" not in parallel_settings(ParallelConfig(allreduce_bucket_mb=0), 2, "CPU")
    with pytest.raises(ConfigError, match="allreduce_bucket_mb must be >= 0"):
        ParallelConfig(allreduce_bucket_mb=-1)


@pytest.mark.parametrize(
    "cfg, devices, message",
    [
        (
            ParallelConfig(data_parallel=4),
            2,
            "data_parallel 4 x model_parallel 1 x pipeline_stage 1 = 4, but the run has 2 devices",
        ),
        (ParallelConfig(data_parallel=1, model_parallel=2), 4, "= 2, but the run has 4 devices"),
        (
            ParallelConfig(data_parallel=1, model_parallel=2),
            2,
            "model_parallel 2 / pipeline_stage 1 > 1 is not supported",
        ),
        (ParallelConfig(data_parallel=2, optimizer_shard=True), 2, "optimizer_shard needs semi_auto_parallel"),
    ],
)
def test_parallel_config_errors(cfg, devices, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parallel_settings(cfg, devices, "CPU")


def test_optimizer_sharding_on_ascend_is_semi_auto_parallel():
    cfg = load_config("model_configs/llama2_config/run_llama_2_7b_rm.yaml")
    settings = parallel_settings(cfg.parallel_config, 8, "Ascend")
    assert settings["parallel_mode"] == ms.ParallelMode.SEMI_AUTO_PARALLEL
    assert settings["enable_parallel_optimizer"] and settings["dataset_strategy"] == "data_parallel"
    with pytest.raises(ConfigError, match="but the run has 16 devices"):
        parallel_settings(cfg.parallel_config, 16, "Ascend")
