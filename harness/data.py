"""Datasets, splits, transforms and loaders.

Every split is a list of ``(relative path, class index)`` under one data root. The lists are found once
(``discover_splits``), saved in the run directory, and read back by inference, so a run's test set never
changes after training. Random augmentations are seeded per sample from ``(seed, epoch, index)``: what a
sample looks like does not depend on the worker, the process count or a resume.
"""

from __future__ import annotations

import csv
import difflib
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset

from harness.atomic import atomic_path, write_atomic
from harness.config import DataConfig
from harness.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")
Samples = list[tuple[str, int]]


@dataclass
class DataSplits:
    root: Path
    classes: list[str]
    splits: dict[str, Samples]  # split name -> (path relative to root, class index)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "classes.txt", "".join(f"{name}\n" for name in self.classes))
        for split, samples in self.splits.items():
            with atomic_path(folder / f"{split}.csv") as tmp, open(tmp, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["path", "label"])
                writer.writerows((path, self.classes[label]) for path, label in samples)

    def class_counts(self, split: str) -> list[int]:
        """Images per class in ``split``, in class order."""
        counts = [0] * len(self.classes)
        for _, label in self.splits[split]:
            counts[label] += 1
        return counts

    @classmethod
    def load(cls, folder: Path, root: Path) -> "DataSplits":
        """Read the class list and the split lists a run saved."""
        if not (folder / "classes.txt").is_file():
            raise DataError(f"{folder}: no classes.txt: not the splits folder of a run")
        classes = (folder / "classes.txt").read_text().splitlines()
        index = {name: i for i, name in enumerate(classes)}
        splits = {}
        for split in SPLITS:
            path = folder / f"{split}.csv"
            if not path.exists():
                continue
            with open(path, newline="") as f:
                rows = list(csv.DictReader(f))
            unknown = {r["label"] for r in rows} - index.keys()
            if unknown:
                raise DataError(f"{path}: labels {sorted(unknown)} are not classes of this run")
            splits[split] = [(r["path"], index[r["label"]]) for r in rows]
        return cls(Path(root), classes, splits)


# ----------------------------------------------------------------------------------------------------
# Finding the splits


def discover_splits(cfg: DataConfig, root: Path) -> DataSplits:
    """root/{train,val,test}/<class>/* where present; a missing val or test split is carved out of the
    train pool (root/train, or root itself when it has no train/ folder), stratified by class."""
    if not root.is_dir():
        raise DataError(f"data.root: {root} is not a folder")
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and "train" not in present:
        raise DataError(f"{root}: has {'/, '.join(present)}/ but no train/ folder")
    pool_dir = root / "train" if present else root
    classes, pool = _scan(pool_dir, root)
    splits = {"train": pool}
    for split in ("val", "test"):
        if split in present:
            split_classes, samples = _scan(root / split, root)
            if split_classes != classes:
                missing, extra = sorted(set(classes) - set(split_classes)), sorted(set(split_classes) - set(classes))
                raise DataError(
                    f"{root / split}: classes differ from {pool_dir}: missing {missing}, extra {extra}"
                )
            splits[split] = samples
    carve = {s: getattr(cfg, f"{s}_fraction") for s in ("test", "val") if s not in present}
    if carve:
        carved = stratified_split(pool, carve, seed=cfg.split_seed)
        splits.update(carved)
    if not splits["val"]:
        raise DataError(f"{root}: no validation images: add a val/ folder or set data.val_fraction above 0")
    if not splits["train"]:
        raise DataError(f"{root}: no training images left after the val/test split")
    return DataSplits(root, classes, {s: splits[s] for s in SPLITS if splits.get(s)})


def stratified_split(samples: Samples, fractions: dict[str, float], seed: int) -> dict[str, Samples]:
    """Split ``samples`` per class: each named split gets round(fraction * class size) of every class, the
    rest stays in ``train``. Depends only on ``seed`` and the sample list."""
    rng = random.Random(seed)
    by_class: dict[int, Samples] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    out: dict[str, Samples] = {"train": [], **{name: [] for name in fractions}}
    for label in sorted(by_class):
        members = sorted(by_class[label])
        rng.shuffle(members)
        start = 0
        for name, fraction in fractions.items():
            count = int(round(fraction * len(members)))
            out[name] += members[start : start + count]
            start += count
        out["train"] += members[start:]
    return {name: sorted(split) for name, split in out.items()}


def _scan(folder: Path, root: Path) -> tuple[list[str], Samples]:
    try:
        classes, class_to_idx = find_classes(str(folder))
        found = make_dataset(str(folder), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as e:
        raise DataError(f"{folder}: {e}") from None
    return classes, [(str(Path(path).relative_to(root)), label) for path, label in found]


# ----------------------------------------------------------------------------------------------------
# Transforms

AUGMENTATIONS: dict[str, Callable[..., Callable]] = {
    "hflip": lambda size, **kw: T.RandomHorizontalFlip(**kw),
    "vflip": lambda size, **kw: T.RandomVerticalFlip(**kw),
    "random_crop": lambda size, padding=4, **kw: T.RandomCrop(size, padding=padding, **kw),
    "random_resized_crop": lambda size, **kw: T.RandomResizedCrop(size, antialias=True, **kw),
    "rotation": lambda size, degrees=10, **kw: T.RandomRotation(degrees, **kw),
    "affine": lambda size, degrees=10, **kw: T.RandomAffine(degrees, **kw),
    "color_jitter": lambda size, **kw: T.ColorJitter(**kw),
    "trivial_augment": lambda size, **kw: T.TrivialAugmentWide(**kw),
}
TENSOR_AUGMENTATIONS = {"random_erasing": lambda size, **kw: T.RandomErasing(**kw)}


def build_transform(cfg: DataConfig, train: bool) -> Callable:
    """Resize -> [augmentations, train only] -> tensor -> normalize -> [tensor augmentations, train only]."""
    size = cfg.image_size
    pil_ops, tensor_ops = [], []
    for i, spec in enumerate(cfg.augmentations):
        name, kwargs = _augmentation_spec(spec, f"data.augmentations[{i}]")
        table = TENSOR_AUGMENTATIONS if name in TENSOR_AUGMENTATIONS else AUGMENTATIONS
        try:
            op = table[name](size, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"data.augmentations[{i}] ({name}): {e}") from None
        (tensor_ops if table is TENSOR_AUGMENTATIONS else pil_ops).append(op)
    ops = [T.Resize((size, size), antialias=True)]
    ops += pil_ops if train else []
    ops += [T.ToTensor(), T.Normalize(cfg.mean, cfg.std)]
    ops += tensor_ops if train else []
    return T.Compose(ops)


def _augmentation_spec(spec, key: str) -> tuple[str, dict]:
    if isinstance(spec, str):
        name, kwargs = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str):
        name, kwargs = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    else:
        raise ConfigError(f"{key}: expected a name or a mapping with 'name', got {spec!r}")
    known = sorted(AUGMENTATIONS) + sorted(TENSOR_AUGMENTATIONS)
    if name not in known:
        close = difflib.get_close_matches(name, known, n=1)
        hint = f"did you mean '{close[0]}'?" if close else f"known: {', '.join(known)}"
        raise ConfigError(f"{key}: unknown augmentation '{name}' ({hint})")
    return name, kwargs


# ----------------------------------------------------------------------------------------------------
# Dataset and loaders


def load_image(path: Path) -> Image.Image:
    """Any PIL-readable image as RGB (grayscale, RGBA, palette and CMYK files included)."""
    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"{path}: cannot read image ({e})") from None


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + index * 0xC2B2AE3D) % (2**63)


class ImageListDataset(Dataset):
    """Yields ``(image tensor, label, index)``; ``index`` lets evaluation write per-sample results.

    With ``augment_seed`` set, each sample's random transform is seeded from (seed, epoch, index) inside a
    forked RNG, so augmentation is reproducible and leaves the caller's RNG untouched."""

    def __init__(self, root: Path, samples: Samples, transform: Callable, augment_seed: int | None = None):
        self.root = Path(root)
        self.samples = samples
        self.transform = transform
        self.augment_seed = augment_seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the trainer at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, index: int) -> str:
        return self.samples[index][0]

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_image(self.root / path)
        if self.augment_seed is None:
            return self.transform(image), label, index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.augment_seed, self.epoch, index))
            return self.transform(image), label, index


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32  # torch gives each worker base_seed + worker_id
    np.random.seed(seed)
    random.seed(seed)


def build_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int) -> DataLoader:
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_seed_worker,
        generator=generator,
        # Workers must see each epoch's dataset.set_epoch, so they are not kept across epochs.
        persistent_workers=False,
    )


def eval_loader(cfg: DataConfig, root: Path, samples: Samples, batch_size: int, seed: int) -> DataLoader:
    """An unshuffled, unaugmented loader over ``samples``: validation, the final test and inference."""
    dataset = ImageListDataset(root, samples, build_transform(cfg, train=False))
    return build_loader(dataset, batch_size, shuffle=False, num_workers=cfg.num_workers, seed=seed)
