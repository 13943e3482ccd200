"""Graceful stops: a signal asks the loop to stop at the next optimizer update; a second Ctrl-C exits at once."""

from __future__ import annotations

import os
import signal
import time

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
FORWARDED_WITHIN_S = 2.0


class StopRequest:
    """Installed for the training loop; ``signum`` is set when a stop signal arrives."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._first_at = 0.0
        self._previous: dict[int, object] = {}
        self._mask: set[signal.Signals] | None = None

    def install(self) -> "StopRequest":
        for signum in STOP_SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        # The SLURM scripts start launchers with the stop signals blocked, and the training inherits that: one
        # that came since is pending, and arrives now. Blocked again after the loop, as they were.
        self._mask = signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        return self

    def uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
        if self._mask is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, self._mask)
            self._mask = None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:
            self.signum, self._first_at = signum, time.monotonic()
            return
        # A second Ctrl-C exits at once. Launchers (torchrun, srun) forward the signal they got to their
        # workers, so a repeat within a moment, or a repeated SIGTERM/SIGUSR1, is the same stop request.
        if signum == signal.SIGINT and time.monotonic() - self._first_at > FORWARDED_WITHIN_S:
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum else ""

    @property
    def exit_code(self) -> int:
        return 128 + (self.signum or 0)

    def interrupted(self) -> "TrainingInterrupted":
        """The exception the loop raises once it has saved a checkpoint for this request."""
        return TrainingInterrupted(f"stopped by {self.name}", self.exit_code)


class TrainingInterrupted(Exception):
    """The session ends before the run does, after the loop saved a checkpoint: a stop signal (exit code
    128 + its number), or the end of the session's epoch budget, ``--stop-after-epochs`` (exit code 0).
    Either way the run's status becomes ``interrupted`` and the same command continues it."""

    def __init__(self, reason: str, exit_code: int) -> None:
        super().__init__(reason)
        self.exit_code = exit_code
