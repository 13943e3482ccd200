"""Stop signals, from a training process's start to its exit: every moment of it is a clean stop.

SIGINT, SIGTERM and SIGUSR1 (SLURM's time-limit signal in the harness's scripts) are the harness's from the
start of the command. What one does depends on the moment (``StopRequest.mode``):

- ``at_once`` (from the start until the training loop, and again from the final evaluation on): nothing is
  waiting to be saved, so the signal ends the work where it is, by raising ``TrainingInterrupted``;
- ``deferred`` (the training loop): the signal is recorded, and the loop saves a checkpoint at the next optimizer
  update and then stops, every process at the same update;
- ``finished`` (the run has completed, or the session has met the error it fails with): the signal is recorded and
  nothing else happens; what is left is saying so and exiting (a launcher stopping the other processes when one
  fails must not turn the failure into a stop, which would hide its message).

A repeat of the signal is the same request (launchers forward what they get: torchrun, srun); a second Ctrl-C
more than 2 s after the first exits at once, whatever the moment.
"""

from __future__ import annotations

import os
import signal
import time
from contextlib import contextmanager
from typing import Iterator

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
FORWARDED_WITHIN_S = 2.0


class StopRequest:
    """``signum`` is set when a stop signal arrives; ``install`` makes the signals this object's."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.mode = "at_once"
        self._first_at = 0.0
        self._previous: dict[int, object] = {}
        self._mask: set[signal.Signals] | None = None

    def install(self) -> StopRequest:
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        # The SLURM scripts start launchers with the stop signals blocked, and the training inherits that: one
        # that came since is pending, and arrives now. Blocked again at the end, as they were.
        self._mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
            self._mask = None

    def finished(self) -> None:
        """The run has completed, or the session fails: a signal from now on changes nothing."""
        self.mode = "finished"

    @contextmanager
    def deferred(self) -> Iterator[StopRequest]:
        """Inside: a signal waits for the loop to save a checkpoint; after: back to stopping at once."""
        self.mode = "deferred"
        try:
            yield self
        finally:
            self.mode = "at_once"

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
            if self.mode == "at_once":
                raise self.interrupted(together=False)
            return
        if signum == signal.SIGINT and time.monotonic() - self._first_at > FORWARDED_WITHIN_S:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def interrupted(self, together: bool = True) -> TrainingInterrupted:
        """The exception that ends the session for this request: raised by the loop once it has saved a checkpoint
        (every process at the same update: ``together``), or at once by the signal itself."""
        return TrainingInterrupted(f"stopped by {self.name}", self.exit_code, together)


class TrainingInterrupted(BaseException):
    """The session ends before the run does: a stop signal (exit code 128 + its number), or the end of the
    session's epoch budget, ``--stop-after-epochs`` (exit code 0). The run's status becomes ``interrupted`` (if the
    run had started) and the same command continues it. ``together``: every process stops here alike (the loop's
    stops), so they may wait for each other on the way out; a signal's immediate stop is each process's own.
    Not an ``Exception``, like ``KeyboardInterrupt``: no handler of a library's own errors takes it for one."""

    def __init__(self, reason: str, exit_code: int, together: bool = True) -> None:
        super().__init__(reason)
        self.exit_code, self.together = exit_code, together
