"""Processes the harness forks for its own work (the image check's pool, the early search for a run's data): they
leave stop signals to the process that forked them, which decides what a stop does, and end with it, so that a
``kill -9`` of a training process leaves none of them behind."""

from __future__ import annotations

import ctypes
import os
import signal

PR_SET_PDEATHSIG = 1


def leave_stops_to(parent: int) -> None:
    """In a forked process: ignore SIGINT, SIGTERM and SIGUSR1 (a terminal's Ctrl-C reaches the whole process
    group; the launcher's and SLURM's signals reach every process), and be killed when ``parent`` ends (Linux;
    elsewhere the parent ends it)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1):
        signal.signal(signum, signal.SIG_IGN)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:  # it ended before the call above took effect
        os._exit(1)
