"""Predictions' metrics: the classification report and confusion matrix are scikit-learn's, without importing it."""

import numpy as np
import pytest

from harness.evaluation.predictions import Predictions
from tests.helpers import log_probs_predicting


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_report_and_confusion_matrix_are_scikit_learns(seed):
    """Computed without importing scikit-learn at the end of every run, and still its very text."""
    from sklearn.metrics import classification_report, confusion_matrix

    rng = np.random.default_rng(seed)
    classes = ["cat", "dog", "a much longer class name", "never predicted", "never seen"]
    labels = rng.integers(0, 4, 60)  # "never seen" has no sample
    predicted = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 3, 60))  # "never predicted" is never predicted
    preds = Predictions(np.arange(60), labels, log_probs_predicting(predicted, len(classes)), np.zeros(60))
    everything = list(range(len(classes)))
    assert np.array_equal(preds.confusion(len(classes)), confusion_matrix(labels, predicted, labels=everything))
    assert preds.report(classes) == classification_report(labels, predicted, labels=everything, target_names=classes,
                                                          digits=4, zero_division=0)
