"""What the harness adds to the Accelerator's DeepSpeed config."""

from types import SimpleNamespace

import torch

from harness.accel import DEEPSPEED_BUCKETS, size_deepspeed_buckets


def with_deepspeed(config: dict):
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))


def test_deepspeed_buckets_hold_at_most_the_model_and_set_sizes_are_kept():
    model = torch.nn.Linear(10, 3)  # 33 parameters
    config = {"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto", "allgather_bucket_size": 12345}}
    size_deepspeed_buckets(with_deepspeed(config), model)
    assert config["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 33, "allgather_bucket_size": 12345,
                                           "stage3_prefetch_bucket_size": 33}
    big = {}
    size_deepspeed_buckets(with_deepspeed(big), torch.nn.Embedding(60_000, 1_000))  # 6e7 parameters
    assert big["zero_optimization"] == {**DEEPSPEED_BUCKETS, "reduce_bucket_size": 60_000_000,
                                        "allgather_bucket_size": 60_000_000}
    size_deepspeed_buckets(SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None)), model)  # no DeepSpeed
