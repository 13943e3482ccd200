"""The layout of a run directory, in one place: every path a run reads or writes under ``runs/<name>/``; and what
other commands may not write there."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from harness.errors import CheckpointError

# What a training attempt writes into its run directory besides config.yaml, splits/ and train.log.
OUTPUTS = ("checkpoints", "weights", "tensorboard", "reports", "predictions", "history.csv", "summary.json",
           "summary.txt", "report.html")


# What only training writes in a run directory.
PROTECTED = ("weights", "checkpoints", "config.yaml")


def protected_part(path: Path) -> Path | None:
    """The part of a run directory that only training writes (``weights/``, ``checkpoints/``, ``config.yaml``) which
    ``path`` is or lies in; None if it is in none."""
    path = Path(path).expanduser().resolve()
    for part in [path, *path.parents]:
        if part.name in PROTECTED and (part.parent / "config.yaml").is_file():
            return part
    return None


def check_outputs(files: list[Path], force: bool, elsewhere: str) -> None:
    """Before a command writes ``files``: never into a part of a run that only training writes, and never over a
    file that exists unless ``force`` (the command's --force); ``elsewhere`` says how to write them elsewhere."""
    for file in files:
        part = protected_part(file)
        if part is not None:
            raise CheckpointError(f"{file}: inside {part}, which only training writes: {elsewhere}")
    existing = [file.name for file in files if file.exists()]
    if existing and not force:
        raise CheckpointError(f"{Path(files[0]).parent} already holds {', '.join(existing)}: --force replaces them, "
                              f"{elsewhere}")


def is_run_directory(folder: Path) -> bool:
    """Whether ``folder`` holds a run (its config and split lists): never read as data."""
    return (folder / "config.yaml").is_file() and (folder / "splits" / "classes.txt").is_file()


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
    report = _at("report.html")  # the page a person reads first (harness.reporting.page)

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

    def remove_outputs(self) -> None:
        """Remove what a training attempt writes besides its config, split lists and log (the run starts again in
        place); anything else in the folder stays."""
        for name in OUTPUTS:
            path = self.root / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            elif path.exists() or path.is_symlink():
                path.unlink()

    def checkpoint(self, name: str) -> Path:
        return self.checkpoints / name

    def weights_file(self, name: str) -> Path:
        return self.weights / f"{name}.safetensors"

    def inference(self, split: str) -> Path:
        return self.root / "inference" / split

    def export(self, name: str) -> Path:
        """An exported model, ``<checkpoint>.onnx`` or ``<checkpoint>.torchscript.pt``, with ``<file>.json``."""
        return self.root / "export" / name
