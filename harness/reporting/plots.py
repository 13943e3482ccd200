"""Figures: a run's curves, a confusion matrix, one-vs-rest ROC and precision-recall curves, reliability diagrams,
several runs' curves on one figure; and their PNG files.

matplotlib is imported where a figure is drawn (it takes most of a second), never at module level.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from harness.storage.atomic import atomic_path

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from harness.evaluation.calibration import Reliability

DEFAULT_FONT = "DejaVu Sans"  # matplotlib's own
MISSING_GLYPH = "\u25a1"  # a white square, drawn for a character no installed font has
NUMBERED_CELLS_UP_TO = 30  # classes; past this the matrix's cells are colour only
LABELLED_AXES_UP_TO = 150  # classes; past this the axes show class indices every few classes


def curves_figure(history: list[dict], lr_per_update: list[float], updates_per_epoch: int,
                  best_epoch: int | None) -> Figure:
    """Loss and accuracy per epoch (train and val) with the best epoch marked, the learning rate of every
    optimizer update, and the train and validation images/s per epoch."""
    from matplotlib.figure import Figure

    epochs = [h["epoch"] for h in history]
    figure = Figure(figsize=(11, 7.5))
    loss, accuracy, rate, speed = figure.subplots(2, 2).flat
    for ax, metric, title in ((loss, "loss", "loss"), (accuracy, "acc", "accuracy")):
        for split in ("train", "val"):
            ax.plot(epochs, [h[f"{split}_{metric}"] for h in history], marker="o", markersize=3, label=split)
        if best_epoch:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=1, label=f"best (epoch {best_epoch})")
        ax.set(xlabel="epoch", title=f"{title} per epoch")
    rate.plot([(update + 1) / updates_per_epoch for update in range(len(lr_per_update))], lr_per_update)
    rate.set(xlabel="epoch", title="learning rate per update")
    for key, label in (("train_images_per_second", "train"), ("val_images_per_second", "val")):
        speed.plot(epochs, [h[key] for h in history], marker="o", markersize=3, label=label)
    speed.set(xlabel="epoch", title="images/s per epoch")
    speed.set_ylim(bottom=0)
    for ax in figure.axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    figure.tight_layout()
    return figure


def comparison_figure(histories: dict[str, list[dict]]) -> Figure:
    """Validation accuracy and train and validation loss per epoch of several runs, one colour per run."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 4.5))
    left, right = figure.subplots(1, 2)
    for (name, history), colour in zip(histories.items(), _colours(len(histories))):
        epochs = [h["epoch"] for h in history]
        left.plot(epochs, [h["val_acc"] for h in history], color=colour, marker="o", markersize=3, label=name)
        right.plot(epochs, [h["val_loss"] for h in history], color=colour, marker="o", markersize=3, label=f"{name} val")
        right.plot(epochs, [h["train_loss"] for h in history], color=colour, linestyle=":", label=f"{name} train")
    left.set(xlabel="epoch", title="validation accuracy")
    right.set(xlabel="epoch", title="loss (dotted: train)")
    for ax in (left, right):
        ax.grid(alpha=0.3)
    families, names = drawable([*histories])
    left.legend(left.get_legend_handles_labels()[0], names,
                prop={"family": families, "size": "small" if len(histories) > 6 else "medium"})
    figure.tight_layout()
    return figure


def _colours(n: int) -> list:
    from matplotlib import colormaps

    if n <= 10:
        return [colormaps["tab10"](i) for i in range(n)]
    return [colormaps["viridis"](i / (n - 1)) for i in range(n)]


def confusion_figure(matrix: np.ndarray, classes: list[str], title: str, normalised: bool = False) -> Figure:
    """Counts of (true, predicted), or with ``normalised`` each true class's row as shares of it, readable from 2 to
    hundreds of classes: the figure grows with the classes (up to 30 inches), cell numbers up to 30 classes, tick
    labels up to 150 that shrink as classes grow."""
    from matplotlib.figure import Figure

    n = len(classes)
    if normalised:
        rows = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    size = min(4 + 0.3 * n, 30)
    figure = Figure(figsize=(size, size * 0.85))
    ax = figure.add_subplot()
    image = ax.imshow(matrix, cmap="Blues", **({"vmin": 0, "vmax": 1} if normalised else {}))
    figure.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    if n <= LABELLED_AXES_UP_TO:
        families, names = drawable(classes)
        fontsize = max(4.0, min(10.0, 400 / n))
        ax.set_xticks(range(n), names, rotation=45 if n <= 20 else 90, ha="right" if n <= 20 else "center",
                      fontsize=fontsize, family=families)
        ax.set_yticks(range(n), names, fontsize=fontsize, family=families)
    if n <= NUMBERED_CELLS_UP_TO:
        threshold = matrix.max() / 2 if matrix.size else 0
        for i in range(n):
            for j in range(n):
                ax.text(j, i, f"{matrix[i, j]:.2f}" if normalised else str(matrix[i, j]), ha="center", va="center",
                        fontsize=8 if not normalised or n <= 15 else 6,
                        color="white" if matrix[i, j] > threshold else "black")
    figure.tight_layout()
    return figure


def class_curves_figure(curves: dict[int, dict[str, np.ndarray]], names: dict[int, str]) -> Figure:
    """One-vs-rest ROC (left) and precision-recall (right) curves, one line per class of ``curves``, labelled with
    ``names`` (which may carry each class's AUC or average precision)."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(12, 5))
    roc, pr = figure.subplots(1, 2)
    families, labels = drawable([names[c] for c in curves])
    for (c, curve), colour, label in zip(curves.items(), _colours(len(curves)), labels):
        roc.plot(curve["fpr"], curve["tpr"], color=colour, label=label)
        pr.plot(curve["recall"], curve["precision"], color=colour, label=label)
    roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    roc.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC, one class vs the rest")
    pr.set(xlabel="recall", ylabel="precision", title="precision-recall, one class vs the rest")
    for ax in (roc, pr):
        ax.set(xlim=(0, 1), ylim=(0, 1.02))
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", prop={"family": families, "size": "small"}, loc="lower right" if ax is roc
                  else "lower left")
    figure.tight_layout()
    return figure


def reliability_figure(panels: list[tuple[str, "Reliability"]]) -> Figure:
    """For each (title, reliability): the accuracy of each confidence bin against its mean confidence (a
    calibrated model lies on the diagonal), and under it how many samples each bin holds."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5.5 * len(panels), 6.5))
    grid = figure.add_gridspec(2, len(panels), height_ratios=(3, 1))
    for column, (title, bins) in enumerate(panels):
        top = figure.add_subplot(grid[0, column])
        bottom = figure.add_subplot(grid[1, column], sharex=top)
        width = bins.edges[1] - bins.edges[0]
        centres = bins.edges[:-1] + width / 2
        filled = bins.counts > 0
        top.bar(centres[filled], bins.accuracy[filled], width=width * 0.9, color="tab:blue", label="accuracy")
        top.plot(bins.confidence[filled], bins.confidence[filled], "o", color="tab:red", markersize=3,
                 label="mean confidence")
        top.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
        top.set(ylim=(0, 1), ylabel="accuracy", title=f"{title}: ECE {bins.ece:.4f}")
        top.legend(loc="upper left", fontsize="small")
        bottom.bar(centres, bins.counts, width=width * 0.9, color="grey")
        bottom.set(xlim=(0, 1), xlabel="confidence (top class)", ylabel="samples")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
    figure.tight_layout()
    return figure


def drawable(names: list[str]) -> tuple[list[str], list[str]]:
    """Font families that can draw ``names`` (matplotlib's own first, then installed fonts with the characters it
    lacks, e.g. a CJK font), and the names as they can be drawn: a character no installed font has becomes
    a white square, with the name's position in front so that such names stay apart."""
    needed = {ord(c) for name in names for c in name if not c.isspace()}
    families, covered = [DEFAULT_FONT], set(_charmap(DEFAULT_FONT))
    for family, charmap in _installed_fonts() if needed - covered else ():
        if (needed - covered) & charmap:
            families.append(family)
            covered |= charmap
    if not needed - covered:
        return families, list(names)
    return families, [name if {ord(c) for c in name} <= covered | {32} else
                      f"{i} " + "".join(c if ord(c) in covered else MISSING_GLYPH for c in name)
                      for i, name in enumerate(names)]


@functools.cache
def _charmap(family: str) -> frozenset[int]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    return frozenset(FT2Font(font_manager.findfont(family)).get_charmap())


@functools.cache
def _installed_fonts() -> list[tuple[str, frozenset[int]]]:
    from matplotlib import font_manager
    from matplotlib.ft2font import FT2Font

    fonts = {}
    for entry in font_manager.fontManager.ttflist:
        if entry.name not in fonts:
            try:
                fonts[entry.name] = frozenset(FT2Font(entry.fname).get_charmap())
            except (OSError, RuntimeError):  # a font file FreeType cannot read
                continue
    return sorted(fonts.items())


def save_png(figure: Figure, path: Path) -> np.ndarray:
    """Render ``figure`` once (at 100 dpi) and write it as a PNG; its RGB pixels are returned."""
    from PIL import Image

    pixels = render(figure)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(pixels).save(tmp, format="png")
    return pixels


def render(figure: Figure) -> np.ndarray:
    """``figure``'s RGB pixels at 100 dpi."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)
    figure.set_dpi(100)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., :3]
