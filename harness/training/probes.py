"""Testing aids inside the training loop, off unless set in the environment.

``HARNESS_TRACE_BATCHES=<file>`` makes every process append ``epoch batch sample-indices...`` for each
trained batch to ``<file>.rank<N>``, to check the data order across stops and resumes.
``HARNESS_FAULT_NAN_AT_STEP=<n>`` makes the loss of optimizer update n NaN, to check divergence handling.
"""

from __future__ import annotations

import os

import torch


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
