"""Calibration: how far a model's confidence is from how often it is right, and temperature scaling, which fits one
number on the validation split after training and divides the logits by it (Guo et al., 2017). The predicted class
never changes; the probabilities move toward what the model's accuracy says they are."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from harness.evaluation.predictions import Predictions

BINS = 15  # equal-width confidence bins of the expected calibration error and the reliability diagram


def fit_temperature(preds: Predictions) -> float:
    """The temperature that minimises the negative log-likelihood of labeled ``preds``; 1.0 where none does
    (``unfitted`` says why)."""
    if unfitted(preds):
        return 1.0
    log_probs = torch.from_numpy(preds.log_probs).double()
    labels = torch.from_numpy(preds.labels).long()
    # The NLL is convex in the inverse temperature, with one minimum where ``unfitted`` finds nothing against:
    # L-BFGS on its logarithm (which keeps it positive) finds it from 1.
    log_inverse = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_inverse], lr=1.0, max_iter=100, tolerance_grad=1e-10,
                                  tolerance_change=1e-12, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(log_probs * log_inverse.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    temperature = float(torch.exp(-log_inverse.detach()))
    if not np.isfinite(temperature) or preds.scaled(temperature).loss() > preds.loss():
        return 1.0
    return temperature


def unfitted(preds: Predictions) -> str | None:
    """Why no temperature minimises the log loss of ``preds`` (None: one does). Where every image's own class
    scores highest, the loss falls all the way to a temperature of 0 (probabilities of 1, which the next mistake
    would make infinitely wrong); where the own classes score no higher than the others on average, it falls as
    the temperature grows without bound (every probability equal). Neither is a calibration."""
    if not len(preds) or not preds.labeled:
        return "it has no labeled images"
    own = np.take_along_axis(preds.log_probs, preds.labels[:, None], axis=1)[:, 0]
    if (own >= preds.log_probs.max(axis=1)).all():
        return (f"each of its {len(preds)} images has its own class scored highest: the log loss falls toward a "
                "temperature of 0, without a minimum")
    if (own - preds.log_probs.mean(axis=1)).mean() <= 0:
        return ("its images' own classes score no higher than the others on average: the log loss falls as the "
                "temperature grows, without a minimum")
    return None


@dataclass
class Reliability:
    """Per confidence bin (equal width over [0, 1]): how many samples, their mean confidence and accuracy."""

    edges: np.ndarray  # (BINS + 1,)
    counts: np.ndarray  # (BINS,)
    confidence: np.ndarray  # (BINS,) nan where empty
    accuracy: np.ndarray  # (BINS,) nan where empty

    @property
    def ece(self) -> float:
        """The expected calibration error: the sample-weighted mean of |accuracy - confidence| over the bins."""
        filled = self.counts > 0
        gaps = np.abs(self.accuracy[filled] - self.confidence[filled])
        return float((gaps * self.counts[filled]).sum() / max(self.counts.sum(), 1))


def reliability(preds: Predictions, bins: int = BINS) -> Reliability:
    """Each sample's top confidence binned (a bin holds (low, high], the first [0, high]) against whether the top
    class was right."""
    confidence = preds.confidence.astype(np.float64)
    correct = (preds.predicted == preds.labels).astype(np.float64)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence, minlength=bins) / counts
        accuracy = np.bincount(which, correct, minlength=bins) / counts
    return Reliability(edges, counts, mean_confidence, accuracy)
