"""The loaders' worker processes: how many (``data.num_workers``), their signals and seeds, and their end.

A worker leaves the stop signals to the process that owns the loader (it checkpoints and ends the run), is
killed rather than asked to stop at exit, and, when it lives across epochs, is ended once its loader will not
be read again.
"""

from __future__ import annotations

import atexit
import functools
import logging
import multiprocessing
import os
import random
import signal
from typing import Iterator

import numpy as np
import torch

from harness.config.schema import DataConfig

logger = logging.getLogger(__name__)

# Signals a scheduler or a terminal sends to every process of a job (SLURM's SIGTERM on a requeue or preemption
# included): the process that owns the loader acts on them and shuts its workers down; a worker killed by one
# would fail the batch, or the checkpoint, that should end the run cleanly.
LEFT_TO_PARENT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@atexit.register  # registered after multiprocessing's own exit hook, so it runs first
def _kill_leftover_workers() -> None:
    """At exit, multiprocessing ends the workers a failing loop left behind with SIGTERM, which they ignore:
    they are killed instead (they hold nothing worth a clean exit)."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()


_END = object()  # what batches_of's first next() gives for an empty loader


def batches_of(loader) -> Iterator:
    """The batches of ``loader``. The stop signals wait until the first one is in, the loader having forked its
    workers by then: a worker must not die of one before ``init_worker`` makes it ignore them (torch
    gives workers a SIGTERM handler that ends them), and it inherits the signals held, so none reaches it
    before then. Held, a signal is delivered once the first batch is in, not lost."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, LEFT_TO_PARENT)
    try:  # a DataLoader forks in iter(), accelerate's wrapper at its first batch
        iterator = iter(loader)
        first = next(iterator, _END)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    if first is not _END:
        yield first
        yield from iterator


def init_worker(worker_id: int) -> None:
    for signum in LEFT_TO_PARENT:
        signal.signal(signum, signal.SIG_IGN)  # a signal that arrived since the fork, held, is dropped
    signal.pthread_sigmask(signal.SIG_UNBLOCK, LEFT_TO_PARENT)
    seed = torch.initial_seed() % 2**32  # torch gives each worker base_seed + worker_id
    np.random.seed(seed)
    random.seed(seed)


MAX_DEFAULT_WORKERS = 8


def loader_workers(cfg: DataConfig) -> int:
    """``data.num_workers``, at most the CPUs this process may run on (more would only compete for them)."""
    if cfg.num_workers is None:
        return default_workers()
    cpus = len(os.sched_getaffinity(0))
    if cfg.num_workers > cpus:
        _say_once(f"data.num_workers: {cfg.num_workers} asked for, but this process may run on {cpus} CPU(s): "
                  f"using {cpus} loader workers")
        return cpus
    return cfg.num_workers


@functools.cache
def _say_once(message: str) -> None:
    logger.warning(message)


def default_workers() -> int:
    """Loader workers per process when ``data.num_workers`` is null, from this process's share of the CPUs it
    may run on (the launcher's processes on this machine share them): with a GPU, every CPU of the share feeds
    it (at most 8); on the CPU, the training process's own threads use the cores, and workers would compete
    with them, so a quarter of the share (none on a machine of up to 7 cores)."""
    share = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return min(MAX_DEFAULT_WORKERS, max(1, share) if torch.cuda.is_available() else share // 4)


def release_workers(loader) -> None:
    """End the workers a loader keeps across epochs (``persistent``) once it will not be read again: they hold
    memory. ``loader`` may be accelerate's wrapper around a DataLoader."""
    loader = getattr(loader, "base_dataloader", loader)
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None
