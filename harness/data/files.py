"""A data root's image files by their paths relative to it: read from the folder itself, or from a packed folder's
shards (``harness.data.packed``). What the loaders, the image caches and the check read through."""

from __future__ import annotations

import hashlib
import io
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

from PIL import Image

from harness.data.images import load_image
from harness.data.index import Stat
from harness.data.packed import Pack, is_packed


class FolderFiles:
    """The image files of a folder."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def load(self, path: str, max_pixels: int | None = None) -> Image.Image:
        return load_image(self.root / path, max_pixels)

    def stat(self, path: str) -> Stat:
        stat = os.stat(os.path.join(self.root, path))
        return Stat(stat.st_size, stat.st_mtime_ns)

    def reader(self) -> Callable[[str], bytes] | None:
        """What reads a file's bytes where they are not in the file itself; None: they are."""
        return None


class PackedFiles(FolderFiles):
    """The image files of a packed folder, each read from its shard with one ``pread``."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.pack = Pack(root)

    def load(self, path: str, max_pixels: int | None = None) -> Image.Image:
        return load_image(self.root / path, max_pixels, FileBytes(self.pack.read(path), self.root / path))

    def stat(self, path: str) -> Stat:
        return self.pack.stat(path)

    def reader(self) -> Callable[[str], bytes] | None:
        return self.pack.read


class FileBytes(io.BytesIO):
    """A file's bytes read from elsewhere, which PIL's messages name by the file's path."""

    def __init__(self, data: bytes, path: Path) -> None:
        super().__init__(data)
        self.path = path

    def __repr__(self) -> str:
        return repr(str(self.path))


def fingerprint(root: Path, samples: list[tuple[str, int]], stats: dict[str, Stat] | None = None) -> str:
    """What identifies the content of ``samples``' files under ``root``: a digest of each one's path, byte size and
    modification time. ``stats``: the files' stats where a walk just took them; the others are asked for."""
    files, stats, folder = files_at(Path(root)), stats or {}, os.path.join(root, "")
    known = (stats.get(path) or files.stat(path) for path, _ in samples)  # strings, not Paths: a million files
    listed = "".join(f"\0{folder}{path}\0{size}\0{mtime_ns}" for (path, _), (size, mtime_ns) in zip(samples, known))
    return hashlib.sha256(listed.encode()).hexdigest()


@lru_cache(maxsize=None)
def files_at(root: Path) -> FolderFiles:
    """The files of the data root ``root``, one reader per root and process (a packed folder's shards are opened
    once, and loader workers inherit them)."""
    return PackedFiles(root) if is_packed(root) else FolderFiles(root)
