"""Checkpoints (``accelerator.save_state`` folders), the train state they carry, and weight export.

Layout under ``runs/<name>/checkpoints/``::

    step-00000240/   a complete checkpoint: accelerate's files + harness_checkpoint.json (written last)
    latest           the name of the newest complete checkpoint (a small file, replaced atomically)
    best             the name of the checkpoint with the best validation metric (likewise)
    .tmp-step-.../   a save in progress (or left by a killed one: ignored and cleaned up)

A save is: every process writes into ``.tmp-<name>``; the main process fsyncs the files, writes the
marker (a manifest of every file and its size), renames the folder into place, fsyncs the parent, then
updates ``latest``/``best``, and only then deletes old checkpoints beyond ``checkpoint.keep_last``
(never the newest complete one, never the best). So a checkpoint on disk is complete or absent, and a
truncated file is caught by the manifest before anything is loaded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.errors import CheckpointError
from harness.rundir import RunDir

logger = logging.getLogger(__name__)

MARKER = "harness_checkpoint.json"
TMP_PREFIX = ".tmp-"
NAME = re.compile(r"step-(\d{8})")


@dataclass
class TrainState:
    """Everything about the run's progress that the model, optimizer and scheduler do not hold."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained (a mid-epoch checkpoint)
    global_step: int = 0  # optimizer updates
    best_metric: float | None = None
    best_epoch: int | None = None  # 1-based epoch that gave best_metric
    best_checkpoint: str | None = None  # the checkpoint saved at the end of that epoch
    history: list[dict] = field(default_factory=list)  # one record per completed epoch
    epoch_sums: list[float] = field(default_factory=list)  # all processes' [loss*n, correct, n] of the epoch so far
    skipped_steps: int = 0  # updates skipped for a non-finite loss (train.skip_nonfinite_steps)
    num_processes: int = 0  # how many processes trained up to this state (batch_in_epoch is per process)
    train_seconds: float = 0.0  # time spent training, over all sessions of the run
    config: dict = field(default_factory=dict)  # the resolved config this state was trained with
    started_at: str = ""  # when the run's first session started

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def checkpoint_name(global_step: int) -> str:
    return f"step-{global_step:08d}"


# ----------------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(accelerator: Accelerator, run: RunDir, state: TrainState, keep_last: int) -> str:
    """Save the full training state as checkpoints/step-<global_step>, atomically, then point ``latest`` (and
    ``best``) at it and rotate. Every process must call it. Returns the checkpoint's name."""
    name = checkpoint_name(state.global_step)
    final, tmp = run.checkpoint(name), run.checkpoints / f"{TMP_PREFIX}{name}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        files = {str(p.relative_to(tmp)): p.stat().st_size for p in sorted(tmp.rglob("*")) if p.is_file()}
        for path in files:
            _fsync_file(tmp / path)
        marker = {"name": name, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                  "global_step": state.global_step, "num_processes": accelerator.num_processes,
                  "saved_at": time.time(), "files": files}
        write_atomic(tmp / MARKER, json.dumps(marker, indent=2))
        _fsync_dir(tmp)
        _swap_into_place(tmp, final)
        _fsync_dir(run.checkpoints)
        write_atomic(run.checkpoints / "latest", name + "\n")
        if state.best_checkpoint:
            write_atomic(run.checkpoints / "best", state.best_checkpoint + "\n")
        _rotate(run, keep_last, protect={name, state.best_checkpoint})
    accelerator.wait_for_everyone()
    return name


def _rotate(run: RunDir, keep_last: int, protect: set) -> None:
    complete = [path.name for path in _step_folders(run) if verify(path) is None]
    for name in complete[:-keep_last]:
        if name not in protect:
            shutil.rmtree(run.checkpoint(name), ignore_errors=True)


def clean_temporary(accelerator: Accelerator, run: RunDir) -> None:
    """Remove what a killed save left behind (it was never a checkpoint)."""
    if accelerator.is_main_process and run.checkpoints.is_dir():
        for path in run.checkpoints.iterdir():
            if path.name.startswith("."):  # .tmp-<name>/ folders and the .<pointer>.tmp files of write_atomic
                logger.warning(f"removing {path}: left by a save that did not finish")
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
    accelerator.wait_for_everyone()


# ----------------------------------------------------------------------------------------------------
# Finding and checking


def read_marker(path: Path) -> dict:
    """The manifest of checkpoint ``path`` (epoch, step, processes, files); OSError/ValueError if unreadable."""
    return json.loads((path / MARKER).read_text())


def verify(path: Path) -> str | None:
    """None if ``path`` is a complete checkpoint; otherwise what is wrong with it."""
    try:
        marker = read_marker(path)
    except FileNotFoundError:
        return f"no {MARKER} (the save did not finish)"
    except (OSError, ValueError) as e:
        return f"unreadable {MARKER} ({e})"
    for file, size in marker.get("files", {}).items():
        actual = (path / file).stat().st_size if (path / file).is_file() else None
        if actual != size:
            return f"{file} is {'missing' if actual is None else f'{actual} bytes, expected {size}'}"
    return None


def latest_name(run: RunDir) -> str | None:
    """What ``checkpoints/latest`` names (None before the first save)."""
    return _read_pointer(run.checkpoints / "latest")


def latest_checkpoint(run: RunDir) -> Path | None:
    """The checkpoint named by ``latest`` if it is complete, else the newest complete one (with a warning)."""
    pointed = latest_name(run)
    if pointed and verify(run.checkpoint(pointed)) is None:
        return run.checkpoint(pointed)
    for path in reversed(_step_folders(run)):
        problem = verify(path)
        if problem is None:
            logger.warning(f"{run.checkpoints / 'latest'} names {pointed or 'nothing'} that is not usable: "
                           f"falling back to {path.name}")
            return path
        logger.warning(f"skipping checkpoint {path}: {problem}")
    return None


def resolve_checkpoint(path: Path) -> tuple[RunDir, Path]:
    """An explicit --resume: a run directory (its latest complete checkpoint), a checkpoint folder, or one of
    the pointer files ``latest``/``best``. A broken checkpoint is an error naming it."""
    if path.is_file() and path.parent.name == "checkpoints":  # checkpoints/latest or checkpoints/best
        name = _read_pointer(path)
        if name is None:
            raise CheckpointError(f"--resume {path}: does not name a checkpoint")
        path = path.parent / name
    if (path / "config.yaml").is_file():
        run = RunDir(path)
        found = latest_checkpoint(run)
        if found is None:
            raise CheckpointError(f"--resume {path}: no complete checkpoint in {run.checkpoints}")
        return run, found
    if path.parent.name == "checkpoints" and path.is_dir():
        problem = verify(path)
        if problem:
            raise CheckpointError(f"--resume {path}: not a complete checkpoint: {problem}")
        return RunDir(path.parent.parent), path
    raise CheckpointError(f"--resume {path}: neither a run directory (with config.yaml) nor a checkpoint folder")


def _step_folders(run: RunDir) -> list[Path]:
    if not run.checkpoints.is_dir():
        return []
    return sorted(p for p in run.checkpoints.iterdir() if p.is_dir() and NAME.fullmatch(p.name))


def _read_pointer(path: Path) -> str | None:
    try:
        name = path.read_text().strip()
    except OSError:
        return None
    return name if NAME.fullmatch(name) else None


# ----------------------------------------------------------------------------------------------------
# Consolidated weights


def export_weights(accelerator: Accelerator, model, run: RunDir, name: str, meta: dict) -> None:
    """Write weights/<name>.safetensors (fp32, metadata inside) and weights/meta.json. Every process must call it."""
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 partitions; a collective
    if not accelerator.is_main_process:
        return
    tensors = {
        key: (t.detach().float() if t.is_floating_point() else t.detach()).cpu().contiguous()
        for key, t in state_dict.items()
    }
    run.weights.mkdir(parents=True, exist_ok=True)
    tmp = run.weights_file(name).with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"harness": json.dumps(meta)})
    _fsync_file(tmp)
    os.replace(tmp, run.weights_file(name))
    write_atomic(run.weights_meta, json.dumps(meta, indent=2))


def copy_weights(run: RunDir, source: str, target: str) -> None:
    tmp = run.weights_file(target).with_suffix(".tmp")
    shutil.copyfile(run.weights_file(source), tmp)
    _fsync_file(tmp)
    os.replace(tmp, run.weights_file(target))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict and the metadata (classes, image settings, model) of an exported weights file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found (was the run trained to the end of an epoch?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("harness", "{}"))
        return load_file(str(path)), meta
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


# ----------------------------------------------------------------------------------------------------
# Filesystem helpers


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that a reader sees the old or the new content, never a mix."""
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, replacing an existing folder of that name (a re-save of the same step)."""
    old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
