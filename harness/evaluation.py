"""Evaluation, shared by training and inference: every sample predicted exactly once, whatever the number of
processes, and the dtype and buffer fixes that DeepSpeed's bf16/fp16 needs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast

from harness.config.schema import DataConfig
from harness.data.workers import batches_of
from harness.metrics import Predictions
from harness.tta import TTA_SETS, View, mean_log_probabilities

TOP_K = 5


def input_dtype(model) -> torch.dtype:
    """The dtype the model's parameters hold: float32, except under DeepSpeed bf16/fp16, which casts the model
    itself and wants its inputs cast alike."""
    return next(model.parameters()).dtype


class ModelInputs:
    """A batch from the loaders made into the model's input on the device: ``uint8`` images are scaled to 0-1
    and normalised here, with the very operations (and results) of torchvision's ToTensor and Normalize; then
    the model's dtype and memory format (``model.channels_last``)."""

    def __init__(self, model, cfg: DataConfig, channels_last: bool = False) -> None:
        self.dtype = input_dtype(model)
        self.mean, self.std = torch.tensor(cfg.mean).view(-1, 1, 1), torch.tensor(cfg.std).view(-1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            if self.mean.device != images.device:
                self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
            images = images.float().div_(255).sub_(self.mean).div_(self.std)
        return images.to(self.dtype, memory_format=self.memory_format)


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


def evaluate(accelerator: Accelerator, model, loader, inputs: ModelInputs, views: list[View] | None = None
             ) -> Predictions:
    """Predictions for every sample of ``loader`` exactly once, whatever the number of processes. ``model`` may
    be several (an ensemble) and ``views`` several (test-time augmentation): their probabilities are averaged."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    for member in models:
        sync_buffers(accelerator, member)
        member.eval()
    batches = []
    with torch.inference_mode():
        for images, labels, indices in batches_of(loader):
            x = inputs(images)
            with accelerator.autocast():
                logits = [member(view(x)) for member in models for view in views or TTA_SETS["identity"]]
            log_probs = mean_log_probabilities([each.float().log_softmax(dim=1) for each in logits])
            probs = log_probs.exp()
            top = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
            labeled = labels >= 0
            losses = torch.full_like(probs[:, 0], float("nan"))
            if labeled.any():
                losses[labeled] = F.nll_loss(log_probs[labeled], labels[labeled], reduction="none")
            batches.append(accelerator.gather_for_metrics((indices, labels, top.indices, top.values, losses)))
    return Predictions.from_batches(batches)
