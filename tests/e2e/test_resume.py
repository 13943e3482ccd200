"""Exact resume: stopping and continuing gives the same weights, bit for bit, as never stopping (CPU,
``train.deterministic: true``), and the same data order.

The model uses dropout, which draws from the global RNG of each process: a resume that did not restore
every process's RNG state would train on other dropout masks and end with other weights."""

import json
import os
import signal
import subprocess
import time

import pytest
from safetensors import safe_open

from tests.helpers import (DDP, DIGITS, FAST, PYTHON, REPO, assert_same_weights, history_metrics, marker, pointer, rows,
                           run_train, summary)

# Small batches give many steps per epoch, so a signal lands in the middle of one; two workers show that
# augmentation does not depend on worker processes; a cosine schedule with warmup shows the scheduler resumes;
# "best" is the lowest validation loss.
SETTINGS = [*FAST, "train.epochs=4", "train.batch_size=16", "data.num_workers=2", "scheduler.warmup_epochs=1",
            "train.clip_grad_norm=1.0", "model.kwargs.dropout=0.3", "checkpoint.monitor=val_loss"]


STEPS_PER_EPOCH = 79  # ceil(1259 / 16)


def traced(env, name):
    return {**env, "HARNESS_TRACE_BATCHES": str(name)}


def trace(path):
    return [line.split() for line in open(f"{path}.rank0")]


@pytest.fixture(scope="module")
def straight(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("straight")
    run_train(["--config", DIGITS, "--output-dir", out, "--run-name", "straight", *SETTINGS],
          traced(env, out / "trace"))
    return out / "straight", trace(out / "trace")


@pytest.mark.slow
def test_two_epochs_then_resume_equals_four_straight(straight, env, tmp_path):
    reference, reference_trace = straight
    first = run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "split", "--stop-after-epochs", "2",
                   *SETTINGS], traced(env, tmp_path / "trace"))
    run = tmp_path / "split"
    assert "stopped after 2 epoch(s)" in first.stdout
    assert summary(run)["status"] == "interrupted" and summary(run)["epoch"] == 2
    assert not (run / "reports").exists()  # no final evaluation for an unfinished run
    second = run_train(["--resume", run], traced(env, tmp_path / "trace"))
    assert "resumed from" in second.stdout and f"(step {2 * STEPS_PER_EPOCH}): after epoch 2\n" in second.stdout
    s = summary(run)
    assert s["status"] == "completed" and s["epoch"] == 4 and s["global_step"] == 4 * STEPS_PER_EPOCH
    assert_same_weights(reference / "weights" / "last.safetensors", run / "weights" / "last.safetensors")
    assert_same_weights(reference / "weights" / "best.safetensors", run / "weights" / "best.safetensors")
    assert history_metrics(run) == history_metrics(reference)
    for key in ("test_acc", "best_val_loss", "best_epoch"):
        assert s[key] == summary(reference)[key]
    assert trace(tmp_path / "trace") == reference_trace


@pytest.mark.slow
def test_sigterm_mid_epoch_then_resume_equals_straight(straight, env, tmp_path):
    """SIGTERM in the middle of epoch 2: the loop finishes the update, checkpoints on the spot and exits 143;
    the resumed run continues with the very next batch and ends with the reference weights."""
    reference, reference_trace = straight
    trace_file = tmp_path / "trace"
    cmd = [*PYTHON, str(REPO / "harness" / "train.py"), "--config", str(DIGITS), "--output-dir", str(tmp_path),
           "--run-name", "stopped", *SETTINGS]
    process = subprocess.Popen(cmd, env=traced(env, trace_file), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(f"{trace_file}.rank0") and any(line.startswith("1 20 ") for line in open(f"{trace_file}.rank0")):
            process.send_signal(signal.SIGTERM)
            break
        time.sleep(0.05)
    output, _ = process.communicate(timeout=300)
    assert process.returncode == 128 + signal.SIGTERM, output
    run = tmp_path / "stopped"
    s = summary(run)
    assert s["status"] == "interrupted" and s["reason"] == "stopped by SIGTERM"
    saved = marker(pointer(run))
    assert saved["epoch"] == 1 and 20 < saved["batch_in_epoch"] < STEPS_PER_EPOCH, saved
    assert saved["global_step"] == STEPS_PER_EPOCH + saved["batch_in_epoch"]

    resumed = run_train(["--resume", run], traced(env, trace_file))
    assert f"resuming epoch 2 at batch {saved['batch_in_epoch'] + 1}/{STEPS_PER_EPOCH}" in resumed.stdout
    assert summary(run)["status"] == "completed"
    assert trace(trace_file) == reference_trace  # the same batches, in the same order, each once
    assert_same_weights(reference / "weights" / "last.safetensors", run / "weights" / "last.safetensors")
    assert history_metrics(run) == history_metrics(reference)  # timings aside, every figure


@pytest.mark.slow
def test_resume_of_a_completed_run_does_not_retrain(straight, env):
    reference, _ = straight
    before = (reference / "weights" / "last.safetensors").stat().st_mtime_ns
    result = run_train(["--resume", reference], env)
    assert "already completed its 4 epochs" in result.stdout
    assert (reference / "weights" / "last.safetensors").stat().st_mtime_ns == before
    assert summary(reference)["status"] == "completed"


def test_resume_of_a_missing_run_is_a_clear_error(env, tmp_path):
    result = run_train(["--resume", tmp_path / "nope"], env, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: --resume {tmp_path / 'nope'}: neither a run directory (with config.yaml) nor a checkpoint folder"


@pytest.mark.slow
def test_best_is_the_epoch_with_the_lowest_validation_loss(straight):
    reference, _ = straight
    losses = [float(row["val_loss"]) for row in rows(reference / "history.csv")]
    best_epoch = losses.index(min(losses)) + 1
    s = summary(reference)
    assert s["best_epoch"] == best_epoch and s["best_val_loss"] == pytest.approx(min(losses), rel=1e-12)
    assert pointer(reference, "best").name == f"step-{STEPS_PER_EPOCH * best_epoch:08d}"
    with safe_open(str(reference / "weights" / "best.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["harness"])["epoch"] == best_epoch


DDP_SETTINGS = [*FAST, "train.epochs=3", "train.batch_size=8", "train.grad_accum_steps=2", "data.num_workers=0",
                "model.kwargs.dropout=0.3"]


@pytest.mark.slow
def test_ddp_stopped_mid_epoch_and_at_an_epoch_end_resumes_exactly(env, tmp_path):
    """As SLURM stops a job: SIGTERM to the launcher and both workers (which torchrun forwards again). Every
    rank stops at the same update, one checkpoint is saved; the resumed session stops again at the end of that
    epoch (--stop-after-epochs), and the last one finishes with the weights of an uninterrupted run."""
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "straight", *DDP_SETTINGS], env,
          launcher=DDP)
    trace_file = tmp_path / "trace"
    cmd = [*DDP, str(REPO / "harness" / "train.py"), "--config", str(DIGITS), "--output-dir", str(tmp_path),
           "--run-name", "stopped", *DDP_SETTINGS]
    process = subprocess.Popen(cmd, env=traced(env, trace_file), cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.exists(f"{trace_file}.rank0") and any(line.startswith("1 30 ") for line in open(f"{trace_file}.rank0")):
            os.killpg(process.pid, signal.SIGTERM)
            break
        time.sleep(0.05)
    output, _ = process.communicate(timeout=300)
    run = tmp_path / "stopped"
    s = summary(run)
    assert s["status"] == "interrupted" and s["reason"] == "stopped by SIGTERM", output[-3000:]
    saved = marker(pointer(run))
    assert saved["epoch"] == 1 and 0 < saved["batch_in_epoch"] < 79 and saved["num_processes"] == 2
    assert "Connection closed by peer" not in output

    again = run_train(["--resume", run, "--stop-after-epochs", "1"], env, launcher=DDP)
    assert "resuming epoch 2 at batch" in again.stdout
    assert summary(run)["reason"] == "stopped after 1 epoch(s) (--stop-after-epochs)" and summary(run)["epoch"] == 2
    run_train(["--resume", run], env, launcher=DDP)
    assert summary(run)["status"] == "completed"
    assert_same_weights(tmp_path / "straight" / "weights" / "last.safetensors", run / "weights" / "last.safetensors")
    assert history_metrics(run) == history_metrics(tmp_path / "straight")
