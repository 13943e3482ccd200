"""The per-update poll: host flags each update, the device's non-finite flag only where a decision needs it."""

import signal
from types import SimpleNamespace

import torch

from harness.config.schema import Config
from harness.runtime.signals import StopRequest
from harness.training.poll import Poller


def poller(**train) -> tuple[Poller, StopRequest]:
    cfg = Config()
    for key, value in train.items():
        setattr(cfg.train, key, value)
    cfg.checkpoint.every_n_steps = 4
    accelerator = SimpleNamespace(device=torch.device("cpu"), num_processes=1, is_main_process=True)
    stop = StopRequest()
    return Poller(accelerator, cfg, stop), stop


def flag(value: bool) -> torch.Tensor:
    return torch.tensor(value)


def test_a_run_that_fails_on_a_nonfinite_update_reads_the_flag_only_before_it_logs_saves_or_stops():
    poll, stop = poller()
    assert poll.poll(1, flag(False), check=False).bad_step is None
    assert poll.poll(2, flag(True), check=False).bad_step is None  # not read yet: no wait for the device
    assert poll.poll(3, flag(True), check=False).bad_step is None
    found = poll.poll(4, flag(False), check=False)  # a step checkpoint is due: read first
    assert (found.save_due, found.bad_step) == (True, 2)  # the first non-finite update, not the last
    assert poll.poll(5, flag(False), check=True).bad_step is None  # reported once
    poll.poll(6, flag(True), check=False)
    stop.signum = signal.SIGTERM
    stopping = poll.poll(7, flag(False), check=False)
    assert (stopping.stop, stopping.bad_step) == (True, 6)  # never a checkpoint with a non-finite update in it


def test_a_run_that_skips_nonfinite_updates_reads_the_flag_at_every_update():
    poll, _ = poller(skip_nonfinite_steps=2)
    assert poll.poll(1, flag(True), check=False).bad_step == 1
    assert poll.poll(2, flag(False), check=False).bad_step is None
    assert poll.poll(3, flag(True), check=False).bad_step == 3
