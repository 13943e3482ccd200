"""Testing aids in a training, off unless set in the environment.

``HARNESS_TRACE_BATCHES=<file>`` makes every process append ``epoch batch sample-indices...`` for each
trained batch to ``<file>.rank<N>``, to check the data order across stops and resumes.
``HARNESS_FAULT_NAN_AT_STEP=<n>`` makes the loss of optimizer update n NaN, to check divergence handling.
``HARNESS_PAUSE_AT=<phase>`` makes the training print ``paused at <phase>`` and wait there (``PHASES``) until a stop
signal comes, for a test to send one at that moment; ``epoch`` is the end of a run's first epoch, checkpoint written,
where a signal is recorded rather than acted on at once (the loop's stop follows the wait). A requeued SLURM attempt
(``SLURM_RESTART_COUNT`` above 0) does not pause.
"""

from __future__ import annotations

import os
import time

import torch

from harness.runtime.signals import StopRequest

# Where HARNESS_PAUSE_AT may pause, in the order a training meets them.
PHASES = ("start", "data", "cache", "model", "written", "epoch", "final", "reports")
PAUSE_S = 3600


def pause_at(phase: str, stop: StopRequest | None = None) -> None:
    """Wait at ``phase`` when HARNESS_PAUSE_AT names it: until a signal ends the wait (at once), or ``stop`` records
    one (deferred)."""
    # A requeued SLURM attempt goes on: the pause holds the first attempt until the signal under test comes.
    if os.environ.get("HARNESS_PAUSE_AT") == phase and os.environ.get("SLURM_RESTART_COUNT", "0") == "0":
        print(f"paused at {phase}", flush=True)
        until = time.monotonic() + PAUSE_S
        while (stop is None or stop.signum is None) and time.monotonic() < until:
            time.sleep(0.1)


class LoopProbes:
    def __init__(self, rank: int) -> None:
        trace = os.environ.get("HARNESS_TRACE_BATCHES")
        self.trace_file = open(f"{trace}.rank{rank}", "a") if trace else None
        self.nan_at_step = int(os.environ.get("HARNESS_FAULT_NAN_AT_STEP", 0))

    def trace(self, epoch: int, batch_index: int, indices: torch.Tensor) -> None:
        if self.trace_file:
            print(epoch, batch_index, *indices.tolist(), file=self.trace_file, flush=True)

    def fault(self, loss: torch.Tensor, step: int) -> torch.Tensor:
        """``loss``, or NaN if ``step`` (the optimizer update it belongs to, 1-based) is the faulty one."""
        return loss * float("nan") if step == self.nan_at_step else loss
