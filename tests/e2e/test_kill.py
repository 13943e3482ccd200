"""kill -9 survival: SIGKILL the training process at different moments (one of them in the middle of a
checkpoint save), run the same command again until the run completes, and get the reference weights bit for bit."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from harness.checkpointing.folders import read_pointer, verify
from harness.data.builtin import builtin_root
from tests.helpers import DIGITS, FAST, PYTHON, REPO, assert_same_weights, launch, run_train, summary

# 79 updates per epoch, a step checkpoint every 10, two kept; no workers, so SIGKILL leaves no orphans.
SETTINGS = [*FAST, "train.epochs=3", "train.batch_size=16", "data.num_workers=0", "checkpoint.every_n_steps=10",
            "checkpoint.keep_last=2", "scheduler.warmup_epochs=0.5"]


def trace_reached(trace: Path, epoch: int, batch: int):
    prefix = f"{epoch} {batch} "
    return lambda run: trace.with_name(trace.name + ".rank0").exists() and any(
        line.startswith(prefix) for line in open(trace.with_name(trace.name + ".rank0")))


def saving(run: Path) -> bool:
    """A checkpoint save is under way (its temporary folder exists) and an earlier one is complete."""
    try:
        entries = [entry.name for entry in os.scandir(run / "checkpoints")]
    except FileNotFoundError:
        return False
    return "latest" in entries and any(name.startswith(".tmp-step-") for name in entries)


def log_says(text: str):
    return lambda run: (run / "train.log").exists() and text in (run / "train.log").read_text()


def kill_when(cmd: list[str], env: dict, run: Path, condition, poll: float) -> bool:
    """Start ``cmd``; SIGKILL it as soon as ``condition(run)`` holds. False if it finished first."""
    with open(run.parent / f"{run.name}.out", "a") as out:
        process = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT)
        while process.poll() is None:
            if condition(run):
                process.send_signal(signal.SIGKILL)
                process.wait()
                return True
            if poll:
                time.sleep(poll)
        return False


@pytest.fixture(scope="module")
def reference(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("kill")
    run_train(["--config", DIGITS, "--output-dir", out, "--run-name", "reference", *SETTINGS], env)
    return out / "reference"


KILL_POINTS = {
    "epoch 1, before any checkpoint": (lambda trace: trace_reached(trace, 0, 5), 0.005),
    "epoch 1, after step checkpoints": (lambda trace: trace_reached(trace, 0, 45), 0.005),
    "during a checkpoint save": (lambda trace: saving, 0),  # busy-polling: a save lasts milliseconds
    "end of epoch 2 (validation, save, export)": (lambda trace: trace_reached(trace, 1, 78), 0),
    "epoch 3, between step checkpoints": (lambda trace: trace_reached(trace, 2, 33), 0.005),
    "final evaluation": (lambda trace: log_says("evaluating the best weights"), 0),
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_kill_9_then_rerun_gives_the_reference_weights(reference, env, tmp_path, point):
    make_condition, poll = KILL_POINTS[point]
    trace = tmp_path / "trace"
    run = tmp_path / "killed"
    cmd = [*PYTHON, str(REPO / "harness" / "train.py"), "--config", str(DIGITS), "--output-dir", str(tmp_path),
           "--run-name", "killed", *SETTINGS]
    killed = kill_when(cmd, {**env, "HARNESS_TRACE_BATCHES": str(trace)}, run, make_condition(trace), poll)
    assert killed, f"the run finished before the kill point '{point}'"
    if point == "during a checkpoint save":
        assert saving(run), "the kill did not land inside a save"
    named = read_pointer(run / "checkpoints" / "latest")
    assert named is None or verify(run / "checkpoints" / named) is None, f"latest names a broken {named}"
    # The same command again continues the run (or starts it over, when no checkpoint was complete yet).
    result = run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "killed", *SETTINGS], env)
    assert summary(run)["status"] == "completed"
    if point == "during a checkpoint save":
        assert "left by a save that did not finish" in result.stdout
    assert_same_weights(reference / "weights" / "last.safetensors", run / "weights" / "last.safetensors")
    assert_same_weights(reference / "weights" / "best.safetensors", run / "weights" / "best.safetensors")
    assert (run / "predictions" / "test.csv").read_text() == (reference / "predictions" / "test.csv").read_text()


@pytest.mark.slow
def test_kill_9_on_packed_data_then_rerun_gives_the_folders_reference_weights(reference, env, tmp_path):
    """The digits packed (``harness/pack.py``) train as the folder does, through a kill -9 in the middle of an
    epoch and the same command again: the folder's reference weights and predictions, bit for bit."""
    packed = tmp_path / "digits-packed"
    launch("pack.py", [builtin_root("digits", env["HARNESS_CACHE_DIR"]), packed, "--shard-mb", "1"], env)
    trace, run = tmp_path / "trace", tmp_path / "killed"
    command = ["--config", str(DIGITS), "--output-dir", str(tmp_path), "--run-name", "killed", *SETTINGS,
               "data.builtin=null", f"data.root={packed}"]
    killed = kill_when([*PYTHON, str(REPO / "harness" / "train.py"), *command], {**env, "HARNESS_TRACE_BATCHES": str(trace)},
                       run, trace_reached(trace, 0, 45), 0.005)
    assert killed and read_pointer(run / "checkpoints" / "latest") is not None
    run_train(command, env)
    assert summary(run)["status"] == "completed"
    assert_same_weights(reference / "weights" / "last.safetensors", run / "weights" / "last.safetensors")
    assert (run / "predictions" / "test.csv").read_text() == (reference / "predictions" / "test.csv").read_text()
