"""What every process learns at an optimizer update, the same everywhere, at as little cost as it can.

- **Stop and save**: whether a stop signal reached some process, and whether a time checkpoint is due (the
  main process's clock decides), are host flags. With several processes they meet in a small collective on
  a CPU (gloo) group each update, which never waits for the device.
- **Non-finite updates**: the flag lives on the device, and reading it waits for the device. With
  ``train.skip_nonfinite_steps`` the loop must know before each update (to skip it), so it is read each
  update. Otherwise a non-finite update ends the run, and it is enough to know before anything of it could
  be kept: the flag (and the first bad update) is read at log steps, before every checkpoint and at the end
  of the epoch, and the run then fails naming that update, its last checkpoint intact.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import torch
import torch.distributed as dist
from accelerate import Accelerator

from harness.config.schema import Config
from harness.runtime.signals import StopRequest


class Poll(NamedTuple):
    stop: bool  # a stop signal reached some process
    save_due: bool  # a step or time checkpoint is due
    bad_step: int | None  # the first non-finite update (1-based global step) found, on any process


class Poller:
    def __init__(self, accelerator: Accelerator, cfg: Config, stop: StopRequest) -> None:
        self.accelerator, self.checkpoint, self.stop = accelerator, cfg.checkpoint, stop
        self.every_update = cfg.train.skip_nonfinite_steps > 0
        self.group = _host_group(accelerator)
        self.first_bad = torch.full((), -1, dtype=torch.int64, device=accelerator.device)
        self.last_save = time.perf_counter()

    def poll(self, step: int, nonfinite: torch.Tensor, check: bool) -> Poll:
        """At optimizer update ``step`` (1-based), whose accumulation window was ``nonfinite`` (a device flag);
        ``check``: read the non-finite flags now (the loop is about to log or end its epoch)."""
        stop, minutes_due = self._host_flags()
        every = self.checkpoint.every_n_steps
        save_due = minutes_due or (every is not None and step % every == 0)
        # Recorded on the device without waiting for it: the first update whose window was non-finite.
        self.first_bad = torch.where((self.first_bad < 0) & nonfinite, step, self.first_bad)
        if not (self.every_update or check or stop or save_due):
            return Poll(stop, save_due, None)
        return Poll(stop, save_due, self._first_bad_step())

    def saved(self) -> None:
        self.last_save = time.perf_counter()

    def _host_flags(self) -> tuple[bool, bool]:
        every = self.checkpoint.every_n_minutes
        minutes_due = (self.accelerator.is_main_process and every is not None
                       and time.perf_counter() - self.last_save >= 60 * every)
        flags = torch.tensor([self.stop.signum is not None, minutes_due], dtype=torch.int32)
        if self.accelerator.num_processes > 1:
            dist.all_reduce(flags, op=dist.ReduceOp.MAX, group=self.group)
        stop, minutes_due = flags.tolist()
        return bool(stop), bool(minutes_due)

    def _first_bad_step(self) -> int | None:
        """The first non-finite update on any process since the last time one was found (a collective)."""
        first = self.first_bad.clone()
        first[first < 0] = torch.iinfo(torch.int64).max
        if self.accelerator.num_processes > 1:
            dist.all_reduce(first, op=dist.ReduceOp.MIN)
        step = first.item()
        if step == torch.iinfo(torch.int64).max:
            return None
        self.first_bad.fill_(-1)
        return int(step)


def _host_group(accelerator: Accelerator):
    """A gloo group over the processes for host flags: the default group when it is gloo (CPU runs)."""
    if accelerator.num_processes == 1 or dist.get_backend() == "gloo":
        return None
    return dist.new_group(backend="gloo")
