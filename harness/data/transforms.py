"""Transforms and augmentations of a sample: resize to ``data.image_size``, then the ``data.augmentations`` (train
only), then a ``uint8`` tensor (scaled and normalised on the device, ``harness.models.inputs.ModelInputs``)
unless an augmentation works on the normalised tensor (``random_erasing``).
"""

from __future__ import annotations

import difflib
from typing import Callable

import torch
from PIL import Image
from torchvision import transforms as T

from harness.config.schema import DataConfig
from harness.errors import ConfigError, one_line

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
TRIES = 8  # blank samples an augmentation is tried on before a run


def resizer(size: int) -> Callable[[Image.Image], Image.Image]:
    return T.Resize((size, size), antialias=True)


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
    if not train:
        return SampleTransform(cfg.image_size, [T.PILToTensor()])
    pil_ops, tensor_ops = [], []
    for i, spec in enumerate(cfg.augmentations):
        name, kwargs = _augmentation_spec(spec, f"data.augmentations[{i}]")
        tensor = name in TENSOR_AUGMENTATIONS
        table = TENSOR_AUGMENTATIONS if tensor else AUGMENTATIONS
        op = _tried(f"data.augmentations[{i}] ({name})", table[name], cfg.image_size, kwargs, tensor)
        (tensor_ops if tensor else pil_ops).append(op)
    if tensor_ops:
        return SampleTransform(cfg.image_size, [*pil_ops, T.ToTensor(), T.Normalize(cfg.mean, cfg.std), *tensor_ops])
    return SampleTransform(cfg.image_size, [*pil_ops, T.PILToTensor()])


def _tried(key: str, factory: Callable[..., Callable], size: int, kwargs: dict, tensor: bool) -> Callable:
    """The augmentation ``factory`` builds, applied to a blank sample a few times first (the global RNG left as it
    was): keyword arguments that its constructor takes but its first use refuses are a one-line error now."""
    sample = torch.zeros(3, size, size) if tensor else Image.new("RGB", (size, size))
    try:
        op = factory(size, **kwargs)
        with torch.random.fork_rng(devices=[]):
            for seed in range(TRIES):  # a random branch (p=0.5, say) is met at least once, almost surely
                torch.manual_seed(seed)
                op(sample)
    except Exception as error:
        raise ConfigError(f"{key}: {one_line(error)}") from None
    return op


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
