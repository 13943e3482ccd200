"""What a run writes for people besides its summary: history, TensorBoard, reports, plots, prediction CSVs.

A ``Reporter`` is built on every process but writes only on the main one, so callers never branch on rank.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from harness.evaluation.predictions import Predictions
from harness.plots import confusion_figure, save_png
from harness.storage.atomic import atomic_path, write_atomic
from harness.storage.rundir import RunDir

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                   "train_images_per_second", "val_images_per_second", "data_wait"]
AVERAGE_COLUMNS = ["ema_val_loss", "ema_val_acc"]  # with train.ema: the weight average's validation


class Reporter:
    """The run's records over time: ``history.csv`` (one row per epoch) and TensorBoard events, whose step is
    always the optimizer update (so a resume can drop what its previous session logged after the checkpoint)."""

    def __init__(self, run: RunDir, enabled: bool, tensorboard: bool, purge_step: int | None = None) -> None:
        self.run = run
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a previous session logged after its last checkpoint
            self.writer = SummaryWriter(str(run.tensorboard), purge_step=purge_step or None)

    def write_history(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        with atomic_path(self.run.history_csv) as tmp, open(tmp, "w", newline="") as f:
            averaged = any("ema_val_acc" in record for record in history)
            writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS + AVERAGE_COLUMNS * averaged, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(history)

    def scalars(self, values: dict[str, float], step: int) -> None:
        if self.writer is not None:
            for tag, value in values.items():
                self.writer.add_scalar(tag, value, step)

    def image(self, tag: str, pixels: np.ndarray, step: int) -> None:
        """An RGB image (height x width x 3, uint8), such as a figure ``save_png`` rendered."""
        if self.writer is not None:
            self.writer.add_image(tag, pixels, step, dataformats="HWC")

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


# ----------------------------------------------------------------------------------------------------
# Per-split outputs, shared by training and inference


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
    write_atomic(report, header + preds.report(classes))
    return save_png(confusion_figure(preds.confusion(len(classes)), classes, title), matrix_png)


def write_predictions_csv(preds: Predictions, classes: list[str], paths: list[str], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    k = preds.topk_classes.shape[1]
    header = ["path"] + (["label"] if preds.labeled else []) + ["prediction", "confidence", f"top{k}"]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        for row, index in enumerate(preds.indices):
            top = " ".join(f"{classes[c]}:{p:.4f}" for c, p in zip(preds.topk_classes[row], preds.topk_probs[row]))
            label = [classes[preds.labels[row]]] if preds.labeled else []
            writer.writerow([paths[index]] + label + [classes[preds.predicted[row]], f"{preds.confidence[row]:.6f}", top])
