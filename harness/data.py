"""Transforms, the dataset and the loaders over a split (``harness.splits`` finds the splits).

Random augmentations are seeded per sample from ``(seed, epoch, index)``, and the epoch comes with each
index from the sampler (``EpochSampler``): what a sample looks like does not depend on the worker, the
process count or a resume, and the loader's workers live across epochs.

A sample leaves its worker as ``uint8`` (scaled and normalised on the device, ``harness.evaluation.ModelInputs``)
unless an augmentation works on the normalised tensor (``random_erasing``).
"""

from __future__ import annotations

import difflib
import logging
from contextlib import nullcontext
from pathlib import Path
from typing import Callable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info
from torchvision import transforms as T

from harness.config.schema import DataConfig
from harness.errors import ConfigError
from harness.image_cache import ImageCache, build_cache
from harness.images import load_image
from harness.splits import Samples
from harness.workers import _init_worker, loader_workers

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
    "rand_augment": lambda size, **kw: T.RandAugment(**kw),
    "auto_augment": lambda size, policy="imagenet", **kw: T.AutoAugment(T.AutoAugmentPolicy(policy), **kw),
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


def collate(samples: list[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``default_collate``'s batch, ``(images, labels, indices)``, as views of one block of memory: a worker
    hands the training process one shared buffer per batch instead of three (each a file-descriptor
    handshake, which was most of the time the loop waited for a batch)."""
    count, first = len(samples), samples[0][0]
    block = torch.empty(16 * count + count * first.numel() * first.element_size(), dtype=torch.uint8)
    if get_worker_info() is not None:
        block.share_memory_()
    numbers = block[:16 * count].view(torch.int64).view(2, count)
    numbers.copy_(torch.tensor([[label for _, label, _ in samples], [index for _, _, index in samples]]))
    images = block[16 * count:].view(first.dtype).view(count, *first.shape)
    torch.stack([image for image, _, _ in samples], out=images)
    return images, numbers[0], numbers[1]


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
        collate_fn=collate,
        worker_init_fn=_init_worker,
        generator=generator,
        persistent_workers=persistent and num_workers > 0,
    )


def eval_loader(cfg: DataConfig, root: Path, samples: Samples, batch_size: int, seed: int,
                cache: ImageCache | None = None, persistent: bool = False) -> DataLoader:
    """An unshuffled, unaugmented loader over ``samples``: validation, the final test and inference."""
    dataset = ImageListDataset(root, samples, build_transform(cfg, train=False), max_pixels=cfg.max_image_pixels,
                               cache=cache)
    return build_loader(dataset, batch_size, num_workers=loader_workers(cfg), seed=seed, persistent=persistent)
