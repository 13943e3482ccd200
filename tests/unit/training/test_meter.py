"""The training pass's sums, the time spent waiting for data, and the epoch's record."""

from types import SimpleNamespace

import pytest
import torch

from harness.evaluation.selection import beats
from harness.reporting.history import HISTORY_COLUMNS
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
from tests.helpers import predictions_of


TRAINED = TrainedEpoch(loss=0.9, accuracy=0.6, images=100, seconds=4.0, data_wait_seconds=1.0)


def test_the_record_holds_every_history_column():
    record = epoch_record(2, TRAINED, {"raw": predictions_of([0.5, 1.5], [True, False])}, 0.5, 0.01)
    assert record == {"epoch": 3, "train_loss": 0.9, "train_acc": 0.6, "val_loss": 1.0, "val_acc": 0.5,
                      "lr": 0.01, "epoch_seconds": 4.0, "train_images_per_second": 25.0,
                      "val_images_per_second": 4.0, "data_wait": 0.25}
    assert list(record) == HISTORY_COLUMNS
    assert beats(record, None, "val_acc")  # the first epoch is the best so far
    averaged = epoch_record(2, TRAINED, {"raw": predictions_of([0.5, 1.5], [True, False]),
                                         "ema": predictions_of([0.25, 0.25], [True, True])}, 0.5, 0.01)
    assert list(averaged) == HISTORY_COLUMNS + ["ema_val_loss", "ema_val_acc"]
    assert (averaged["ema_val_loss"], averaged["ema_val_acc"]) == (0.25, 1.0)


def test_data_wait_counts_the_time_spent_waiting_for_each_batch_and_nothing_else():
    now = [100.0]  # a clock the test moves: what takes time is said, not slept

    def slow_batches():
        for batch in range(3):
            now[0] += 0.05  # the loader takes 50 ms for each batch
            yield batch

    wait = DataWait(clock=lambda: now[0])
    for _ in wait.batches(slow_batches()):
        now[0] += 0.1  # the step: not waiting
    assert wait.seconds == pytest.approx(3 * 0.05)
