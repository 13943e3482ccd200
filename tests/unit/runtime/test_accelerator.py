"""What the harness adds to the Accelerator: its DeepSpeed config, the CPU threads, the check that the processes
form one group."""

import os
from types import SimpleNamespace

import psutil
import pytest
from accelerate.utils import DistributedType

from harness.errors import LaunchError
from harness.runtime.accelerator import check_world
from harness.runtime.deepspeed import DEEPSPEED_BUCKETS, size_deepspeed_buckets
from harness.runtime.threads import cpu_threads


def with_deepspeed(config: dict):
    return SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=SimpleNamespace(deepspeed_config=config)))


def test_deepspeed_buckets_hold_at_most_the_model_and_set_sizes_are_kept():
    config = {"zero_optimization": {"stage": 2, "reduce_bucket_size": "auto", "allgather_bucket_size": 12345}}
    size_deepspeed_buckets(with_deepspeed(config), 33)  # a model of 33 parameters
    assert config["zero_optimization"] == {"stage": 2, "reduce_bucket_size": 33, "allgather_bucket_size": 12345,
                                           "stage3_prefetch_bucket_size": 33}
    big = {}
    size_deepspeed_buckets(with_deepspeed(big), 60_000 * 1_000)  # an embedding of 6e7 parameters
    assert big["zero_optimization"] == {**DEEPSPEED_BUCKETS, "reduce_bucket_size": 60_000_000,
                                        "allgather_bucket_size": 60_000_000}
    size_deepspeed_buckets(SimpleNamespace(state=SimpleNamespace(deepspeed_plugin=None)), 33)  # no DeepSpeed


def test_cpu_threads_are_the_share_of_the_cores_or_what_the_environment_says(monkeypatch):
    cores = min(len(os.sched_getaffinity(0)), psutil.cpu_count(logical=False))
    monkeypatch.delenv("HARNESS_CPU_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what accelerate launch sets without use_cpu: not the harness's guide
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert cpu_threads() == cores
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(cores + 1))  # more processes than cores: one thread each
    assert cpu_threads() == 1
    monkeypatch.setenv("HARNESS_CPU_THREADS", "3")
    assert cpu_threads() == 3
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv("HARNESS_CPU_THREADS", bad)
        with pytest.raises(LaunchError, match=f"HARNESS_CPU_THREADS='{bad}': must be a whole number"):
            cpu_threads()


def test_a_process_group_that_disagrees_with_the_launcher_is_refused():
    """What the README's CPU DDP command gave before: two processes, each its own group of one (type NO)."""
    alone = SimpleNamespace(num_processes=1, distributed_type=DistributedType.NO)
    with pytest.raises(LaunchError, match=r"started 2 process\(es\) but they form a group of 1 \(NO\): they would "
                                          "train separate models on parts of the data"):
        check_world(alone, launched=2)
    check_world(alone, launched=1)
    check_world(SimpleNamespace(num_processes=2, distributed_type=DistributedType.MULTI_CPU), launched=2)
    with pytest.raises(LaunchError):
        check_world(SimpleNamespace(num_processes=4, distributed_type=DistributedType.MULTI_GPU), launched=2)
