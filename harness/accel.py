"""The one place an Accelerator is built, for training and inference alike."""

from __future__ import annotations

import logging
import os
import sys
from typing import Callable, TypeVar

import psutil
import torch
from accelerate import Accelerator
from accelerate.utils import (DataLoaderConfiguration, DistributedType, InitProcessGroupKwargs, broadcast_object_list,
                               gather_object, get_int_from_env)
from torch import nn

from harness.errors import LaunchError, UserError, one_line
from harness.models import num_parameters

T = TypeVar("T")

# DeepSpeed's own defaults for its communication buffers, in elements
DEEPSPEED_BUCKETS = {"reduce_bucket_size": 500_000_000, "allgather_bucket_size": 500_000_000,
                     "stage3_prefetch_bucket_size": 50_000_000}


def build_accelerator(mixed_precision: str | None, grad_accum_steps: int = 1,
                      clip_grad_norm: float | None = None, batch_size: int | None = None) -> Accelerator:
    """``mixed_precision=None`` leaves precision to the launch config (ACCELERATE_MIXED_PRECISION). On a CPU,
    torch gets ``cpu_threads()`` threads, whatever the launcher set."""
    launched = launched_processes()
    on_cpu = launched > 1 and not torch.cuda.is_available()
    # Without CUDA, NCCL cannot work: processes must meet over gloo (DeepSpeed on CPU needs it said).
    handlers = [InitProcessGroupKwargs(backend="gloo")] if on_cpu else []
    accelerator = Accelerator(
        # accelerate's torchrun path (multi_gpu and cpu_ddp launch configs) does not pass use_cpu on: without
        # cpu=True, processes without a GPU would each train alone (distributed type NO). DeepSpeed and FSDP
        # keep their own engine, which cpu=True would switch off.
        cpu=on_cpu and os.environ.get("ACCELERATE_USE_DEEPSPEED", "false") != "true"
        and os.environ.get("ACCELERATE_USE_FSDP", "false") != "true",
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum_steps,
        # The scheduler is stepped once per optimizer update by the loop, never once per process.
        step_scheduler_with_optimizer=False,
        # Batches go to the device without waiting (from pinned memory on a GPU). The shuffle is the train
        # loader's own (harness.data.EpochSampler), a function of (seed, epoch) alike on every process.
        dataloader_config=DataLoaderConfiguration(non_blocking=True),
        kwargs_handlers=handlers,
    )
    check_world(accelerator, launched)
    if accelerator.device.type == "cpu":
        torch.set_num_threads(cpu_threads())
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None:
        # The run config is the one source of truth for accumulation and clipping under DeepSpeed too
        # (accelerate would otherwise fill in its own defaults, clipping at 1.0); 0 turns clipping off.
        plugin.deepspeed_config["gradient_accumulation_steps"] = grad_accum_steps
        plugin.deepspeed_config["gradient_clipping"] = clip_grad_norm or 0.0
        if batch_size is not None:  # the model is prepared without its loader, which would tell DeepSpeed
            plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = batch_size
            plugin.deepspeed_config["train_batch_size"] = batch_size * grad_accum_steps * accelerator.num_processes
        # weights/*.safetensors are consolidated with accelerator.get_state_dict, which ZeRO-3 allows only so.
        plugin.deepspeed_config.setdefault("zero_optimization", {})["stage3_gather_16bit_weights_on_model_save"] = True
    return accelerator


def bare(model):
    """The module inside a DDP wrapper or a DeepSpeed engine (accelerate's unwrap_model imports DeepSpeed, 2 s,
    wherever it is installed)."""
    return getattr(model, "module", model)


def zero_stage(accelerator: Accelerator) -> int | None:
    """DeepSpeed's ZeRO stage (0 to 3); None without DeepSpeed."""
    plugin = accelerator.state.deepspeed_plugin
    return None if plugin is None else int(plugin.zero_stage)


def cpu_threads() -> int:
    """Torch threads for a process on a CPU: ``$HARNESS_CPU_THREADS`` (the SLURM scripts set it from the
    allocation), else ``share_of_cores()``. Not ``OMP_NUM_THREADS``: accelerate launch sets it to 1 for a launch
    config without ``use_cpu``."""
    given = os.environ.get("HARNESS_CPU_THREADS", "")
    if not given:
        return share_of_cores()
    if not given.isdigit() or int(given) < 1:
        raise LaunchError(f"HARNESS_CPU_THREADS={given!r}: must be a whole number of threads, at least 1 (or unset)")
    return int(given)


def share_of_cores() -> int:
    """This process's share of the physical cores it may run on (hyperthreads add little to torch's kernels),
    among the launcher's processes on this machine: what accelerate gives a launch config with ``use_cpu``,
    without the warning it prints then, and what it does not give one without (a single thread)."""
    cpus = len(os.sched_getaffinity(0))
    cores = min(cpus, psutil.cpu_count(logical=False) or cpus)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


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
            f"({str(accelerator.distributed_type).rsplit('.', 1)[-1]}): they would train separate models on parts "
            "of the data; use a launch config of launch_configs/ as the README shows")


def size_deepspeed_buckets(accelerator: Accelerator, model: nn.Module) -> None:
    """Before the model is prepared: DeepSpeed allocates its buckets whole, whatever the model's size (5e8
    elements, 2 GB in fp32, made ZeRO 1/2 on two CPU processes 18x slower for a small CNN), and accelerate can
    fill "auto" for them only for transformers models. So a bucket holds at most the whole model; a size
    the DeepSpeed config sets is kept."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    zero = plugin.deepspeed_config.setdefault("zero_optimization", {})
    parameters = num_parameters(model)
    for key, default in DEEPSPEED_BUCKETS.items():
        if zero.get(key, "auto") == "auto":
            zero[key] = min(default, parameters)


def on_main(accelerator: Accelerator, compute: Callable[[], T]) -> T:
    """``compute()`` on the main process only; every process gets its result (the same object), or raises
    the UserError it raised. For decisions that must be identical everywhere (the data, the run lock)."""
    if accelerator.num_processes == 1:
        return compute()
    box: list = [None]
    if accelerator.is_main_process:
        try:
            box = [(compute(), None)]
        except UserError as error:
            box = [(None, error)]
    broadcast_object_list(box)
    result, error = box[0]
    if error is not None:
        raise error
    return result


def first_failure(accelerator: Accelerator, action: Callable[[], T]) -> tuple[T | None, str | None]:
    """``action()`` on every process: its result, and the first failure on any process (as one line), the
    same on every process (a collective), so that all of them stop together and say the same."""
    try:
        result, failure = action(), None
    except Exception as error:  # libraries raise their own types for damaged files and failed writes
        result, failure = None, one_line(error)
    failures = gather_object([failure]) if accelerator.num_processes > 1 else [failure]
    return result, next((message for message in failures if message), None)


def leave_together(accelerator: Accelerator) -> None:
    """Every process waits for the others, then the process group is torn down. A process that exits while
    another still writes reports can take the job down with it (DeepSpeed's shared-memory transport aborts),
    and one that exits with its gloo group still alive can abort in its interpreter's teardown."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def setup_logging(accelerator: Accelerator | None = None) -> None:
    """Console logging from the main process only (the others report errors); accelerate's chatter muted.
    Before the Accelerator exists, the launcher's RANK says which process is the main one."""
    main = accelerator.is_main_process if accelerator else os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main else logging.ERROR,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("accelerate", "torch.distributed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_to_file(accelerator: Accelerator, path) -> None:
    if accelerator.is_main_process:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logging.getLogger().addHandler(handler)


def environment(accelerator: Accelerator) -> dict:
    """Where and how the processes run, as the log and the summary report it."""
    return {
        "device": str(accelerator.device),
        "distributed_type": str(accelerator.distributed_type).rsplit(".", 1)[-1],
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "threads": torch.get_num_threads(),  # per process
    }
