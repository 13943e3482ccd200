"""What a trained model tells you, through the real entry points: report.html opened in a real headless browser
(Debian's chromium, driven by selenium: a screenshot, every picture loaded, the numbers it shows), calibration by
temperature scaling, a labeled folder scored with ``infer.py --labeled``, and ``compare.py --html``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.helpers import PYTHON, REPO, make_image_folder, rows, run_infer, run_train, summary

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def browser():
    """Headless chromium, as a user's browser opens a file."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        if os.environ.get("CI"):
            pytest.fail("chromium and chromedriver are missing: .ci/run installs them (apt-get install chromium "
                        "chromium-driver)")
        pytest.skip("no chromium and chromedriver here: apt-get install chromium chromium-driver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium")
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1300,1000"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    yield driver
    driver.quit()


def open_page(browser, page: Path, screenshot: Path) -> tuple[list[dict], list[dict]]:
    """Open ``page``; save a screenshot of all of it; return its pictures (loaded or not) and its numbers."""
    browser.set_window_size(1300, 1000)  # the page's own height follows, not the last page's
    browser.get(page.resolve().as_uri())
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1300, min(height, 16000))
    browser.save_screenshot(str(screenshot))
    images = browser.execute_script(
        "return Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth, alt: i.alt}))")
    numbers = browser.execute_script(
        "return Array.from(document.querySelectorAll('[data-value]')).map(e => ({metric: e.dataset.metric || '', "
        "cls: e.dataset.class || (e.closest('tr') && e.closest('tr').dataset.class) || '', run: e.dataset.run || '', "
        "value: Number(e.dataset.value)}))")
    return images, numbers


def assert_not_blank(screenshot: Path) -> None:
    from PIL import Image

    pixels = np.asarray(Image.open(screenshot).convert("RGB"))
    assert pixels.shape[0] > 1000, pixels.shape
    drawn = (pixels < 235).any(axis=2).mean()  # not the white page
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert drawn > 0.02 and colours > 200, (drawn, colours)


def test_the_run_report_opens_in_a_browser_with_every_picture_and_the_runs_numbers(quickstart, browser, tmp_path):
    """The quickstart's report.html: drawn (not blank), every picture loaded, the accuracy of the summary, and
    each class's F1 exactly scikit-learn's on the run's test predictions."""
    from sklearn.metrics import f1_score

    run = quickstart.run
    images, numbers = open_page(browser, run / "report.html", tmp_path / "report.png")
    assert_not_blank(tmp_path / "report.png")
    assert len(images) >= 5 + 16 and all(i["complete"] and i["width"] > 0 for i in images), images
    kinds = {image["alt"] for image in images}
    assert {"confusion matrix, counts", "confusion matrix, row-normalised", "ROC and precision-recall curves",
            "reliability diagram", "loss, accuracy, learning rate and speed per epoch"} <= kinds
    headline = {n["metric"]: n["value"] for n in numbers if not n["cls"]}
    trained = summary(run)
    assert headline["accuracy"] == trained["test_acc"]
    predictions = rows(run / "predictions" / "test.csv")
    classes = (run / "splits" / "classes.txt").read_text().splitlines()
    f1 = f1_score([r["label"] for r in predictions], [r["prediction"] for r in predictions], labels=classes,
                  average=None, zero_division=0)
    assert {n["cls"]: n["value"] for n in numbers if n["metric"] == "f1"} == dict(zip(classes, f1))
    assert headline["macro_f1"] == pytest.approx(f1.mean(), abs=1e-12)
    assert f"T = {trained['temperature']:.4f}" in (run / "report.html").read_text()


def test_temperature_scaling_lowers_the_validation_loss_and_changes_no_prediction(quickstart, env, tmp_path):
    """infer.py on the validation split, calibrated (the default) and not: the temperature the run fitted, in its
    summary and its weights, lowers the log loss and moves no prediction; load_run gives the same."""
    from harness import load_run
    from harness.checkpointing.weights import read_weights

    run = quickstart.run
    temperature = summary(run)["temperature"]
    assert read_weights(run / "weights" / "best.safetensors")[1]["temperature"] == temperature != 1.0
    for name, extra in (("calibrated", []), ("raw", ["--no-calibration"])):
        run_infer(["--run", run, "--split", "val", "--out", tmp_path / name, "--show", "0", *extra], env)
    calibrated, raw = (json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("calibrated", "raw"))
    assert (calibrated["calibrated"], calibrated["temperature"], raw["calibrated"]) == (True, [temperature], False)
    assert calibrated["loss"] < raw["loss"] and calibrated["accuracy"] == raw["accuracy"]
    ours, theirs = rows(tmp_path / "calibrated" / "predictions.csv"), rows(tmp_path / "raw" / "predictions.csv")
    assert [r["prediction"] for r in ours] == [r["prediction"] for r in theirs]
    assert [r["confidence"] for r in ours] != [r["confidence"] for r in theirs]
    assert rows(run / "predictions" / "val.csv") == ours  # the run's own predictions are the calibrated ones
    from harness.data.builtin import builtin_root

    root = builtin_root("digits", env["HARNESS_CACHE_DIR"])
    paths = [root / r["path"] for r in ours[:20]]
    loaded, plain = load_run(run).predict(paths), load_run(run, calibrated=False).predict(paths)
    assert (loaded.temperature, plain.temperature) == (temperature, None)
    assert np.allclose(loaded.probabilities.max(1), [float(r["confidence"]) for r in ours[:20]], atol=2e-6)
    assert np.allclose(plain.probabilities.max(1), [float(r["confidence"]) for r in theirs[:20]], atol=2e-6)


def split_folders(root: Path, config: Path, classes: int, per_class: tuple[int, int, int]) -> Path:
    """Class folders under ``root``'s train/, val/ and test/ (``per_class`` images each), and at ``config`` a run
    config training a small CNN on them for 2 epochs."""
    for split, count in zip(("train", "val", "test"), per_class):
        make_image_folder(root / split, classes=classes, per_class=count)
    config.write_text(yaml.safe_dump({"data": {"root": str(root), "image_size": 16, "augmentations": []},
                                      "model": {"name": "compact_cnn", "kwargs": {"width": 8}},
                                      "train": {"epochs": 2, "batch_size": 8, "deterministic": True}}))
    return config


def test_a_validation_split_the_model_gets_all_right_fits_no_temperature(env, tmp_path):
    """Two colours, every validation image right: the log loss has no minimum (it falls toward T = 0, where
    every probability is 1), so the run fits none, says why, and every output gives the model's own
    probabilities."""
    config = split_folders(tmp_path / "images", tmp_path / "two.yaml", classes=2, per_class=(16, 4, 4))
    result = run_train(["--config", config, "--output-dir", tmp_path], env)
    run, why = tmp_path / "two", ("no temperature fitted on the validation split: each of its 8 images has its own "
                                  "class scored highest")
    assert f"WARNING {why}" in result.stdout
    trained = summary(run)
    assert trained["val_acc"] == 1.0 and "temperature" not in trained and trained["uncalibrated"].startswith(why)
    from harness.checkpointing.weights import read_weights

    meta = read_weights(run / "weights" / "best.safetensors")[1]
    assert "temperature" not in meta and meta["uncalibrated"] == trained["uncalibrated"]
    assert "probabilities as the model gives them (uncalibrated)" in (run / "report.html").read_text()
    inferred = run_infer(["--run", run, "--split", "val", "--out", tmp_path / "val", "--show", "0"], env)
    assert f"probabilities uncalibrated: {run / 'weights' / 'best.safetensors'}: {why}" in inferred.stdout
    assert json.loads((tmp_path / "val" / "metrics.json").read_text())["calibrated"] is False
    assert rows(tmp_path / "val" / "predictions.csv") == rows(run / "predictions" / "val.csv")


@pytest.fixture(scope="module")
def folder_run(env, tmp_path_factory) -> Path:
    """A run on an image folder with train/, val/ and test/ (three classes)."""
    root = tmp_path_factory.mktemp("images")
    config = split_folders(root, root / "folder.yaml", classes=3, per_class=(24, 8, 8))
    runs = tmp_path_factory.mktemp("runs")
    run_train(["--config", config, "--output-dir", runs], env)
    return runs / "folder"


def test_a_labeled_folder_is_scored_against_its_class_folders(folder_run, env, tmp_path):
    """The run's own test folder, given as a labeled folder, scores exactly the run's test accuracy; a folder
    that is not a class of the run, or an image outside every class folder, is refused in one line."""
    run = folder_run
    root = Path(yaml.safe_load((run / "config.yaml").read_text())["data"]["root"])
    result = run_infer(["--run", run, "--labeled", root / "test", "--out", tmp_path / "scored"], env)
    metrics = json.loads((tmp_path / "scored" / "metrics.json").read_text())
    assert metrics["accuracy"] == summary(run)["test_acc"] and metrics["split"] == "labeled", result.stdout
    scored, trained = rows(tmp_path / "scored" / "predictions.csv"), rows(run / "predictions" / "test.csv")
    assert [(r["label"], r["prediction"], r["confidence"]) for r in scored] == [
        (r["label"], r["prediction"], r["confidence"]) for r in trained]
    assert (tmp_path / "scored" / "report.html").stat().st_size > 50_000
    run_infer(["--run", run, "--labeled", root / "test", "--show", "0"], env)  # the default folder names the set
    assert len(list((run / "inference").glob("labeled-test-*_best"))) == 1

    unknown = tmp_path / "unknown"
    shutil.copytree(root / "test", unknown)
    (unknown / "class_0").rename(unknown / "kitten")
    refused = run_infer(["--run", run, "--labeled", unknown, "--out", tmp_path / "no"], env, check=False)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: --labeled {unknown}: 'kitten' is not a class of the run (its classes: class_0, class_1, class_2): "
        "rename or move the folder(s), or score them with --images (unlabeled)")
    loose = tmp_path / "loose"
    shutil.copytree(root / "test", loose)
    shutil.copy(root / "test" / "class_1" / "000.png", loose / "stray.png")
    refused = run_infer(["--run", run, "--labeled", loose, "--out", tmp_path / "no"], env, check=False)
    assert refused.returncode == 2 and refused.stderr.strip() == (
        f"error: --labeled {loose}: 1 image(s) outside every class folder (e.g. stray.png): put each under "
        f"{loose}/<class>/")
    assert not (tmp_path / "no").exists()


def test_the_comparison_page_shows_runs_side_by_side(quickstart, folder_run, browser, tmp_path):
    """compare.py --html: the table, the curves on shared axes and each run's F1 per class (scikit-learn's, the
    union of their classes) on a page whose every picture loads."""
    from sklearn.metrics import f1_score

    page = tmp_path / "compare.html"
    result = subprocess.run([*PYTHON, "harness/compare.py", str(quickstart.run), str(folder_run), "--html", str(page)],
                            capture_output=True, text=True, cwd=REPO, check=True)
    assert f"2 runs side by side written to {page}" in result.stdout
    images, numbers = open_page(browser, page, tmp_path / "compare.png")
    assert len(images) == 1 and images[0]["complete"] and images[0]["width"] > 0
    assert_not_blank(tmp_path / "compare.png")
    for run in (quickstart.run, folder_run):
        predictions = rows(run / "predictions" / "test.csv")
        classes = (run / "splits" / "classes.txt").read_text().splitlines()
        f1 = f1_score([r["label"] for r in predictions], [r["prediction"] for r in predictions], labels=classes,
                      average=None, zero_division=0)
        shown = {n["cls"]: n["value"] for n in numbers if n["run"] == run.name}
        assert shown == dict(zip(classes, f1))
    text = page.read_text()
    assert text.count("<tr>") == 1 + 3 + 1 + 13  # the table (header, 2 runs, mean), F1 (header, 10 + 3 classes)
    assert text.count("<td>-</td>") >= 13  # each run has no F1 for the other's classes
