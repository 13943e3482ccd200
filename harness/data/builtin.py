"""Built-in data sets: shipped inside a dependency, materialised once as an ImageFolder tree under the cache.

``digits`` is scikit-learn's handwritten-digits set (1,797 grayscale 8x8 images of 0-9), written as
32x32 PNGs under ``<cache>/digits-v1/{train,val,test}/<digit>/`` with a fixed stratified 70/15/15
split, so it is read through exactly the same ImageFolder path as a user's own data. ``data_root`` gives the folder a
data config names, built-in or the user's.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

from harness.config.schema import DataConfig
from harness.data.splits import stratified_split
from harness.storage.cachedir import cache_root

DIGITS_VERSION = "digits-v1"
DIGITS_SIZE = 32
COMPLETE_MARKER = ".complete"


def data_root(cfg: DataConfig) -> Path:
    """The image folder a data config names: a built-in set (materialised on first use) or ``data.root``."""
    return builtin_root(cfg.builtin, cfg.cache_dir) if cfg.builtin else Path(cfg.root).expanduser()


def builtin_root(name: str, cache_dir: str | None) -> Path:
    """The ImageFolder root of a built-in data set, materialising it first if needed."""
    if name == "digits":
        return _materialise_digits(cache_root(cache_dir))
    raise ValueError(f"unknown built-in data set {name!r}")  # the config schema only admits known names


def _materialise_digits(cache: Path) -> Path:
    target = cache / DIGITS_VERSION
    if (target / COMPLETE_MARKER).exists():
        return target
    from sklearn.datasets import load_digits

    cache.mkdir(parents=True, exist_ok=True)
    images, labels = load_digits(return_X_y=True)
    samples = [(f"{int(label)}/{i:04d}.png", int(label)) for i, label in enumerate(labels)]
    splits = stratified_split(samples, {"val": 0.15, "test": 0.15}, seed=0)
    tmp = Path(tempfile.mkdtemp(prefix=f".{DIGITS_VERSION}-", dir=cache))
    try:
        for split, members in splits.items():
            for path, _ in members:
                index = int(Path(path).stem)
                pixels = np.round(images[index].reshape(8, 8) * (255.0 / 16.0)).astype(np.uint8)
                image = Image.fromarray(pixels).resize((DIGITS_SIZE, DIGITS_SIZE), Image.BILINEAR)
                out = tmp / split / path
                out.parent.mkdir(parents=True, exist_ok=True)
                try:
                    image.save(out)
                except OSError as error:  # a full disk: PIL's error names no file
                    error.filename = error.filename or str(out)
                    raise
        (tmp / COMPLETE_MARKER).write_text("ok\n")
        try:
            os.rename(tmp, target)  # atomic: another process either sees all of it or none
        except OSError:
            if not (target / COMPLETE_MARKER).exists():
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target
