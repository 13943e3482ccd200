"""What the check learnt about a data root's image files, kept under the cache folder for every later run.

The check of a new run (``harness.data.images.bad_images``) opens and decodes every image once; its verdicts
(each file's pixel size, and why it cannot be decoded, if it cannot) are kept in
``<cache_dir>/index/<key of the root's real path>.npz``, each under the file's path, byte size and modification
time. A later run on the same root (a new run name, a k-fold sibling, a sweep task, a requeue that starts again)
decodes only the files that are new or changed since; a resume reads the splits its run saved and checks nothing.
The size limit (``data.max_image_pixels``) is applied to the kept sizes, so a changed limit needs no new check.
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
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

logger = logging.getLogger(__name__)

INDEX_VERSION = 1  # bump when what a verdict means changes


@dataclass(frozen=True)
class Stat:
    """What identifies a file's content, cheaply: its byte size and modification time."""

    size: int
    mtime_ns: int


@dataclass(frozen=True)
class Verdict:
    """A file's pixel size from its header, and why its pixels cannot be decoded (None when they can)."""

    width: int
    height: int
    problem: str | None


class ImageIndex:
    """Verdicts by path (relative to the root), each valid for the ``Stat`` it was made under."""

    def __init__(self, path: Path | None, entries: dict[str, tuple[Stat, Verdict]] | None = None) -> None:
        self.path = path  # None: kept nowhere (no cache folder can be written)
        self.entries = entries or {}
        self.added: dict[str, tuple[Stat, Verdict]] = {}

    def get(self, path: str, stat: Stat) -> Verdict | None:
        """The verdict on ``path`` if it was made on the same content (size and modification time), else None."""
        kept = self.entries.get(path)
        return kept[1] if kept is not None and kept[0] == stat else None

    def add(self, path: str, stat: Stat, verdict: Verdict) -> None:
        self.entries[path] = self.added[path] = (stat, verdict)

    def save(self) -> None:
        """Merge what was added into the index on disk (another run may have added to it meanwhile)."""
        if self.path is None or not self.added:
            return
        try:
            with _locked(self.path):
                _write(self.path, {**_read(self.path), **self.added})
        except OSError as error:  # a full disk: the run goes on, only the next one pays the check again
            logger.warning(f"data: the image index {self.path} could not be written ({error.strerror or error}): the "
                           "next run on this folder checks its images again")
        self.added = {}


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


def _read(path: Path) -> dict[str, tuple[Stat, Verdict]]:
    if not path.exists():
        return {}
    try:
        with np.load(path) as kept:
            joined = bytes(kept["paths"]).decode("utf-8")
            paths = joined.split("\0") if joined else []
            numbers = kept["numbers"]
            problems = json.loads(bytes(kept["problems"]).decode("utf-8"))
        if numbers.shape != (len(paths), 4):
            raise ValueError(f"{numbers.shape[0]} verdicts for {len(paths)} paths")
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as error:  # truncated, overwritten, other layout
        logger.warning(f"data: the image index {path} is damaged ({type(error).__name__}: {error}): checking every "
                       "image again")
        return {}
    return {name: (Stat(int(size), int(mtime)), Verdict(int(width), int(height), problems.get(str(row))))
            for row, (name, (size, mtime, width, height)) in enumerate(zip(paths, numbers.tolist()))}


def _write(path: Path, entries: dict[str, tuple[Stat, Verdict]]) -> None:
    names = list(entries)
    numbers = np.array([[stat.size, stat.mtime_ns, verdict.width, verdict.height]
                        for stat, verdict in entries.values()], dtype=np.int64).reshape(-1, 4)
    problems = {str(row): verdict.problem for row, (_, verdict) in enumerate(entries.values()) if verdict.problem}
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
