"""Torch threads for a training process on a CPU: what the launcher does not set right."""

from __future__ import annotations

import os

import psutil

from harness.errors import LaunchError


def cpu_threads() -> int:
    """Torch threads for a process on a CPU: ``$HARNESS_CPU_THREADS`` (the SLURM scripts set it from the
    allocation), else ``share_of_cores()``. Not ``OMP_NUM_THREADS``: accelerate launch sets it to 1 for a launch
    config without ``use_cpu``."""
    given = os.environ.get("HARNESS_CPU_THREADS", "")
    if not given:
        return share_of_cores()
    if not given.isdigit() or int(given) < 1:
        raise LaunchError(f"HARNESS_CPU_THREADS={given!r}: must be a whole number of threads, at least 1 (or unset)")
    return int(given)


def share_of_cores() -> int:
    """This process's share of the physical cores it may run on (hyperthreads add little to torch's kernels),
    among the launcher's processes on this machine: what accelerate gives a launch config with ``use_cpu``,
    without the warning it prints then, and what it does not give one without (a single thread)."""
    cpus = len(os.sched_getaffinity(0))
    cores = min(cpus, psutil.cpu_count(logical=False) or cpus)
    return max(1, cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
