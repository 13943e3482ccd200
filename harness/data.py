"""Transforms, the dataset and the loaders over a split (``harness.splits`` finds the splits).

Random augmentations are seeded per sample from ``(seed, epoch, index)``, and the epoch comes with each
index from the sampler (``EpochSampler``): what a sample looks like does not depend on the worker, the
process count or a resume, and the loader's workers live across epochs.

A sample leaves its worker as ``uint8`` (scaled and normalised on the device, ``harness.evaluation.ModelInputs``)
unless an augmentation works on the normalised tensor (``random_erasing``).
"""

from __future__ import annotations

import atexit
import difflib
import functools
import logging
import multiprocessing
import os
import random
import signal
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torchvision import transforms as T

from harness.config import DataConfig
from harness.errors import ConfigError
from harness.image_cache import ImageCache, build_cache
from harness.images import load_image
from harness.splits import Samples

logger = logging.getLogger(__name__)

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


def resizer(size: int) -> Callable[[Image.Image], Image.Image]:
    return T.Resize((size, size), antialias=True)


def image_cache(mode: str, root: Path, samples: Samples, cfg: DataConfig) -> ImageCache | None:
    """``data.cache`` over ``samples``: the images the transforms' resize makes (None for ``none``)."""
    return build_cache(mode, root, samples, cfg, resizer(cfg.image_size))


class SampleTransform:
    """Resize to ``size`` x ``size`` (what ``data.cache`` keeps), then the rest: [augmentations, train only] ->
    uint8 tensor, or, when a tensor augmentation follows normalisation, -> normalised float -> augmentation."""

    def __init__(self, size: int, rest: list[Callable]) -> None:
        self.resize = resizer(size)
        self.rest = T.Compose(rest)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.rest(self.resize(image))

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.resize!r}, {self.rest!r})"


def build_transform(cfg: DataConfig, train: bool) -> SampleTransform:
    pil_ops, tensor_ops = [], []
    for i, spec in enumerate(cfg.augmentations):
        name, kwargs = _augmentation_spec(spec, f"data.augmentations[{i}]")
        table = TENSOR_AUGMENTATIONS if name in TENSOR_AUGMENTATIONS else AUGMENTATIONS
        try:
            op = table[name](cfg.image_size, **kwargs)
        except (TypeError, ValueError) as e:
            raise ConfigError(f"data.augmentations[{i}] ({name}): {e}") from None
        (tensor_ops if table is TENSOR_AUGMENTATIONS else pil_ops).append(op)
    if not train:
        return SampleTransform(cfg.image_size, [T.PILToTensor()])
    if tensor_ops:
        return SampleTransform(cfg.image_size, [*pil_ops, T.ToTensor(), T.Normalize(cfg.mean, cfg.std), *tensor_ops])
    return SampleTransform(cfg.image_size, [*pil_ops, T.PILToTensor()])


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


class EpochSampler(Sampler):
    """Yields ``(epoch, index)``: the order of accelerate's seedable sampler (a permutation seeded with
    ``seed + epoch``, the same on every process), with the epoch each index is drawn in, for its augmentation."""

    def __init__(self, size: int, seed: int) -> None:
        self.size, self.seed, self.epoch = size, seed, 0

    def set_epoch(self, epoch: int) -> None:  # accelerate's DataLoaderShard.set_epoch reaches it
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        epoch = self.epoch
        return ((epoch, index) for index in torch.randperm(self.size, generator=generator).tolist())


class ImageListDataset(Dataset):
    """Yields ``(image tensor, label, index)``; ``index`` lets evaluation write per-sample results.

    An item is an index, or ``(epoch, index)`` from ``EpochSampler``. With ``augment_seed`` set, each
    sample's random transform is seeded from (seed, epoch, index); in the training process itself (no
    workers) inside a forked RNG, so that the caller's RNG is left untouched. With a ``cache``, the resized
    image comes from it, the same pixels the file gives."""

    def __init__(self, root: Path, samples: Samples, transform: SampleTransform, augment_seed: int | None = None,
                 max_pixels: int | None = None, cache: ImageCache | None = None):
        self.root = Path(root)
        self.samples = samples
        self.transform = transform
        self.augment_seed = augment_seed
        self.max_pixels = max_pixels
        self.cache = cache

    def __len__(self) -> int:
        return len(self.samples)

    def path(self, index: int) -> str:
        return self.samples[index][0]

    def resized(self, index: int) -> Image.Image:
        if self.cache is not None:
            return self.cache.image(index)
        return self.transform.resize(load_image(self.root / self.samples[index][0], self.max_pixels))

    def __getitem__(self, item: int | tuple[int, int]):
        epoch, index = item if isinstance(item, tuple) else (0, item)
        image, label = self.resized(index), self.samples[index][1]
        if self.augment_seed is None:
            return self.transform.rest(image), label, index
        # A worker's RNG serves nothing else; the training process's own must come back untouched.
        rng = nullcontext() if get_worker_info() is not None else torch.random.fork_rng(devices=[])
        with rng:
            torch.default_generator.manual_seed(_sample_seed(self.augment_seed, epoch, index))
            return self.transform.rest(image), label, index


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


_END = object()  # what batches_of's first next() gives for an empty loader


def batches_of(loader) -> Iterator:
    """The batches of ``loader``. The stop signals wait until the first one is in, the loader having forked its
    workers by then: a worker must not die of one before ``_init_worker`` makes it ignore them (torch
    gives workers a SIGTERM handler that ends them), and it inherits the signals held, so none reaches it
    before then. Held, a signal is delivered once the first batch is in, not lost."""
    held = signal.pthread_sigmask(signal.SIG_BLOCK, LEFT_TO_PARENT)
    try:  # a DataLoader forks in iter(), accelerate's wrapper at its first batch
        iterator = iter(loader)
        first = next(iterator, _END)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)
    if first is not _END:
        yield first
        yield from iterator


def _init_worker(worker_id: int) -> None:
    for signum in LEFT_TO_PARENT:
        signal.signal(signum, signal.SIG_IGN)  # a signal that arrived since the fork, held, is dropped
    signal.pthread_sigmask(signal.SIG_UNBLOCK, LEFT_TO_PARENT)
    seed = torch.initial_seed() % 2**32  # torch gives each worker base_seed + worker_id
    np.random.seed(seed)
    random.seed(seed)


MAX_DEFAULT_WORKERS = 8


def loader_workers(cfg: DataConfig) -> int:
    """``data.num_workers``, at most the CPUs this process may run on (more would only compete for them)."""
    if cfg.num_workers is None:
        return default_workers()
    cpus = len(os.sched_getaffinity(0))
    if cfg.num_workers > cpus:
        _say_once(f"data.num_workers: {cfg.num_workers} asked for, but this process may run on {cpus} CPU(s): "
                  f"using {cpus} loader workers")
        return cpus
    return cfg.num_workers


@functools.cache
def _say_once(message: str) -> None:
    logger.warning(message)


def default_workers() -> int:
    """Loader workers per process when ``data.num_workers`` is null, from this process's share of the CPUs it
    may run on (the launcher's processes on this machine share them): with a GPU, every CPU of the share feeds
    it (at most 8); on the CPU, the training process's own threads use the cores, and workers would compete
    with them, so a quarter of the share (none on a machine of up to 7 cores)."""
    share = len(os.sched_getaffinity(0)) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return min(MAX_DEFAULT_WORKERS, max(1, share) if torch.cuda.is_available() else share // 4)


def build_loader(dataset: ImageListDataset, batch_size: int, num_workers: int, seed: int, shuffle: bool = False,
                 persistent: bool = False) -> DataLoader:
    """``shuffle``: in the order of an ``EpochSampler`` seeded with ``seed``. ``persistent``: the workers live
    across epochs (for loaders read every epoch)."""
    generator = torch.Generator()
    generator.manual_seed(seed)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=EpochSampler(len(dataset), seed) if shuffle else None,
        num_workers=num_workers,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=_init_worker,
        generator=generator,
        persistent_workers=persistent and num_workers > 0,
    )


def release_workers(loader) -> None:
    """End the workers a loader keeps across epochs (``persistent``) once it will not be read again: they hold
    memory. ``loader`` may be accelerate's wrapper around a DataLoader."""
    loader = getattr(loader, "base_dataloader", loader)
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None


def eval_loader(cfg: DataConfig, root: Path, samples: Samples, batch_size: int, seed: int,
                cache: ImageCache | None = None, persistent: bool = False) -> DataLoader:
    """An unshuffled, unaugmented loader over ``samples``: validation, the final test and inference."""
    dataset = ImageListDataset(root, samples, build_transform(cfg, train=False), max_pixels=cfg.max_image_pixels,
                               cache=cache)
    return build_loader(dataset, batch_size, num_workers=loader_workers(cfg), seed=seed, persistent=persistent)
