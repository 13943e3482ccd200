"""The scores of labeled predictions are scikit-learn's to the last bit, computed without importing it (a training
run's imports are checked in tests/e2e/test_train.py): the text report and confusion matrix, per-class precision,
recall and F1, the one-vs-rest ROC and precision-recall curves, their AUC and average precision, with tied scores
and classes no sample has or no prediction names."""

import numpy as np
import pytest

from harness.evaluation.predictions import Predictions
from harness.evaluation.scores import class_scores, classification_report, one_vs_rest_curves
from tests.helpers import log_probs_predicting
from tests.unit.evaluation.test_calibration import predictions

CLASSES = ["cat", "dog", "a much longer class name", "never predicted", "never seen"]


def hard_predictions(seed: int) -> Predictions:
    """"never seen" has no sample and "never predicted" is never predicted."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, 60)
    predicted = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 3, 60))
    return Predictions(np.arange(60), labels, log_probs_predicting(predicted, len(CLASSES)), np.zeros(60))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_report_confusion_matrix_and_class_scores_are_scikit_learns(seed):
    from sklearn.metrics import classification_report as sklearn_report
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    preds = hard_predictions(seed)
    everything = list(range(len(CLASSES)))
    labels, predicted = preds.labels, preds.predicted
    assert np.array_equal(preds.confusion(len(CLASSES)), confusion_matrix(labels, predicted, labels=everything))
    assert classification_report(preds, CLASSES) == sklearn_report(labels, predicted, labels=everything,
                                                                   target_names=CLASSES, digits=4, zero_division=0)
    scores = class_scores(preds, len(CLASSES))
    expected = precision_recall_fscore_support(labels, predicted, labels=everything, zero_division=0)
    for ours, theirs in zip((scores.precision, scores.recall, scores.f1, scores.support), expected):
        assert ours.tolist() == theirs.tolist()


@pytest.mark.parametrize("ties", [False, True])
def test_curves_auc_and_average_precision_are_scikit_learns_bit_for_bit(ties):
    """With ``ties`` the probabilities are rounded to 2 decimals, so that many samples share each score (a
    threshold takes all of them at once); "never seen" has no curve and nan scores."""
    from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    preds = predictions(4, 1.5, n=500, classes=5)
    preds.labels[preds.labels == 4] = 0
    if ties:
        preds.log_probs[:] = np.log(np.maximum(np.round(preds.probabilities, 2), 1e-6))
    scores, probabilities = class_scores(preds, 5), preds.probabilities
    curves = one_vs_rest_curves(preds, list(range(5)))
    assert sorted(curves) == [0, 1, 2, 3]
    for c in range(4):
        positive = preds.labels == c
        fpr, tpr, _ = roc_curve(positive, probabilities[:, c])
        precision, recall, _ = precision_recall_curve(positive, probabilities[:, c])
        for key, theirs in (("fpr", fpr), ("tpr", tpr), ("precision", precision), ("recall", recall)):
            assert curves[c][key].tolist() == theirs.tolist(), (c, key)
        assert scores.roc_auc[c] == roc_auc_score(positive, probabilities[:, c])
        assert scores.average_precision[c] == average_precision_score(positive, probabilities[:, c])
    assert np.isnan(scores.roc_auc[4]) and np.isnan(scores.average_precision[4])
    assert scores.macro_roc_auc == float(np.mean(scores.roc_auc[:4]))

