"""The layout of a run directory, in one place: every path a run reads or writes under ``runs/<name>/``."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _at(*parts: str) -> property:
    """A path under the run directory's root, as a read-only attribute."""
    return property(lambda self: self.root.joinpath(*parts))


@dataclass(frozen=True)
class RunDir:
    """A run directory; its attributes are the paths of what a run keeps there (see the README)."""

    root: Path

    config = _at("config.yaml")  # the resolved config the run used
    splits = _at("splits")  # classes.txt and <split>.csv: the images of each split
    checkpoints = _at("checkpoints")  # step-<n>/ folders and the latest/best pointers
    weights = _at("weights")  # <name>.safetensors, meta.json
    weights_meta = _at("weights", "meta.json")
    summary_json = _at("summary.json")
    summary_txt = _at("summary.txt")
    history_csv = _at("history.csv")
    log_file = _at("train.log")
    tensorboard = _at("tensorboard")
    reports = _at("reports")  # classification reports, confusion matrices, curves
    predictions = _at("predictions")  # <split>.csv from the final test

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def lock(self) -> Path:
        """Beside the run directory, so that deleting the directory (starting over) leaves the lock alone."""
        return self.root.parent / f".{self.root.name}.lock"

    def is_run(self) -> bool:
        """Whether ``root`` holds a run (its config.yaml): the only kind of folder --force deletes."""
        return self.config.is_file()

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    def weights_file(self, name: str) -> Path:
        return self.weights / f"{name}.safetensors"

    def inference(self, split: str) -> Path:
        return self.root / "inference" / split

    def export(self, name: str) -> Path:
        """An exported model, ``<checkpoint>.onnx`` or ``<checkpoint>.torchscript.pt``, with ``<file>.json``."""
        return self.root / "export" / name
