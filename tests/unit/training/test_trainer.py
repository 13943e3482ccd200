"""The Trainer in-process, on a tiny image folder: its step logic in seconds (the slow tests run it end to end)."""

import json
import logging
import signal

import pytest
import torch
import yaml

from harness.checkpointing.folders import read_marker, step_folders
from harness.config.loading import load_config
from harness.errors import TrainingDiverged
from harness.optim.schedules import lr_per_update
from harness.runtime.accelerator import build_accelerator
from harness.runtime.signals import TrainingInterrupted
from harness.storage.rundir import RunDir
from harness.training.command import execute
from harness.training.final_evaluation import FULL_TRAIN_PASS_UP_TO, final_splits
from harness.training.parts import build_parts
from harness.training.plan import RunPlan
from harness.training.trainer import Trainer
from tests.helpers import make_image_folder

# 3 classes x 8 images, a quarter each for val and test: 12 training images, 3 batches of 4 per epoch.
BATCHES = 3


@pytest.fixture(scope="module")
def config(tmp_path_factory):
    root = make_image_folder(tmp_path_factory.mktemp("images"), classes=3, per_class=8, size=8)
    path = root.parent / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "data": {"root": str(root), "image_size": 8, "val_fraction": 0.25, "test_fraction": 0.25,
                 "num_workers": 0, "augmentations": ["hflip"]},
        "model": {"name": "compact_cnn", "kwargs": {"width": 4}},
        "train": {"epochs": 2, "batch_size": 4},
        "log": {"every_n_steps": 1, "progress": False, "tensorboard": False},
    }))
    return path


@pytest.fixture(autouse=True)
def close_run_logs():
    """build_parts adds the run's train.log to the root logger, as a training process wants: remove it after."""
    before = list(logging.getLogger().handlers)
    yield
    for handler in [h for h in logging.getLogger().handlers if h not in before]:
        logging.getLogger().removeHandler(handler)
        handler.close()


def trainer(config, tmp_path, *overrides) -> Trainer:
    cfg = load_config(config, list(overrides))
    accelerator = build_accelerator(None, cfg.train.grad_accum_steps)
    return Trainer(build_parts(RunPlan(cfg, RunDir(tmp_path / "run"), None), accelerator))


def checkpoints(trainer: Trainer) -> dict[int, tuple[int, int]]:
    """global step -> (epochs completed, batches of the next one) of every checkpoint on disk."""
    markers = [read_marker(path) for path in step_folders(trainer.parts.rundir)]
    return {m["global_step"]: (m["epoch"], m["batch_in_epoch"]) for m in markers}


def test_every_epoch_and_every_n_steps_checkpoint_and_the_epoch_end_saves_once(config, tmp_path):
    fit = trainer(config, tmp_path, "checkpoint.every_n_steps=2", "checkpoint.keep_last=10")
    fit.fit()
    state = fit.parts.state
    assert (state.epoch, state.batch_in_epoch, state.global_step, state.epoch_sums) == (2, 0, 2 * BATCHES, [])
    # steps 2 and 4 inside epochs, 3 and 6 at their ends (6 is due by steps too: saved once)
    assert checkpoints(fit) == {2: (0, 2), 3: (1, 0), 4: (1, 1), 6: (2, 0)}
    assert [record["epoch"] for record in state.history] == [1, 2]
    assert state.best_checkpoint == f"step-{BATCHES * state.best_epoch:08d}"
    assert (fit.parts.rundir.weights_file("last")).is_file() and (fit.parts.rundir.weights_file("best")).is_file()


def test_a_stop_request_saves_at_the_next_update_and_carries_the_epoch_so_far(config, tmp_path):
    fit = trainer(config, tmp_path)
    fit.stop.signum = signal.SIGUSR1  # as if the signal arrived before the first update
    with pytest.raises(TrainingInterrupted) as stopped:
        fit.fit()
    assert stopped.value.exit_code == 128 + signal.SIGUSR1 and str(stopped.value) == "stopped by SIGUSR1"
    assert checkpoints(fit) == {1: (0, 1)}
    loss_sum, correct, count = fit.parts.state.epoch_sums
    assert count == 4 and 0 <= correct <= 4 and loss_sum > 0  # one batch of four images


def test_the_session_budget_stops_at_an_epoch_end_with_exit_code_0(config, tmp_path):
    fit = trainer(config, tmp_path)
    with pytest.raises(TrainingInterrupted, match="stopped after 1 epoch") as stopped:
        fit.fit(stop_after_epochs=1)
    assert stopped.value.exit_code == 0 and checkpoints(fit) == {3: (1, 0)}


def test_accumulation_updates_once_per_window_and_at_the_epochs_end(config, tmp_path):
    fit = trainer(config, tmp_path, "train.grad_accum_steps=2", "train.epochs=1")
    fit.fit()
    assert fit.parts.state.global_step == 2  # batches 1+2, then batch 3 alone (the loader's end syncs)


def test_a_nonfinite_update_is_skipped_and_counts_nowhere_or_stops_the_run(config, tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_FAULT_NAN_AT_STEP", "2")
    skipping = trainer(config, tmp_path / "skip", "train.skip_nonfinite_steps=1", "train.epochs=1")
    before = {name: p.detach().clone() for name, p in skipping.parts.model.named_parameters()}
    skipping.fit()
    state = skipping.parts.state
    assert state.skipped_steps == 1 and state.global_step == BATCHES
    # The skipped update still advanced the schedule: one step per update, and the one-epoch cosine is at its end.
    assert skipping.parts.scheduler.scheduler.last_epoch == BATCHES
    assert skipping.parts.scheduler.get_last_lr()[0] == 0.0 < lr_per_update(
        skipping.parts.cfg.optim, skipping.parts.cfg.scheduler, 1, BATCHES)[-1]
    assert torch.isfinite(torch.tensor(state.history[0]["train_loss"]))
    assert all(torch.isfinite(p).all() and not torch.equal(p, before[n]) for n, p in skipping.parts.model.named_parameters())
    failing = trainer(config, tmp_path / "fail", "train.epochs=1")
    with pytest.raises(TrainingDiverged, match=r"epoch 1, step 2 \(batch 2\); nothing of it was saved, the last "
                                               r"checkpoint \(none yet\) is intact"):
        failing.fit()


def summary(fit: Trainer) -> dict:
    return json.loads(fit.parts.rundir.summary_json.read_text())


def test_the_run_sets_the_status_and_the_summary_follows_the_state(config, tmp_path, monkeypatch):
    stopped = trainer(config, tmp_path / "stopped")
    assert execute(stopped.parts, stop_after_epochs=1) == 0
    result = summary(stopped)
    assert (result["status"], result["reason"]) == ("interrupted", "stopped after 1 epoch(s) (--stop-after-epochs)")
    assert (result["epoch"], result["global_step"], result["best_epoch"]) == (1, BATCHES, 1)
    done = trainer(config, tmp_path / "done")
    assert execute(done.parts) == 0
    result = summary(done)
    assert result["status"] == "completed" and result["epoch"] == 2 and result["last"] == done.parts.state.history[-1]
    assert result["best_val_acc"] == max(record["val_acc"] for record in done.parts.state.history)
    assert {"train_acc", "val_acc", "test_acc", "test_loss"} <= result.keys()
    monkeypatch.setenv("HARNESS_FAULT_NAN_AT_STEP", "1")
    failed = trainer(config, tmp_path / "failed")
    with pytest.raises(TrainingDiverged):
        execute(failed.parts)
    assert summary(failed)["status"] == "failed" and "non-finite loss" in summary(failed)["error"]


def test_the_final_splits_leave_out_a_large_train_split_unless_named():
    small, large = FULL_TRAIN_PASS_UP_TO, FULL_TRAIN_PASS_UP_TO + 1
    splits = {"train": [("x", 0)] * small, "val": [("x", 0)], "test": [("x", 0)]}
    assert final_splits(None, splits) == ["train", "val", "test"]
    splits["train"] = [("x", 0)] * large
    assert final_splits(None, splits) == ["val", "test"]
    assert final_splits(["test", "train"], splits) == ["train", "test"]  # in the run's order
    assert final_splits(["val", "test"], {"train": [], "val": []}) == ["val"]  # a split the run lacks is left out
