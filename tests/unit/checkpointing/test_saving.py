"""Saving checkpoints: rotation keeps the newest and the protected ones, and a save stopped at any of its file
operations never leaves ``latest`` naming an incomplete checkpoint."""

import os
import shutil
from pathlib import Path

import pytest
from accelerate.utils import DistributedType

from harness.checkpointing.folders import latest_checkpoint, read_pointer, verify
from harness.checkpointing.saving import clean_temporary, rotate, save_checkpoint
from harness.checkpointing.state import TrainState
from harness.storage.rundir import RunDir
from tests.helpers import fake_checkpoint


def test_rotation_keeps_the_newest_and_the_protected(tmp_path):
    run = RunDir(tmp_path)
    for step in (3, 6, 9, 12, 15):
        fake_checkpoint(run, step)
    fake_checkpoint(run, 16, complete=False)
    rotate(run, keep_last=2, protect={"step-00000015", "step-00000006"})
    assert sorted(p.name for p in run.checkpoints.iterdir()) == [
        "step-00000006", "step-00000012", "step-00000015", "step-00000016"]


class Crash(BaseException):
    """Stands for a kill -9: whatever the save was about to do next never happens."""


class OneProcess:
    """The part of an Accelerator that save_checkpoint uses; save_state writes two files, and every file
    operation of the save (these writes, renames, replaces, deletions) counts as an event. The event numbered
    ``crash_at`` crashes instead of happening."""

    is_main_process, num_processes, distributed_type = True, 1, DistributedType.NO

    def __init__(self, monkeypatch=None, crash_at: int = 0) -> None:
        self.events, self.crash_at = 0, crash_at
        for module, name in ((os, "replace"), (os, "rename"), (shutil, "rmtree")) if monkeypatch else ():
            monkeypatch.setattr(module, name, self._counted(getattr(module, name)))

    def _counted(self, operation):
        def run(*args, **kwargs):
            self.events += 1
            if self.events == self.crash_at:
                raise Crash
            return operation(*args, **kwargs)
        return run

    def wait_for_everyone(self) -> None:
        pass

    def save_state(self, folder: str) -> None:
        for name, size in (("model.safetensors", 300), ("optimizer.bin", 500)):
            self._counted(Path(folder, name).write_bytes)(b"w" * size)


# (global step, epoch, best checkpoint): mid-epoch and epoch-end saves, rotation (keep_last 2), and a re-save
# of step 10 (a stop at the epoch's last batch saves mid-epoch, the resumed run saves the epoch's end).
SAVES = [(3, 0, None), (5, 1, "step-00000005"), (8, 1, "step-00000005"), (10, 1, "step-00000005"),
         (10, 2, "step-00000010"), (13, 2, "step-00000010")]


def save_all(run: RunDir, accelerator: OneProcess, done: list[str]) -> None:
    for step, epoch, best in SAVES[len(done):]:
        state = TrainState(epoch=epoch, global_step=step, best_checkpoint=best)
        done.append(save_checkpoint(accelerator, run, state, keep_last=2))


def test_latest_never_names_an_incomplete_checkpoint_wherever_a_save_stops(tmp_path, monkeypatch):
    for module in ("harness.storage.atomic", "harness.checkpointing.saving"):  # durability is not what this test is about: fast
        monkeypatch.setattr(f"{module}.fsync", lambda path: None)
    with monkeypatch.context() as patch:
        counted = OneProcess(patch)
        save_all(RunDir(tmp_path / "count"), counted, [])
    assert counted.events > 40
    for crash_at in range(1, counted.events + 1):
        run, done = RunDir(tmp_path / f"crash-{crash_at}"), []  # done: the saves that returned before the crash
        with monkeypatch.context() as patch, pytest.raises(Crash):
            save_all(run, OneProcess(patch, crash_at), done)
        named = read_pointer(run.checkpoints / "latest")
        assert named is None or verify(run.checkpoint(named)) is None, (crash_at, named)
        resume = latest_checkpoint(run)
        if done:  # the resume point is complete: the save that crashed, or one of the last two that finished
            interrupted = f"step-{SAVES[len(done)][0]:08d}"
            assert resume is not None and resume.name in [*done[-2:], interrupted], (crash_at, resume)
            assert verify(resume) is None
        # The next session cleans up after the crash, and its saves succeed.
        clean_temporary(OneProcess(), run)
        save_all(run, OneProcess(), done)
        assert read_pointer(run.checkpoints / "latest") == "step-00000013"
        assert {p.name for p in run.checkpoints.iterdir()} == {"latest", "best", "step-00000010", "step-00000013"}


def test_rotation_after_a_save_keeps_the_best_even_when_it_is_the_oldest(tmp_path):
    run = RunDir(tmp_path)
    for step in (4, 8, 12, 16):  # epoch 1 was the best; later epochs only saved
        save_checkpoint(OneProcess(), run, TrainState(epoch=step // 4, global_step=step, best_checkpoint="step-00000004"),
                        keep_last=2)
    assert sorted(p.name for p in run.checkpoints.glob("step-*")) == ["step-00000004", "step-00000012", "step-00000016"]
    assert read_pointer(run.checkpoints / "best") == "step-00000004" and verify(run.checkpoint("step-00000004")) is None
