"""Misuse, hostile data and a failing machine, through the entry points: every case ends in one line naming
the file, key or path and exit 2 (or a documented skip), with nothing half-written and other folders untouched."""

import os
import resource
import signal
import subprocess

import pytest
from PIL import Image

from harness.data.builtin import builtin_root
from tests.helpers import (DIGITS, FAST, PYTHON, REPO, assert_same_weights, launch, make_image_folder,
                           one_line_error, pointer, rows, run_train, summary)


@pytest.fixture(scope="module")
def hostile_folder(tmp_path_factory):
    """Three classes of small images plus a truncated, an empty, a not-an-image and a 108-megapixel file
    (a decompression bomb: a few hundred kB on disk), a link loop and a hidden macOS file."""
    root = make_image_folder(tmp_path_factory.mktemp("hostile") / "images", classes=3, per_class=12)
    good = (root / "class_0" / "000.png").read_bytes()
    (root / "class_0" / "truncated.png").write_bytes(good[: len(good) // 2])
    (root / "class_1" / "empty.jpg").write_bytes(b"")
    (root / "class_2" / "notes.png").write_text("not an image")
    Image.new("L", (12_000, 9_000)).save(root / "class_2" / "bomb.png")
    (root / "class_1" / "loop").symlink_to("..")
    (root / "class_2" / "._000.png").write_bytes(b"\0\0")
    return root


def folder_command(root, out, *extra):
    return ["--config", DIGITS, "--output-dir", out, "data.builtin=null", f"data.root={root}", "data.image_size=16",
            "data.num_workers=0", "train.epochs=1", "scheduler.warmup_epochs=0", *FAST, *extra]


@pytest.mark.slow
def test_bad_images_are_all_named_at_once_or_skipped_and_listed(hostile_folder, env, tmp_path):
    refused = run_train(folder_command(hostile_folder, tmp_path), env, check=False)
    message = one_line_error(refused)
    assert message.startswith(f"{hostile_folder}: 4 image(s) cannot be used: ")
    for name in ("class_0/truncated.png", "class_1/empty.jpg", "class_2/notes.png"):
        assert name in message
    assert "class_2/bomb.png (12000x9000 is 108 megapixels, above data.max_image_pixels (89478485)" in message
    assert message.endswith("set data.on_bad_image=skip to leave them out") and not any(tmp_path.iterdir())

    run_train(folder_command(hostile_folder, tmp_path, "data.on_bad_image=skip", "--run-name", "skip"), env)
    run = tmp_path / "skip"
    s = summary(run)
    assert s["status"] == "completed" and s["skipped_images"] == 4 and sum(s["images"].values()) == 36
    assert sorted(r["path"] for r in rows(run / "splits" / "skipped_images.csv")) == [
        "class_0/truncated.png", "class_1/empty.jpg", "class_2/bomb.png", "class_2/notes.png"]
    assert "data: skipped 1 folder link(s) to a folder already read (a loop, or a second path to it)" in s["warnings"]
    assert "data: skipped 1 hidden file(s) or folder(s)" in s["warnings"]
    listed = [r["path"] for split in ("train", "val", "test") for r in rows(run / "splits" / f"{split}.csv")]
    assert len(listed) == len(set(listed)) == 36 and not any("loop" in path for path in listed)


@pytest.mark.slow
def test_files_whose_pixels_alone_are_broken_stop_the_run_when_read_all_named_and_once_mended_it_continues(env, tmp_path):
    """Only the headers are read before training (data.on_bad_image: error): the first broken file read stops the
    run, naming every broken one; mended, the same command finishes the run as if they had never been broken."""
    root = make_image_folder(tmp_path / "images", classes=3, per_class=12)
    broken = {name: (root / name).read_bytes() for name in ("class_0/004.png", "class_2/007.png")}
    for name, data in broken.items():
        (root / name).write_bytes(data[: len(data) // 2])  # a copy cut short: the header reads, the pixels do not
    command = folder_command(root, tmp_path / "runs", "train.epochs=2", "--run-name", "cut")
    failed = run_train(command, env, check=False)
    message = one_line_error(failed)
    assert message.startswith(f"{root}: 2 image(s) cannot be used: class_0/004.png (OSError: ")
    assert "; class_2/007.png (OSError: " in message and message.endswith(
        "Fix them, and the same command continues the run; or leave them out in a new run: data.on_bad_image=skip, "
        "with --force or another --run-name")
    assert summary(tmp_path / "runs" / "cut")["status"] == "failed"
    for name, data in broken.items():
        (root / name).write_bytes(data)
    run_train(command, env)
    run_train(folder_command(root, tmp_path / "runs", "train.epochs=2", "--run-name", "whole"), env)
    assert summary(tmp_path / "runs" / "cut")["status"] == "completed"
    assert_same_weights(tmp_path / "runs" / "cut" / "weights" / "last.safetensors",
                        tmp_path / "runs" / "whole" / "weights" / "last.safetensors")


@pytest.mark.slow
def test_data_that_cannot_train_is_refused_and_a_long_warmup_warned(env, tmp_path):
    one = make_image_folder(tmp_path / "one", classes=1)
    refused = run_train(folder_command(one, tmp_path / "runs"), env, check=False)
    assert one_line_error(refused) == f"{one}: 1 class folder(s) ['class_0']: classification needs at least two"
    two = make_image_folder(tmp_path / "two", classes=2, per_class=10)
    result = run_train(folder_command(two, tmp_path / "runs", "scheduler.warmup_epochs=2", "--run-name", "warm"), env)
    warning = "scheduler.warmup_epochs (2) is not shorter than train.epochs (1): the learning rate never reaches optim.lr"
    assert warning in result.stdout and summary(tmp_path / "runs" / "warm")["warnings"] == [warning]


@pytest.mark.slow
def test_one_training_per_run_directory_and_kill_9_releases_it(env, tmp_path):
    # Loader workers of its own: they outlive a kill -9 by seconds, and must not hold the lock meanwhile.
    command = ["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "shared", *FAST, "train.epochs=30",
               "data.num_workers=2"]
    first = subprocess.Popen([*PYTHON, str(REPO / "harness" / "train.py"), *map(str, command)], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:  # until it trains
            if "epoch 1/30" in line:
                break
        second = run_train(command, env, check=False)
        assert one_line_error(second).startswith(f"{tmp_path / 'shared'} is in use by another training (host ")
        assert f"pid {first.pid}, started " in second.stderr
        forced = run_train([*command, "--force"], env, check=False)
        assert "is in use by another training" in one_line_error(forced)
        first.send_signal(signal.SIGKILL)
        first.wait()
    finally:
        first.kill()
    # The lock died with its holder at once, its loader workers still alive or not: the same command resumes.
    run_train([*command, "--stop-after-epochs", "1"], env)
    s = summary(tmp_path / "shared")
    assert s["status"] == "interrupted" and s["resumed_from"] is not None and s["epoch"] >= 2
    assert not (tmp_path / ".shared.lock").exists()  # released, and removed, when the training ended


@pytest.mark.slow
def test_the_lock_is_held_through_the_final_evaluation(env, tmp_path):
    command = ["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "ending", *FAST, "train.epochs=1"]
    first = subprocess.Popen([*PYTHON, str(REPO / "harness" / "train.py"), *map(str, command)],
                             env={**env, "HARNESS_PAUSE_AT": "final"}, cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        for line in first.stdout:  # every epoch done, the best weights about to be evaluated
            if line.strip() == "paused at final":
                break
        second = run_train(command, env, check=False)
        assert one_line_error(second).startswith(f"{tmp_path / 'ending'} is in use by another training (host ")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=120) == 143
    finally:
        first.kill()
    assert summary(tmp_path / "ending")["status"] == "interrupted" and not (tmp_path / ".ending.lock").exists()


@pytest.mark.slow
def test_run_names_stay_inside_the_output_dir_and_force_deletes_only_runs(env, tmp_path):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "thesis.tex").write_text("years of work")
    out = tmp_path / "runs"
    escaped = run_train(["--config", DIGITS, "--output-dir", out, "--run-name", "../victim", "--force"], env, check=False)
    assert one_line_error(escaped).startswith("run name '../victim': must be a plain folder name")
    not_a_run = run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "victim", "--force"], env, check=False)
    assert one_line_error(not_a_run).startswith(f"{victim} exists and is not a run directory (--force deletes only runs)")
    assert (victim / "thesis.tex").read_text() == "years of work"


def file_size_limit(limit: int):
    """For a child process: files larger than ``limit`` bytes cannot be written (EFBIG, as a full disk gives
    ENOSPC), without privileges. The signal the kernel would send is ignored, so that writes fail instead."""
    def apply():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
def test_a_full_disk_fails_in_one_line_and_the_next_run_continues(env, tmp_path):
    command = ["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "full", *FAST, "train.epochs=2"]
    builtin_root("digits", env["HARNESS_CACHE_DIR"])  # the data is there already: the run's own files fail
    at_start = launch("train.py", command, env, check=False, preexec_fn=file_size_limit(300))
    assert one_line_error(at_start).startswith(f"{tmp_path / 'full' / 'config.yaml'}: File too large")
    assert not (tmp_path / "full").exists()  # no half-written run directory for the next attempt to trip over

    run_train([*command, "--stop-after-epochs", "1"], env)
    # The model (40 kB) fits, the optimizer state (89 kB) does not: the epoch-2 checkpoint fails mid-save.
    during = launch("train.py", command, env, check=False, preexec_fn=file_size_limit(60_000))
    message = one_line_error(during)
    assert message.startswith(f"{tmp_path / 'full' / 'checkpoints' / 'step-00000040'} could not be written (")
    assert message.endswith(f"the last checkpoint (step-00000020) is intact: free space under "
                            f"{tmp_path / 'full' / 'checkpoints'}, then --resume {tmp_path / 'full'}")
    assert summary(tmp_path / "full")["status"] == "failed" and pointer(tmp_path / "full").name == "step-00000020"
    assert sorted(p.name for p in (tmp_path / "full" / "checkpoints").iterdir()) == ["best", "latest", "step-00000020"]

    run_train(command, env)  # space again: the same command finishes the run
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "straight", *FAST, "train.epochs=2"], env)
    assert summary(tmp_path / "full")["status"] == "completed"
    assert_same_weights(tmp_path / "straight" / "weights" / "last.safetensors",
                        tmp_path / "full" / "weights" / "last.safetensors")


@pytest.mark.slow
def test_an_unwritable_or_impossible_output_location_is_one_line(env, tmp_path):
    (tmp_path / "file").write_text("a file, not a folder")
    result = run_train(["--config", DIGITS, "--output-dir", tmp_path / "file" / "runs"], env,
                       check=False)
    assert one_line_error(result) == (f"{tmp_path / 'file' / 'runs'}: Not a directory (check that the place exists, "
                                      "can be written, and has space)")
    if os.geteuid() == 0:  # root writes through permissions: a kernel file system refuses it instead
        unwritable = "/sys/fs/harness-runs"
    else:
        (tmp_path / "locked").mkdir(mode=0o500)
        unwritable = tmp_path / "locked" / "runs"
    result = run_train(["--config", DIGITS, "--output-dir", unwritable], env, check=False)
    assert one_line_error(result).startswith(f"{unwritable}: ")


@pytest.mark.slow
def test_a_process_told_of_others_but_not_its_rank_refuses(env, tmp_path):
    result = run_train(["--config", DIGITS, "--output-dir", tmp_path], {**env, "WORLD_SIZE": "2"},
                       check=False)
    assert one_line_error(result).startswith("the environment says 2 processes (WORLD_SIZE) but gives this one no RANK")
    assert not any(tmp_path.iterdir())
