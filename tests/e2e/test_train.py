"""Training end to end through the real entry point: the quickstart and its run directory, TensorBoard and
console, run names from overrides, a user's image folder, mistakes as one line."""

import json
import os
import re
import statistics

import psutil
import pytest
import yaml
from PIL import Image
from safetensors import safe_open
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.config.loading import load_config
from harness.optim.schedules import lr_per_update
from harness.runtime.threads import share_of_cores
from tests.helpers import (CPU_LAUNCH, DIGITS, FAST, PYTHON, REPO, assert_same_weights, history_metrics,
                           make_image_folder, marker, one_line_error, pointer, rows, run_train, summary)


@pytest.mark.slow
def test_quickstart_trains_digits_well(quickstart):
    run = quickstart.run
    s = summary(run)
    assert s["status"] == "completed"
    assert s["test_acc"] >= 0.95, s
    assert s["epoch"] == s["epochs"] == 12 and s["global_step"] == 12 * 20
    assert s["best_val_acc"] >= 0.95
    history = rows(run / "history.csv")
    # The highest accuracy; of a tie, the lowest loss (the quickstart ties on val_acc from epoch 8 on, on 269 images).
    ranked = sorted(history, key=lambda row: (-float(row["val_acc"]), float(row["val_loss"]), int(row["epoch"])))
    assert s["best_epoch"] == int(ranked[0]["epoch"])
    accuracies = [float(row["val_acc"]) for row in history]
    assert s["best_val_acc"] == pytest.approx(max(accuracies), rel=1e-12)
    assert s["num_processes"] == 1 and s["distributed_type"] == "NO" and s["mixed_precision"] == "no"
    # The launch config leaves use_cpu out (accelerate would warn): the harness, not the launcher's single
    # thread, sets the threads, to the process's share of the cores.
    assert s["threads"] == share_of_cores() == min(len(os.sched_getaffinity(0)), psutil.cpu_count(logical=False))
    assert s["num_parameters"] > 1000
    # Throughput, per epoch in the history and the console, and its medians in the summary.
    assert s["throughput"]["train_images_per_second"] > 100 and s["throughput"]["val_images_per_second"] > 100
    assert 0 <= s["throughput"]["data_wait"] < 1
    history = rows(run / "history.csv")
    for key, value in s["throughput"].items():
        assert value == pytest.approx(statistics.median(float(h[key]) for h in history)), key
    line = next(line for line in (run / "train.log").read_text().splitlines() if "epoch 12/12" in line)
    assert f"{float(history[-1]['train_images_per_second']):.0f} img/s (val " in line and "data wait" in line
    assert s["images"] == {"train": 1259, "val": 269, "test": 269}


@pytest.mark.slow
def test_run_directory_is_complete(quickstart):
    run = quickstart.run
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["model"]["name"] == "compact_cnn"
    # What the run used: the digits' fixed splits carve nothing out of the train pool.
    assert saved["data"]["val_fraction"] is None and saved["data"]["test_fraction"] is None
    assert pointer(run, "latest").name == "step-00000240"  # the end of epoch 12
    assert pointer(run, "best").name == f"step-{20 * summary(run)['best_epoch']:08d}"
    for name in ("latest", "best"):
        ckpt = pointer(run, name)
        for file in ("model.safetensors", "optimizer.bin", "scheduler.bin", "random_states_0.pkl",
                     "train_state.json", "harness_checkpoint.json"):
            assert (ckpt / file).stat().st_size > 0, ckpt / file
        assert json.loads((ckpt / "train_state.json").read_text())["global_step"] == marker(ckpt)["global_step"]
        assert set(marker(ckpt)["files"]) == {p.name for p in ckpt.iterdir()} - {"harness_checkpoint.json"}
    for name in ("last", "best"):
        assert (run / "weights" / f"{name}.safetensors").stat().st_size > 10_000
    meta = json.loads((run / "weights" / "meta.json").read_text())
    assert meta["classes"] == [str(d) for d in range(10)] and meta["image_size"] == 32
    with safe_open(str(run / "weights" / "best.safetensors"), framework="pt") as f:
        assert json.loads(f.metadata()["harness"])["epoch"] == summary(run)["best_epoch"]
    history = rows(run / "history.csv")
    assert [int(h["epoch"]) for h in history] == list(range(1, 13))
    assert float(history[-1]["train_loss"]) < float(history[0]["train_loss"])
    assert "status" in (run / "summary.txt").read_text() and (run / "train.log").read_text().count("epoch ") >= 12
    for split, count in (("train", 1259), ("val", 269), ("test", 269)):
        report = (run / "reports" / f"classification_report_{split}.txt").read_text()
        assert "precision" in report and "accuracy" in report
        with Image.open(run / "reports" / f"confusion_matrix_{split}.png") as image:
            assert image.format == "PNG" and min(image.size) > 200 and len(image.getcolors(1 << 20)) > 10
        assert len(rows(run / "predictions" / f"{split}.csv")) == count
        assert len(rows(run / "splits" / f"{split}.csv")) == count
    with Image.open(run / "reports" / "curves.png") as image:
        assert image.format == "PNG" and image.size == (1100, 750)
    # The curves' learning rate per update is the schedule the run stepped through (its per-epoch rates).
    cfg = load_config(run / "config.yaml")
    rates = lr_per_update(cfg.optim, cfg.scheduler, 12, 20)
    assert [float(h["lr"]) for h in rows(run / "history.csv")[:-1]] == pytest.approx([rates[20 * e] for e in range(1, 12)])


@pytest.mark.slow
def test_tensorboard_has_step_epoch_and_figure_tags(quickstart):
    run = quickstart.run
    (events,) = list((run / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/lr", "epoch/train_loss", "epoch/train_acc", "epoch/val_loss", "epoch/val_acc",
            "epoch/lr", "epoch/train_images_per_second", "epoch/val_images_per_second", "epoch/data_wait"} <= scalars
    assert len(acc.Scalars("train/loss")) == 240 // 10  # log.every_n_steps: 10
    assert [e.step for e in acc.Scalars("epoch/val_acc")] == [20 * e for e in range(1, 13)]
    assert {"confusion_matrix/train", "confusion_matrix/val", "confusion_matrix/test"} <= set(acc.Tags()["images"])


@pytest.mark.slow
def test_overrides_change_the_run_name_and_saved_config(env, tmp_path):
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "train.epochs=1", "optim.lr=0.01", *FAST], env)
    run = tmp_path / "digits_deterministictrue_epochs1_lr0.01_width8"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 0.01 and saved["train"]["epochs"] == 1 and saved["model"]["kwargs"]["width"] == 8
    assert summary(run)["status"] == "completed" and summary(run)["epoch"] == 1
    # The same command again finds the run complete and trains nothing.
    before = (run / "weights" / "last.safetensors").stat().st_mtime_ns
    again = run_train(["--config", DIGITS, "--output-dir", tmp_path, "train.epochs=1", "optim.lr=0.01", *FAST], env)
    assert "already completed its 1 epochs: nothing to do" in again.stdout
    assert (run / "weights" / "last.safetensors").stat().st_mtime_ns == before


@pytest.mark.slow
def test_accelerate_launch_and_python_give_the_same_run(env, tmp_path):
    """docs/launch.md gives both commands for one CPU process, and the tests use the second (4.5 s faster to
    start): the same weights, history, temperature and predictions."""
    command = ["--config", DIGITS, "--output-dir", tmp_path, "train.epochs=2", *FAST]
    run_train([*command, "--run-name", "accelerate"], env, launcher=CPU_LAUNCH)
    run_train([*command, "--run-name", "python"], env, launcher=PYTHON)
    one, other = tmp_path / "accelerate", tmp_path / "python"
    for name in ("last", "best"):
        assert_same_weights(one / "weights" / f"{name}.safetensors", other / "weights" / f"{name}.safetensors")
    assert history_metrics(one) == history_metrics(other)
    assert summary(one)["temperature"] == summary(other)["temperature"]
    assert rows(one / "predictions" / "test.csv") == rows(other / "predictions" / "test.csv")


@pytest.mark.slow
def test_the_final_evaluation_covers_the_splits_named(env, tmp_path):
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "named", "train.epochs=1", *FAST,
               "train.final_eval_splits=[test]"], env)
    run = tmp_path / "named"
    s = summary(run)
    assert s["status"] == "completed" and 0 <= s["test_acc"] <= 1 and "train_acc" not in s and "val_acc" not in s
    assert sorted(path.name for path in (run / "predictions").iterdir()) == ["test.csv"]
    assert len(rows(run / "predictions" / "test.csv")) == s["images"]["test"]
    assert [path.name for path in (run / "reports").glob("classification_report_*")] == [
        "classification_report_test.txt"]


@pytest.mark.parametrize("launcher, code", [(PYTHON, 2), (CPU_LAUNCH, 1)], ids=["python", "accelerate launch -q"])
def test_typo_fails_with_a_suggestion_and_no_run_dir(env, tmp_path, launcher, code):
    """One line and a failing exit code, also under the README's launcher (which turns the 2 into 1, and adds
    nothing: no traceback of its own, no warning about what the launch config leaves out)."""
    result = run_train(["--config", DIGITS, "--output-dir", tmp_path, "optim.lrr=0.1"], env, launcher=launcher,
                       check=False)
    assert result.returncode == code and result.stdout == ""
    assert result.stderr == f"error: {DIGITS}: optim.lrr: unknown key (did you mean 'optim.lr'?)\n"
    assert not any(tmp_path.iterdir())


@pytest.mark.slow
def test_the_quickstart_console_holds_only_the_harness_lines(quickstart):
    """No launcher, library or DeepSpeed warning (the deepspeed extra is installed in CI): every line is the
    harness's own log line."""
    lines = (quickstart.stdout + quickstart.stderr).splitlines()
    assert lines and [line for line in lines if not re.match(r"\d\d:\d\d:\d\d INFO (?!\[)", line)] == []


@pytest.mark.slow
def test_image_folder_run_and_a_failure_is_recorded(env, tmp_path):
    """A user's folder (given relative to the working directory, mixed image modes, split by the harness) trains
    with a torchvision model, and the saved config names it absolutely, importing none of the libraries a run does
    not use (docs/launch.md: a fast start and end); a broken image stops the run with status failed, the file
    named, one line on stderr."""
    root = make_image_folder(tmp_path / "images", classes=3, per_class=10)
    config = tmp_path / "folder.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": os.path.relpath(root, REPO), "image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2, "num_workers": 0},
        "model": {"name": "resnet18"},
        "train": {"epochs": 2, "batch_size": 8},
        "optim": {"lr": 0.001},  # adamw: 0.05 sent a resnet18 on 18 images to a non-finite loss
    }))
    trained = run_train(["--config", config, "--output-dir", tmp_path / "runs"], env,
                        launcher=[*PYTHON, "-X", "importtime"])
    imported = {line.split("|")[-1].strip().split(".")[0] for line in trained.stderr.splitlines()
                if line.startswith("import time:")}
    assert {"torch", "accelerate", "matplotlib"} <= imported
    assert not imported & {"sklearn", "scipy", "deepspeed", "timm", "onnx", "onnxruntime"}
    run = tmp_path / "runs" / "folder"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(root.resolve())
    assert summary(run)["images"] == {"train": 18, "val": 6, "test": 6}
    assert len(rows(run / "predictions" / "test.csv")) == 6
    assert (run / "reports" / "confusion_matrix_test.png").exists()

    (root / "class_1" / "005.png").write_bytes(b"broken")
    # A new run checks every image first: one line naming the file, and no run directory.
    refused = run_train(["--config", config, "--output-dir", tmp_path / "runs", "--run-name", "broken"], env, check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "1 image(s) cannot be used: class_1/005.png (UnidentifiedImageError" in refused.stderr
    assert not (tmp_path / "runs" / "broken").exists()
    # A resume reads its saved split lists: the image broke since, so a DataLoader worker process hits it and
    # re-raises in the main process; every file of the run is checked then: still one line naming the broken one,
    # and the status is failed.
    failed = run_train(["--resume", run, "train.epochs=3", "data.num_workers=2"], env, check=False)
    expected = (f"{root}: 1 image(s) cannot be used: class_1/005.png (UnidentifiedImageError: cannot identify image "
                f"file '{root / 'class_1' / '005.png'}'). Fix them, and the same command continues the run; or leave "
                "them out in a new run: data.on_bad_image=skip, with --force or another --run-name")
    assert one_line_error(failed) == expected
    s = summary(run)
    assert s["status"] == "failed" and s["error"] == expected
