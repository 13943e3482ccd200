"""A run's splits made ready by a forked process while the training process imports torch.

A new run's splits (``discover_splits``: the walk, the index, the header check of new files) and a resumed run's
(``read_splits``: its lists read back, the files' fingerprints for the image caches) need nothing the training
process imports after it starts, and on a large folder they take about as long as those imports (torch, torchvision
and accelerate: 3 s on 2 cores). ``start`` forks, before those imports, a process that decides which splits the
command will ask for (``finding`` or ``reading``: deciding may read a checkpoint's hashes, which then overlaps the
imports too), makes them and hands them back through a pipe; ``found_splits`` and ``saved_splits`` give them where
the training process needs them, if it asks for what was made, and otherwise make them there. What they give is what the training
process would have made: the lines the forked process logged are logged by the training process when it takes
them, and the ``UserError`` it raised is raised there. Anything else (the forked process killed, an error that is
not the user's) and the training process makes the splits itself, meeting the error where it always did.

Stop signals are the training process's own: the forked process ignores them, ends with the process that forked it
(``harness.runtime.children``), and is killed by it when its splits are not taken (``cancel``).
"""

from __future__ import annotations

import logging
import os
import pickle
import signal
import sys
from pathlib import Path
from typing import Callable

from harness.config.schema import DataConfig
from harness.data.splits import DataSplits, discover_splits, read_splits
from harness.errors import UserError
from harness.runtime.children import leave_stops_to


class _Forked:
    """The forked process under way: its pid and the read end of its pipe."""

    def __init__(self, pid: int, pipe: int) -> None:
        self.pid, self.pipe = pid, pipe


_running: _Forked | None = None


def finding(cfg: DataConfig, root: Path, exclude: Path | None) -> tuple:
    """What asks for a new run's splits of ``root`` for ``cfg`` (the folder of runs ``exclude`` left out)."""
    return ("find", cfg, root, exclude)


def reading(folder: Path, root: Path, cfg: DataConfig) -> tuple:
    """What asks for the splits a run saved in ``folder``."""
    return ("read", folder, root, cfg)


def found_splits(cfg: DataConfig, root: Path, exclude: Path | None) -> DataSplits:
    """``discover_splits(cfg, root, exclude)``, found early if the forked process was asked for it."""
    return _take(finding(cfg, root, exclude)) or discover_splits(cfg, root, exclude)


def saved_splits(folder: Path, root: Path, cfg: DataConfig) -> DataSplits:
    """``read_splits(folder, root, cfg)``, read early if the forked process was asked for it."""
    return _take(reading(folder, root, cfg)) or read_splits(folder, root, cfg)


def cancel() -> None:
    """End the forked process if its splits were not taken (a refusal, a stop, a run decided otherwise under the
    lock)."""
    global _running
    running, _running = _running, None
    if running is not None:
        _end(running)


def start(ask: Callable[[], tuple | None]) -> None:
    """Fork the process that makes the splits ``ask()`` asks for (``finding(...)`` or ``reading(...)``; None: none;
    what it logs is dropped, the command says it again). Only before torch is imported: forking a process whose
    libraries run threads is not safe, and after the imports there is nothing left to overlap."""
    global _running
    if _running is not None or "torch" in sys.modules or not hasattr(os, "fork"):
        return
    read, write = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(read)
        _make(write, parent, ask)  # never returns
    os.close(write)
    _running = _Forked(pid, read)


def _take(asked: tuple) -> DataSplits | None:
    """What the forked process made, if it was ``asked`` this; None when there is none, it was asked something
    else, or it ended without an answer."""
    global _running
    running, _running = _running, None
    if running is None:
        return None
    try:
        with os.fdopen(running.pipe, "rb", closefd=False) as pipe:
            try:  # what it was asked first, then what it made: it is stopped as soon as it was asked another thing
                if pickle.load(pipe) != asked:
                    return None
                records, made = pickle.load(pipe)
            except Exception:  # noqa: BLE001 - nothing, or a part: the process ended before it wrote all of it
                return None
    finally:
        _end(running)
    for record in records:
        logger = logging.getLogger(record.name)
        if logger.isEnabledFor(record.levelno):
            logger.handle(record)
    if isinstance(made, UserError):
        raise made
    return made


def _end(running: _Forked) -> None:
    os.close(running.pipe)
    try:
        os.kill(running.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(running.pid, 0)


def _make(pipe: int, parent: int, ask: Callable[[], tuple | None]) -> None:
    """The forked process: ask, write what it was asked to ``pipe``; make it, write (its log records, its splits or
    the user's error); exit."""
    code = 1
    try:
        leave_stops_to(parent)
        harness = logging.getLogger("harness")
        harness.handlers, harness.propagate = [logging.NullHandler()], False
        asked = ask()
        with os.fdopen(pipe, "wb") as out:
            pickle.dump(asked, out, protocol=pickle.HIGHEST_PROTOCOL)
            out.flush()
            if asked is not None:
                records: list[logging.LogRecord] = []
                harness.handlers = [_Keep(records)]
                harness.setLevel(logging.DEBUG)
                try:
                    made: DataSplits | UserError = (discover_splits if asked[0] == "find" else read_splits)(*asked[1:])
                except UserError as error:
                    made = error
                pickle.dump((records, made), out, protocol=pickle.HIGHEST_PROTOCOL)
        code = 0
    finally:
        os._exit(code)


class _Keep(logging.Handler):
    """Keeps the records, their messages formatted (their arguments need not pickle)."""

    def __init__(self, records: list[logging.LogRecord]) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        record.msg, record.args, record.exc_info, record.exc_text = record.getMessage(), None, None, None
        self.records.append(record)
