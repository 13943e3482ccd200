"""End to end through the real entry points: the quickstart, inference, the run directory, errors."""

import json
import os
import re
import shutil
import statistics
import subprocess
import time
import warnings

import numpy as np
import psutil
import pytest
import torch
import yaml
from PIL import Image
from safetensors import safe_open
from safetensors.torch import save_file
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.checkpointing.weights import read_weights
from harness.config.loading import load_config
from harness.data.builtin import builtin_root
from harness.optim.schedules import lr_per_update
from harness.runtime.threads import share_of_cores

from conftest import CPU_LAUNCH, DIGITS, FAST, PYTHON, REPO, make_image_folder, marker, pointer, rows, run_infer, run_train, summary


@pytest.fixture(scope="module")
def quickstart(env, tmp_path_factory):
    """The README's quickstart: configs/digits.yaml exactly as shipped, one CPU process."""
    out = tmp_path_factory.mktemp("runs")
    started = time.perf_counter()
    result = run_train(["--config", DIGITS, "--output-dir", out], env)
    return out / "digits", time.perf_counter() - started, result


@pytest.mark.slow
def test_quickstart_trains_digits_fast_and_well(quickstart):
    run, seconds, _ = quickstart
    s = summary(run)
    assert s["status"] == "completed"
    assert s["test_acc"] >= 0.95, s
    assert seconds < 120, f"quickstart took {seconds:.0f}s"
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
    run, _, _ = quickstart
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
    run, _, _ = quickstart
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
def test_infer_reproduces_the_training_test_accuracy_exactly(quickstart, env, tmp_path):
    run, _, _ = quickstart
    result = run_infer(["--run", run], env)
    out = run / "inference" / "test_best"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["accuracy"] == summary(run)["test_acc"]
    assert f"accuracy {summary(run)['test_acc']:.4f}" in result.stdout and "precision" in result.stdout
    predictions = rows(out / "predictions.csv")
    assert len(predictions) == 269
    training = rows(run / "predictions" / "test.csv")
    assert [(r["path"], r["prediction"]) for r in predictions] == [(r["path"], r["prediction"]) for r in training]
    assert set(predictions[0]) == {"path", "label", "prediction", "confidence", "top5"}
    assert (out / "classification_report.txt").read_text().startswith(run.name)
    assert (out / "confusion_matrix.png").stat().st_size > 10_000
    # The first predictions on the console, as in the CSV.
    table = result.stdout.split("path ", 1)[1].splitlines()
    assert table[0].split() == ["label", "prediction", "confidence"]
    assert table[1].split() == [predictions[0]["path"], predictions[0]["label"], predictions[0]["prediction"],
                                f"{float(predictions[0]['confidence']):.4f}"]
    assert table[11] == "... 259 more in predictions.csv"  # after a header and 10 rows
    # The last weights, in a folder of their own; the same inference again is refused, then forced.
    last = run_infer(["--run", run, "--checkpoint", "last", "--show", "0"], env)
    assert "path " not in last.stdout
    last = json.loads((run / "inference" / "test_last" / "metrics.json").read_text())
    assert last["epoch"] == 12 and metrics == json.loads((out / "metrics.json").read_text())
    again = run_infer(["--run", run, "--checkpoint", "last"], env, check=False)
    assert again.returncode == 1 and again.stderr.strip() == (
        f"error: {run / 'inference' / 'test_last'} holds the outputs of an earlier inference: --force replaces "
        "them, --out DIR writes elsewhere"), again.stderr
    run_infer(["--run", run, "--split", "val", "--checkpoint", "last", "--force", "--out", run / "inference" / "test_last"], env)
    last = json.loads((run / "inference" / "test_last" / "metrics.json").read_text())
    assert last["split"] == "val" and last["accuracy"] == pytest.approx(float(rows(run / "history.csv")[-1]["val_acc"]))


@pytest.mark.slow
def test_infer_on_unlabeled_images(quickstart, env, tmp_path):
    run, _, _ = quickstart
    root = builtin_root("digits", env["HARNESS_CACHE_DIR"])
    images = tmp_path / "unlabeled"
    images.mkdir()
    for i, row in enumerate(rows(run / "splits" / "test.csv")[:7]):
        Image.open(root / row["path"]).save(images / f"{i}.png")
    result = run_infer(["--run", run, "--images", images], env)
    (out,) = (run / "inference").glob("images-unlabeled-*_best")  # the images' own folder
    predictions = rows(out / "predictions.csv")
    assert len(predictions) == 7 and "label" not in predictions[0]
    table = result.stdout.split("path ", 1)[1].splitlines()
    assert [line.split() for line in table[1:8]] == [
        [p["path"], p["prediction"], f"{float(p['confidence']):.4f}"] for p in predictions]
    assert str(images / "0.png") == predictions[0]["path"]
    run_infer(["--run", run, "--images", images / "0.png", images / "1.png", "--out", tmp_path / "out"], env)
    assert len(rows(tmp_path / "out" / "predictions.csv")) == 2 and len(list((run / "inference").glob("images-*"))) == 1
    assert {p["prediction"] for p in predictions} <= {str(d) for d in range(10)}
    assert not (tmp_path / "out" / "confusion_matrix.png").exists()
    (images / "broken.png").write_bytes(b"")
    (images / "notes.jpg").write_text("not an image")
    refused = run_infer(["--run", run, "--images", images, "--out", tmp_path / "again"], env, launcher=PYTHON, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().startswith(
        f"error: --images: 2 image(s) cannot be used: {images / 'broken.png'} (UnidentifiedImageError")
    assert f"; {images / 'notes.jpg'} (UnidentifiedImageError" in refused.stderr and not (tmp_path / "again").exists()


def predictions_close(a: list[dict], b: list[dict]) -> bool:
    """The same predictions, their confidences equal to the CSV's 6 decimals (give or take its last digit)."""
    return [(r["path"], r["prediction"]) for r in a] == [(r["path"], r["prediction"]) for r in b] and all(
        abs(float(x["confidence"]) - float(y["confidence"])) <= 2e-6 for x, y in zip(a, b))


@pytest.mark.slow
def test_tta_and_ensembles_average_what_they_should(quickstart, env, tmp_path):
    run, _, _ = quickstart
    def infer(name, *args, **kw):
        return run_infer([*args, "--out", tmp_path / name, "--show", "0"], env, **kw)

    infer("plain", "--run", run)
    infer("identity", "--run", run, "--tta", "identity")
    plain = rows(tmp_path / "plain" / "predictions.csv")
    assert rows(tmp_path / "identity" / "predictions.csv") == plain  # one view, the image itself: bit for bit
    infer("itself", "--ensemble", run, run)  # a run with itself: its own probabilities
    assert predictions_close(rows(tmp_path / "itself" / "predictions.csv"), plain)
    infer("hflip", "--run", run, "--tta", "hflip")
    infer("both", "--ensemble", run, run, "--tta", "hflip")
    hflip = rows(tmp_path / "hflip" / "predictions.csv")
    assert predictions_close(rows(tmp_path / "both" / "predictions.csv"), hflip)
    assert sum(a["confidence"] != b["confidence"] for a, b in zip(hflip, plain)) > len(plain) // 2  # two views
    for tta in ("flips", "five_crop"):
        infer(tta, "--run", run, "--tta", tta)
        metrics = json.loads((tmp_path / tta / "metrics.json").read_text())
        assert metrics["tta"] == tta and metrics["accuracy"] > 0.5 and len(rows(tmp_path / tta / "predictions.csv")) == 269
    both = json.loads((tmp_path / "both" / "metrics.json").read_text())
    assert both["tta"] == "hflip" and both["ensemble"] == [str(run), str(run)]
    run_infer(["--ensemble", run, run, "--tta", "hflip", "--show", "0"], env)  # its own folder in the first run
    assert len(list((run / "inference").glob("test_best_tta-hflip_ensemble2-*"))) == 1

    other = tmp_path / "other"  # the same run, but a class renamed
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("checkpoints", "inference", "tensorboard"))
    state, meta = read_weights(other / "weights" / "best.safetensors")
    save_file(state, str(other / "weights" / "best.safetensors"),
              metadata={"harness": json.dumps({**meta, "classes": [*meta["classes"][:-1], "nine"]})})
    refused = infer("refused", "--ensemble", run, other, launcher=PYTHON, check=False)
    assert refused.returncode != 0 and refused.stderr.strip().splitlines()[-1] == (
        f"error: --ensemble: {other} and {run} predict different classes (only {run} has ['9'], only {other} has "
        "['nine'])")


@pytest.mark.slow
def test_exports_predict_what_pytorch_does_and_carry_the_preprocessing(quickstart, env, tmp_path):
    run, _, _ = quickstart
    for fmt, file in (("onnx", "best.onnx"), ("torchscript", "best.torchscript.pt")):
        result = subprocess.run([*PYTHON, "harness/export.py", "--run", str(run), "--format", fmt], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert "checked on the 269 test images: predictions agree on 269/269" in result.stdout
        record = json.loads((run / "export" / f"{file}.json").read_text())
        assert record["check"]["agree"] == record["check"]["images"] == 269
        assert record["check"]["max_logit_difference"] < 1e-4
        assert record["classes"] == [str(d) for d in range(10)] and record["image_size"] == 32
    # ONNX Runtime on the exported file alone, the preprocessing from its metadata: infer.py's predictions.
    import onnx
    import onnxruntime

    meta = json.loads({p.key: p.value for p in onnx.load(str(run / "export" / "best.onnx")).metadata_props}["harness"])
    session = onnxruntime.InferenceSession(str(run / "export" / "best.onnx"), providers=["CPUExecutionProvider"])
    root = builtin_root("digits", env["HARNESS_CACHE_DIR"])
    mean, std = np.array(meta["mean"])[:, None, None], np.array(meta["std"])[:, None, None]
    tests = rows(run / "predictions" / "test.csv")[:20]
    images = np.stack([(np.asarray(Image.open(root / row["path"]).convert("RGB"), np.float32).transpose(2, 0, 1) / 255
                        - mean) / std for row in tests]).astype(np.float32)
    logits = session.run(None, {"images": images})[0]
    assert [meta["classes"][i] for i in logits.argmax(1)] == [row["prediction"] for row in tests]
    extra = {"harness.json": ""}
    with warnings.catch_warnings():  # torch deprecates TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(run / "export" / "best.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["harness.json"])["classes"] == meta["classes"]


@pytest.mark.parametrize("module, command, message", [
    ("onnxruntime", ["harness/export.py", "--run", "{run}", "--format", "onnx"],
     "--format onnx needs onnxruntime, not installed: pip install -e '.[export]'"),
    ("timm", ["harness/train.py", "--config", str(DIGITS), "--output-dir", "{run}", "model.name=timm/resnet18"],
     "model.name: timm/resnet18 needs timm, not installed: pip install -e '.[timm]'"),
])
def test_a_missing_extra_is_one_line_saying_what_to_install(tmp_path, module, command, message):
    hidden = tmp_path / "hidden"  # a module that cannot be imported, as if it were not installed
    hidden.mkdir()
    (hidden / f"{module}.py").write_text("raise ImportError('not installed')\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("data: {builtin: digits}\n")
    result = subprocess.run([*PYTHON, *[part.replace("{run}", str(tmp_path / "run")) for part in command]],
                            env={**os.environ, "PYTHONPATH": str(hidden)}, cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.strip() == f"error: {message}"


@pytest.mark.slow
def test_the_readme_python_example_predicts_what_infer_does(quickstart, env, tmp_path, monkeypatch, capsys):
    """The README's snippet, run as written from a folder holding runs/digits and images/."""
    run, _, _ = quickstart
    root = builtin_root("digits", env["HARNESS_CACHE_DIR"])
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digits").symlink_to(run)
    (tmp_path / "images").mkdir()
    for i, row in enumerate(rows(run / "splits" / "test.csv")[:40]):
        Image.open(root / row["path"]).save(tmp_path / "images" / f"{i:02d}.png")
    run_infer(["--run", run, "--images", tmp_path / "images", "--out", tmp_path / "inferred", "--show", "0"], env)
    inferred = rows(tmp_path / "inferred" / "predictions.csv")

    snippet = (REPO / "README.md").read_text().split("### From Python", 1)[1].split("```python\n", 1)[1].split("```")[0]
    monkeypatch.chdir(tmp_path)
    exec(snippet, {})
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(inferred) == 40
    for line, expected in zip(printed, inferred):
        path, label, confidence = re.fullmatch(r"(.+): (\S+) \((\d\.\d\d)\)", line).groups()
        assert (path, label) == (expected["path"], expected["prediction"])
        assert float(confidence) == pytest.approx(float(expected["confidence"]), abs=0.005001)

    from harness import load_run

    model = load_run(run)
    result = model.predict([tmp_path / "images" / "00.png", Image.open(tmp_path / "images" / "01.png"),
                            torch.from_numpy(np.array(Image.open(tmp_path / "images" / "02.png").convert("RGB")))
                            .permute(2, 0, 1).contiguous()])
    assert result.paths == [str(tmp_path / "images" / "00.png"), None, None]
    assert result.labels == [p["prediction"] for p in inferred[:3]]
    assert result.probabilities.shape == (3, 10) and np.allclose(result.probabilities.sum(axis=1), 1.0)
    assert np.allclose(result.probabilities.max(axis=1), [float(p["confidence"]) for p in inferred[:3]], atol=1e-6)


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
    _, _, result = quickstart
    lines = (result.stdout + result.stderr).splitlines()
    assert lines and [line for line in lines if not re.match(r"\d\d:\d\d:\d\d INFO ", line)] == []


@pytest.mark.slow
def test_image_folder_run_and_a_failure_is_recorded(env, tmp_path):
    """A user's folder (given relative to the working directory, mixed image modes, split by the harness) trains
    with a torchvision model, and the saved config names it absolutely; a broken
    image stops the run with status failed, the file named, one line on stderr."""
    root = make_image_folder(tmp_path / "images", classes=3, per_class=10)
    config = tmp_path / "folder.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": os.path.relpath(root, REPO), "image_size": 32, "val_fraction": 0.2, "test_fraction": 0.2, "num_workers": 0},
        "model": {"name": "resnet18"},
        "train": {"epochs": 2, "batch_size": 8},
        "optim": {"lr": 0.05},
    }))
    run_train(["--config", config, "--output-dir", tmp_path / "runs"], env)
    run = tmp_path / "runs" / "folder"
    assert yaml.safe_load((run / "config.yaml").read_text())["data"]["root"] == str(root.resolve())
    assert summary(run)["images"] == {"train": 18, "val": 6, "test": 6}
    assert len(rows(run / "predictions" / "test.csv")) == 6
    assert (run / "reports" / "confusion_matrix_test.png").exists()

    (root / "class_1" / "005.png").write_bytes(b"broken")
    # A new run checks every image first: one line naming the file, and no run directory.
    refused = run_train(["--config", config, "--output-dir", tmp_path / "runs", "--run-name", "broken"], env,
                        launcher=PYTHON, check=False)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "1 image(s) cannot be used: class_1/005.png (UnidentifiedImageError" in refused.stderr
    assert not (tmp_path / "runs" / "broken").exists()
    # A resume reads its saved split lists: the image broke since, so a DataLoader worker process hits it and
    # re-raises in the main process: still one line, and the status is failed.
    failed = run_train(["--resume", run, "train.epochs=3", "data.num_workers=2"], env, launcher=PYTHON, check=False)
    expected = f"class_1/005.png: cannot read image (UnidentifiedImageError: cannot identify image file '{root / 'class_1' / '005.png'}')"
    assert failed.returncode == 2
    assert len(failed.stderr.strip().splitlines()) == 1 and failed.stderr.strip().endswith(expected)
    s = summary(run)
    assert s["status"] == "failed" and s["error"].endswith(expected)
