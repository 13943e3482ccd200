"""Checkpoints: atomic, verified ``accelerator.save_state`` folders, the ``latest``/``best`` pointers, rotation.

Layout under ``runs/<name>/checkpoints/``::

    step-00000240/   a complete checkpoint: accelerate's files + harness_checkpoint.json (written last)
    latest           the name of the newest complete checkpoint (a small file, replaced atomically)
    best             the name of the checkpoint with the best validation metric (likewise)
    .tmp-step-.../   a save in progress (or left by a killed one: ignored and cleaned up)

A save is: every process writes into ``.tmp-<name>``; the main process fsyncs the files, writes the
marker (a manifest of every file and its size), renames the folder into place, fsyncs the parent, then
updates ``latest``/``best``, and only then deletes old checkpoints beyond ``checkpoint.keep_last``
(never the newest complete one, never the best). So a checkpoint on disk is complete or absent, a
truncated file is caught by the manifest before anything is loaded, and ``latest`` never names an
incomplete checkpoint (a re-save of the same step first points it at an older one).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from accelerate import Accelerator

from harness.atomic import fsync, write_atomic
from harness.errors import CheckpointError
from harness.rundir import RunDir
from harness.state import TrainState

logger = logging.getLogger(__name__)

MARKER = "harness_checkpoint.json"
TMP_PREFIX = ".tmp-"
NAME = re.compile(r"step-(\d{8})")


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
            fsync(tmp / path)
        marker = {"name": name, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                  "global_step": state.global_step, "num_processes": accelerator.num_processes,
                  "saved_at": time.time(), "files": files}
        write_atomic(tmp / MARKER, json.dumps(marker, indent=2))
        fsync(tmp)
        if final.exists():  # a re-save of the same step: latest must not name it while the two swap
            _point_latest_before(run, name)
        _swap_into_place(tmp, final)
        fsync(run.checkpoints)
        write_atomic(run.checkpoints / "latest", name + "\n")
        if state.best_checkpoint:
            write_atomic(run.checkpoints / "best", state.best_checkpoint + "\n")
        rotate(run, keep_last, protect={name, state.best_checkpoint})
    accelerator.wait_for_everyone()
    return name


def _point_latest_before(run: RunDir, name: str) -> None:
    """Point ``latest`` at the newest complete checkpoint older than ``name``, or at nothing."""
    older = [complete for complete in complete_checkpoints(run) if complete < name]
    if older:
        write_atomic(run.checkpoints / "latest", older[-1] + "\n")
    else:
        (run.checkpoints / "latest").unlink(missing_ok=True)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, replacing an existing folder of that name (a re-save of the same step)."""
    old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def rotate(run: RunDir, keep_last: int, protect: set) -> None:
    """Delete complete checkpoints beyond the newest ``keep_last``, except the names in ``protect``."""
    for name in complete_checkpoints(run)[:-keep_last]:
        if name not in protect:
            shutil.rmtree(run.checkpoint(name), ignore_errors=True)


def clean_temporary(accelerator: Accelerator, run: RunDir) -> None:
    """Remove what a killed save left behind (it was never a checkpoint)."""
    if accelerator.is_main_process and run.checkpoints.is_dir():
        for path in run.checkpoints.iterdir():
            if path.name.startswith("."):  # .tmp-<name>/ folders and the .<pointer>.tmp files of atomic writes
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
    return read_pointer(run.checkpoints / "latest")


def latest_checkpoint(run: RunDir) -> Path | None:
    """The checkpoint named by ``latest`` if it is complete, else the newest complete one (with a warning)."""
    pointed = latest_name(run)
    if pointed and verify(run.checkpoint(pointed)) is None:
        return run.checkpoint(pointed)
    for path in reversed(step_folders(run)):
        problem = verify(path)
        if problem is None:
            logger.warning(f"{run.checkpoints / 'latest'} names {pointed or 'nothing'} that is not usable: "
                           f"falling back to {path.name}")
            return path
        logger.warning(f"skipping checkpoint {path}: {problem}")
    return None


def step_folders(run: RunDir) -> list[Path]:
    """The run's ``step-*`` folders, oldest first, complete or not."""
    if not run.checkpoints.is_dir():
        return []
    return sorted(p for p in run.checkpoints.iterdir() if p.is_dir() and NAME.fullmatch(p.name))


def complete_checkpoints(run: RunDir) -> list[str]:
    """The names of the run's complete checkpoints, oldest first."""
    return [path.name for path in step_folders(run) if verify(path) is None]


def read_pointer(path: Path) -> str | None:
    """The checkpoint name a pointer file (``latest``, ``best``) holds; None if absent or not a name."""
    try:
        name = path.read_text().strip()
    except OSError:
        return None
    return name if NAME.fullmatch(name) else None


# ----------------------------------------------------------------------------------------------------
# Loading


def restore_best(accelerator: Accelerator, run: RunDir, state: TrainState) -> None:
    """Give the model the weights of the best checkpoint (unless the last epoch was the best) and keep the
    progress in ``state``: load_state would otherwise roll it back to that checkpoint's. Every process calls it."""
    if state.best_epoch == state.epoch:
        return
    best = run.checkpoint(state.best_checkpoint)
    problem = verify(best)
    if problem:
        raise CheckpointError(f"{best}: the best checkpoint is not usable: {problem}")
    progress = state.state_dict()
    accelerator.load_state(str(best))
    state.load_state_dict(progress)
