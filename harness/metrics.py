"""Per-sample predictions of one split and the metrics computed from them."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from sklearn.metrics import classification_report, confusion_matrix


@dataclass
class Predictions:
    """One row per sample, ordered by dataset index. ``labels`` is -1 for unlabeled images."""

    indices: np.ndarray  # (n,) dataset indices
    labels: np.ndarray  # (n,)
    topk_classes: np.ndarray  # (n, k) class indices, most likely first
    topk_probs: np.ndarray  # (n, k)
    losses: np.ndarray  # (n,) plain cross-entropy per sample (nan when unlabeled)

    @classmethod
    def from_batches(cls, batches: list[tuple[torch.Tensor, ...]]) -> "Predictions":
        columns = [torch.cat(parts).cpu().numpy() for parts in zip(*batches)]
        order = np.argsort(columns[0], kind="stable")
        return cls(*(column[order] for column in columns))

    @property
    def predicted(self) -> np.ndarray:
        return self.topk_classes[:, 0]

    @property
    def confidence(self) -> np.ndarray:
        return self.topk_probs[:, 0]

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
        return confusion_matrix(self.labels, self.predicted, labels=list(range(num_classes)))

    def report(self, classes: list[str]) -> str:
        return classification_report(
            self.labels, self.predicted, labels=list(range(len(classes))), target_names=classes, digits=4,
            zero_division=0,
        )
