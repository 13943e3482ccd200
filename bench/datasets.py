"""The data sets the benchmarks train on, made once and kept under ``--data-dir``.

- ``digits``: the built-in digits (``harness.data.builtin``, 32x32 PNGs in train/val/test), upscaled when a larger
  size is asked for, so that the harness and the plain loop read the same files;
- ``jpeg``: ``N`` synthetic 10-class JPEGs of ``size`` pixels (quality 90; shapes, gradients and noise, so
  they decode like photographs), 80/10/10 in train/val/test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from harness.data.builtin import DIGITS_SIZE, builtin_root

CLASSES = 10


def make_data(kind: str, data_dir: Path, size: int, images: int) -> Path:
    target = data_dir / (f"digits-{size}" if kind == "digits" else f"jpeg-{images}-{size}")
    if (target / ".complete").exists():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=data_dir))
    try:
        if kind == "digits":
            _digits(builtin_root("digits", str(data_dir)), tmp, size)
        else:
            _jpegs(tmp, size, images)
        (tmp / ".complete").write_text("ok\n")
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _digits(source: Path, out: Path, size: int) -> None:
    for path in sorted(source.glob("*/*/*.png")):
        destination = out / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        if size == DIGITS_SIZE:
            shutil.copyfile(path, destination)
        else:
            Image.open(path).convert("RGB").resize((size, size), Image.BILINEAR).save(destination)


def _jpegs(out: Path, size: int, images: int) -> None:
    jobs = []
    for index in range(images):
        share = (index // CLASSES) % 10
        split = "train" if share < 8 else "val" if share == 8 else "test"
        jobs.append((out / split / f"class{index % CLASSES}" / f"{index:06d}.jpg", index, size))
    for folder in {path.parent for path, _, _ in jobs}:
        folder.mkdir(parents=True, exist_ok=True)
    with ProcessPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(_jpeg, jobs, chunksize=64))


def _jpeg(job: tuple[Path, int, int]) -> None:
    path, index, size = job
    rng = np.random.default_rng(index)
    label = index % CLASSES
    ramp = np.linspace(0, 1, size)
    base = np.stack([np.outer(ramp, np.ones(size)) * (label * 25 % 255), np.outer(np.ones(size), ramp) * 200,
                     np.full((size, size), 40 + 20 * label)], axis=-1)
    pixels = np.clip(base + rng.normal(0, 30, (size, size, 3)), 0, 255).astype(np.uint8)
    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    for _ in range(3 + label % 4):
        x, y = rng.integers(0, size, 2)
        r = int(rng.integers(size // 10, size // 4))
        color = tuple(int(c) for c in rng.integers(0, 255, 3))
        (draw.ellipse if label % 2 else draw.rectangle)([x - r, y - r, x + r, y + r], fill=color)
    image.save(path, quality=90)
