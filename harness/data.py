"""Transforms, the dataset and the loaders over a split (``harness.splits`` finds the splits).

Random augmentations are seeded per sample from ``(seed, epoch, index)``: what a
sample looks like does not depend on the worker, the process count or a resume.
"""

from __future__ import annotations

import atexit
import difflib
import multiprocessing
import random
import signal
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from torchvision import transforms as T

from harness.config import DataConfig
from harness.errors import ConfigError
from harness.images import load_image
from harness.splits import Samples

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


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + index * 0xC2B2AE3D) % (2**63)


class ImageListDataset(Dataset):
    """Yields ``(image tensor, label, index)``; ``index`` lets evaluation write per-sample results.

    With ``augment_seed`` set, each sample's random transform is seeded from (seed, epoch, index) inside a
    forked RNG, so augmentation is reproducible and leaves the caller's RNG untouched."""

    def __init__(self, root: Path, samples: Samples, transform: Callable, augment_seed: int | None = None,
                 max_pixels: int | None = None):
        self.root = Path(root)
        self.samples = samples
        self.transform = transform
        self.augment_seed = augment_seed
        self.max_pixels = max_pixels
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:  # called by the trainer at the start of every epoch
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, index: int) -> str:
        return self.samples[index][0]

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_image(self.root / path, self.max_pixels)
        if self.augment_seed is None:
            return self.transform(image), label, index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.augment_seed, self.epoch, index))
            return self.transform(image), label, index


# Signals a scheduler or a terminal sends to every process of a job (SLURM's SIGTERM on a requeue or preemption
# included): the process that owns the loader acts on them and shuts its workers down; a worker killed by one
# would fail the batch, or the checkpoint, that should end the run cleanly.
LEFT_TO_PARENT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2)


@atexit.register  # registered after multiprocessing's own exit hook, so it runs first
def _kill_leftover_workers() -> None:
    """At exit, multiprocessing ends the workers a failing loop left behind with SIGTERM, which they ignore:
    they are killed instead (they hold nothing worth a clean exit)."""
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join()


def _init_worker(worker_id: int) -> None:
    for signum in LEFT_TO_PARENT:
        signal.signal(signum, signal.SIG_IGN)
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
        worker_init_fn=_init_worker,
        generator=generator,
        # Workers must see each epoch's dataset.set_epoch, so they are not kept across epochs.
        persistent_workers=False,
    )


def eval_loader(cfg: DataConfig, root: Path, samples: Samples, batch_size: int, seed: int) -> DataLoader:
    """An unshuffled, unaugmented loader over ``samples``: validation, the final test and inference."""
    dataset = ImageListDataset(root, samples, build_transform(cfg, train=False), max_pixels=cfg.max_image_pixels)
    return build_loader(dataset, batch_size, shuffle=False, num_workers=cfg.num_workers, seed=seed)
