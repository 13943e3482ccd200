"""``summary.json`` and ``summary.txt``: what a person or a script reads first about a run."""

from __future__ import annotations

import json
import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from harness.checkpointing.state import TrainState
from harness.evaluation.selection import chosen_weights
from harness.storage.atomic import write_atomic
from harness.storage.rundir import RunDir

logger = logging.getLogger(__name__)


class RunSummary:
    """The one owner of the summary files, written by the main process only.

    It keeps the run's facts (set once, when the run is built), reads the progress from the ``TrainState``
    at every write, so callers never pass it, and takes the ``status`` from ``harness.training.command``, the one
    place that sets it."""

    def __init__(self, rundir: RunDir, enabled: bool, state: TrainState, epochs: int, monitor: str, facts: dict) -> None:
        self.rundir, self.enabled, self.state = rundir, enabled, state
        self.epochs, self.monitor = epochs, monitor
        self.fields: dict[str, Any] = {"status": None, **facts}
        self.session_started = time.perf_counter()

    def write(self, **fields: Any) -> None:
        """Add ``fields`` (the status, the last epoch's record, final results), refresh the progress, write."""
        self.fields.update(fields)
        self.fields.update(self.progress())
        self.fields["updated_at"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if self.enabled:
            _write(self.rundir, self.fields)

    def write_if_possible(self, **fields: Any) -> None:
        """``write``, for a run that is failing: if the disk is full too, the original error matters more."""
        try:
            self.write(**fields)
        except OSError as error:
            logger.warning(f"could not update {self.rundir.summary_json}: {error}")

    def progress(self) -> dict[str, Any]:
        state, best = self.state, self.state.best_record()
        return {
            "epoch": state.epoch,
            "epochs": self.epochs,
            "global_step": state.global_step,
            f"best_{self.monitor}": state.best_metric,
            "best_epoch": state.best_epoch,
            "best_checkpoint": state.best_checkpoint,
            "best_weights": chosen_weights(best, self.monitor) if best else None,
            "stopped_early_at": state.stopped_early_at,
            "skipped_steps": state.skipped_steps,
            "train_seconds": round(state.train_seconds, 3),
            "session_seconds": round(time.perf_counter() - self.session_started, 3),
            "throughput": throughput(state.history),
        }


THROUGHPUT = ("train_images_per_second", "val_images_per_second", "data_wait")


def throughput(history: list[dict]) -> dict[str, float] | None:
    """The median over the epochs of train and validation images/s and of the share of the training pass spent
    waiting for data (the median, since the first epoch also warms up)."""
    if not history:
        return None
    return {key: statistics.median(record[key] for record in history) for key in THROUGHPUT}


def _write(rundir: RunDir, fields: dict[str, Any]) -> None:
    write_atomic(rundir.summary_json, json.dumps(fields, indent=2, default=_plain) + "\n")
    write_atomic(rundir.summary_txt, summary_text(fields))


def summary_text(summary: dict[str, Any]) -> str:
    """One ``key  value`` line per field; nested mappings on one line as ``k=v, ...``."""
    width = max(len(k) for k in summary)
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict):
            value = ", ".join(f"{k}={shown(v)}" for k, v in value.items())
        lines.append(f"{key.ljust(width)}  {shown(value)}")
    return "\n".join(lines) + "\n"


def shown(value: Any) -> str:
    """A summary value as a person reads it: a float to 6 significant digits, None as -."""
    if isinstance(value, float):
        return f"{value:.6g}"
    return "-" if value is None else str(value)


def _plain(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")
