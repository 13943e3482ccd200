"""Inference end to end through the real entry points, from the quickstart's run: infer.py on its splits and on
any images, TTA and ensembles, exports, the Python API as docs/inference.md shows it, missing extras."""

import json
import os
import re
import shutil
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import save_file

from harness.checkpointing.weights import read_weights
from harness.data.builtin import builtin_root
from tests.helpers import CPU_LAUNCH, DIGITS, PYTHON, REPO, predictions_close, rows, run_infer, summary


@pytest.fixture(scope="module")
def trained(quickstart, tmp_path_factory) -> Path:
    """A copy of the quickstart's run, for this module's inferences to write into."""
    copy = tmp_path_factory.mktemp("runs") / "digits"
    shutil.copytree(quickstart.run, copy)
    return copy


@pytest.mark.slow
def test_infer_reproduces_the_training_test_accuracy_exactly(trained, env, tmp_path):
    run = trained
    result = run_infer(["--run", run], env, launcher=CPU_LAUNCH)  # the README's command
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
    assert again.returncode == 2 and again.stderr.strip() == (
        f"error: {run / 'inference' / 'test_last'} already holds predictions.csv, classification_report.txt, "
        "confusion_matrix.png, metrics.json, report.html: --force replaces them, --out DIR writes elsewhere"), again.stderr
    run_infer(["--run", run, "--split", "val", "--checkpoint", "last", "--force", "--out", run / "inference" / "test_last"], env)
    last = json.loads((run / "inference" / "test_last" / "metrics.json").read_text())
    assert last["split"] == "val" and last["accuracy"] == pytest.approx(float(rows(run / "history.csv")[-1]["val_acc"]))


@pytest.mark.slow
def test_infer_on_unlabeled_images(trained, env, tmp_path):
    run = trained
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
    refused = run_infer(["--run", run, "--images", images, "--out", tmp_path / "again"], env, check=False)
    assert refused.returncode == 2 and refused.stderr.strip().startswith(
        f"error: --images: 2 image(s) cannot be used: {images / 'broken.png'} (UnidentifiedImageError")
    assert f"; {images / 'notes.jpg'} (UnidentifiedImageError" in refused.stderr and not (tmp_path / "again").exists()


@pytest.mark.slow
def test_tta_and_ensembles_average_what_they_should(trained, env, tmp_path):
    run = trained
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
    # The digits train without flips (a mirrored digit is another glyph): mirrored views are said to be unseen.
    assert both["warnings"] == ["--tta hflip: the run trained without hflip (data.augmentations), so the model never "
                                "saw such views of its images; averaging over them may lower the accuracy"]
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["warnings"] == []
    run_infer(["--ensemble", run, run, "--tta", "hflip", "--show", "0"], env)  # its own folder in the first run
    assert len(list((run / "inference").glob("test_best_tta-hflip_ensemble2-*"))) == 1

    other = tmp_path / "other"  # the same run, but a class renamed
    shutil.copytree(run, other, ignore=shutil.ignore_patterns("checkpoints", "inference", "tensorboard"))
    state, meta = read_weights(other / "weights" / "best.safetensors")
    save_file(state, str(other / "weights" / "best.safetensors"),
              metadata={"harness": json.dumps({**meta, "classes": [*meta["classes"][:-1], "nine"]})})
    refused = infer("refused", "--ensemble", run, other, check=False)
    assert refused.returncode != 0 and refused.stderr.strip().splitlines()[-1] == (
        f"error: --ensemble: {other} and {run} predict different classes (only {run} has ['9'], only {other} has "
        "['nine'])")


@pytest.mark.slow
def test_exports_predict_what_pytorch_does_and_carry_the_preprocessing(trained, env, tmp_path):
    # A copy whose preprocessing has a mean unlike its std (the digits have 0.5 for both: a swap would not show).
    run = tmp_path / "shifted"
    shutil.copytree(trained, run, ignore=shutil.ignore_patterns("inference", "export"))
    mean, std = [0.45, 0.5, 0.55], [0.4, 0.45, 0.5]
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"].update(mean=mean, std=std)
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    state, meta = read_weights(run / "weights" / "best.safetensors")
    save_file(state, str(run / "weights" / "best.safetensors"), metadata={"harness": json.dumps({**meta, "mean": mean,
                                                                                              "std": std})})
    run_infer(["--run", run, "--show", "0"], env)  # the reference: infer.py, preprocessing from the run's config
    reference = rows(run / "inference" / "test_best" / "predictions.csv")
    for fmt, file in (("onnx", "best.onnx"), ("torch_export", "best.pt2"), ("torchscript", "best.torchscript.pt")):
        result = subprocess.run([*PYTHON, "harness/export.py", "--run", str(run), "--format", fmt], env=env, cwd=REPO,
                                capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert "checked on the 269 test images: predictions agree on 269/269" in result.stdout
        record = json.loads((run / "export" / f"{file}.json").read_text())
        assert record["check"]["agree"] == record["check"]["images"] == 269
        assert record["check"]["max_logit_difference"] < 1e-4
        assert record["classes"] == [str(d) for d in range(10)] and record["image_size"] == 32
        assert (record["mean"], record["std"]) == (mean, std)
        assert record["calibrated"] and record["output"].startswith(f"logits divided by the temperature {meta['temperature']}")
    # ONNX Runtime on the exported file alone, the preprocessing from its metadata: infer.py's predictions.
    import onnx
    import onnxruntime

    meta = json.loads({p.key: p.value for p in onnx.load(str(run / "export" / "best.onnx")).metadata_props}["harness"])
    session = onnxruntime.InferenceSession(str(run / "export" / "best.onnx"), providers=["CPUExecutionProvider"])
    root = builtin_root("digits", env["HARNESS_CACHE_DIR"])
    offset, scale = np.array(meta["mean"])[:, None, None], np.array(meta["std"])[:, None, None]
    images = np.stack([(np.asarray(Image.open(root / row["path"]).convert("RGB"), np.float32).transpose(2, 0, 1) / 255
                        - offset) / scale for row in reference]).astype(np.float32)
    probabilities = torch.from_numpy(session.run(None, {"images": images})[0]).softmax(1)
    assert [meta["classes"][i] for i in probabilities.argmax(1)] == [row["prediction"] for row in reference]
    assert np.allclose(probabilities.max(1).values.numpy(), [float(row["confidence"]) for row in reference], atol=2e-5)
    from harness import load_run

    loaded = load_run(run).predict([root / row["path"] for row in reference[:20]])  # the Python API, too
    assert np.allclose(loaded.probabilities.max(1), [float(row["confidence"]) for row in reference[:20]], atol=2e-5)
    program = torch.export.load(str(run / "export" / "best.pt2")).module()  # the torch.export program alone
    with torch.inference_mode():
        logits = program(torch.from_numpy(images))
    assert torch.allclose(logits.softmax(1), probabilities, atol=2e-5)
    subprocess.run([*PYTHON, "harness/export.py", "--run", str(run), "--format", "torch_export", "--no-calibration",
                    "--out", str(tmp_path / "raw.pt2")], env=env, cwd=REPO, check=True, capture_output=True)
    with torch.inference_mode():
        raw = torch.export.load(str(tmp_path / "raw.pt2")).module()(torch.from_numpy(images))
    assert torch.allclose(raw / meta["temperature"], logits, atol=1e-4)
    assert not json.loads((tmp_path / "raw.pt2.json").read_text())["calibrated"]
    extra = {"harness.json": ""}
    with warnings.catch_warnings():  # torch deprecates TorchScript
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.load(str(run / "export" / "best.torchscript.pt"), _extra_files=extra)
    assert json.loads(extra["harness.json"])["classes"] == meta["classes"]
    again = subprocess.run([*PYTHON, "harness/export.py", "--run", str(run), "--format", "onnx"], env=env, cwd=REPO,
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "already holds best.onnx, best.onnx.json: --force replaces them" in again.stderr


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
def test_the_documented_python_example_predicts_what_infer_does(trained, env, tmp_path, monkeypatch, capsys):
    """The snippet of docs/inference.md, run as written from a folder holding runs/digits and images/."""
    run = trained
    root = builtin_root("digits", env["HARNESS_CACHE_DIR"])
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "digits").symlink_to(run)
    (tmp_path / "images").mkdir()
    for i, row in enumerate(rows(run / "splits" / "test.csv")[:40]):
        Image.open(root / row["path"]).save(tmp_path / "images" / f"{i:02d}.png")
    run_infer(["--run", run, "--images", tmp_path / "images", "--out", tmp_path / "inferred", "--show", "0"], env)
    inferred = rows(tmp_path / "inferred" / "predictions.csv")

    snippet = (REPO / "docs" / "inference.md").read_text().split("## From Python", 1)[1].split("```python\n", 1)[1].split("```")[0]
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
    assert result.predictions == [p["prediction"] for p in inferred[:3]]
    assert result.probabilities.shape == (3, 10) and np.allclose(result.probabilities.sum(axis=1), 1.0)
    for wrong, says in ((lambda: model.predict(tmp_path / "images", batch_size=0), "batch_size must be a whole number"),
                        (lambda: load_run(run, device="tpu"), "device 'tpu' is not a device"),
                        (lambda: load_run(run, checkpoint="newest"), "checkpoint must be 'best' or 'last'")):
        with pytest.raises(ValueError, match=says):
            wrong()
    assert np.allclose(result.probabilities.max(axis=1), [float(p["confidence"]) for p in inferred[:3]], atol=1e-6)
