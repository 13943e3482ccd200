"""What a run writes for people: summary, history, TensorBoard, reports, plots and prediction CSVs.

A ``Reporter`` is built on every process but writes only on the main one, so callers never branch on rank.
"""

from __future__ import annotations

import csv
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from harness.metrics import Predictions
from harness.rundir import RunDir

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds", "images_per_second"]


class Reporter:
    def __init__(self, run: RunDir, enabled: bool, tensorboard: bool, purge_step: int | None = None) -> None:
        self.run = run
        self.enabled = enabled
        self.summary: dict[str, Any] = {}
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a previous session logged after its last checkpoint
            self.writer = SummaryWriter(str(run.tensorboard), purge_step=purge_step or None)

    def update_summary(self, **fields: Any) -> None:
        self.summary.update(fields)
        self.summary["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if not self.enabled:
            return
        _write_text(self.run.summary_json, json.dumps(self.summary, indent=2, default=_plain) + "\n")
        _write_text(self.run.summary_txt, summary_text(self.summary))

    def write_history(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        tmp = self.run.history_csv.with_suffix(".tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)
        os.replace(tmp, self.run.history_csv)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def figure(self, tag: str, figure: Figure, step: int) -> None:
        if self.writer is not None:
            self.writer.add_figure(tag, figure, step, close=False)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def summary_text(summary: dict[str, Any]) -> str:
    width = max(len(k) for k in summary)
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={_fmt(v)}" for k, v in value.items())
        lines.append(f"{key.ljust(width)}  {_fmt(value)}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------
# Per-split outputs, shared by training and inference


def write_split_outputs(
    preds: Predictions, classes: list[str], paths: list[str], report: Path, matrix_png: Path, csv_path: Path,
    title: str,
) -> Figure | None:
    """Per-sample CSV always; for labeled data also the classification report and the confusion matrix
    (returned as a figure, for TensorBoard)."""
    write_predictions_csv(preds, classes, paths, csv_path)
    if not preds.labeled:
        return None
    report.parent.mkdir(parents=True, exist_ok=True)
    header = f"{title}\naccuracy: {preds.accuracy():.6f} ({int((preds.predicted == preds.labels).sum())}/{len(preds)})\n\n"
    _write_text(report, header + preds.report(classes))
    figure = confusion_figure(preds.confusion(len(classes)), classes, title)
    figure.savefig(matrix_png, dpi=100)
    return figure


def write_predictions_csv(preds: Predictions, classes: list[str], paths: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    k = preds.topk_classes.shape[1]
    header = ["path"] + (["label"] if preds.labeled else []) + ["prediction", "confidence", f"top{k}"]
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row, index in enumerate(preds.indices):
            top = " ".join(f"{classes[c]}:{p:.4f}" for c, p in zip(preds.topk_classes[row], preds.topk_probs[row]))
            label = [classes[preds.labels[row]]] if preds.labeled else []
            writer.writerow([paths[index]] + label + [classes[preds.predicted[row]], f"{preds.confidence[row]:.6f}", top])
    os.replace(tmp, path)


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str) -> Figure:
    n = len(classes)
    size = min(4 + 0.45 * n, 24)
    figure = Figure(figsize=(size, size * 0.85))
    ax = figure.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xticks=range(n), yticks=range(n), xlabel="predicted", ylabel="true", title=title)
    ax.set_xticklabels(classes, rotation=45, ha="right")
    ax.set_yticklabels(classes)
    if n <= 30:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=8,
                        color="white" if matrix[i, j] > threshold else "black")
    figure.tight_layout()
    return figure


def plot_curves(history: list[dict], path: Path) -> None:
    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(10, 4))
    for i, metric in enumerate(("loss", "acc")):
        ax = figure.add_subplot(1, 2, i + 1)
        for split in ("train", "val"):
            ax.plot(epochs, [h[f"{split}_{metric}"] for h in history], marker="o", label=split)
        ax.set(xlabel="epoch", ylabel=metric, title=f"{metric} per epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)


# ----------------------------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
