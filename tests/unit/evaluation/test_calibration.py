"""Temperature scaling and the expected calibration error, against their definitions and scikit-learn."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harness.evaluation.calibration import BINS, fit_temperature, reliability, unfitted
from harness.evaluation.predictions import Predictions


def scored(labels: np.ndarray, logits: np.ndarray) -> Predictions:
    log_probs = torch.from_numpy(logits).float().log_softmax(dim=1)
    losses = F.nll_loss(log_probs, torch.from_numpy(labels), reduction="none")
    return Predictions(np.arange(len(labels)), labels, log_probs.numpy(), losses.numpy())


def predictions(seed: int, sharpness: float, n: int = 600, classes: int = 6) -> Predictions:
    """Predictions whose logits are ``sharpness`` times a signal: above 1 overconfident, below underconfident."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    logits = rng.normal(size=(n, classes))
    logits[np.arange(n), labels] += 1.2
    return scored(labels, logits * sharpness)


@pytest.mark.parametrize("seed, sharpness", [(0, 4.0), (1, 0.3), (2, 1.0)])
def test_the_fitted_temperature_minimises_the_loss_and_moves_no_prediction(seed, sharpness):
    preds = predictions(seed, sharpness)
    temperature = fit_temperature(preds)
    calibrated = preds.scaled(temperature)
    assert np.array_equal(calibrated.predicted, preds.predicted)
    assert calibrated.loss() <= preds.loss()
    for nearby in (temperature * 0.97, temperature * 1.03):  # the minimum: a nearby temperature does worse
        assert preds.scaled(nearby).loss() > calibrated.loss()
    assert (temperature > 1) == (sharpness > 1.5) and reliability(calibrated).ece < reliability(preds).ece + 0.02


def test_the_expected_calibration_error_is_scikit_learns_binning():
    """sklearn.calibration.calibration_curve (uniform bins) gives each non-empty bin's accuracy and confidence;
    weighted by the bins' counts they make the ECE."""
    from sklearn.calibration import calibration_curve

    preds = predictions(3, 2.5)
    correct = (preds.predicted == preds.labels).astype(int)
    accuracy, confidence = calibration_curve(correct, preds.confidence, n_bins=BINS, strategy="uniform")
    edges = np.linspace(0, 1, BINS + 1)
    counts = np.bincount(np.searchsorted(edges[1:-1], preds.confidence), minlength=BINS)
    expected = float((counts[counts > 0] * np.abs(accuracy - confidence)).sum() / len(preds))
    assert reliability(preds).ece == pytest.approx(expected, abs=1e-12)
    assert reliability(preds).counts.tolist() == counts.tolist()


def test_a_temperature_leaves_unlabeled_or_empty_predictions_alone():
    empty = Predictions(np.arange(0), np.zeros(0, dtype=np.int64), np.zeros((0, 3), np.float32), np.zeros(0))
    assert fit_temperature(empty) == 1.0 and unfitted(empty) == "it has no labeled images"
    unlabeled = predictions(4, 2.0)
    unlabeled.labels[:] = -1
    assert fit_temperature(unlabeled) == 1.0 and unfitted(unlabeled) == "it has no labeled images"


def test_no_temperature_is_fitted_where_the_log_loss_has_no_minimum():
    """Every image's own class on top (one tied): the loss falls toward T = 0, which is no calibration; own
    classes below the others on average: it falls as T grows. One image wrong: a minimum, and it is found."""
    right = predictions(5, 2.0, n=50)
    log_probs = right.log_probs.copy()
    own = log_probs[np.arange(50), right.labels]
    log_probs[np.arange(50), right.labels] = np.maximum(own, log_probs.max(axis=1) + 0.1)
    log_probs[0] = 0.0
    right = scored(right.labels, log_probs)
    losses = [right.scaled(t).loss() for t in (1.0, 0.1, 0.01, 0.001)]
    assert losses == sorted(losses, reverse=True) and losses[-1] < losses[0]
    assert unfitted(right).startswith("each of its 50 images has its own class scored highest")
    assert fit_temperature(right) == 1.0

    backwards = scored(right.labels, -right.log_probs)
    assert unfitted(backwards).startswith("its images' own classes score no higher than the others")
    assert fit_temperature(backwards) == 1.0

    log_probs[1, right.labels[1]] = log_probs[1].min() - 1
    one_wrong = scored(right.labels, log_probs)
    temperature = fit_temperature(one_wrong)
    assert unfitted(one_wrong) is None and 0 < temperature < 1
    for nearby in (temperature * 0.97, temperature * 1.03):
        assert one_wrong.scaled(nearby).loss() > one_wrong.scaled(temperature).loss()

