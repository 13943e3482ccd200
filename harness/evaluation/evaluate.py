"""Evaluation, shared by training and inference: every sample of a loader predicted exactly once, whatever the
number of processes, by one model or several, in one view or several."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator

from harness.data.workers import batches_of
from harness.evaluation.predictions import Predictions
from harness.evaluation.tta import TTA_SETS, View, mean_log_probabilities
from harness.models.buffers import sync_buffers
from harness.models.inputs import ModelInputs

TOP_K = 5


def evaluate(accelerator: Accelerator, model, loader, inputs: ModelInputs, views: list[View] | None = None
             ) -> Predictions:
    """Predictions for every sample of ``loader`` exactly once, whatever the number of processes. ``model`` may
    be several (an ensemble) and ``views`` several (test-time augmentation): their probabilities are averaged."""
    models = list(model) if isinstance(model, (list, tuple)) else [model]
    for member in models:
        sync_buffers(accelerator, member)
        member.eval()
    batches = []
    # no_grad, not inference_mode: FSDP2 cannot gather its shards under inference_mode when that is the model's
    # first forward (a resume straight to the final evaluation): "Inference tensors do not track version counter"
    # (pytorch/pytorch#197327).
    with torch.no_grad():
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
