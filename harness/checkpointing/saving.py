"""Saving a checkpoint: an atomic, verified ``accelerator.save_state`` folder, then the pointers, then rotation.

A save is: every process writes into ``.tmp-<name>``; the main process writes the train state as JSON,
fsyncs the files, writes the marker (a manifest of every file, its size and its SHA-256), renames the folder
into place, fsyncs the parent, then updates ``latest``/``best``, and only then deletes old checkpoints beyond
``checkpoint.keep_last`` (never the newest complete one, never the best). So a checkpoint on disk is complete
or absent, and ``latest`` never names an incomplete checkpoint (a re-save of the same step first points it at
an older one). The layout is ``harness.checkpointing.folders``'s.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

from accelerate import Accelerator

from harness.checkpointing.folders import (MARKER, STATE, TMP_PREFIX, checkpoint_name, complete_checkpoints,
                                           latest_label, manifest)
from harness.checkpointing.state import TrainState
from harness.errors import StorageError
from harness.runtime.accelerator import distributed_type
from harness.runtime.collective import first_failure
from harness.storage.atomic import fsync, write_atomic
from harness.storage.rundir import RunDir

logger = logging.getLogger(__name__)


def save_checkpoint(accelerator: Accelerator, rundir: RunDir, state: TrainState, keep_last: int) -> str:
    """Save the full training state as checkpoints/step-<global_step>, atomically, then point ``latest`` (and
    ``best``) at it and rotate. Every process must call it. Returns the checkpoint's name. A save that fails
    on any process (a full disk) fails on all of them, leaves the previous checkpoints as they were and is a
    StorageError."""
    name = checkpoint_name(state.global_step)
    final, tmp = rundir.checkpoint(name), rundir.checkpoints / f"{TMP_PREFIX}{name}"
    _, failure = first_failure(accelerator, lambda: _write_folder(accelerator, tmp, name, state))
    if failure:
        if accelerator.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        raise StorageError(f"{final} could not be written ({failure}); "
                           f"the last checkpoint ({latest_label(rundir)}) is intact: free space under "
                           f"{rundir.checkpoints}, then --resume {rundir.root}")
    if accelerator.is_main_process:
        if final.exists():  # a re-save of the same step: latest must not name it while the two swap
            _point_latest_before(rundir, name)
        _swap_into_place(tmp, final)
        fsync(rundir.checkpoints)
        write_atomic(rundir.checkpoints / "latest", name + "\n")
        if state.best_checkpoint:
            write_atomic(rundir.checkpoints / "best", state.best_checkpoint + "\n")
        rotate(rundir, keep_last, protect={name, state.best_checkpoint})
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
                  "distributed_type": distributed_type(accelerator),
                  "saved_at": time.time(), "files": files}
        write_atomic(tmp / MARKER, json.dumps(marker, indent=2))
        fsync(tmp)


def _point_latest_before(rundir: RunDir, name: str) -> None:
    """Point ``latest`` at the newest complete checkpoint older than ``name``, or at nothing."""
    older = [complete for complete in complete_checkpoints(rundir) if complete < name]
    if older:
        write_atomic(rundir.checkpoints / "latest", older[-1] + "\n")
    else:
        (rundir.checkpoints / "latest").unlink(missing_ok=True)


def _swap_into_place(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``, replacing an existing folder of that name (a re-save of the same step)."""
    old = final.with_name(f"{TMP_PREFIX}old-{final.name}")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def rotate(rundir: RunDir, keep_last: int, protect: set) -> None:
    """Delete complete checkpoints beyond the newest ``keep_last``, except the names in ``protect``."""
    for name in complete_checkpoints(rundir)[:-keep_last]:
        if name not in protect:
            shutil.rmtree(rundir.checkpoint(name), ignore_errors=True)


def clean_temporary(accelerator: Accelerator, rundir: RunDir) -> None:
    """Remove what a killed save left behind (it was never a checkpoint)."""
    if accelerator.is_main_process and rundir.checkpoints.is_dir():
        for path in rundir.checkpoints.iterdir():
            if path.name.startswith("."):  # .tmp-<name>/ folders and the .<pointer>.tmp files of atomic writes
                logger.warning(f"removing {path}: left by a save that did not finish")
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink()
    accelerator.wait_for_everyone()
