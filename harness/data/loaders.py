"""The dataset and the loaders over a split (``harness.data.splits`` finds the splits).

Random augmentations are seeded per sample from ``(seed, epoch, index)``, and the epoch comes with each
index from the sampler (``EpochSampler``): what a sample looks like does not depend on the worker, the
process count or a resume, and the loader's workers live across epochs.
"""

from __future__ import annotations

from contextlib import nullcontext
from pathlib import Path
from typing import Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, get_worker_info

from harness.config.schema import Config, DataConfig
from harness.data.cache import ImageCache, check_memory, image_cache
from harness.data.files import files_at
from harness.data.splits import DataSplits, Samples
from harness.data.transforms import SampleTransform, build_transform
from harness.data.workers import init_worker, loader_workers


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
        return self.transform.resize(files_at(self.root).load(self.samples[index][0], self.max_pixels))

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
        worker_init_fn=init_worker,
        generator=generator,
        persistent_workers=persistent and num_workers > 0,
    )


def eval_loader(cfg: DataConfig, root: Path, samples: Samples, batch_size: int, seed: int,
                cache: ImageCache | None = None, persistent: bool = False) -> DataLoader:
    """An unshuffled, unaugmented loader over ``samples``: validation, the final test and inference."""
    dataset = ImageListDataset(root, samples, build_transform(cfg, train=False), max_pixels=cfg.max_image_pixels,
                               cache=cache)
    return build_loader(dataset, batch_size, num_workers=loader_workers(cfg), seed=seed, persistent=persistent)


def train_loader(cfg: Config, splits: DataSplits, cache: ImageCache | None) -> DataLoader:
    """The shuffled, augmented loader of the train split, its workers kept across epochs."""
    train_set = ImageListDataset(splits.root, splits.splits["train"], build_transform(cfg.data, train=True),
                                 augment_seed=cfg.train.seed, max_pixels=cfg.data.max_image_pixels, cache=cache)
    return build_loader(train_set, cfg.train.batch_size, num_workers=loader_workers(cfg.data), seed=cfg.train.seed,
                        shuffle=True, persistent=True)


def training_loaders(cfg: Config, splits: DataSplits) -> tuple[DataLoader, dict[str, DataLoader]]:
    """The shuffled, augmented train loader, and one unshuffled, unaugmented loader per split; the loaders
    read every epoch (train, val) keep their workers. A split's image cache serves both its loaders."""
    check_memory(sum(len(samples) for samples in splits.splits.values()), cfg.data)
    caches = {split: image_cache(cfg.data.cache, splits.root, samples, cfg.data, splits.fingerprints.get(split))
              for split, samples in splits.splits.items()}
    batch_size = cfg.train.eval_batch_size or cfg.train.batch_size
    eval_loaders = {split: eval_loader(cfg.data, splits.root, samples, batch_size, cfg.train.seed,
                                       cache=caches[split], persistent=split == "val")
                    for split, samples in splits.splits.items()}
    return train_loader(cfg, splits, caches["train"]), eval_loaders
