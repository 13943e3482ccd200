"""Figures: curves with the learning rate per update and the best epoch, confusion matrices from 3 to 200 classes
with any class names, and several runs on one figure (``harness/compare.py --plot``). In seconds."""

import csv
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from harness.config.schema import OptimConfig, SchedulerConfig
from harness.optim.optimizers import build_optimizer
from harness.optim.schedules import build_scheduler, lr_per_update
from harness.reporting.history import HISTORY_COLUMNS
from harness.reporting.plots import (MISSING_GLYPH, comparison_figure, confusion_figure, curves_figure, drawable,
                                     save_png)
from tests.helpers import REPO, fake_run

HISTORY = [{"epoch": e, "train_loss": 1 / e, "train_acc": 1 - 0.5 / e, "val_loss": 1.2 / e, "val_acc": 1 - 0.6 / e,
            "lr": 0.1, "epoch_seconds": 2.0, "train_images_per_second": 100.0 + e, "val_images_per_second": 300.0,
            "data_wait": 0.01} for e in range(1, 6)]


def no_warnings(draw):
    """``draw()`` rendered to a PNG, failing on any warning (a missing glyph, say)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return draw()


@pytest.mark.parametrize("name, warmup", [("cosine", 0.5), ("onecycle", 0.0), ("step", 1.0)])
def test_the_learning_rate_per_update_is_the_schedule_the_training_steps_through(name, warmup):
    optim, schedule = OptimConfig(name="sgd", lr=0.1), SchedulerConfig(name=name, warmup_epochs=warmup, step_size=2)
    rates = lr_per_update(optim, schedule, epochs=4, updates_per_epoch=7)
    model = torch.nn.Linear(3, 2)
    optimizer = build_optimizer(optim, model)
    scheduler = build_scheduler(schedule, optimizer, 4, 7)
    seen = []
    for _ in range(4 * 7):  # as the trainer does: an update at the current rate, then a scheduler step
        seen.append(optimizer.param_groups[0]["lr"])
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        scheduler.step()
    assert rates == seen


def test_curves_show_loss_accuracy_the_learning_rate_per_update_and_throughput(tmp_path):
    rates = [0.1 * (i + 1) / 50 for i in range(50)]
    figure = curves_figure(HISTORY, rates, updates_per_epoch=10, best_epoch=4)
    pixels = no_warnings(lambda: save_png(figure, tmp_path / "curves.png"))
    assert Image.open(tmp_path / "curves.png").size == (1100, 750) and pixels.shape == (750, 1100, 3)
    loss, acc, lr, speed = figure.axes
    for ax in (loss, acc):  # train, val, and the best epoch marked
        assert [line.get_label() for line in ax.lines] == ["train", "val", "best (epoch 4)"]
        assert list(ax.lines[2].get_xdata()) == [4, 4]
    assert list(lr.lines[0].get_ydata()) == rates and lr.lines[0].get_xdata()[-1] == 5.0
    assert list(speed.lines[0].get_ydata()) == [h["train_images_per_second"] for h in HISTORY]


def test_class_names_no_font_can_draw_stay_apart_and_warn_about_nothing(tmp_path):
    families, names = drawable(["cat", "猫", "犬", "dog"])
    assert families[0] == "DejaVu Sans" and names[0] == "cat" and names[3] == "dog"
    if len(families) == 1:  # no installed font has these characters (as on CI): squares, kept apart by position
        assert names[1:3] == [f"1 {MISSING_GLYPH}", f"2 {MISSING_GLYPH}"]
    assert drawable(["é", "ß", "Ω"]) == (["DejaVu Sans"], ["é", "ß", "Ω"])  # all in matplotlib's own font
    classes = [f"类别{i}" for i in range(60)]
    figure = confusion_figure(np.eye(60, dtype=np.int64) * 3, classes, "a title")
    no_warnings(lambda: save_png(figure, tmp_path / "cm.png"))


@pytest.mark.parametrize("classes, numbered, labelled", [(3, True, True), (60, False, True), (200, False, False)])
def test_confusion_matrices_stay_readable_as_classes_grow(classes, numbered, labelled, tmp_path):
    matrix = np.random.default_rng(0).integers(0, 9, size=(classes, classes))
    figure = confusion_figure(matrix, [f"class_{i}" for i in range(classes)], "title")
    width, height = Image.fromarray(no_warnings(lambda: save_png(figure, tmp_path / "cm.png"))).size
    assert width == round(100 * min(4 + 0.3 * classes, 30))  # the figure grows with the classes, up to 30 inches
    ax = figure.axes[0]
    assert bool(ax.texts) is numbered and len(ax.texts) == (classes * classes if numbered else 0)
    labels = [label.get_text() for label in ax.get_xticklabels()]
    assert (labels == [f"class_{i}" for i in range(classes)]) is labelled


def test_compare_draws_every_run_on_one_figure(tmp_path):
    runs = [fake_run(tmp_path, name, lr, "completed", 0.5, 0.9) for name, lr in (("a_lr0.1", 0.1), ("ü_lr0.2", 0.2))]
    for run in runs:
        with open(run / "history.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=HISTORY_COLUMNS)
            writer.writeheader()
            writer.writerows(HISTORY)
    figure = comparison_figure({run.name: HISTORY for run in runs})
    assert [text.get_text() for text in figure.axes[0].get_legend().get_texts()] == ["a_lr0.1", "ü_lr0.2"]
    assert len(figure.axes[1].lines) == 4  # val and train loss of each run
    result = subprocess.run([sys.executable, "harness/compare.py", *map(str, runs), "--plot", str(tmp_path / "c.png")],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout.splitlines()[0].split()[:2] == ["run", "status"]
    assert f"curves of 2 runs written to {tmp_path / 'c.png'}" in result.stdout
    assert Image.open(tmp_path / "c.png").size == (1200, 450)
