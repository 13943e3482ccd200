"""Files replaced whole: a reader, or the next run after a kill, sees the old content or the new, never a mix.

Every file the harness writes goes through ``atomic_path``: the content is written to ``.<name>.tmp`` beside
the target, flushed to disk, then renamed over it. A leftover ``.<name>.tmp`` is never read (and the
checkpoint folder's leftovers are removed at the next start).
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path to write; once the block succeeds, fsync it and rename it over ``path``.
    If the block fails, ``path`` is unchanged and the temporary file is removed."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        yield tmp
        fsync(tmp)
        os.replace(tmp, path)
    except OSError as error:
        if error.filename is None:  # a failed write() names no file; the error message must
            error.filename = str(path)
        raise
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text``."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def fsync(path: Path) -> None:
    """Flush a file's content, or a folder's entries (which makes a rename inside it durable), to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
