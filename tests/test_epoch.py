"""The epoch's sums and record: what the loop reports and what decides "best"."""

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from harness.config.schema import EarlyStoppingConfig
from harness.evaluation.predictions import Predictions
from harness.evaluation.selection import beats, chosen_weights, scores
from harness.reporting.history import HISTORY_COLUMNS
from harness.training.features.early_stopping import stopped_early_at
from harness.training.meter import DataWait, EpochMeter, TrainedEpoch, epoch_record


def one_process(main: bool = True, others: list[torch.Tensor] = ()):
    """A stand-in for the Accelerator: ``reduce`` adds the sums ``others`` hold to this process's."""
    return SimpleNamespace(device=torch.device("cpu"), is_main_process=main,
                           reduce=lambda tensor, reduction: tensor + sum(others, torch.zeros_like(tensor)))


def batch(loss: float, predicted: list[int], labels: list[int]):
    logits = torch.nn.functional.one_hot(torch.tensor(predicted), 3).float()
    loss = torch.tensor(loss)
    return loss, logits, torch.tensor(labels), torch.isfinite(loss)


def test_meter_sums_loss_accuracy_and_images_and_skips_nonfinite_batches():
    meter = EpochMeter(one_process(), carried=[])
    meter.add(*batch(2.0, [0, 1, 2, 2], [0, 1, 1, 1]))  # 2 of 4 right
    meter.add(*batch(float("nan"), [0, 0], [0, 0]))  # not counted anywhere
    meter.add(*batch(1.0, [1, 1], [1, 0]))  # 1 of 2 right
    assert meter.totals() == [2.0 * 4 + 1.0 * 2, 3.0, 6.0]
    assert meter.window_loss() == pytest.approx(1.5)  # the mean of the batch losses since the last log
    meter.add(*batch(4.0, [0], [0]))
    assert meter.window_loss() == pytest.approx(4.0)  # a new window after each log line
    assert meter.result(seconds=2.0, data_wait_seconds=0.5) == TrainedEpoch(
        loss=14.0 / 7, accuracy=4 / 7, images=7, seconds=2.0, data_wait_seconds=0.5)


def test_a_resumed_epoch_carries_the_sums_of_every_process_once():
    carried = [30.0, 6.0, 10.0]  # all processes' sums up to the mid-epoch checkpoint
    other = EpochMeter(one_process(main=False), carried)  # only the main process starts from them
    assert other.sums.tolist() == [0.0, 0.0, 0.0]
    other.add(*batch(1.0, [0, 0], [0, 0]))
    main = EpochMeter(one_process(others=[other.sums]), carried)
    main.add(*batch(3.0, [1, 1], [1, 2]))
    assert main.totals() == [30.0 + 2.0 + 6.0, 6.0 + 2 + 1, 10.0 + 4]
    assert main.result(seconds=1.0, data_wait_seconds=0.0).images == 4  # trained in this session only


def predictions(losses: list[float], right: list[bool]) -> Predictions:
    n = len(losses)
    labels = np.zeros(n, dtype=np.int64)
    predicted = np.where(right, 0, 1)
    return Predictions(np.arange(n), labels, predicted[:, None], np.ones((n, 1)), np.array(losses))


TRAINED = TrainedEpoch(loss=0.9, accuracy=0.6, images=100, seconds=4.0, data_wait_seconds=1.0)


def test_the_record_holds_every_history_column():
    record = epoch_record(2, TRAINED, {"raw": predictions([0.5, 1.5], [True, False])}, 0.5, 0.01)
    assert record == {"epoch": 3, "train_loss": 0.9, "train_acc": 0.6, "val_loss": 1.0, "val_acc": 0.5,
                      "lr": 0.01, "epoch_seconds": 4.0, "train_images_per_second": 25.0,
                      "val_images_per_second": 4.0, "data_wait": 0.25}
    assert list(record) == HISTORY_COLUMNS
    assert beats(record, None, "val_acc")  # the first epoch is the best so far
    averaged = epoch_record(2, TRAINED, {"raw": predictions([0.5, 1.5], [True, False]),
                                         "ema": predictions([0.25, 0.25], [True, True])}, 0.5, 0.01)
    assert list(averaged) == HISTORY_COLUMNS + ["ema_val_loss", "ema_val_acc"]
    assert (averaged["ema_val_loss"], averaged["ema_val_acc"]) == (0.25, 1.0)


def test_data_wait_counts_the_time_spent_waiting_for_each_batch_and_nothing_else():
    def slow_batches():
        for batch in range(3):
            time.sleep(0.05)
            yield batch

    wait = DataWait()
    for _ in wait.batches(slow_batches()):
        time.sleep(0.1)  # the step: not waiting
    assert 0.15 <= wait.seconds < 0.25


BEST = {"val_acc": 0.5, "val_loss": 0.5}  # the best epoch's row so far


@pytest.mark.parametrize("monitor, val, improved", [
    ("val_acc", ([1.0, 1.0], [True, True]), True),  # higher accuracy, whatever the loss
    ("val_acc", ([0.1, 0.1], [True, False]), True),  # the same accuracy with a lower loss
    ("val_acc", ([0.5, 0.5], [True, False]), False),  # a tie on both keeps the earlier epoch
    ("val_acc", ([0.9, 0.9], [True, False]), False),  # the same accuracy with a higher loss
    ("val_acc", ([0.1, 0.1], [False, False]), False),  # lower accuracy, whatever the loss
    ("val_loss", ([0.2, 0.4], [False, False]), True),  # lower loss, whatever the accuracy
    ("val_loss", ([0.5, 0.5], [True, True]), True),  # the same loss with a higher accuracy
    ("val_loss", ([0.5, 0.5], [True, False]), False),  # a tie on both
    ("val_loss", ([0.9, 0.9], [True, True]), False),  # higher loss
])
def test_improvement_follows_the_monitored_metric_and_breaks_ties_by_the_other(monitor, val, improved):
    assert beats(epoch_record(0, TRAINED, {"raw": predictions(*val)}, 1.0, 0.01), BEST, monitor) is improved


@pytest.mark.parametrize("monitor, ema, chosen", [
    ("val_acc", (0.9, 0.5), "ema"),  # a higher accuracy
    ("val_acc", (0.5, 0.4), "ema"),  # the same accuracy with a lower loss
    ("val_acc", (0.5, 0.5), "raw"),  # a tie: the weights themselves
    ("val_acc", (0.4, 0.1), "raw"),  # a lower accuracy, whatever the loss
    ("val_loss", (0.4, 0.4), "ema"),  # a lower loss
    ("val_loss", (0.9, 0.6), "raw"),  # a higher loss, whatever the accuracy
])
def test_the_weight_average_counts_for_an_epoch_when_it_validated_better(monitor, ema, chosen):
    record = {"epoch": 3, "val_acc": 0.5, "val_loss": 0.5, "ema_val_acc": ema[0], "ema_val_loss": ema[1]}
    assert chosen_weights(record, monitor) == chosen
    assert scores(record, monitor) == ({"val_acc": ema[0], "val_loss": ema[1]} if chosen == "ema" else BEST)
    # and "best" compares epochs by their chosen weights
    assert beats(record, {"epoch": 1, **BEST}, monitor) is (chosen == "ema")


def test_early_stopping_counts_epochs_without_an_improvement_beyond_min_delta():
    def history(values, key="val_acc", other=0.0):
        return [{"epoch": i + 1, key: v, ("val_loss" if key == "val_acc" else "val_acc"): other}
                for i, v in enumerate(values)]

    patient = EarlyStoppingConfig(patience=2, min_delta=0.0)
    assert stopped_early_at(history([0.5, 0.6, 0.6, 0.55, 0.7]), "val_acc", patient) == 4
    assert stopped_early_at(history([0.5, 0.6, 0.6, 0.7, 0.7]), "val_acc", patient) is None  # reset by 0.7
    assert stopped_early_at(history([0.5, 0.6, 0.6, 0.7, 0.7]), "val_acc", None) is None  # off
    # improvements of at most min_delta do not count, measured from the last that did
    strict = EarlyStoppingConfig(patience=2, min_delta=0.05)
    assert stopped_early_at(history([0.5, 0.54, 0.53, 0.7]), "val_acc", strict) == 3
    assert stopped_early_at(history([0.5, 0.54, 0.58, 0.6]), "val_acc", strict) is None  # 0.58: +0.08 on 0.5
    # val_loss improves downwards
    assert stopped_early_at(history([1.0, 0.8, 0.9, 0.85], "val_loss"), "val_loss", patient) == 4
    assert stopped_early_at(history([1.0, 0.8, 0.9, 0.7], "val_loss"), "val_loss", patient) is None


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_report_and_confusion_matrix_are_scikit_learns(seed):
    """Computed without importing scikit-learn at the end of every run, and still its very text."""
    from sklearn.metrics import classification_report, confusion_matrix

    rng = np.random.default_rng(seed)
    classes = ["cat", "dog", "a much longer class name", "never predicted", "never seen"]
    labels = rng.integers(0, 4, 60)  # "never seen" has no sample
    predicted = np.where(rng.random(60) < 0.6, labels, rng.integers(0, 3, 60))  # "never predicted" is never predicted
    preds = Predictions(np.arange(60), labels, predicted[:, None], np.ones((60, 1)), np.zeros(60))
    everything = list(range(len(classes)))
    assert np.array_equal(preds.confusion(len(classes)), confusion_matrix(labels, predicted, labels=everything))
    assert preds.report(classes) == classification_report(labels, predicted, labels=everything, target_names=classes,
                                                          digits=4, zero_division=0)
