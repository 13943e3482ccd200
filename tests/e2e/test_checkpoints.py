"""Checkpoints through the entry point: rotation (each kept checkpoint resumes to the reference), fallback from a
broken newest one, refusals, a diverged loss and skipped updates, time-based checkpoints; no file of a checkpoint
can run code, and a part that does not load is an error."""

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from harness.checkpointing.folders import MARKER, manifest, verify
from tests.helpers import DIGITS, FAST, assert_same_weights, marker, plant, pointer, run_train, summary, tree

# 20 updates per epoch; a step checkpoint every 3 updates, two kept.
SETTINGS = [*FAST, "train.epochs=2", "checkpoint.every_n_steps=3", "checkpoint.keep_last=2"]


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    """A straight 2-epoch run, and the same run stopped after its first epoch (to be continued)."""
    out = tmp_path_factory.mktemp("ckpt")
    run_train(["--config", DIGITS, "--output-dir", out, "--run-name", "straight", *SETTINGS], env)
    run_train(["--config", DIGITS, "--output-dir", out, "--run-name", "half", "--stop-after-epochs", "1", *SETTINGS], env)
    return out


def command(out, name="half"):
    return ["--config", DIGITS, "--output-dir", out, "--run-name", name, *SETTINGS]


@pytest.mark.slow
def test_rotation_keeps_the_two_newest_plus_best_and_each_resumes_to_the_reference(runs, env, tmp_path):
    run = runs / "straight"
    folders = sorted(p.name for p in (run / "checkpoints").iterdir() if p.is_dir())
    best = pointer(run, "best").name
    assert pointer(run).name == "step-00000040"
    assert set(folders) == {"step-00000039", "step-00000040", best}
    assert_same_weights(run / "weights" / "last.safetensors", pointer(run) / "model.safetensors")
    for name in folders:  # each one resumes: the run finishes from it and writes the reference outputs anew
        copy = tmp_path / name
        shutil.copytree(run, copy)
        for produced in ("weights", "predictions", "reports"):
            shutil.rmtree(copy / produced)
        stats = summary(copy)
        stats["status"] = "interrupted"  # as if killed in the final evaluation: resuming step-40 redoes that
        (copy / "summary.json").write_text(json.dumps(stats))
        result = run_train(["--resume", copy / "checkpoints" / name], env)
        assert f"resumed from {copy / 'checkpoints' / name} (step " in result.stdout
        assert summary(copy)["status"] == "completed" and summary(copy)["test_acc"] == summary(run)["test_acc"]
        assert_same_weights(run / "weights" / "best.safetensors", copy / "weights" / "best.safetensors")
        assert (copy / "predictions" / "test.csv").read_text() == (run / "predictions" / "test.csv").read_text()
        if name != "step-00000040":  # it trained to the end and exported the last weights again
            assert_same_weights(run / "weights" / "last.safetensors", copy / "weights" / "last.safetensors")


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "no_marker", "same_size"])
def test_auto_resume_falls_back_from_a_broken_newest_checkpoint(runs, env, tmp_path, damage):
    shutil.copytree(runs / "half", tmp_path / "half")
    run = tmp_path / "half"
    assert summary(run)["status"] == "interrupted" and pointer(run).name == "step-00000020"
    newest = run / "checkpoints" / "step-00000020"
    if damage == "truncated":
        data = (newest / "optimizer.bin").read_bytes()
        (newest / "optimizer.bin").write_bytes(data[: len(data) // 2])
    elif damage == "same_size":  # bytes changed in place: only the content hash can tell
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[-100:] = bytes(100)
        (newest / "model.safetensors").write_bytes(bytes(data))
    else:
        (newest / MARKER).unlink()
    (run / "checkpoints" / ".tmp-step-00000021").mkdir()  # as a kill during a save leaves it
    explicit = run_train(["--resume", newest], env, check=False)
    assert explicit.returncode == 2 and f"--resume {newest}: not a complete checkpoint" in explicit.stderr
    result = run_train(command(tmp_path), env)  # the same command as before: continues the run
    assert "skipping checkpoint" in result.stdout and "falling back to step-00000018" in result.stdout
    assert "removing" in result.stdout and not (run / "checkpoints" / ".tmp-step-00000021").exists()
    assert "resumed from" in result.stdout and summary(run)["status"] == "completed"
    assert_same_weights(runs / "straight" / "weights" / "last.safetensors", run / "weights" / "last.safetensors")


@pytest.mark.slow
def test_same_command_refuses_another_config_and_never_mode(runs, env, tmp_path):
    shutil.copytree(runs / "half", tmp_path / "half")
    changed = run_train([*command(tmp_path), "optim.lr=0.5"], env, check=False)
    assert changed.returncode == 2
    assert changed.stderr.strip() == (
        f"error: {tmp_path / 'half'} holds a run with another config (optim.lr: 0.003 there, 0.5 here): "
        f"--resume {tmp_path / 'half'} continues it with its own config, --run-name NAME starts another run, "
        "--force starts over in it (deleting it)")
    never = run_train([*command(tmp_path), "--resume", "never"], env, check=False)
    assert never.returncode == 2 and "already holds a run (--resume never)" in never.stderr
    assert summary(tmp_path / "half")["status"] == "interrupted"  # untouched
    run_train([*command(tmp_path), "optim.lr=0.5", "--force"], env)  # starts over in it, with the new config
    assert summary(tmp_path / "half")["status"] == "completed" and summary(tmp_path / "half")["resumed_from"] is None
    assert "lr: 0.5" in (tmp_path / "half" / "config.yaml").read_text()


@pytest.mark.slow
def test_nan_loss_fails_cleanly_and_keeps_the_last_checkpoint(runs, env, tmp_path):
    nan_env = {**env, "HARNESS_FAULT_NAN_AT_STEP": "27"}
    result = run_train(command(tmp_path, "nan"), nan_env, check=False)
    run = tmp_path / "nan"
    message = ("non-finite loss or gradients at epoch 2, step 27 (batch 7); nothing of it was saved, the last "
               "checkpoint (step-00000024) is intact")
    assert result.returncode == 2 and message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert summary(run)["status"] == "failed" and message in summary(run)["error"]
    latest = pointer(run)
    assert latest.name == "step-00000024" and verify(latest) is None and marker(latest)["global_step"] == 24
    for path in [latest / "model.safetensors", run / "weights" / "last.safetensors", run / "weights" / "best.safetensors"]:
        assert all(torch.isfinite(t).all() for t in load_file(str(path)).values() if t.is_floating_point())
    # Without the fault, the same command continues from that checkpoint and matches the straight run.
    run_train(command(tmp_path, "nan"), env)
    assert summary(run)["status"] == "completed"
    assert_same_weights(runs / "straight" / "weights" / "last.safetensors", run / "weights" / "last.safetensors")


@pytest.mark.slow
def test_skip_nonfinite_steps_skips_and_counts(env, tmp_path):
    nan_env = {**env, "HARNESS_FAULT_NAN_AT_STEP": "27"}
    result = run_train([*command(tmp_path, "skip"), "train.skip_nonfinite_steps=1"], nan_env)
    assert "skipping the update at epoch 2, step 27 (batch 7)" in result.stdout
    s = summary(tmp_path / "skip")
    assert s["status"] == "completed" and s["skipped_steps"] == 1 and s["global_step"] == 40
    assert math.isfinite(s["last"]["train_loss"])  # the skipped batch is not counted


@pytest.mark.slow
def test_time_based_checkpoints_land_inside_epochs(env, tmp_path):
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "timed", *FAST, "train.epochs=1",
           "checkpoint.every_n_minutes=0.0001", "checkpoint.keep_last=100"], env)
    steps = sorted(marker(p)["global_step"] for p in (tmp_path / "timed" / "checkpoints").glob("step-*"))
    assert len(steps) > 5 and steps[-1] == 20 and all(0 < s < 20 for s in steps[:-1])
    assert all(verify(p) is None for p in (tmp_path / "timed" / "checkpoints").glob("step-*"))


@pytest.mark.slow
def test_no_file_of_a_checkpoint_can_run_code_when_resumed(runs, env, tmp_path):
    """Every file of the checkpoint in turn becomes a code-running pickle, the manifest updated to match: the
    resume refuses it in one line naming the checkpoint (or, for the manifest itself, falls back to the
    previous checkpoint) and leaves the run as it was, and the code never runs."""
    files = sorted(p.name for p in (runs / "half" / "checkpoints" / "step-00000020").iterdir())
    assert {"model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl", "train_state.json",
            MARKER} <= set(files)
    for name in files:
        run = tmp_path / name
        shutil.copytree(runs / "half", run)
        pwned = tmp_path / f"pwned-{name}"
        plant(run / "checkpoints" / "step-00000020", name, pwned)
        before = tree(run)
        result = run_train(["--resume", run, "--stop-after-epochs", "1"], env, check=False)
        assert not pwned.exists(), f"{name}: the payload ran"
        if name == MARKER:
            assert result.returncode == 0 and "falling back to step-00000018" in result.stdout
            continue
        assert result.returncode == 2, (name, result.stderr[-2000:])
        assert result.stderr.strip().startswith(f"error: {run / 'checkpoints' / 'step-00000020'}: cannot load it (")
        assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr
        assert tree(run) == before and summary(run)["status"] == "interrupted"  # as the half run left it


@pytest.mark.slow
def test_a_checkpoint_part_that_does_not_load_is_an_error_not_a_silent_skip(runs, env, tmp_path):
    """accelerate ignores an RNG-state file it cannot use; the harness refuses, before anything is written: the
    run that was to be continued is left as it was (a completed run still says completed)."""
    run = tmp_path / "rng"
    shutil.copytree(runs / "straight", run)
    newest = pointer(run)
    torch.save({"step": 0}, newest / "random_states_0.pkl")  # loads (weights only), but holds no RNG state
    stamp = marker(newest)
    stamp["files"] = manifest(newest)
    (newest / MARKER).write_text(json.dumps(stamp))
    before = tree(run)
    result = run_train(["--resume", run, "train.epochs=3"], env, check=False)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"error: {newest}: cannot load it (ValueError: random_states_0.pkl lacks "
                                     "['numpy_random_seed', 'random_state', 'torch_manual_seed'])")
    assert tree(run) == before and summary(run)["status"] == "completed"
