"""Transforms and loaders: resize, train-only augmentation seeded per sample, normalisation on the device as
torchvision does it, a batch in one shared block."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from harness.config.schema import DataConfig
from harness.data.loaders import ImageListDataset, build_loader, collate
from harness.data.splits import discover_splits
from harness.data.transforms import build_transform
from harness.errors import ConfigError
from harness.models.inputs import ModelInputs
from tests.helpers import make_image_folder


def test_transforms_resize_and_augment_train_only_and_the_device_normalises_like_torchvision():
    cfg = DataConfig(builtin="digits", image_size=20, mean=[0.4, 0.5, 0.6], std=[0.2, 0.3, 0.25],
                     augmentations=["hflip"])
    pixels = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    augmenting, evaluation = build_transform(cfg, train=True), build_transform(cfg, train=False)
    out = evaluation(image)
    assert out.shape == (3, 20, 20) and out.dtype == torch.uint8  # workers hand on bytes
    assert "RandomHorizontalFlip" in repr(augmenting) and "RandomHorizontalFlip" not in repr(evaluation)
    # The device's scaling and normalisation give torchvision's ToTensor + Normalize, bit for bit.
    reference = T.Normalize(cfg.mean, cfg.std)(T.ToTensor()(T.Resize((20, 20), antialias=True)(image)))
    inputs = ModelInputs(torch.nn.Linear(1, 1), cfg, channels_last=True)
    batch = inputs(torch.stack([out, out]))
    assert torch.equal(batch[1], reference) and batch.is_contiguous(memory_format=torch.channels_last)
    # An augmentation of the normalised tensor keeps normalisation in the worker; the device leaves it alone.
    erasing = build_transform(DataConfig(builtin="digits", image_size=20, augmentations=["random_erasing"]), True)
    erased = erasing(image)
    assert erased.dtype == torch.float32 and torch.equal(inputs(erased[None])[0], erased)


def test_augmentation_is_seeded_per_sample_and_leaves_global_rng_alone(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=4, size=24)
    cfg = DataConfig(root=str(root), image_size=24,
                     augmentations=["hflip", {"name": "random_crop", "padding": 4}, "color_jitter", "rand_augment",
                                    {"name": "auto_augment", "policy": "cifar10"}])
    samples = discover_splits(DataConfig(root=str(root), val_fraction=0.25, test_fraction=0.0), root).splits["train"]
    a = ImageListDataset(root, samples, build_transform(cfg, train=True), augment_seed=7)
    b = ImageListDataset(root, samples, build_transform(cfg, train=True), augment_seed=7)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    first = [a[0, i][0] for i in range(len(a))]  # items are (epoch, index), as EpochSampler yields them
    assert torch.equal(torch.get_rng_state(), before)
    assert all(torch.equal(x, b[0, i][0]) for i, x in enumerate(first))  # another dataset, same seed: same images
    assert any(not torch.equal(x, b[1, i][0]) for i, x in enumerate(first))  # a new epoch, new augmentations
    assert a[0, 2][1:] == (0, 2)  # (image, label, index)
    # Persistent workers, any number of them, give each (epoch, sample) the same images as this process.
    loader = build_loader(a, batch_size=2, num_workers=2, seed=3, shuffle=True, persistent=True)
    for epoch in (0, 1, 0):
        loader.sampler.set_epoch(epoch)
        order = [index for _, index in loader.sampler]
        assert order == torch.randperm(len(a), generator=torch.Generator().manual_seed(3 + epoch)).tolist()
        for images, _, indices in loader:
            assert all(torch.equal(image, b[epoch, i][0]) for image, i in zip(images, indices.tolist()))


@pytest.mark.parametrize("augmentations", [["hflip"], ["hflip", "random_erasing"]], ids=["uint8", "float"])
def test_a_batch_is_default_collates_in_one_shared_block(tmp_path, augmentations):
    """The loaders' collate gives default_collate's tensors, bit for bit and of its dtypes, as views of one
    storage, which a worker allocates shared (one buffer crosses to the training process per batch)."""
    root = make_image_folder(tmp_path / "data", classes=2, per_class=5, size=12)
    cfg = DataConfig(root=str(root), image_size=12, augmentations=augmentations)
    samples = [(f"class_{c}/{i:03d}.png", c) for c in range(2) for i in range(5)] + [("class_0/000.png", -1)]
    dataset = ImageListDataset(root, samples, build_transform(cfg, train=True), augment_seed=1)
    items = [dataset[0, i] for i in range(len(dataset))]
    expected = torch.utils.data.default_collate(items)
    batch = collate(items)
    for got, want in zip(batch, expected, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape and torch.equal(got, want)
    assert len({t.untyped_storage().data_ptr() for t in batch}) == 1 and not batch[0].is_shared()
    loader = build_loader(dataset, batch_size=len(dataset), num_workers=1, seed=0, shuffle=True)
    (images, labels, indices), = list(loader)
    assert images.is_shared() and len({t.untyped_storage().data_ptr() for t in (images, labels, indices)}) == 1
    assert all(torch.equal(image, dataset[0, i][0]) for image, i in zip(images, indices.tolist()))
    assert labels.tolist() == [dataset.samples[i][1] for i in indices.tolist()]


def test_unknown_augmentation_suggests(tmp_path):
    with pytest.raises(ConfigError, match=r"data.augmentations\[1\]: unknown augmentation 'hflp' \(did you mean 'hflip'\?\)"):
        build_transform(DataConfig(builtin="digits", augmentations=["vflip", "hflp"]), train=True)
    with pytest.raises(ConfigError, match=r"data.augmentations\[0\] \(auto_augment\): ValueError: 'imagenette' is not a valid"):
        build_transform(DataConfig(builtin="digits", augmentations=[{"name": "auto_augment", "policy": "imagenette"}]),
                        train=True)
    with pytest.raises(ConfigError, match=r"data.augmentations\[0\] \(rotation\)"):
        build_transform(DataConfig(builtin="digits", augmentations=[{"name": "rotation", "angle": 3}]), train=True)
