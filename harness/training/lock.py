"""One training at a time per run directory: an advisory lock held for the life of the run.

The lock is a POSIX record lock (``fcntl.lockf``) on ``<output dir>/.<run name>.lock``, beside the run directory so
that starting over (which deletes the directory) cannot delete it. It belongs to the process that took it: the
operating system releases it when that process exits, however it exits (kill -9 included), and, unlike ``flock``,
the loader workers it forks do not hold it on after it (a record lock is not inherited across fork). The file
names the holder (host, pid, start time) for the message a second training gets, and is removed when the
training ends (a lock taken on a file that was removed meanwhile is taken again on the new one).
"""

from __future__ import annotations

import errno
import fcntl
import os
import socket
import time

from accelerate import Accelerator

from harness.errors import CheckpointError
from harness.runtime.collective import on_main
from harness.storage.rundir import RunDir


class RunLock:
    """Held by the main process; ``acquire`` is collective, so that every process refuses alike."""

    def __init__(self, rundir: RunDir) -> None:
        self.rundir, self.path = rundir, rundir.lock
        self.fd: int | None = None

    def acquire(self, accelerator: Accelerator) -> None:
        on_main(accelerator, self._lock)

    def _lock(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while self.fd is None:
            self._try_lock()

    def _try_lock(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EACCES, errno.EAGAIN):
                os.close(fd)
                raise
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise CheckpointError(f"{self.rundir.root} is in use by another training ({holder}); "
                                  "wait for it to end, or use another --run-name") from None
        try:
            current = os.stat(self.path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            current = False
        if not current:  # the holder before removed the file as this one opened it: lock the new one
            os.close(fd)
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"host {socket.gethostname()}, pid {os.getpid()}, started "
                      f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self.fd = fd

    def release(self) -> None:
        if self.fd is not None:
            self.path.unlink(missing_ok=True)
            os.close(self.fd)  # closing the descriptor releases the lock
            self.fd = None
