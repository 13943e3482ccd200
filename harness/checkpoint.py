"""Checkpoints: atomic, verified ``accelerator.save_state`` folders, the ``latest``/``best`` pointers, rotation.

Layout under ``runs/<name>/checkpoints/``::

    step-00000240/   a complete checkpoint: accelerate's files + harness_checkpoint.json (written last)
    latest           the name of the newest complete checkpoint (a small file, replaced atomically)
    best             the name of the checkpoint with the best validation metric (likewise)
    .tmp-step-.../   a save in progress (or left by a killed one: ignored and cleaned up)

A save is: every process writes into ``.tmp-<name>``; the main process writes the train state as JSON,
fsyncs the files, writes the marker (a manifest of every file, its size and its SHA-256), renames the folder
into place, fsyncs the parent, then updates ``latest``/``best``, and only then deletes old checkpoints beyond
``checkpoint.keep_last`` (never the newest complete one, never the best). So a checkpoint on disk is complete
or absent, and ``latest`` never names an incomplete checkpoint (a re-save of the same step first points it at
an older one).

Loading one back is ``harness.restore``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path

from accelerate import Accelerator

from harness.errors import StorageError
from harness.runtime.collective import first_failure
from harness.state import TrainState
from harness.storage.atomic import fsync, write_atomic
from harness.storage.rundir import RunDir

logger = logging.getLogger(__name__)

MARKER = "harness_checkpoint.json"
STATE = "train_state.json"  # the harness's TrainState, as data
TMP_PREFIX = ".tmp-"
NAME = re.compile(r"step-(\d{8})")


def checkpoint_name(global_step: int) -> str:
    return f"step-{global_step:08d}"


# ----------------------------------------------------------------------------------------------------
# Saving


def save_checkpoint(accelerator: Accelerator, run: RunDir, state: TrainState, keep_last: int) -> str:
    """Save the full training state as checkpoints/step-<global_step>, atomically, then point ``latest`` (and
    ``best``) at it and rotate. Every process must call it. Returns the checkpoint's name. A save that fails
    on any process (a full disk) fails on all of them, leaves the previous checkpoints as they were and is a
    StorageError."""
    name = checkpoint_name(state.global_step)
    final, tmp = run.checkpoint(name), run.checkpoints / f"{TMP_PREFIX}{name}"
    _, failure = first_failure(accelerator, lambda: _write_folder(accelerator, tmp, name, state))
    if failure:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(f"{final} could not be written ({failure}); "
                           f"the last checkpoint ({latest_name(run) or 'none yet'}) is intact: free space under "
                           f"{run.checkpoints}, then --resume {run.root}")
    if accelerator.is_main_process:
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


def _write_folder(accelerator: Accelerator, tmp: Path, name: str, state: TrainState) -> None:
    """Every process writes its part into ``tmp``; the main process adds the train state and the marker."""
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        write_atomic(tmp / STATE, json.dumps(state.state_dict()))
        files = manifest(tmp)
        for path in files:
            fsync(tmp / path)
        marker = {"name": name, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                  "global_step": state.global_step, "num_processes": accelerator.num_processes,
                  "saved_at": time.time(), "files": files}
        write_atomic(tmp / MARKER, json.dumps(marker, indent=2))
        fsync(tmp)


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


def manifest(folder: Path) -> dict[str, dict]:
    """Every file under ``folder`` with its size and SHA-256, as the marker records them."""
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def verify(path: Path, content: bool = False) -> str | None:
    """None if ``path`` is a complete checkpoint; otherwise what is wrong with it. Sizes are always checked,
    the content (SHA-256) with ``content``: before a checkpoint is loaded."""
    try:
        marker = read_marker(path)
        files = marker["files"]
        if not all(isinstance(entry, dict) for entry in files.values()) or STATE not in files:
            return "written by an older version of the harness (no content hashes or train state); start over"
    except FileNotFoundError:
        return f"no {MARKER} (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"unreadable {MARKER} ({type(e).__name__}: {e})"
    for file, entry in files.items():
        target = path / file
        if Path(file).is_absolute() or ".." in Path(file).parts or not target.is_file():
            return f"{file} is missing"
        if target.stat().st_size != entry.get("size"):
            return f"{file} is {target.stat().st_size} bytes, expected {entry.get('size')}"
        if content and sha256(target) != entry.get("sha256"):
            return f"{file} has changed since it was saved (its SHA-256 differs from the manifest's)"
    return None


def latest_name(run: RunDir) -> str | None:
    """What ``checkpoints/latest`` names (None before the first save)."""
    return read_pointer(run.checkpoints / "latest")


def latest_checkpoint(run: RunDir) -> Path | None:
    """The checkpoint named by ``latest`` if it is complete and intact, else the newest one that is (with a
    warning)."""
    pointed = latest_name(run)
    if pointed and verify(run.checkpoint(pointed), content=True) is None:
        return run.checkpoint(pointed)
    for path in reversed(step_folders(run)):
        problem = verify(path, content=True)
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
