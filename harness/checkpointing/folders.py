"""The checkpoint folders of a run: their names, manifests and verification, and the ``latest``/``best`` pointers.

Layout under ``runs/<name>/checkpoints/``::

    step-00000240/   a complete checkpoint: accelerate's files + harness_checkpoint.json (written last)
    latest           the name of the newest complete checkpoint (a small file, replaced atomically)
    best             the name of the checkpoint with the best validation metric (likewise)
    .tmp-step-.../   a save in progress (or left by a killed one: ignored and cleaned up)

A checkpoint is complete when its marker (``harness_checkpoint.json``) lists every file of the folder with its
size and SHA-256, and the files match it. Saving is ``harness.checkpointing.saving``, loading
``harness.checkpointing.loading``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import time
from pathlib import Path

from harness.storage.rundir import RunDir

logger = logging.getLogger(__name__)

MARKER = "harness_checkpoint.json"
STATE = "train_state.json"  # the harness's TrainState, as data
TMP_PREFIX = ".tmp-"
NAME = re.compile(r"step-(\d{8})")


def checkpoint_name(global_step: int) -> str:
    return f"step-{global_step:08d}"


def read_marker(path: Path) -> dict:
    """The manifest of checkpoint ``path`` (epoch, step, processes, files); OSError/ValueError if unreadable."""
    return json.loads((path / MARKER).read_text())


def manifest(folder: Path) -> dict[str, dict]:
    """Every file under ``folder`` with its size and SHA-256, as the marker records them."""
    return {str(p.relative_to(folder)): {"size": p.stat().st_size, "sha256": sha256(p)}
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != MARKER}


def sha256(path: Path) -> str:
    """The file's SHA-256; hashed once per process while its inode, size and modification time stay the same (a
    resume verifies its checkpoint when it decides, again under the run lock, and when it loads it). A file
    modified less than ``SETTLED_NS`` before it is hashed is not remembered: a change within the file system's
    timestamp granularity would keep its modification time."""
    with open(path, "rb") as f:
        stat = os.fstat(f.fileno())
        key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
        if key in _HASHED:
            return _HASHED[key]
        settled = time.time_ns() - stat.st_mtime_ns > SETTLED_NS
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    if settled:
        _HASHED[key] = digest
    return digest


SETTLED_NS = 100_000_000
_HASHED: dict[tuple, str] = {}


def verify(path: Path, content: bool = False) -> str | None:
    """None if ``path`` is a complete checkpoint; otherwise what is wrong with it. Sizes are always checked,
    the content (SHA-256) with ``content``: before a checkpoint is loaded."""
    try:
        marker = read_marker(path)
        files = marker["files"]
        if not all(isinstance(entry, dict) for entry in files.values()) or STATE not in files:
            return "written by an older version of the harness (no content hashes or train state); start over"
    except FileNotFoundError:
        return f"no {MARKER} (the save did not finish)"
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return f"unreadable {MARKER} ({type(e).__name__}: {e})"
    for file, entry in files.items():
        target = path / file
        if Path(file).is_absolute() or ".." in Path(file).parts or not target.is_file():
            return f"{file} is missing"
        if target.stat().st_size != entry.get("size"):
            return f"{file} is {target.stat().st_size} bytes, expected {entry.get('size')}"
        if content and sha256(target) != entry.get("sha256"):
            return f"{file} has changed since it was saved (its SHA-256 differs from the manifest's)"
    return None


def latest_name(rundir: RunDir) -> str | None:
    """What ``checkpoints/latest`` names (None before the first save)."""
    return read_pointer(rundir.checkpoints / "latest")


def latest_label(rundir: RunDir) -> str:
    """What ``checkpoints/latest`` names, for a message: the name, or "none yet"."""
    return latest_name(rundir) or "none yet"


def latest_checkpoint(rundir: RunDir) -> Path | None:
    """The checkpoint named by ``latest`` if it is complete and intact, else the newest one that is (with a
    warning)."""
    pointed = latest_name(rundir)
    if pointed and verify(rundir.checkpoint(pointed), content=True) is None:
        return rundir.checkpoint(pointed)
    for path in reversed(step_folders(rundir)):
        problem = verify(path, content=True)
        if problem is None:
            logger.warning(f"{rundir.checkpoints / 'latest'} names {pointed or 'nothing'} that is not usable: "
                           f"falling back to {path.name}")
            return path
        logger.warning(f"skipping checkpoint {path}: {problem}")
    return None


def step_folders(rundir: RunDir) -> list[Path]:
    """The run's ``step-*`` folders, oldest first, complete or not."""
    if not rundir.checkpoints.is_dir():
        return []
    return sorted(p for p in rundir.checkpoints.iterdir() if p.is_dir() and NAME.fullmatch(p.name))


def complete_checkpoints(rundir: RunDir) -> list[str]:
    """The names of the run's complete checkpoints, oldest first."""
    return [path.name for path in step_folders(rundir) if verify(path) is None]


def read_pointer(path: Path) -> str | None:
    """The checkpoint name a pointer file (``latest``, ``best``) holds; None if absent or not a name."""
    try:
        name = path.read_text().strip()
    except OSError:
        return None
    return name if NAME.fullmatch(name) else None
