"""Evaluation, shared by training and inference: every sample predicted exactly once, whatever the number of
processes, and the dtype and buffer fixes that DeepSpeed's bf16/fp16 needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast

from harness.metrics import Predictions

TOP_K = 5


def input_dtype(model) -> torch.dtype:
    """The dtype the model's parameters hold: float32, except under DeepSpeed bf16/fp16, which casts the model
    itself and wants its inputs cast alike."""
    return next(model.parameters()).dtype


def match_buffers_to_params(model) -> None:
    """DeepSpeed bf16/fp16 casts the parameters but not the buffers, and BatchNorm then refuses its mixed
    inputs; give floating buffers the parameters' dtype (nothing changes in float32)."""
    dtype = input_dtype(model)
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.data = buffer.data.to(dtype)


def sync_buffers(accelerator: Accelerator, model) -> None:
    """Give every process the main process's buffers (BatchNorm statistics). DDP does so at each forward;
    DeepSpeed does not, and its checkpoints hold the main process's buffers only, so without this each
    process would evaluate with other statistics, and differently after a resume."""
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            broadcast(buffer, from_process=0)


def evaluate(accelerator: Accelerator, model, loader) -> Predictions:
    """Predictions for every sample of ``loader`` exactly once, whatever the number of processes."""
    sync_buffers(accelerator, model)
    model.eval()
    batches = []
    dtype = input_dtype(model)
    with torch.inference_mode():
        for images, labels, indices in loader:
            with accelerator.autocast():
                logits = model(images.to(dtype))
            logits = logits.float()
            probs = logits.softmax(dim=1)
            top = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
            labeled = labels >= 0
            losses = torch.full_like(probs[:, 0], float("nan"))
            if labeled.any():
                losses[labeled] = F.cross_entropy(logits[labeled], labels[labeled], reduction="none")
            batches.append(accelerator.gather_for_metrics((indices, labels, top.indices, top.values, losses)))
    return Predictions.from_batches(batches)
