"""The run's progress that the model, optimizer and scheduler do not hold, saved in every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional


@dataclass
class TrainState:
    """Saved in every checkpoint as ``train_state.json`` (data, never a pickle) and loaded with it."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained (a mid-epoch checkpoint)
    global_step: int = 0  # optimizer updates
    best_metric: Optional[float] = None
    best_epoch: Optional[int] = None  # 1-based epoch that gave best_metric
    best_checkpoint: Optional[str] = None  # the checkpoint saved at the end of that epoch
    history: List[Dict[str, Any]] = field(default_factory=list)  # one record per completed epoch
    epoch_sums: List[float] = field(default_factory=list)  # all processes' [loss*n, correct, n] of the epoch so far
    skipped_steps: int = 0  # updates skipped for a non-finite loss (train.skip_nonfinite_steps)
    stopped_early_at: Optional[int] = None  # the epoch after which train.early_stopping ended the run
    num_processes: int = 0  # how many processes trained up to this state (batch_in_epoch is per process)
    train_seconds: float = 0.0  # time spent training, over all sessions of the run
    config: Dict[str, Any] = field(default_factory=dict)  # the resolved config this state was trained with
    started_at: str = ""  # when the run's first session started

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)

    def best_record(self) -> dict[str, Any] | None:
        """The history row of the best epoch so far."""
        return next((row for row in self.history if row["epoch"] == self.best_epoch), None)

    def where(self) -> str:
        """What is done, as a person counts it (epochs and batches from 1)."""
        if self.batch_in_epoch:
            return f"in epoch {self.epoch + 1}, after batch {self.batch_in_epoch}"
        return f"after epoch {self.epoch}" if self.epoch else "before epoch 1"

    def move_to(self, processes: int) -> str | None:
        """Carry the position inside the epoch over to another number of processes (same per-process batch),
        counted in samples. Returns what changed, for the log (None for a fresh state or the same count)."""
        if self.num_processes in (0, processes):
            self.num_processes = processes
            return None
        before, samples = self.num_processes, self.batch_in_epoch * self.num_processes
        self.batch_in_epoch, self.num_processes = samples // processes, processes
        return (
            f"resuming a checkpoint of {before} process(es) with {processes}: the epoch continues after "
            f"{self.batch_in_epoch * processes} of its {samples} trained batches"
            + (f" (replaying {samples % processes})" if samples % processes else "")
            + "; per-process RNG streams and the number of updates per epoch (the schedule's pace) change "
            "with the world size"
        )
