"""The layout of a run directory, in one place."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class RunDir:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def config(self) -> Path:
        return self.root / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    @property
    def weights(self) -> Path:
        return self.root / "weights"

    def weights_file(self, name: str) -> Path:
        return self.weights / f"{name}.safetensors"

    @property
    def weights_meta(self) -> Path:
        return self.weights / "meta.json"

    @property
    def splits(self) -> Path:
        return self.root / "splits"

    @property
    def summary_json(self) -> Path:
        return self.root / "summary.json"

    @property
    def summary_txt(self) -> Path:
        return self.root / "summary.txt"

    @property
    def history_csv(self) -> Path:
        return self.root / "history.csv"

    @property
    def log_file(self) -> Path:
        return self.root / "train.log"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def reports(self) -> Path:
        return self.root / "reports"

    @property
    def predictions(self) -> Path:
        return self.root / "predictions"

    def inference(self, split: str) -> Path:
        return self.root / "inference" / split
