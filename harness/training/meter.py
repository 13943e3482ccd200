"""What one epoch produces: the training pass's sums (``EpochMeter``) and the epoch's record.

The sums stay on the device and are reduced across processes only when a log line, a checkpoint or the
end of the epoch needs them, so a step costs no host synchronisation for metrics.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from accelerate import Accelerator

from harness.data.workers import batches_of
from harness.evaluation.predictions import Predictions
from harness.evaluation.selection import OWN


@dataclass
class TrainedEpoch:
    """The training pass of one epoch, over all processes."""

    loss: float
    accuracy: float
    images: int  # trained in this session (a resumed epoch counts only its rest)
    seconds: float
    data_wait_seconds: float  # of ``seconds``, spent waiting for the loader (on the main process)


class DataWait:
    """Counts the time the loop spends waiting for its next batch (by ``clock``, in seconds)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self.seconds, self.clock = 0.0, clock

    def batches(self, loader) -> Iterator:
        started = self.clock()
        batches = batches_of(loader)
        while True:
            try:
                batch = next(batches)
            except StopIteration:
                return
            finally:
                self.seconds += self.clock() - started
            yield batch
            started = self.clock()


class Padding:
    """Under several processes accelerate gives every process a full batch at an epoch's end (``even_batches``): the
    last global batch is completed with the epoch's first samples again. They are trained on (the condition of
    "several processes equal one": a train split that divides into processes x batch size), but counted in no
    metric: process ``p``'s ``k``-th batch holds the epoch's positions from ``(k * processes + p) * batch_size`` on,
    and those past the epoch's ``samples`` are copies."""

    def __init__(self, samples: int, processes: int, process: int, batch_size: int) -> None:
        self.samples, self.processes, self.process, self.batch_size = samples, processes, process, batch_size

    def own(self, batch_index: int, size: int) -> int:
        """How many of the batch's ``size`` samples, its first, are the epoch's own (the rest are copies)."""
        start = (batch_index * self.processes + self.process) * self.batch_size
        return max(0, min(size, self.samples - start))


class EpochMeter:
    """Sums of the training pass, ``[loss * n, correct, n]``, and a window of ``[loss, batches]`` since the
    last log line. A batch whose loss is not finite counts nowhere.

    ``carried`` are the sums of every process up to a mid-epoch checkpoint: the main process starts from
    them and the others from zero, so one reduction still gives the whole epoch's figures."""

    def __init__(self, accelerator: Accelerator, carried: list[float]) -> None:
        self.accelerator = accelerator
        start = carried if carried and accelerator.is_main_process else [0.0, 0.0, 0.0]
        self.sums = torch.tensor(start, device=accelerator.device, dtype=torch.float64)
        self.window = torch.zeros(2, device=accelerator.device, dtype=torch.float64)
        self.carried_images = int(carried[2]) if carried else 0  # trained before this session

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor, finite: torch.Tensor) -> None:
        images, one = float(len(labels)), torch.ones((), device=self.sums.device, dtype=torch.float64)
        correct = (logits.argmax(1) == labels).sum().double()
        self.sums += torch.where(finite, torch.stack([loss.double() * images, correct, one * images]), 0.0)
        self.window += torch.where(finite, torch.stack([loss.double(), one]), 0.0)

    def totals(self) -> list[float]:
        """Every process's sums added up: what a mid-epoch checkpoint stores. A collective."""
        return self.accelerator.reduce(self.sums, reduction="sum").tolist()

    def window_loss(self) -> float:
        """The mean loss over every process since the last call, which starts a new window. A collective."""
        total = self.accelerator.reduce(self.window, reduction="sum")
        self.window.zero_()
        return (total[0] / total[1]).item()

    def result(self, seconds: float, data_wait_seconds: float) -> TrainedEpoch:
        """The epoch's figures. A collective."""
        loss_sum, correct, count = self.totals()
        return TrainedEpoch(loss_sum / count, correct / count, int(count - self.carried_images), seconds,
                            data_wait_seconds)


def epoch_record(epoch: int, trained: TrainedEpoch, val: dict[str, Predictions], val_seconds: float, lr: float
                 ) -> dict:
    """The history row of ``epoch`` (0-based). ``val``: the validation of the model's own weights (``raw``) and of
    the other weights features keep (``ema``: ``train.ema``), whose figures follow as ``<name>_val_loss``,
    ``<name>_val_acc``. Throughput counts the images of every process. Pure: nothing is read or written."""
    own = val[OWN]
    record = {
        "epoch": epoch + 1,
        "train_loss": trained.loss,
        "train_acc": trained.accuracy,
        "val_loss": own.loss(),
        "val_acc": own.accuracy(),
        "lr": lr,
        "epoch_seconds": trained.seconds,
        "train_images_per_second": trained.images / max(trained.seconds, 1e-9),
        "val_images_per_second": len(own) / max(val_seconds, 1e-9),
        "data_wait": trained.data_wait_seconds / max(trained.seconds, 1e-9),
    }
    for name, preds in val.items():
        if name != OWN:
            record.update({f"{name}_val_loss": preds.loss(), f"{name}_val_acc": preds.accuracy()})
    return record
