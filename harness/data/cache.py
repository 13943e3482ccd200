"""``data.cache``: the decoded, resized images of a sample list, kept so that later epochs (and, on disk, later runs)
read them instead of the files.

The cache holds exactly the pixels the file path gives after its resize (``uint8``, ``N x size x size x 3``), so a
run trains on the same images, bit for bit, with the cache on or off; only decoding and resizing are saved. Nothing
is built before training: an image is decoded from its file the first time any process reads it, and written
into one memory-mapped file that every process and loader worker of the machine shares, so the first epoch runs
at the files' speed and the machine holds one copy whatever its process count. ``memory`` keeps that file in
shared memory (``/dev/shm``) and removes it when the last process using it ends (after a kill, the next start on
the machine removes it); ``disk`` keeps it under ``<cache_dir>/images`` for every later run. Each image's slot
carries a checksum: a slot another process is writing, or a damaged one, is never taken for an image; it is
decoded again. The key covers the file list, each file's size and modification time, the image size and the pixel
limit: a changed data set gets a new file. A file whose layout is damaged is made again, with a warning; a cache
that would not fit (its folder's free space; for ``memory`` also the machine's available memory) is refused in
one line before anything is allocated.
"""

from __future__ import annotations

import atexit
import fcntl
import hashlib
import json
import logging
import os
import shutil
import struct
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np
import psutil
from PIL import Image

from harness.config.schema import DataConfig
from harness.data.files import files_at, fingerprint
from harness.data.transforms import resizer
from harness.errors import DataError
from harness.storage.cachedir import cache_root

logger = logging.getLogger(__name__)

CACHE_VERSION = 2  # bump when what a cache file holds changes
MAGIC = b"harness image cache\n"
HEADER = 4096  # bytes before the slots' tags: MAGIC, then the image count and size
FILLED = 1 << 32  # a slot's tag: FILLED | the CRC-32 of its pixels; 0 while it is empty
MEMORY_SHARE = 0.8  # of the machine's available memory, the most data.cache: memory may take
SHARED_MEMORY = Path("/dev/shm")
_IN_USE: dict[Path, object] = {}  # memory caches this process uses -> the open file that says so (a shared lock)


class ImageCache:
    """The resized RGB images of a sample list by position, read from the shared file or, the first time, decoded
    from their files and written into it."""

    def __init__(self, path: Path, root: Path, samples: list[tuple[str, int]], cfg: DataConfig) -> None:
        self.path, self.root, self.samples = path, Path(root), samples
        self.size, self.max_pixels = cfg.image_size, cfg.max_image_pixels
        self._open()

    def _open(self) -> None:
        count = len(self.samples)
        self.tags = np.memmap(self.path, np.uint64, "r+", offset=HEADER, shape=(count,))
        self.pixels = np.memmap(self.path, np.uint8, "r+", offset=HEADER + 8 * count,
                                shape=(count, self.size, self.size, 3))
        self.resize = resizer(self.size)

    def __getstate__(self) -> dict:  # a spawned worker maps the file again, never a copy of it
        return {key: value for key, value in self.__dict__.items() if key not in ("tags", "pixels", "resize")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._open()

    def cached(self) -> int:
        """How many images the file holds already."""
        return int(np.count_nonzero(self.tags))

    def image(self, index: int) -> Image.Image:
        slot, tag = self.pixels[index], int(self.tags[index])
        if tag & FILLED:
            pixels = np.array(slot)  # a copy: another process may write the slot meanwhile
            if zlib.crc32(pixels) == tag ^ FILLED:
                return Image.fromarray(pixels, "RGB")
        pixels = np.asarray(self.resize(files_at(self.root).load(self.samples[index][0], self.max_pixels)))
        slot[...] = pixels
        self.tags[index] = FILLED | zlib.crc32(pixels)
        return Image.fromarray(pixels, "RGB")


def image_cache(mode: str, root: Path, samples: list[tuple[str, int]], cfg: DataConfig,
                files: str | None = None) -> ImageCache | None:
    """The cache ``mode`` (``data.cache``) asks for over ``samples`` under ``root``: the images the transforms'
    resize makes. None for ``none``. ``files``: the samples' ``fingerprint``, where it is known already."""
    if mode == "none" or not samples:
        return None
    folder = memory_folder() if mode == "memory" else cache_folder(cfg)
    path = folder / f"{cache_key(cfg, files or fingerprint(root, samples))}.cache"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with _locked(path):
            if mode == "memory":
                _remove_unused(folder, path)
                _use(path)
            if not _intact(path, len(samples), cfg.image_size):
                _create(path, len(samples), cfg.image_size, mode)
        cache = ImageCache(path, root, samples, cfg)
    except OSError as error:  # a quota, a file size limit, permissions: the run reads the files instead
        logger.warning(f"image cache {path} could not be made ({error.strerror or error}): reading the image files "
                       "every epoch instead")
        return None
    logger.info(f"image cache {path}: {len(samples)} images at {cfg.image_size}px, {cache.cached()} cached already, "
                "the others as they are first read")
    return cache


def check_memory(samples: int, cfg: DataConfig) -> None:
    """``data.cache: memory`` holds ``samples`` images of ``data.image_size`` once on the machine: refuse in one line,
    before anything is allocated, what its available memory or its shared memory cannot hold."""
    if cfg.cache != "memory":
        return
    needed, available = samples * cfg.image_size ** 2 * 3, psutil.virtual_memory().available
    shared = shutil.disk_usage(SHARED_MEMORY).free if SHARED_MEMORY.is_dir() else 0
    if needed > MEMORY_SHARE * available or needed > shared:
        raise DataError(f"data.cache: memory needs {needed / 1e9:.1f} GB for {samples} images at {cfg.image_size}px, "
                        f"and this machine has {available / 1e9:.1f} GB available ({SHARED_MEMORY}: {shared / 1e9:.1f} "
                        "GB free): use data.cache: disk, or a smaller data.image_size")


def cache_key(cfg: DataConfig, files: str) -> str:
    """The name of the cache of the files whose ``fingerprint`` is ``files``, resized as ``cfg`` asks."""
    return hashlib.sha256(json.dumps([CACHE_VERSION, cfg.image_size, cfg.max_image_pixels, files]).encode()
                          ).hexdigest()[:32]


def cache_folder(cfg: DataConfig) -> Path:
    return cache_root(cfg.cache_dir) / "images"


def memory_folder() -> Path:
    return SHARED_MEMORY / f"harness-{os.getuid()}"


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    """The lock under which a cache file is checked, made, taken into use or removed."""
    with open(path.with_name(f".{path.stem}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _intact(path: Path, count: int, size: int) -> bool:
    """Whether ``path`` is a cache file of ``count`` images of ``size``; a damaged one is removed, with a warning."""
    if not path.exists():
        return False
    expected = HEADER + 8 * count + count * size * size * 3
    with open(path, "rb") as f:
        head = f.read(len(MAGIC) + 16)
    if head == MAGIC + struct.pack("<QQ", count, size) and path.stat().st_size == expected:
        return True
    logger.warning(f"image cache {path} is damaged (its header or its length is not that of {count} images at "
                   f"{size}px): building it again")
    path.unlink()
    return False


def _create(path: Path, count: int, size: int, mode: str) -> None:
    """An empty cache file (its slots are filled as the images are read), made beside ``path`` and renamed into
    place; refused in one line if its folder cannot hold it."""
    needed, free = HEADER + 8 * count + count * size * size * 3, shutil.disk_usage(path.parent).free
    if needed > free:
        raise DataError(f"data.cache: {mode} needs {needed / 1e9:.1f} GB in {path.parent} for {count} images at "
                        f"{size}px, and {free / 1e9:.1f} GB is free: free some, set data.cache_dir elsewhere, or "
                        "use a smaller data.image_size")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}-", suffix=".cache", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(MAGIC + struct.pack("<QQ", count, size))
            f.truncate(needed)  # sparse: the space is taken as the slots are written
        os.rename(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _use(path: Path) -> None:
    """Say, with a shared lock held until this process ends, that it uses the memory cache ``path``."""
    if path not in _IN_USE:
        users = open(path.with_suffix(".users"), "a")
        fcntl.flock(users, fcntl.LOCK_SH)
        _IN_USE[path] = users
        atexit.register(_release, path)


def _release(path: Path) -> None:
    """This process no longer uses ``path``: remove it if no other process does."""
    with _locked(path):
        users = _IN_USE.pop(path)
        try:
            fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            path.unlink(missing_ok=True)
            path.with_suffix(".users").unlink(missing_ok=True)
        except BlockingIOError:
            pass
        users.close()


def _remove_unused(folder: Path, keep: Path) -> None:
    """Remove the memory caches no process uses (left by a process that was killed), but ``keep``. One that another
    process is taking into use (its lock held) is left alone."""
    for users in folder.glob("*.users"):
        cache = users.with_suffix(".cache")
        if cache == keep:
            continue
        with open(cache.with_name(f".{cache.stem}.lock"), "w") as lock, open(users, "a") as probe:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                continue
            cache.unlink(missing_ok=True)
            users.unlink(missing_ok=True)
        logger.info(f"removed the memory cache {cache}, which no process uses (its run was killed)")
