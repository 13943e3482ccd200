"""The one place an Accelerator is built, for training and inference alike."""

from __future__ import annotations

import logging
import os
import sys

import torch
from accelerate import Accelerator
from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs


def build_accelerator(mixed_precision: str | None, grad_accum_steps: int = 1, seed: int = 0) -> Accelerator:
    """``mixed_precision=None`` leaves precision to the launch config (ACCELERATE_MIXED_PRECISION)."""
    handlers = []
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # Without CUDA, NCCL cannot work: processes must meet over gloo (DeepSpeed on CPU needs it said).
        handlers.append(InitProcessGroupKwargs(backend="gloo"))
    return Accelerator(
        mixed_precision=mixed_precision,
        gradient_accumulation_steps=grad_accum_steps,
        # The scheduler is stepped once per optimizer update by the loop, never once per process.
        step_scheduler_with_optimizer=False,
        # Shuffling depends only on (seed, epoch), identically on every process.
        dataloader_config=DataLoaderConfiguration(use_seedable_sampler=True, data_seed=seed),
        kwargs_handlers=handlers,
    )


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
