"""``report.html``: what a trained model tells you, on one self-contained page (every picture embedded, no script):
the run's summary and curves, the confusion matrix (counts and shares of each true class), per-class scores, the
one-vs-rest ROC and precision-recall curves, calibration before and after temperature scaling, the pairs of
classes most often confused, and the model's most confident mistakes and least confident correct predictions as
thumbnails. Every score on the page is computed as scikit-learn computes it (``harness.evaluation.scores``); each
number is also in a ``data-value`` attribute at full precision, for scripts."""

from __future__ import annotations

import base64
import html
import io
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from harness.data.files import files_at
from harness.evaluation.calibration import reliability
from harness.evaluation.predictions import Predictions
from harness.evaluation.scores import class_scores, confused_pairs, one_vs_rest_curves
from harness.reporting.plots import class_curves_figure, confusion_figure, reliability_figure, render
from harness.reporting.summary import shown
from harness.storage.atomic import write_atomic

EVERY_CURVE_UP_TO = 10  # classes; past this the curves are drawn for the hardest classes only
HARDEST = 8
THUMBNAILS = 16  # of each kind
THUMBNAIL_PX = 112
CONFUSED_PAIRS = 10


@dataclass
class ReportInputs:
    """What the page shows. ``preds`` are the probabilities as reported (calibrated, where they carry their
    ``uncalibrated`` ones, by ``temperature``); ``paths`` are the samples' files by dataset index, under ``root``."""

    title: str
    split: str
    classes: list[str]
    preds: Predictions
    paths: list[str]
    root: Path
    temperature: float | list[float] | None = None  # one per model of an ensemble
    facts: list[tuple[str, object]] = field(default_factory=list)
    curves: np.ndarray | None = None  # the run's curves figure, as pixels
    confusion: np.ndarray | None = None  # the counts' confusion matrix figure, as pixels, where already drawn
    fit: tuple[float, float] | None = None  # the validation NLL before and after temperature scaling
    config_text: str | None = None

    @property
    def calibrated(self) -> bool:
        return self.temperature is not None and self.preds.uncalibrated is not None


def write_report(path: Path, inputs: ReportInputs) -> None:
    write_atomic(path, report_html(inputs))


def report_html(inputs: ReportInputs) -> str:
    preds, classes = inputs.preds, inputs.classes
    scores = class_scores(preds, len(classes))
    matrix = preds.confusion(len(classes))
    sections = [
        f"<h1>{escaped(inputs.title)}</h1>\n<p class=note>written {time.strftime('%Y-%m-%d %H:%M')}; "
        f"{len(preds)} {escaped(inputs.split)} images, {len(classes)} classes"
        + (f"; probabilities calibrated by temperature scaling (T = {_temperature(inputs)}, fitted on the "
           "validation split)" if inputs.calibrated else "; probabilities as the model gives them "
           "(uncalibrated)")
        + "</p>",
        _headline(preds, scores),
    ]
    if inputs.facts:
        sections.append("<h2>Run</h2>\n" + table_html([], [[escaped(k), escaped(shown(v))] for k, v in inputs.facts]))
    if inputs.curves is not None:
        sections.append("<h2>Curves</h2>\n" + image_html(inputs.curves, "loss, accuracy, learning rate and speed per epoch"))
    sections += [
        "<h2>Confusion matrix</h2>\n<div class=pair>"
        + image_html(inputs.confusion if inputs.confusion is not None else
                     render(confusion_figure(matrix, classes, f"{inputs.split}: counts")), "confusion matrix, counts")
        + image_html(render(confusion_figure(matrix, classes, f"{inputs.split}: share of each true class",
                                         normalised=True)), "confusion matrix, row-normalised") + "</div>",
        _class_table(classes, scores),
        _curves(preds, classes, scores),
        _calibration(inputs),
        _confused(matrix, classes),
        _gallery(inputs, mistakes=True),
        _gallery(inputs, mistakes=False),
    ]
    if inputs.config_text:
        sections.append(f"<h2>Config</h2>\n<pre>{escaped(inputs.config_text)}</pre>")
    return page_html(inputs.title, sections)


def _headline(preds: Predictions, scores) -> str:
    bins = reliability(preds)
    items = [("accuracy", "accuracy", preds.accuracy()), ("macro F1", "macro_f1", float(scores.f1.mean())),
             ("macro ROC AUC", "macro_roc_auc", scores.macro_roc_auc), ("ECE", "ece", bins.ece),
             ("log loss", "nll", preds.loss())]
    return "<div class=headline>" + "".join(
        f'<div><span class=big data-metric={key} data-value="{value!r}">{value:.4f}</span><br>{name}</div>'
        for name, key, value in items) + "</div>"


def _class_table(classes: list[str], scores) -> str:
    rows = []
    for c, name in enumerate(classes):
        cells = [escaped(name)]
        for metric, values in (("precision", scores.precision), ("recall", scores.recall), ("f1", scores.f1),
                               ("roc_auc", scores.roc_auc), ("average_precision", scores.average_precision)):
            value = float(values[c])
            shown = "n/a" if np.isnan(value) else f"{value:.4f}"
            cells.append(f'<td class=num data-metric={metric} data-value="{value!r}">{shown}</td>')
        cells.append(f"<td class=num data-metric=support data-value={int(scores.support[c])}>"
                     f"{int(scores.support[c])}</td>")
        rows.append(f'<tr data-class="{escaped(name)}"><td>' + cells[0] + "</td>" + "".join(cells[1:]) + "</tr>")
    head = "".join(f"<th>{h}</th>" for h in ("class", "precision", "recall", "F1", "ROC AUC", "average precision",
                                              "support"))
    return ("<h2>Per class</h2>\n<p class=note>ROC AUC and average precision: the class against all others, from "
            "its probability; n/a for a class without images here.</p>\n"
            f"<table id=classes><tr>{head}</tr>\n" + "\n".join(rows) + "</table>")


def _curves(preds: Predictions, classes: list[str], scores) -> str:
    if len(classes) <= EVERY_CURVE_UP_TO:
        shown, which = list(range(len(classes))), "every class"
    else:
        defined = [c for c in np.argsort(scores.roc_auc, kind="stable") if not np.isnan(scores.roc_auc[c])]
        shown, which = [int(c) for c in defined[:HARDEST]], f"the {HARDEST} classes with the lowest ROC AUC"
    curves = one_vs_rest_curves(preds, shown)
    if not curves:
        return "<h2>ROC and precision-recall</h2>\n<p>No class has both positives and negatives here.</p>"
    names = {c: f"{classes[c]} (AUC {scores.roc_auc[c]:.3f}, AP {scores.average_precision[c]:.3f})" for c in curves}
    return (f"<h2>ROC and precision-recall</h2>\n<p class=note>{which}; the table above has every class.</p>\n"
            + image_html(render(class_curves_figure(curves, names)), "ROC and precision-recall curves"))


def _number(metric: str, value: float) -> str:
    return f'<span data-metric={metric} data-value="{value!r}">{value:.4f}</span>'


def _temperature(inputs: ReportInputs) -> str:
    values = inputs.temperature if isinstance(inputs.temperature, list) else [inputs.temperature]
    return ", ".join(f"{value:.4f}" for value in values)


def _calibration(inputs: ReportInputs) -> str:
    calibrated = inputs.calibrated
    model = inputs.preds.uncalibrated if calibrated else inputs.preds
    raw, preds = reliability(model), reliability(inputs.preds)
    rows = [["expected calibration error (15 bins)", _number("ece_raw", raw.ece), _number("ece_calibrated", preds.ece)],
            [f"log loss ({escaped(inputs.split)})", f"{model.loss():.4f}", f"{inputs.preds.loss():.4f}"]]
    if inputs.fit:
        rows.append(["log loss (validation, where T was fitted)", f"{inputs.fit[0]:.4f}", f"{inputs.fit[1]:.4f}"])
    after = f"calibrated (T = {_temperature(inputs)})" if calibrated else "as reported"
    panels = [("model", raw)] + ([(after, preds)] if calibrated else [])
    return ("<h2>Calibration</h2>\n<p class=note>How far the confidence in the top class is from how often it is "
            "right. Temperature scaling divides the logits by one number fitted on the validation split: the "
            "predicted class never changes.</p>\n"
            + table_html(["", "model", after], rows)
            + image_html(render(reliability_figure(panels)), "reliability diagram"))


def _confused(matrix: np.ndarray, classes: list[str]) -> str:
    pairs = confused_pairs(matrix, CONFUSED_PAIRS)
    if not pairs:
        return "<h2>Most confused classes</h2>\n<p>No image was misclassified.</p>"
    rows = [[escaped(classes[i]), escaped(classes[j]), str(n), f"{n / max(matrix[i].sum(), 1):.1%}"] for i, j, n in pairs]
    return "<h2>Most confused classes</h2>\n" + table_html(["true", "predicted as", "images", "share of the true class"],
                                                        rows)


def _gallery(inputs: ReportInputs, mistakes: bool) -> str:
    preds, classes = inputs.preds, inputs.classes
    right = preds.predicted == preds.labels
    rows = np.flatnonzero(~right if mistakes else right)
    confidence = preds.confidence[rows]
    order = np.argsort(-confidence if mistakes else confidence, kind="stable")[:THUMBNAILS]
    title = "Most confident mistakes" if mistakes else "Least confident correct predictions"
    if not len(order):
        return f"<h2>{title}</h2>\n<p>None.</p>"
    files = files_at(inputs.root)
    cards = []
    for row in rows[order]:
        path = inputs.paths[preds.indices[row]]
        try:
            picture = _thumbnail(files.load(path))
            image = image_html(np.asarray(picture), path, thumbnail=True)
        except Exception:  # a file gone since it was predicted: the card says so instead of the page failing
            image = "<div class=missing>image unreadable</div>"
        cards.append(f"<figure>{image}<figcaption>true <b>{escaped(classes[preds.labels[row]])}</b><br>predicted "
                     f"<b>{escaped(classes[preds.predicted[row]])}</b> ({preds.confidence[row]:.3f})<br>"
                     f"<span class=path>{escaped(path)}</span></figcaption></figure>")
    return f"<h2>{title}</h2>\n<div class=gallery>" + "".join(cards) + "</div>"


def _thumbnail(picture):
    """At most THUMBNAIL_PX on its longer side; a smaller image is enlarged to it, its pixels kept sharp."""
    from PIL import Image

    scale = THUMBNAIL_PX / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.NEAREST if scale > 1 else Image.Resampling.LANCZOS)


def image_html(pixels: np.ndarray, alt: str, thumbnail: bool = False) -> str:
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="png")
    data = base64.b64encode(buffer.getvalue()).decode()
    return f'<img{" class=thumb" if thumbnail else ""} alt="{escaped(alt)}" src="data:image/png;base64,{data}">'


def table_html(head: list[str], rows: list[list[str]]) -> str:
    return ("<table>" + ("<tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>\n" if head else "")
            + "\n".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows) + "</table>")


def page_html(title: str, sections: list[str]) -> str:
    """A whole page: ``title`` and the HTML ``sections`` in the report's style."""
    return PAGE.format(title=escaped(title), body="\n\n".join(sections))


def escaped(text: str) -> str:
    return html.escape(str(text), quote=True)


PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1250px; padding: 0 1em; color: #222; }}
h1 {{ font-size: 1.6em; }} h2 {{ margin-top: 1.8em; border-bottom: 1px solid #ddd; }}
.note {{ color: #666; }}
.headline {{ display: flex; gap: 2.5em; flex-wrap: wrap; margin: 1em 0; }}
.headline div {{ text-align: center; color: #555; }} .big {{ font-size: 1.8em; color: #124; }}
table {{ border-collapse: collapse; margin: 0.5em 0; }}
td, th {{ border: 1px solid #ddd; padding: 0.25em 0.7em; }} th {{ background: #f3f3f3; }}
td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
img {{ max-width: 100%; display: block; margin: 0.5em 0; }}
.pair {{ display: flex; flex-wrap: wrap; gap: 1em; align-items: flex-start; }} .pair img {{ max-width: 49%; }}
.gallery {{ display: flex; flex-wrap: wrap; gap: 0.8em; }}
figure {{ margin: 0; width: 150px; font-size: 0.8em; }} img.thumb {{ margin: 0 auto; }}
.path {{ color: #888; word-break: break-all; }} .missing {{ height: 112px; background: #eee; }}
.wide {{ overflow-x: auto; }}
pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
</style></head>
<body>
{body}
</body></html>
"""
