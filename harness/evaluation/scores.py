"""Per-class scores of labeled predictions, by scikit-learn: precision, recall, F1 and support from the predicted
classes; one-vs-rest ROC and precision-recall curves, their AUC and average precision from the probabilities; the
pairs of classes most often taken for each other."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from harness.evaluation.predictions import Predictions


@dataclass
class ClassScores:
    """One entry per class, in class order. ``roc_auc`` and ``average_precision`` are nan for a class that no
    sample has (or that every sample has): a curve needs positives and negatives."""

    precision: np.ndarray
    recall: np.ndarray
    f1: np.ndarray
    support: np.ndarray
    roc_auc: np.ndarray
    average_precision: np.ndarray

    @property
    def macro_roc_auc(self) -> float:
        """The mean of the classes' ROC AUC where defined (scikit-learn's one-vs-rest macro average, which
        refuses when a class has no sample)."""
        defined = self.roc_auc[~np.isnan(self.roc_auc)]
        return float(defined.mean()) if len(defined) else float("nan")


def class_scores(preds: Predictions, num_classes: int) -> ClassScores:
    from sklearn.metrics import average_precision_score, precision_recall_fscore_support, roc_auc_score

    everything = list(range(num_classes))
    precision, recall, f1, support = precision_recall_fscore_support(
        preds.labels, preds.predicted, labels=everything, zero_division=0)
    probabilities = preds.probabilities
    roc_auc = np.full(num_classes, np.nan)
    average_precision = np.full(num_classes, np.nan)
    for c in everything:
        positive = _positives(preds, c)
        if positive is not None:
            roc_auc[c] = roc_auc_score(positive, probabilities[:, c])
            average_precision[c] = average_precision_score(positive, probabilities[:, c])
    return ClassScores(precision, recall, f1, support, roc_auc, average_precision)


def one_vs_rest_curves(preds: Predictions, classes: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """For each of ``classes`` that has positives and negatives: its ROC curve (``fpr``, ``tpr``) and its
    precision-recall curve (``precision``, ``recall``)."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    curves = {}
    probabilities = preds.probabilities
    for c in classes:
        positive = _positives(preds, c)
        if positive is not None:
            fpr, tpr, _ = roc_curve(positive, probabilities[:, c])
            precision, recall, _ = precision_recall_curve(positive, probabilities[:, c])
            curves[c] = {"fpr": fpr, "tpr": tpr, "precision": precision, "recall": recall}
    return curves


def _positives(preds: Predictions, c: int) -> np.ndarray | None:
    """Which samples are of class ``c``, where some are and some are not (a curve needs both); else None."""
    positive = preds.labels == c
    return positive if 0 < positive.sum() < len(preds) else None


def confused_pairs(matrix: np.ndarray, top: int = 10) -> list[tuple[int, int, int]]:
    """The ``top`` (true class, predicted class, count) cells off the confusion matrix's diagonal, most first
    (ties in class order); empty cells left out."""
    off = matrix.copy()
    np.fill_diagonal(off, 0)
    order = np.argsort(-off, axis=None, kind="stable")[:top]
    return [(int(i), int(j), int(off[i, j])) for i, j in zip(*np.unravel_index(order, off.shape)) if off[i, j] > 0]
