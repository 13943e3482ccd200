"""Per-class scores of labeled predictions: precision, recall, F1 and support from the predicted classes (and the
text report of them); one-vs-rest ROC and precision-recall curves, their AUC and average precision from the
probabilities; the pairs of classes most often taken for each other.

Every score is computed as scikit-learn's ``sklearn.metrics`` computes it (the same operations, so the same
floats: tests/unit/evaluation/test_scores.py compares them), without importing scikit-learn (a second and 70 MB) at
the end of every run."""

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
    precision, recall, f1, support = precision_recall_f1(preds.confusion(num_classes))
    probabilities = preds.probabilities
    roc_auc = np.full(num_classes, np.nan)
    average_precision = np.full(num_classes, np.nan)
    for c in range(num_classes):
        positive = _positives(preds, c)
        if positive is not None:
            curves = _curves(positive, probabilities[:, c])
            roc_auc[c] = _area(curves["fpr"], curves["tpr"])
            # The precision-recall curve as a step function (no interpolation); -0.0 from rounding becomes 0.
            average_precision[c] = max(0.0, -float(np.sum(np.diff(curves["recall"]) * curves["precision"][:-1])))
    return ClassScores(precision, recall, f1, support, roc_auc, average_precision)


def precision_recall_f1(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Each class's precision, recall, F1 (0 where undefined) and support, from a confusion matrix of counts
    (true class, predicted class)."""
    matrix = matrix.astype(np.float64)
    correct, support, predicted = np.diag(matrix), matrix.sum(1), matrix.sum(0)
    precision = np.divide(correct, predicted, out=np.zeros_like(correct), where=predicted > 0)
    recall = np.divide(correct, support, out=np.zeros_like(correct), where=support > 0)
    both = support + predicted
    f1 = np.divide(2 * correct, both, out=np.zeros_like(correct), where=both > 0)
    return precision, recall, f1, support.astype(np.int64)


def classification_report(preds: Predictions, classes: list[str]) -> str:
    """Per-class precision, recall, F1 and support, then accuracy and the macro and weighted averages, laid out as
    scikit-learn's ``classification_report`` (digits=4, zero_division=0) lays them out."""
    precision, recall, f1, support = precision_recall_f1(preds.confusion(len(classes)))
    total = int(support.sum())
    width = max(len("weighted avg"), *(len(name) for name in classes))
    row = "{:>{width}s} " + " {:>9.4f}" * 3 + " {:>9}\n"
    lines = [("{:>{width}s} " + " {:>9}" * 4 + "\n\n").format("", "precision", "recall", "f1-score", "support",
                                                             width=width)]
    lines += [row.format(name, p, r, f, int(n), width=width)
              for name, p, r, f, n in zip(classes, precision, recall, f1, support)]
    correct = int((preds.predicted == preds.labels).sum())
    lines.append("\n" + ("{:>{width}s} " + " {:>9}" * 2 + " {:>9.4f} {:>9}\n").format(
        "accuracy", "", "", correct / max(total, 1), total, width=width))
    weights = support / max(total, 1)
    lines.append(row.format("macro avg", precision.mean(), recall.mean(), f1.mean(), total, width=width))
    lines.append(row.format("weighted avg", precision @ weights, recall @ weights, f1 @ weights, total, width=width))
    return "".join(lines)


def one_vs_rest_curves(preds: Predictions, classes: list[int]) -> dict[int, dict[str, np.ndarray]]:
    """For each of ``classes`` that has positives and negatives: its ROC curve (``fpr``, ``tpr``) and its
    precision-recall curve (``precision``, ``recall``)."""
    probabilities = preds.probabilities
    return {c: _curves(positive, probabilities[:, c]) for c in classes
            if (positive := _positives(preds, c)) is not None}


def _curves(positive: np.ndarray, score: np.ndarray) -> dict[str, np.ndarray]:
    """The ROC curve (scikit-learn's ``roc_curve``, collinear points dropped, from (0, 0)) and the
    precision-recall curve (``precision_recall_curve``: recall falling, ending at (recall 0, precision 1)) of
    one class: one point per distinct score, counting the samples scored at least that high."""
    order = np.argsort(-score, kind="stable")
    score = score[order]
    last_of_each = np.r_[np.flatnonzero(np.diff(score)), len(score) - 1]
    tps = np.cumsum(positive[order], dtype=np.float64)[last_of_each]
    fps = 1 + last_of_each.astype(np.float64) - tps
    precision = np.divide(tps, tps + fps)
    recall = tps / tps[-1]
    roc_fps, roc_tps = fps, tps
    if len(fps) > 2:
        corners = np.flatnonzero(np.r_[True, np.logical_or(np.diff(fps, 2), np.diff(tps, 2)), True])
        roc_fps, roc_tps = fps[corners], tps[corners]
    return {"fpr": np.r_[0.0, roc_fps] / fps[-1], "tpr": np.r_[0.0, roc_tps] / tps[-1],
            "precision": np.r_[precision[::-1], 1.0], "recall": np.r_[recall[::-1], 0.0]}


def _area(x: np.ndarray, y: np.ndarray) -> float:
    """The area under a curve whose ``x`` never falls, by the trapezoidal rule."""
    return float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2.0))


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
