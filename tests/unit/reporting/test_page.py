"""report.html's numbers are scikit-learn's on the same predictions, and the page reads from 2 to hundreds of
classes (tests/e2e/test_report.py opens real ones in a browser)."""

import re
from html.parser import HTMLParser
from pathlib import Path

import pytest

from harness.evaluation.calibration import reliability
from harness.reporting.page import HARDEST, ReportInputs, report_html
from tests.unit.evaluation.test_calibration import predictions


class Numbers(HTMLParser):
    """Every (metric, class, value) of a page's data-value attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.found, self.row = [], ""

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "tr":
            self.row = attrs.get("data-class", "")
        if "data-value" in attrs:
            self.found.append((attrs.get("data-metric", ""), self.row, float(attrs["data-value"])))


def numbers(page: str) -> list[tuple[str, str, float]]:
    parser = Numbers()
    parser.feed(page)
    return parser.found


@pytest.mark.slow
def test_every_number_on_the_page_is_scikit_learns():
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    raw = predictions(5, 3.0, n=400, classes=4)
    preds = raw.scaled(2.0)
    classes = ["cat", "dog", "<b>bird</b>", "fish"]  # a name HTML must escape
    page = report_html(ReportInputs("run: test", "test", classes, preds, [f"/nowhere/{i}.png" for i in range(400)],
                                    root=Path("/"), temperature=2.0))
    found = numbers(page)
    per_class = {(metric, name): value for metric, name, value in found if name}
    probabilities, labels, predicted = preds.probabilities, preds.labels, preds.predicted
    for c, name in enumerate(classes):
        assert per_class[("roc_auc", name)] == roc_auc_score(labels == c, probabilities[:, c])
        assert per_class[("average_precision", name)] == average_precision_score(labels == c, probabilities[:, c])
    everything = list(range(4))
    for metric, score in (("precision", precision_score), ("recall", recall_score), ("f1", f1_score)):
        expected = score(labels, predicted, labels=everything, average=None, zero_division=0)
        assert [per_class[(metric, name)] for name in classes] == list(expected)
    headline = {metric: value for metric, name, value in found if not name}
    assert headline["macro_roc_auc"] == pytest.approx(roc_auc_score(labels, probabilities, multi_class="ovr"),
                                                      abs=1e-12)
    assert headline["accuracy"] == preds.accuracy() and headline["ece"] == reliability(preds).ece
    assert (headline["ece_raw"], headline["ece_calibrated"]) == (reliability(raw).ece, reliability(preds).ece)
    assert "&lt;b&gt;bird&lt;/b&gt;" in page and "<b>bird</b>" not in page
    assert page.count("image unreadable") == 32  # files gone since: said on each card, the page still written


@pytest.mark.slow
def test_a_page_of_hundreds_of_classes_draws_the_hardest_classes_curves_and_lists_every_class():
    preds = predictions(6, 2.0, n=1500, classes=300)
    classes = [f"class {c}" for c in range(300)]
    page = report_html(ReportInputs("many", "test", classes, preds, [str(i) for i in range(1500)],
                                    root=Path("/nowhere")))
    assert len(re.findall(r'<tr data-class="class \d+">', page)) == 300
    assert f"the {HARDEST} classes with the lowest ROC AUC" in page
    assert "probabilities as the model gives them (uncalibrated)" in page
