"""The one place an Accelerator is built, for training and inference alike, and the checks that its processes
form one group."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
from accelerate import Accelerator
from accelerate.utils import (
    DataLoaderConfiguration,
    DistributedType,
    FullyShardedDataParallelPlugin,
    InitProcessGroupKwargs,
    get_int_from_env,
)

from harness.errors import LaunchError
from harness.runtime.deepspeed import configure_deepspeed
from harness.runtime.fsdp import check_fsdp, fsdp_requested, fsdp_units, select_fsdp
from harness.runtime.threads import cpu_threads


def build_accelerator(mixed_precision: str | None, grad_accum_steps: int = 1,
                      clip_grad_norm: float | None = None, batch_size: int | None = None,
                      collective_timeout_minutes: float | None = None) -> Accelerator:
    """``mixed_precision=None`` leaves precision to the launch config (ACCELERATE_MIXED_PRECISION). On a CPU,
    torch gets ``cpu_threads()`` threads, whatever the launcher set. ``collective_timeout_minutes``: how long a
    collective waits for the other processes (None: torch's default, 30 minutes over gloo, 10 over NCCL)."""
    launched = launched_processes()
    # Without CUDA, processes meet over gloo (NCCL cannot work; DeepSpeed on CPU needs it said). FSDP joins them
    # even when alone: one process is a group of one, whose sharded checkpoints load into any other count.
    on_cpu = not torch.cuda.is_available() and (launched > 1 or fsdp_requested())
    timeout = None if collective_timeout_minutes is None else timedelta(minutes=collective_timeout_minutes)
    handlers = [InitProcessGroupKwargs(backend="gloo" if on_cpu else "nccl", timeout=timeout)]
    if on_cpu:  # what DeepSpeed finds by itself without a GPU, said, so that it does not warn of it on every process
        os.environ.setdefault("DS_ACCELERATOR", "cpu")  # (accelerate imports it under FSDP too, wherever installed)
    cpu_fsdp = FullyShardedDataParallelPlugin() if on_cpu and fsdp_requested() else None
    accelerator = Accelerator(
        # accelerate's torchrun path (multi_gpu, cpu_ddp and fsdp launch configs) does not pass use_cpu on:
        # without cpu=True, processes without a GPU would each train alone (distributed type NO). DeepSpeed
        # keeps its own engine, which cpu=True would switch off.
        cpu=on_cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true",
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum_steps,
        # The scheduler is stepped once per optimizer update by the loop, never once per process.
        step_scheduler_with_optimizer=False,
        # Batches go to the device without waiting (from pinned memory on a GPU). The shuffle is the train
        # loader's own (harness.data.loaders.EpochSampler), a function of (seed, epoch) alike on every process.
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        fsdp_plugin=cpu_fsdp,
        kwargs_handlers=handlers,
    )
    if cpu_fsdp is not None:
        select_fsdp(accelerator, cpu_fsdp)
    check_world(accelerator, launched)
    check_fsdp(accelerator)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    configure_deepspeed(accelerator, grad_accum_steps, clip_grad_norm, batch_size)
    return accelerator


def bare(model):
    """The module inside a DDP wrapper or a DeepSpeed engine; FSDP2 shards the module in place (accelerate's
    unwrap_model imports DeepSpeed, 2 s, wherever it is installed)."""
    return getattr(model, "module", model)


def launched_processes() -> int:
    """How many processes the launcher started, as it tells each of them (torchrun's WORLD_SIZE, or MPI's)."""
    world = get_int_from_env(["WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE"], 1)
    if world > 1 and get_int_from_env(["RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK"], -1) < 0:
        raise LaunchError(f"the environment says {world} processes (WORLD_SIZE) but gives this one no RANK: start "
                          "several processes with accelerate launch (see the README), or unset WORLD_SIZE")
    return world


def check_world(accelerator: Accelerator, launched: int) -> None:
    """Refuse a run whose processes would not train one model together: each would see part of the data and
    report metrics over it (a silent wrong result)."""
    distributed = accelerator.distributed_type != DistributedType.NO
    if accelerator.num_processes != launched or (launched > 1 and not distributed):
        raise LaunchError(
            f"the launcher started {launched} process(es) but they form a group of {accelerator.num_processes} "
            f"({distributed_type(accelerator)}): they would train separate models on parts "
            "of the data; use a launch config of launch_configs/ as the README shows")


def distributed_type(accelerator: Accelerator) -> str:
    """accelerate's name of how the processes train together: NO, MULTI_CPU, MULTI_GPU, DEEPSPEED, FSDP, ..."""
    return str(accelerator.distributed_type).rsplit(".", 1)[-1]


def environment(accelerator: Accelerator) -> dict:
    """Where and how the processes run, as the log and the summary report it (under FSDP, once the model is
    prepared: what it shards on its own)."""
    found = {
        "device": str(accelerator.device),
        "distributed_type": distributed_type(accelerator),
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "threads": torch.get_num_threads(),  # per process
    }
    units = fsdp_units(accelerator)
    if units is not None:
        found["fsdp_units"] = units
    return found
