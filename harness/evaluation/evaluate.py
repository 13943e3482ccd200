"""Evaluation, shared by training and inference: every sample of a loader predicted exactly once, whatever the
number of processes, by one model or several, in one view or several."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from harness.data.workers import batches_of
from harness.evaluation.predictions import Predictions, calibrated, losses_of
from harness.evaluation.tta import TTA_SETS, View, mean_log_probabilities
from harness.models.buffers import sync_buffers
from harness.models.inputs import ModelInputs


def evaluate(accelerator: Accelerator, model, loader, inputs: ModelInputs, views: list[View] | None = None,
             temperatures: list[float] | None = None) -> Predictions:
    """Predictions for every sample of ``loader`` exactly once, whatever the number of processes. ``model`` may
    be several (an ensemble) and ``views`` several (test-time augmentation): their probabilities are averaged.
    With ``temperatures`` (one per model), each model's logits are divided by its own first (calibration), and
    the predictions carry the uncalibrated ones beside them (``Predictions.uncalibrated``)."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    for member in models:
        sync_buffers(accelerator, member)
        member.eval()
    batches, raw_batches = [], []
    # no_grad, not inference_mode: FSDP2 cannot gather its shards under inference_mode when that is the model's
    # first forward (a resume straight to the final evaluation): "Inference tensors do not track version counter"
    # (pytorch/pytorch#197327).
    with torch.no_grad():
        for images, labels, indices in batches_of(loader):
            x = inputs(images)
            with accelerator.autocast():
                logits = [[member(view(x)).float() for view in views or TTA_SETS["identity"]] for member in models]
            batches.append(_gathered(accelerator, _scored(logits, temperatures, labels, indices)))
            if temperatures is not None:
                raw_batches.append(_gathered(accelerator, _scored(logits, None, labels, indices)))
    predictions = Predictions.from_batches(batches)
    if temperatures is not None:
        predictions.uncalibrated = Predictions.from_batches(raw_batches)
    return predictions


def _gathered(accelerator: Accelerator, scored: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A batch's scores from every process, in host memory: the device holds one batch's at a time, not the
    split's every log-probability (50,000 images x 1,000 classes are 200 MB)."""
    return tuple(tensor.cpu() for tensor in accelerator.gather_for_metrics(scored))


def _scored(logits: list[list[torch.Tensor]], temperatures: list[float] | None, labels: torch.Tensor,
            indices: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """``(indices, labels, log_probs, losses)`` of a batch: every model's views (``logits[model][view]``), each
    divided by its model's temperature, averaged as probabilities."""
    log_probs = mean_log_probabilities([calibrated(view.log_softmax(dim=1), temperatures[model] if temperatures else None)
                                        for model, views in enumerate(logits) for view in views])
    return indices, labels, log_probs, losses_of(log_probs, labels)
