"""Image files: finding them under a folder (the link policy), reading any of them as RGB, checking them once.

Links: a link is followed wherever it points, but a folder is never entered twice (a link loop, or a link to
a folder that holds the data root, is skipped) and a file is never taken twice (two links, symbolic or hard,
to one image would put it in two splits). Links that leave the data root are followed and counted; every skip is counted. Hidden
files and folders (``.name``: ``.DS_Store``, macOS ``._x.jpg``) are not images and are skipped.

Reading: 16-bit and 32-bit integer images (``I;16``, ``I``) are scaled by 1/257 to 0-255, float images
(``F``) are taken as 0-1; every other mode goes through PIL's RGB conversion. An image larger than
``data.max_image_pixels`` is refused from its header, before it is decoded.
"""

from __future__ import annotations

import io
import multiprocessing
import os
import sys
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable

import imagesize
import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from harness.data.index import ImageIndex, Stat, Verdict
from harness.errors import DataError, UnreadableImage
from harness.runtime.children import leave_stops_to
from harness.storage.rundir import is_run_directory

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
Image.MAX_IMAGE_PIXELS = None  # the harness applies its own limit, data.max_image_pixels, with a clear message
PROGRESS_FROM = 2000  # images: a progress bar for the check from this many on
CHUNK = 256  # images a process of the check takes at a time


@dataclass
class Found:
    """What a search for images has taken and skipped so far, across all the folders it was given."""

    skipped: Counter = field(default_factory=Counter)  # reason -> count
    outside: int = 0  # links followed out of the data root
    taken: set = field(default_factory=set)  # (device, inode) of the files taken: hard links are one file too
    entered: set = field(default_factory=set)  # real paths of the folders walked
    excluded: set = field(default_factory=set)  # real paths of folders never read (the output folder of runs)
    stats: dict = field(default_factory=dict)  # path relative to the root -> Stat of the file taken


def find_images(folder: Path, root: Path, found: Found) -> tuple[list[str], list[tuple[str, str]]]:
    """The class folders of ``folder`` (sorted) and the images under them as (class, path relative to
    ``root``), by the link policy. ``found`` remembers what was taken, so that another split's folder cannot
    take the same images again."""
    classes: list[str] = []
    files: list[tuple[str, str]] = []
    real_root = Path(os.path.realpath(root))
    for entry in _entries(folder):
        if entry.name.startswith(".") or not entry.is_dir():
            continue
        if _enter(Path(entry.path), real_root, found):
            classes.append(entry.name)
            _walk(Path(entry.path), entry.name, (root, real_root), found, files)
    return classes, files


def _entries(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as entries:
        return sorted(entries, key=lambda e: e.name)


def _enter(folder: Path, real_root: Path, found: Found) -> bool:
    """Whether to walk ``folder``: not when it was walked before or holds the data root (a loop)."""
    real = os.path.realpath(folder)
    if real in found.excluded or is_run_directory(folder):
        found.skipped["run director(y/ies) or the folder of runs (never read as data)"] += 1
        return False
    if real in found.entered or real_root.is_relative_to(real):
        found.skipped["folder link(s) to a folder already read (a loop, or a second path to it)"] += 1
        return False
    found.entered.add(real)
    if folder.is_symlink() and not Path(real).is_relative_to(real_root):
        found.outside += 1
    return True


def _walk(folder: Path, label: str, roots: tuple[Path, Path], found: Found, files: list) -> None:
    root, real_root = roots
    prefix = f"{folder.relative_to(root)}{os.sep}"  # paths as strings: a Path per file costs more than the listing
    taken, stats = found.taken, found.stats
    for entry in _entries(folder):
        name = entry.name
        if name[0] == ".":
            found.skipped["hidden file(s) or folder(s)"] += 1
        elif entry.is_dir():
            if _enter(Path(entry.path), real_root, found):
                _walk(Path(entry.path), label, roots, found, files)
        elif not entry.is_file():  # never opened: reading a pipe would wait forever
            found.skipped["broken link(s)" if entry.is_symlink() else "special file(s) (pipes, sockets, devices)"] += 1
        elif name[name.rfind("."):].lower() in IMG_EXTENSIONS:
            stat = entry.stat()  # the file itself, through any link: one call, where a real path costs many
            identity = (stat.st_dev, stat.st_ino)
            if identity in taken:
                found.skipped["second path(s) to an image already taken"] += 1
                continue
            taken.add(identity)
            if entry.is_symlink() and not Path(os.path.realpath(entry.path)).is_relative_to(real_root):
                found.outside += 1
            relative = prefix + name
            stats[relative] = Stat(stat.st_size, stat.st_mtime_ns)
            files.append((label, relative))


# ----------------------------------------------------------------------------------------------------
# Reading


def load_image(path: Path, max_pixels: int | None = None, source: BinaryIO | None = None) -> Image.Image:
    """Any PIL-readable image as 8-bit RGB; an UnreadableImage naming the file if it cannot be. ``source``: the
    file's bytes, read from elsewhere (a packed folder's shard)."""
    try:
        with Image.open(path if source is None else source) as img:
            too_large = _size_problem(*img.size, max_pixels)
            if too_large:
                raise UnreadableImage(f"{path}: {too_large}")
            return to_rgb(img)
    except UnreadableImage:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, struct.error... for broken files
        raise UnreadableImage(f"{path}: cannot read image ({type(e).__name__}: {e})") from None


def _size_problem(width: int, height: int, max_pixels: int | None) -> str | None:
    """Why an image of ``width`` x ``height`` is over the size limit (known from its header, before any decoding),
    or None."""
    if max_pixels and width * height > max_pixels:
        return (f"{width}x{height} is {width * height / 1e6:.0f} megapixels, above data.max_image_pixels "
                f"({max_pixels}): raise it, or shrink the image")
    return None


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        pixels = np.asarray(img, dtype=np.float64) / 257.0
    elif img.mode == "F":
        pixels = np.asarray(img, dtype=np.float64) * 255.0
    else:
        return img.convert("RGB")
    gray = np.clip(np.round(pixels), 0, 255).astype(np.uint8)
    return Image.fromarray(gray).convert("RGB")


# ----------------------------------------------------------------------------------------------------
# Checking every file once


def bad_images(root: Path, paths: list[str], max_pixels: int | None, index: ImageIndex | None = None,
               stats: dict[str, Stat] | None = None, read: Callable[[str], bytes] | None = None,
               decode: bool = True) -> dict[str, str]:
    """The files under ``root`` that cannot be read (path -> why), checked in parallel processes: the header,
    the size limit, then (``decode``) the pixels (at reduced scale for JPEG, which still reads the whole file). With
    an ``index`` and each file's ``stats`` (from the walk), a file the index holds a verdict on for the same size and
    modification time, made by as thorough a check, is not opened again, and the new verdicts are added to it.
    ``read``: a file's bytes by its path, where they are not in the file itself (a packed folder)."""
    verdicts = {path: index.get(path, stats[path]) for path in paths} if index is not None else {}
    unknown = [path for path in paths if verdicts.get(path) is None or not verdicts[path].holds(decode)]
    for path, verdict in zip(unknown, _inspected(root, unknown, max_pixels, read, decode)):
        verdicts[path] = verdict
        if index is not None:
            index.add(path, stats[path], verdict)
    problems = {path: _size_problem(v.width, v.height, max_pixels) or v.problem for path, v in verdicts.items()}
    return {path: problem for path, problem in problems.items() if problem}


def _inspected(root: Path, paths: list[str], max_pixels: int | None, read: Callable[[str], bytes] | None,
               decode: bool) -> list[Verdict]:
    """Each file's verdict, in chunks, in a pool of forked processes (opening an image is mostly Python, which
    threads would run one at a time), with a progress bar on large lists. The pool leaves stop signals to this
    process: a stop or an error here cancels what has not started, and waits only for the chunks under way."""
    chunks = [paths[start:start + CHUNK] for start in range(0, len(paths), CHUNK)]
    if not chunks:
        return []
    bar = tqdm(total=len(paths), desc="checking images", unit="img", leave=False,
               disable=len(paths) < PROGRESS_FROM or not sys.stderr.isatty())
    # Forked, so what the initializer is given is inherited (a packed folder's table), not sent with every chunk.
    pool = ProcessPoolExecutor(min(len(chunks), os.cpu_count() or 1), multiprocessing.get_context("fork"),
                               initializer=_start_checking, initargs=(os.getpid(), root, max_pixels, read, decode))
    results: list[Verdict] = []
    try:
        with bar:
            for done in pool.map(_inspect_all, chunks):
                results += (Verdict(*verdict) for verdict in done)
                bar.update(len(done))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return results


_CHECKING: dict = {}  # in a checking process: what its initializer was given


def _start_checking(parent: int, root: Path, max_pixels: int | None, read: Callable[[str], bytes] | None,
                    decode: bool) -> None:
    leave_stops_to(parent)
    _CHECKING.update(root=root, max_pixels=max_pixels, read=read, decode=decode)


def _inspect_all(paths: list[str]) -> list[tuple]:
    """The verdicts on ``paths``, as plain tuples: a named tuple is sent back with its class, each one."""
    root, max_pixels, read, decode = (_CHECKING[key] for key in ("root", "max_pixels", "read", "decode"))
    return [tuple(_inspect(os.path.join(root, path), max_pixels, decode,
                           None if read is None else io.BytesIO(read(path))))
            for path in paths]


def _inspect(path: str, max_pixels: int | None, decode: bool, source: BinaryIO | None = None) -> Verdict:
    """``path``'s verdict: from its header, and from its pixels when ``decode`` (not when it is over the size limit,
    which its header tells: the decode is then left out, so the verdict holds for this limit only). The header
    alone is read by ``imagesize`` (a few bytes, half of what PIL's open costs); what it cannot read, PIL opens,
    and says why it cannot."""
    if not decode:
        width, height = imagesize.get(path if source is None else source, exif_rotation=False)
        if width > 0 and height > 0:
            return Verdict(width, height, None, False)
        if source is not None:
            source.seek(0)
    width = height = 0
    try:
        with Image.open(path if source is None else source) as img:
            width, height = img.size
            if not decode or _size_problem(width, height, max_pixels):
                return Verdict(width, height, None, False)
            img.draft("RGB", (width // 8, height // 8))
            img.load()
    except Exception as e:  # noqa: BLE001 - every way a file can fail to decode is a bad image
        return Verdict(width, height, f"{type(e).__name__}: {e}", decode)
    return Verdict(width, height, None, True)


def image_files(items: list[str | Path], what: str) -> list[Path]:
    """The image files ``items`` name: files, and folders for every image under them (sorted); ``what`` (the
    option or function given them) starts an error."""
    files: list[Path] = []
    for item in items:
        path = Path(item).expanduser().resolve()
        if path.is_dir() and is_run_directory(path):
            raise DataError(f"{what} {item}: a run directory, whose pictures are not data: name a folder of images")
        if path.is_dir():
            files += sorted(image_files_under(path))
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{what} {item}: no such file or folder")
    if not files:
        raise DataError(f"{what} {' '.join(map(str, items))}: no image files found ({', '.join(IMG_EXTENSIONS)})")
    return files


def image_files_under(folder: Path) -> list[Path]:
    """Every image file under ``folder``, run directories (a run's own pictures) left out."""
    found = []
    for parent, folders, names in os.walk(folder):
        folders[:] = [name for name in folders if not is_run_directory(Path(parent, name))]
        found += [Path(parent, name) for name in names if Path(name).suffix.lower() in IMG_EXTENSIONS
                  and Path(parent, name).is_file()]
    return found
