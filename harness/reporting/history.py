"""A run's records over time: ``history.csv`` (one row per epoch) and TensorBoard events.

A ``Reporter`` is built on every process but writes only on the main one, so callers never branch on rank.
"""

from __future__ import annotations

import csv

import numpy as np

from harness.storage.atomic import atomic_path
from harness.storage.rundir import RunDir

HISTORY_COLUMNS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "epoch_seconds",
                   "train_images_per_second", "val_images_per_second", "data_wait"]


class Reporter:
    """The run's records over time: ``history.csv`` (one row per epoch) and TensorBoard events, whose step is
    always the optimizer update (so a resume can drop what its previous session logged after the checkpoint)."""

    def __init__(self, rundir: RunDir, enabled: bool, tensorboard: bool, purge_step: int | None = None) -> None:
        self.rundir = rundir
        self.enabled = enabled
        self.writer = None
        if enabled and tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            # purge_step drops events a previous session logged after its last checkpoint
            self.writer = SummaryWriter(str(rundir.tensorboard), purge_step=purge_step or None)

    def write_history(self, history: list[dict]) -> None:
        if not self.enabled:
            return
        with atomic_path(self.rundir.history_csv) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=history_columns(history))
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


def history_columns(history: list[dict]) -> list[str]:
    """``HISTORY_COLUMNS``, then the validation of other weights the epochs hold, in the order they came
    (``ema_val_loss``, ``ema_val_acc`` with ``train.ema``)."""
    columns = list(HISTORY_COLUMNS)
    for record in history:
        columns += [key for key in record if key not in columns]
    return columns
