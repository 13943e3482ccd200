"""What a train command decides before anything is built: a new run, which checkpoint to continue, or a refusal."""

import json

import pytest
import yaml

from harness.checkpointing.folders import MARKER
from harness.config.loading import load_config
from harness.errors import CheckpointError, ConfigError
from harness.storage.atomic import write_atomic
from harness.storage.rundir import RunDir
from harness.train import parse_args
from harness.training.plan import first_difference, resolve_checkpoint, resolve_run
from tests.helpers import DIGITS, fake_checkpoint


def test_explicit_resume_of_a_broken_checkpoint_names_it(tmp_path):
    run = RunDir(tmp_path)
    (tmp_path / "config.yaml").write_text("{}")
    broken = run.checkpoint(fake_checkpoint(run, 4, complete=False))
    with pytest.raises(CheckpointError, match=f"--resume {broken}: not a complete checkpoint: no {MARKER}"):
        resolve_checkpoint(broken)
    with pytest.raises(CheckpointError, match="no complete checkpoint in"):
        resolve_checkpoint(tmp_path)
    good = fake_checkpoint(run, 8)
    write_atomic(run.checkpoints / "best", good + "\n")
    assert resolve_checkpoint(run.checkpoints / "best") == (run, run.checkpoint(good))
    assert resolve_checkpoint(tmp_path) == (run, run.checkpoint(good))


def plan(*argv):
    return resolve_run(parse_args([str(a) for a in argv]))


def existing_run(out, overrides=(), steps=(), status="interrupted") -> RunDir:
    """A run directory as training leaves it: config, checkpoints at ``steps``, a summary."""
    run = RunDir(out / "digits")
    run.root.mkdir(parents=True)
    load_config(DIGITS, list(overrides)).save(run.config)
    for step in steps:
        fake_checkpoint(run, step)
    if steps:
        (run.checkpoints / "latest").write_text(f"step-{steps[-1]:08d}\n")
    run.summary_json.write_text(json.dumps({"status": status}))
    return run


def test_a_new_run_starts_from_the_beginning_with_absolute_data_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = tmp_path / "folder.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": "images"}}))
    new = plan("--config", config, "--output-dir", "runs", "optim.lr=0.5")
    assert new.resume_from is None and new.rundir.root.resolve() == tmp_path / "runs" / "folder_lr0.5"
    assert new.cfg.data.root == str(tmp_path / "images") and new.cfg.optim.lr == 0.5
    assert not new.finished()


def test_overrides_may_come_before_or_after_the_options(tmp_path):
    before = parse_args(["optim.lr=0.5", "--config", str(DIGITS), "--stop-after-epochs", "1", "train.epochs=3"])
    after = parse_args(["--config", str(DIGITS), "--stop-after-epochs", "1", "optim.lr=0.5", "train.epochs=3"])
    assert before == after and before.overrides == ["optim.lr=0.5", "train.epochs=3"]


def test_run_name_placeholder_stands_for_the_default_name(tmp_path):
    named = plan("--config", DIGITS, "--output-dir", tmp_path, "--run-name", "{name}-j42", "optim.lr=0.5")
    assert named.rundir.root == tmp_path / "digits_lr0.5-j42"
    assert plan("--config", DIGITS, "--output-dir", tmp_path, "--run-name", "x{name}").rundir.root == tmp_path / "xdigits"


def test_the_same_command_continues_the_latest_complete_checkpoint(tmp_path):
    run = existing_run(tmp_path, steps=[20, 40])
    assert plan("--config", DIGITS, "--output-dir", tmp_path).resume_from == run.checkpoint("step-00000040")
    (run.checkpoint("step-00000040") / "harness_checkpoint.json").unlink()  # the newest one is broken
    assert plan("--config", DIGITS, "--output-dir", tmp_path).resume_from == run.checkpoint("step-00000020")


def test_a_run_that_never_reached_a_checkpoint_starts_over(tmp_path):
    existing_run(tmp_path)
    assert plan("--config", DIGITS, "--output-dir", tmp_path).resume_from is None


def test_refusals_name_the_reason_and_the_way_out(tmp_path):
    run = existing_run(tmp_path, steps=[20])
    with pytest.raises(CheckpointError, match=r"another config \(optim.lr: 0.003 there, 0.1 here\): --resume"):
        plan("--config", DIGITS, "--output-dir", tmp_path, "--run-name", "digits", "optim.lr=0.1")
    with pytest.raises(CheckpointError, match=r"already holds a run \(--resume never\): --run-name NAME"):
        plan("--config", DIGITS, "--output-dir", tmp_path, "--resume", "never")
    (tmp_path / "other").mkdir()
    assert plan("--config", DIGITS, "--output-dir", tmp_path, "--run-name", "other").resume_from is None  # empty
    (tmp_path / "other" / "notes.txt").write_text("mine")
    for force in ([], ["--force"]):  # --force deletes only run directories
        with pytest.raises(CheckpointError, match="other exists and is not a run directory"):
            plan("--config", DIGITS, "--output-dir", tmp_path, "--run-name", "other", *force)
    for name in ("../victim", "a/b", "..", "."):  # a run stays inside --output-dir
        with pytest.raises(CheckpointError, match="must be a plain folder name"):
            plan("--config", DIGITS, "--output-dir", tmp_path, "--run-name", name, "--force")
    with pytest.raises(CheckpointError, match="--config is required to start a run"):
        plan("--output-dir", tmp_path)
    forced = plan("--config", DIGITS, "--output-dir", tmp_path, "--run-name", "digits", "optim.lr=0.1", "--force")
    assert forced.resume_from is None and forced.rundir == run and forced.cfg.optim.lr == 0.1


def test_an_explicit_resume_uses_the_runs_own_config_with_overrides(tmp_path):
    run = existing_run(tmp_path, overrides=["train.epochs=3"], steps=[20, 40])
    resumed = plan("--resume", run.root, "train.epochs=5")
    assert resumed.rundir == run and resumed.resume_from == run.checkpoint("step-00000040")
    assert resumed.cfg.train.epochs == 5 and resumed.cfg.name == "digits"
    best = plan("--resume", run.checkpoint("step-00000020"))
    assert best.resume_from == run.checkpoint("step-00000020") and best.cfg.train.epochs == 3


def test_a_completed_run_is_finished_only_at_its_last_epoch(tmp_path):
    run = existing_run(tmp_path, overrides=["train.epochs=1"], steps=[20], status="completed")
    marker = run.checkpoint("step-00000020") / "harness_checkpoint.json"
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "epoch": 1}))
    assert plan("--resume", run.root).finished()
    assert not plan("--resume", run.root, "train.epochs=2").finished()  # trains longer
    run.summary_json.write_text(json.dumps({"status": "interrupted"}))  # e.g. killed in the final evaluation
    assert not plan("--resume", run.root).finished()


def test_first_difference_names_the_first_differing_key_in_sorted_order():
    saved = {"optim": {"lr": 0.1, "momentum": 0.9}, "train": {"epochs": 3}}
    assert first_difference(saved, saved) is None
    assert first_difference(saved, {"optim": {"lr": 0.1, "momentum": 0.5}, "train": {"epochs": 4}}) == \
        "optim.momentum: 0.9 there, 0.5 here"
    assert first_difference(saved, {**saved, "log": {}}) == "log: None there, {} here"


def test_the_saved_config_says_which_split_fractions_the_run_uses(tmp_path):
    (tmp_path / "images" / "val").mkdir(parents=True)  # a val/ folder: only test is carved out of the train pool
    config = tmp_path / "folder.yaml"
    config.write_text(yaml.safe_dump({"data": {"root": str(tmp_path / "images"), "val_fraction": 0.3}}))
    settled = plan("--config", config, "--output-dir", tmp_path / "runs").cfg.data
    assert (settled.val_fraction, settled.test_fraction) == (None, 0.1)
    settled = plan("--config", config, "--output-dir", tmp_path / "runs", "data.folds=3").cfg.data
    assert (settled.val_fraction, settled.test_fraction) == (None, 0.1)  # k-fold: the folds are the validation
    digits = plan("--config", DIGITS, "--output-dir", tmp_path / "runs").cfg.data
    assert (digits.val_fraction, digits.test_fraction) == (None, None)  # fixed splits
    with pytest.raises(ConfigError, match="data.test_fraction: data.builtin: digits has fixed splits"):
        plan("--config", DIGITS, "--output-dir", tmp_path / "runs", "data.test_fraction=0.2")
