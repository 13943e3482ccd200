"""A model's buffers (BatchNorm statistics) where DeepSpeed and FSDP leave them wrong: their dtype, and the same
values on every process."""

from __future__ import annotations

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast

from harness.models.inputs import input_dtype


def match_buffers_to_params(model, compute_dtype: torch.dtype | None = None) -> None:
    """DeepSpeed bf16/fp16 casts the parameters but not the buffers, and BatchNorm then refuses its mixed
    inputs; give floating buffers the parameters' dtype (nothing changes in float32). FSDP's mixed precision
    keeps float32 parameters and computes in ``compute_dtype``: the buffers take that one."""
    dtype = compute_dtype or input_dtype(model)
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.data = buffer.data.to(dtype)


def sync_buffers(accelerator: Accelerator, model) -> None:
    """Give every process the main process's buffers (BatchNorm statistics). DDP does so at each forward;
    DeepSpeed and FSDP do not, and their checkpoints hold the main process's buffers only, so without this each
    process would evaluate with other statistics, and differently after a resume."""
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            broadcast(buffer, from_process=0)
