"""The outputs of one split's predictions, shared by training and inference: the per-sample CSV and, for labeled
images, the classification report and the confusion matrix."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from harness.evaluation.predictions import Predictions
from harness.evaluation.scores import classification_report
from harness.reporting.plots import confusion_figure, save_png
from harness.storage.atomic import atomic_path, write_atomic

TOP_K = 5  # classes in each row of a predictions CSV


def write_split_outputs(
    preds: Predictions, classes: list[str], paths: list[str], report: Path, matrix_png: Path, csv_path: Path,
    title: str,
) -> np.ndarray | None:
    """Per-sample CSV always; for labeled data also the classification report and the confusion matrix
    (whose pixels are returned, for TensorBoard)."""
    write_predictions_csv(preds, classes, paths, csv_path)
    if not preds.labeled:
        return None
    report.parent.mkdir(parents=True, exist_ok=True)
    header = f"{title}\naccuracy: {preds.accuracy():.6f} ({int((preds.predicted == preds.labels).sum())}/{len(preds)})\n\n"
    write_atomic(report, header + classification_report(preds, classes))
    return save_png(confusion_figure(preds.confusion(len(classes)), classes, title), matrix_png)


def write_predictions_csv(preds: Predictions, classes: list[str], paths: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    top_classes, top_probs = preds.top(TOP_K)
    k = top_classes.shape[1]
    header = ["path"] + (["label"] if preds.labeled else []) + ["prediction", "confidence", f"top{k}"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row, index in enumerate(preds.indices):
            top = " ".join(f"{classes[c]}:{p:.4f}" for c, p in zip(top_classes[row], top_probs[row]))
            label = [classes[preds.labels[row]]] if preds.labeled else []
            writer.writerow([paths[index]] + label + [classes[preds.predicted[row]], f"{preds.confidence[row]:.6f}", top])
