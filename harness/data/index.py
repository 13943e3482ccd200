"""What the check learnt about a data root's image files, kept under the cache folder for every later run.

The check of a new run (``harness.data.images.bad_images``) opens every image once, reading its header or decoding
it too; its verdicts (each file's pixel size, why it cannot be read, if it cannot, and whether its pixels were
decoded for it) are kept in ``<cache_dir>/index/<key of the root's real path>.npz``, each under the file's path, byte
size and modification time. A later run on the same root (a new run name, a k-fold sibling, a sweep task, a requeue
that starts again) opens only the files that are new or changed since, or that it needs decoded and were not; a
resume reads the splits its run saved and checks nothing. The size limit (``data.max_image_pixels``) is applied to
the kept sizes, so a changed limit needs no new check.
An index found damaged is set aside with a warning (the check then runs in full); it is written whole, to a
temporary file renamed into place, under a lock, so runs that check the same root at once lose nothing.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, NamedTuple

import numpy as np

logger = logging.getLogger(__name__)

INDEX_VERSION = 2  # bump when what a verdict means changes


class Stat(NamedTuple):  # named tuples: a million of them are made and compared at every start
    """What identifies a file's content, cheaply: its byte size and modification time."""

    size: int
    mtime_ns: int


class Verdict(NamedTuple):
    """A file's pixel size from its header, why it cannot be read (None when it can), and whether its pixels were
    decoded for this (a problem found in the header holds either way)."""

    width: int
    height: int
    problem: str | None
    decoded: bool

    def holds(self, decoded: bool) -> bool:
        """Whether the verdict answers a check that decodes (``decoded``) or reads the header only."""
        return self.decoded or not decoded or self.problem is not None


class Entries(NamedTuple):
    """An index's content: by path, the numbers ``[size, mtime_ns, width, height, decoded]``; the problems by
    path."""

    numbers: dict[str, list[int]]
    problems: dict[str, str]


class ImageIndex:
    """Verdicts by path (relative to the root), each valid for the ``Stat`` it was made under."""

    def __init__(self, path: Path | None, entries: Entries | None = None) -> None:
        self.path = path  # None: kept nowhere (no cache folder can be written)
        self.entries = entries or Entries({}, {})
        self.added = Entries({}, {})

    def __len__(self) -> int:
        return len(self.entries.numbers)

    def get(self, path: str, stat: Stat) -> Verdict | None:
        """The verdict on ``path`` if it was made on the same content (size and modification time), else None."""
        kept = self.entries.numbers.get(path)
        if kept is None or kept[0] != stat.size or kept[1] != stat.mtime_ns:
            return None
        return Verdict(kept[2], kept[3], self.entries.problems.get(path), bool(kept[4]))

    def add(self, path: str, stat: Stat, verdict: Verdict) -> None:
        for entries in (self.entries, self.added):
            entries.numbers[path] = [stat.size, stat.mtime_ns, verdict.width, verdict.height, int(verdict.decoded)]
            if verdict.problem:
                entries.problems[path] = verdict.problem
            else:
                entries.problems.pop(path, None)

    def save(self) -> None:
        """Merge what was added into the index on disk (another run may have added to it meanwhile)."""
        if self.path is None or not self.added.numbers:
            return
        try:
            with _locked(self.path):
                kept = _read(self.path)
                for path in self.added.numbers:
                    kept.problems.pop(path, None)
                _write(self.path, Entries({**kept.numbers, **self.added.numbers},
                                          {**kept.problems, **self.added.problems}))
        except OSError as error:  # a full disk: the run goes on, only the next one pays the check again
            logger.warning(f"data: the image index {self.path} could not be written ({error.strerror or error}): the "
                           "next run on this folder checks its images again")
        self.added = Entries({}, {})


def load_index(cache_dir: Path, root: Path) -> ImageIndex:
    """The index of ``root`` under ``cache_dir`` (empty if there is none yet, or if it is damaged)."""
    real = os.path.realpath(root)
    key = hashlib.sha256(json.dumps([INDEX_VERSION, real]).encode()).hexdigest()[:32]
    path = cache_dir / "index" / f"{key}.npz"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.warning(f"data: the image index cannot be kept in {path.parent} ({error.strerror}): every start "
                       "checks every image; set data.cache_dir to a folder that can be written")
        return ImageIndex(None)
    with _locked(path):
        return ImageIndex(path, _read(path))


def read_index(path: Path) -> ImageIndex:
    """An index read and never written (a packed folder's, made when it was packed: the folder is the user's)."""
    return ImageIndex(None, _read(path))


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """A lock beside ``path``, held while the index is read or written."""
    with open(path.with_name(f".{path.stem}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _read(path: Path) -> Entries:
    if not path.exists():
        return Entries({}, {})
    try:
        with np.load(path) as kept:
            joined = bytes(kept["paths"]).decode("utf-8")
            paths = joined.split("\0") if joined else []
            numbers = kept["numbers"]
            problems = json.loads(bytes(kept["problems"]).decode("utf-8"))
        if numbers.shape != (len(paths), 5):
            raise ValueError(f"{numbers.shape[0]} verdicts of {numbers.shape[1:]} for {len(paths)} paths")
        return Entries(dict(zip(paths, numbers.tolist())), {paths[int(row)]: str(problem)
                                                             for row, problem in problems.items()})
    except (OSError, ValueError, KeyError, IndexError, AttributeError, EOFError, zipfile.BadZipFile) as error:
        # truncated, overwritten, another layout
        logger.warning(f"data: the image index {path} is damaged ({type(error).__name__}: {error}): checking every "
                       "image again")
        return Entries({}, {})


def _write(path: Path, entries: Entries) -> None:
    names = list(entries.numbers)
    numbers = np.array(list(entries.numbers.values()), dtype=np.int64).reshape(-1, 5)
    rows = {name: row for row, name in enumerate(names)}
    problems = {str(rows[name]): problem for name, problem in entries.problems.items()}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".npz", dir=path.parent)
    os.fchmod(fd, 0o644)  # a packed folder's index is read by every user of the data
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, paths=np.frombuffer("\0".join(names).encode("utf-8"), np.uint8), numbers=numbers,
                     problems=np.frombuffer(json.dumps(problems).encode("utf-8"), np.uint8))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
