"""``data.cache``: the decoded, resized images of a sample list, built once and read instead of the files.

The cache holds exactly the pixels the file path gives after its resize (``uint8``, ``N x size x size x 3``),
so a run trains on the same images, bit for bit, with the cache on or off; only decoding and resizing are
saved. ``memory`` builds it in the process at the start of the run (the loader's workers share it);
``disk`` keeps it as ``<cache_dir>/images/<key>.npy``, memory-mapped, so that it is built once for every
later run and every process on the machine. The key covers the file list, each file's size and
modification time, the image size and the pixel limit: a changed data set builds a new one. It is written
to a temporary file and renamed into place, under a lock, so processes that build or read it at once
neither repeat the work nor see half of it. An entry found damaged is built again, with a warning; one that
would not fit on the disk, or a memory cache that would not fit in memory, is refused before any work.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import psutil
from PIL import Image

from harness.config.schema import DataConfig
from harness.data.builtin import default_cache_dir
from harness.data.images import in_threads, load_image
from harness.data.transforms import resizer
from harness.errors import DataError

logger = logging.getLogger(__name__)

CACHE_VERSION = 1  # bump when what an entry holds changes
MEMORY_SHARE = 0.8  # of the machine's available memory, the most data.cache: memory may take


class ImageCache:
    """The resized RGB images of a sample list, by position in it."""

    def __init__(self, pixels: np.ndarray) -> None:
        self.pixels = pixels  # N x size x size x 3, uint8

    def image(self, index: int) -> Image.Image:
        return Image.fromarray(np.asarray(self.pixels[index]), "RGB")


def image_cache(mode: str, root: Path, samples: list[tuple[str, int]], cfg: DataConfig) -> ImageCache | None:
    """The cache ``mode`` (``data.cache``) asks for over ``samples`` under ``root``: the images the transforms'
    resize makes. None for ``none``."""
    if mode == "none" or not samples:
        return None
    decode = Decoder(root, samples, cfg.max_image_pixels, resizer(cfg.image_size))
    if mode == "memory":
        return ImageCache(decode.into(np.empty(_shape(samples, cfg), np.uint8)))
    return ImageCache(_disk_cache(root, samples, cfg, decode))


def check_memory(samples: int, cfg: DataConfig) -> None:
    """``data.cache: memory`` holds ``samples`` images of ``data.image_size`` in every process on the machine: refuse
    in one line, before anything is allocated, what the machine's available memory cannot hold."""
    if cfg.cache != "memory":
        return
    processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    needed, available = samples * cfg.image_size ** 2 * 3 * processes, psutil.virtual_memory().available
    if needed > MEMORY_SHARE * available:
        raise DataError(f"data.cache: memory needs {needed / 1e9:.1f} GB for {samples} images at {cfg.image_size}px "
                        f"in {processes} process(es), and this machine has {available / 1e9:.1f} GB available: use "
                        "data.cache: disk, or a smaller data.image_size")


def cache_key(root: Path, samples: list[tuple[str, int]], cfg: DataConfig) -> str:
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, cfg.image_size, cfg.max_image_pixels]).encode())
    for path, _ in samples:
        stat = os.stat(Path(root) / path)
        digest.update(f"\0{Path(root) / path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:32]


def cache_folder(cfg: DataConfig) -> Path:
    return (Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()) / "images"


def _shape(samples: list, cfg: DataConfig) -> tuple[int, int, int, int]:
    return len(samples), cfg.image_size, cfg.image_size, 3


def _disk_cache(root: Path, samples: list[tuple[str, int]], cfg: DataConfig, decode: Decoder) -> np.ndarray:
    folder = cache_folder(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{cache_key(root, samples, cfg)}.npy"
    with open(folder / f".{target.stem}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one process builds; the others wait here, then read what it wrote
        pixels = _readable(target, _shape(samples, cfg))
        if pixels is None:
            _write_entry(target, _shape(samples, cfg), decode)
            pixels = np.load(target, mmap_mode="r")
    return pixels


def _readable(target: Path, shape: tuple) -> np.ndarray | None:
    """The cache entry ``target``, or None if it is absent, or damaged (then it is removed, with a warning, and
    built again): never a silent wrong image."""
    if not target.exists():
        return None
    try:
        pixels = np.load(target, mmap_mode="r")
        if pixels.shape == shape and pixels.dtype == np.uint8:
            return pixels
        problem = f"it holds {pixels.dtype} {pixels.shape}, not uint8 {shape}"
    except (OSError, ValueError) as error:  # a truncated or overwritten file
        problem = f"{type(error).__name__}: {error}"
    logger.warning(f"image cache {target} is damaged ({problem}): building it again")
    target.unlink()
    return None


def _write_entry(target: Path, shape: tuple, decode: Decoder) -> None:
    """Decode the images into a temporary file beside ``target``, then rename it into place."""
    needed = int(np.prod(shape))
    free = shutil.disk_usage(target.parent).free
    if needed > free:
        raise DataError(f"data.cache: disk needs {needed / 1e9:.1f} GB in {target.parent} for {shape[0]} images at "
                        f"{shape[1]}px, and {free / 1e9:.1f} GB is free: free some, set data.cache_dir elsewhere, or "
                        "use a smaller data.image_size")
    fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}-", suffix=".npy", dir=target.parent)
    os.close(fd)
    try:
        pixels = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
        decode.into(pixels)
        pixels.flush()
        del pixels
        os.rename(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class Decoder:
    """Decodes and resizes every image of a sample list into an array, in parallel threads (PIL releases the
    GIL as it decodes and resizes)."""

    def __init__(self, root: Path, samples: list[tuple[str, int]], max_pixels: int | None,
                 resize: Callable[[Image.Image], Image.Image]) -> None:
        self.root, self.samples, self.max_pixels, self.resize = Path(root), samples, max_pixels, resize

    def into(self, out: np.ndarray) -> np.ndarray:
        started = time.perf_counter()

        def put(index: int) -> None:
            out[index] = np.asarray(self.resize(load_image(self.root / self.samples[index][0], self.max_pixels)))

        in_threads(put, list(range(len(self.samples))), min(32, 2 * (os.cpu_count() or 1)), "caching images")
        logger.info(f"cached {len(self.samples)} images ({out.shape[1]}px) in {time.perf_counter() - started:.1f} s")
        return out
