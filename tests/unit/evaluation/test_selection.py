"""The choice of the best epoch and of an epoch's weights: the monitored metric, its tie-breaker, the weight
average when it validated better."""

import pytest

from harness.evaluation.selection import beats, chosen_weights, scores
from harness.training.meter import TrainedEpoch, epoch_record
from tests.helpers import predictions_of

TRAINED = TrainedEpoch(loss=0.9, accuracy=0.6, images=100, seconds=4.0, data_wait_seconds=1.0)


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
    assert beats(epoch_record(0, TRAINED, {"raw": predictions_of(*val)}, 1.0, 0.01), BEST, monitor) is improved


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
