"""Fixtures every test may use: the environment of the entry points' subprocesses, and trained runs that several
test files read, each trained once per session (the test processes of pytest-xdist share it)."""

from __future__ import annotations

import fcntl
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import pytest

from tests.helpers import CPU_LAUNCH, DIGITS, run_train, without_threads


@pytest.fixture(scope="session", autouse=True)
def process_cache(tmp_path_factory) -> None:
    """What the tests' own process keeps between runs (the image index, the built-in data) goes to a folder of the
    session, never the user's cache."""
    os.environ["HARNESS_CACHE_DIR"] = str(tmp_path_factory.mktemp("process-cache"))


@pytest.fixture(scope="session")
def env(tmp_path_factory) -> dict:
    """The environment for entry-point subprocesses: one built-in data cache for the whole session, and one torch
    thread per training process. The test processes share the machine's cores as two jobs share a node, so each
    gets what the SLURM scripts give a job of one CPU (``HARNESS_CPU_THREADS``): by default a process takes every
    core, and two such at once on 2 cores take twice as long as one-thread processes would (docs/testing.md)."""
    out = {k: v for k, v in os.environ.items() if not k.startswith("ACCELERATE_")}
    out["HARNESS_CACHE_DIR"] = str(tmp_path_factory.mktemp("harness-cache"))
    out["HARNESS_CPU_THREADS"] = "1"
    out["PYTHONUNBUFFERED"] = "1"
    return out


def built_once(tmp_path_factory, name: str, build: Callable[[Path], None]) -> Path:
    """A folder the whole session shares: the first test process to ask builds it (``build(folder)``) under a
    lock, the others wait for it and read it. Readers must not change it: copy it first."""
    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):  # each worker's base is a folder of the session's
        shared = shared.parent
    folder = shared / name
    with open(shared / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (folder / ".built").exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            (folder / ".built").touch()
    return folder


@dataclass
class Trained:
    """A finished run and what its command printed."""

    run: Path
    stdout: str
    stderr: str


@pytest.fixture(scope="session")
def quickstart(env, tmp_path_factory) -> Trained:
    """The README's quickstart: configs/digits.yaml exactly as shipped, one CPU process (tests/e2e/test_train.py
    checks the run, tests/e2e/test_inference.py infers from copies of it), in a user's environment: the threads
    are the harness's own choice."""

    def train(folder: Path) -> None:
        # A home never used before: matplotlib's font cache is built during the run, as on a new user's machine.
        fresh = {**without_threads(env), "MPLCONFIGDIR": str(folder / "matplotlib")}
        result = run_train(["--config", DIGITS, "--output-dir", folder / "runs"], fresh, launcher=CPU_LAUNCH)
        (folder / "stdout").write_text(result.stdout)
        (folder / "stderr").write_text(result.stderr)

    folder = built_once(tmp_path_factory, "quickstart", train)
    return Trained(folder / "runs" / "digits", (folder / "stdout").read_text(), (folder / "stderr").read_text())
