"""One optimizer update, from the batches of its accumulation window to the next learning rate.

Each batch's backward pass adds to the gradients; a batch whose loss is not finite marks the window (a flag on
the device, read only when the poll needs it). At the window's end (``apply``): the gradients are clipped, every
process polls (``harness.training.poll``: a stop request, a step or time checkpoint due, the first non-finite
update on any process), the update is applied or, if it is the non-finite one and ``train.skip_nonfinite_steps``
allows, skipped (otherwise the run fails), the features see it, and the schedule advances either way.
The update's number (``state.global_step``, from 1) is set here and nowhere else.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

import torch

from harness.checkpointing.folders import latest_label
from harness.errors import TrainingDiverged
from harness.training.parts import Parts
from harness.training.poll import Poller

logger = logging.getLogger(__name__)


class Update(NamedTuple):
    """What the loop learns from an applied (or skipped) optimizer update."""

    step: int  # its number, from 1 (state.global_step)
    stop: bool  # a stop signal reached some process: save and end the session
    save_due: bool  # a step or time checkpoint is due


class OptimizerStep:
    def __init__(self, parts: Parts, poller: Poller) -> None:
        self.parts, self.poller = parts, poller
        self.nonfinite = torch.zeros((), device=parts.accelerator.device, dtype=torch.bool)  # in the window so far
        self.where: dict[int, tuple[int, int]] = {}  # update -> (epoch, batch), since the poll last read the flag

    def add(self, loss: torch.Tensor) -> torch.Tensor:
        """A batch of the window, after its backward pass; returns whether its loss is finite (on the device)."""
        finite = torch.isfinite(loss)
        self.nonfinite |= ~finite
        return finite

    def apply(self, epoch: int, batch_index: int, last: bool) -> Update:
        """The update at the end of the window (``last``: the epoch's last batch): clip, poll, step or skip,
        schedule. Every process calls it at the same update."""
        parts, state = self.parts, self.parts.state
        step = state.global_step + 1
        nonfinite = self._clip(self.nonfinite)
        self.where[step] = (epoch, batch_index)
        poll = self.poller.poll(step, nonfinite, check=last or step % parts.cfg.log.every_n_steps == 0)
        if poll.bad_step is not None:
            self._skip_or_fail(poll.bad_step)
        if poll.bad_step != step:
            parts.optimizer.step()
            parts.features.after_update(parts.model)
        parts.scheduler.step()
        parts.optimizer.zero_grad(set_to_none=True)
        self.nonfinite.zero_()
        if poll.bad_step is not None or poll.stop or poll.save_due or last:
            self.where.clear()
        state.global_step, state.batch_in_epoch = step, batch_index + 1
        return Update(step, poll.stop, poll.save_due)

    def _clip(self, nonfinite: torch.Tensor) -> torch.Tensor:
        """Clip the gradients (``train.clip_grad_norm``); a non-finite norm marks the window too."""
        parts, clip = self.parts, self.parts.cfg.train.clip_grad_norm
        if clip is None:
            return nonfinite
        norm = parts.accelerator.clip_grad_norm_(parts.model.parameters(), clip)
        if parts.accelerator.scaler is None and norm is not None:  # fp16's scaler skips overflowing steps itself
            nonfinite = nonfinite | ~torch.isfinite(torch.as_tensor(norm, device=parts.accelerator.device))
        return nonfinite

    def _skip_or_fail(self, step: int) -> None:
        """Skip the non-finite update ``step`` (this one) if allowed; otherwise the run fails. Without
        ``train.skip_nonfinite_steps``, ``step`` may have been applied already: nothing of it is ever saved."""
        state, allowed = self.parts.state, self.parts.cfg.train.skip_nonfinite_steps
        epoch, batch_index = self.where[step]
        where = f"epoch {epoch + 1}, step {step} (batch {batch_index + 1})"
        if state.skipped_steps >= allowed:
            raise TrainingDiverged(
                f"non-finite loss or gradients at {where}"
                + (f" after skipping {allowed} such update(s)" if allowed else "")
                + f"; nothing of it was saved, the last checkpoint ({latest_label(self.parts.rundir)}) is "
                "intact: lower optim.lr, set train.clip_grad_norm, or allow train.skip_nonfinite_steps"
            )
        state.skipped_steps += 1
        logger.warning(f"skipping the update at {where}: non-finite loss or gradients "
                       f"({state.skipped_steps}/{allowed} allowed)")
