"""The one place an Accelerator is built, for training and inference alike."""

from __future__ import annotations

import logging
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs
from torch import nn

from harness.models import num_parameters

# DeepSpeed's own defaults for its communication buffers, in elements
DEEPSPEED_BUCKETS = {"reduce_bucket_size": 500_000_000, "allgather_bucket_size": 500_000_000,
                     "stage3_prefetch_bucket_size": 50_000_000}


def build_accelerator(mixed_precision: str | None, grad_accum_steps: int = 1, seed: int = 0,
                      clip_grad_norm: float | None = None, batch_size: int | None = None) -> Accelerator:
    """``mixed_precision=None`` leaves precision to the launch config (ACCELERATE_MIXED_PRECISION)."""
    handlers = []
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Without CUDA, NCCL cannot work: processes must meet over gloo (DeepSpeed on CPU needs it said).
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    accelerator = Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum_steps,
        # The scheduler is stepped once per optimizer update by the loop, never once per process.
        step_scheduler_with_optimizer=False,
        # Shuffling depends only on (seed, epoch), identically on every process.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
        kwargs_handlers=handlers,
    )
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
    }
