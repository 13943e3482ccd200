"""Per-sample predictions of one split and the metrics computed from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F


@dataclass
class Predictions:
    """One row per sample, ordered by dataset index. ``labels`` is -1 for unlabeled images. ``log_probs`` holds
    every class's log-probability (the model's, or the average of an ensemble's or of several views')."""

    indices: np.ndarray  # (n,) dataset indices
    labels: np.ndarray  # (n,)
    log_probs: np.ndarray  # (n, classes) float32
    losses: np.ndarray  # (n,) plain cross-entropy per sample (nan when unlabeled)
    uncalibrated: Predictions | None = None  # the model's own, where these were calibrated (harness.evaluation.evaluate)

    @classmethod
    def from_batches(cls, batches: list[tuple[torch.Tensor, ...]]) -> "Predictions":
        columns = [torch.cat(parts).numpy() for parts in zip(*batches)]
        order = np.argsort(columns[0], kind="stable")
        return cls(*(column[order] for column in columns))

    @property
    def probabilities(self) -> np.ndarray:
        return np.exp(self.log_probs)

    @property
    def predicted(self) -> np.ndarray:
        return self.log_probs.argmax(axis=1)

    @property
    def confidence(self) -> np.ndarray:
        return np.exp(self.log_probs.max(axis=1))

    def top(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` most likely classes of each sample, most likely first, and their probabilities."""
        k = min(k, self.log_probs.shape[1])
        classes = np.argsort(-self.log_probs, axis=1, kind="stable")[:, :k]
        return classes, np.exp(np.take_along_axis(self.log_probs, classes, axis=1))

    def scaled(self, temperature: float) -> "Predictions":
        """The same predictions with their logits divided by ``temperature`` (which class is predicted never
        changes), and the losses of those probabilities."""
        scaled = calibrated(torch.from_numpy(self.log_probs), temperature)
        losses = losses_of(scaled, torch.from_numpy(self.labels))
        return Predictions(self.indices, self.labels, scaled.numpy(), losses.numpy(), uncalibrated=self)

    @property
    def labeled(self) -> bool:
        return len(self.labels) > 0 and bool((self.labels >= 0).all())

    def __len__(self) -> int:
        return len(self.indices)

    def accuracy(self) -> float:
        return float((self.predicted == self.labels).mean()) if len(self) else float("nan")

    def loss(self) -> float:
        return float(self.losses.mean()) if len(self) else float("nan")

    def confusion(self, num_classes: int) -> np.ndarray:
        """Counts of (true class, predicted class)."""
        return confusion_counts(self.labels, self.predicted, num_classes)


def confusion_counts(labels: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Counts of (true class, predicted class), classes by index."""
    pairs = labels.astype(np.int64) * num_classes + predicted
    return np.bincount(pairs, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def losses_of(log_probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Each sample's plain cross-entropy under ``log_probs``; nan for an unlabeled one (label -1)."""
    labeled = labels >= 0
    losses = torch.full_like(log_probs[:, 0], float("nan"))
    if labeled.any():
        losses[labeled] = F.nll_loss(log_probs[labeled], labels[labeled], reduction="none")
    return losses


def calibrated(log_probs: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """Log-probabilities with their logits divided by ``temperature`` (None: as they are). Dividing the
    log-probabilities is dividing the logits (they differ by a constant per sample); one function, so that a run's
    final evaluation and infer.py compute the same numbers bit for bit."""
    if temperature is None:
        return log_probs
    # In float64, then rounded once: the division and the second log-softmax add no float32 error of their own.
    return (log_probs.double() / temperature).log_softmax(dim=1).to(log_probs.dtype)
