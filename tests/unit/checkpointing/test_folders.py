"""Checkpoint folders: a checkpoint is complete only when its manifest matches its files; ``latest`` falls back
to the newest complete one."""

import hashlib
import os
import time

from harness.checkpointing import folders
from harness.checkpointing.folders import latest_checkpoint, verify
from harness.storage.atomic import write_atomic
from harness.storage.rundir import RunDir
from tests.helpers import fake_checkpoint


def test_verify_catches_missing_marker_truncated_and_missing_files(tmp_path):
    run = RunDir(tmp_path)
    good = run.checkpoint(fake_checkpoint(run, 10))
    assert verify(good) is None
    assert "did not finish" in verify(run.checkpoint(fake_checkpoint(run, 11, complete=False)))
    (good / "model.safetensors").write_bytes(b"x" * 3)
    assert verify(good) == "model.safetensors is 3 bytes, expected 10"
    (good / "model.safetensors").unlink()
    assert verify(good) == "model.safetensors is missing"


def test_latest_falls_back_to_the_newest_complete_checkpoint(tmp_path):
    run = RunDir(tmp_path)
    for step in (3, 6):
        fake_checkpoint(run, step)
    fake_checkpoint(run, 9, complete=False)
    write_atomic(run.checkpoints / "latest", "step-00000009\n")
    assert latest_checkpoint(run).name == "step-00000006"
    write_atomic(run.checkpoints / "latest", "step-00000003\n")  # the pointer wins while it is usable
    assert latest_checkpoint(run).name == "step-00000003"
    assert latest_checkpoint(RunDir(tmp_path / "none")) is None


def test_a_settled_file_is_hashed_once_per_process_and_again_once_it_changes(tmp_path, monkeypatch):
    hashed = []
    real = hashlib.file_digest
    monkeypatch.setattr(folders.hashlib, "file_digest", lambda f, name: hashed.append(f.name) or real(f, name))
    settled, fresh = tmp_path / "settled.bin", tmp_path / "fresh.bin"
    settled.write_bytes(b"a" * 100)
    os.utime(settled, ns=(time.time_ns() - 10**9, time.time_ns() - 10**9))
    first = folders.sha256(settled)
    assert folders.sha256(settled) == first and len(hashed) == 1  # remembered
    settled.write_bytes(b"b" * 100)  # the same size, a new modification time
    assert folders.sha256(settled) == hashlib.sha256(b"b" * 100).hexdigest() and len(hashed) == 2
    fresh.write_bytes(b"c" * 100)  # modified just now: within a timestamp's granularity, not remembered
    folders.sha256(fresh)
    folders.sha256(fresh)
    assert len(hashed) == 4
