import logging
import os
import signal
import time
import warnings
from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from harness.config.loading import load_config
from harness.config.naming import run_name_for
from harness.config.schema import DataConfig
from harness.data.builtin import builtin_root
from harness.data.images import load_image
from harness.data.loaders import ImageListDataset, build_loader, collate, eval_loader
from harness.data.splits import DataSplits, discover_splits
from harness.data.transforms import build_transform
from harness.data.workers import batches_of, init_worker, loader_workers
from harness.errors import ConfigError, DataError
from harness.models.inputs import ModelInputs

from conftest import DIGITS, make_image_folder


def per_class(samples):
    return Counter(label for _, label in samples)


def test_single_folder_is_split_stratified_and_by_split_seed_only(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=3, per_class=20)
    cfg = DataConfig(root=str(root), val_fraction=0.2, test_fraction=0.1)
    splits = discover_splits(cfg, root)
    assert splits.classes == ["class_0", "class_1", "class_2"]
    assert per_class(splits.splits["val"]) == {0: 4, 1: 4, 2: 4}
    assert per_class(splits.splits["test"]) == {0: 2, 1: 2, 2: 2}
    assert per_class(splits.splits["train"]) == {0: 14, 1: 14, 2: 14}
    paths = [set(p for p, _ in s) for s in splits.splits.values()]
    assert sum(map(len, paths)) == len(set.union(*paths)) == 60  # disjoint and complete
    assert discover_splits(cfg, root) == splits
    other = discover_splits(DataConfig(root=str(root), val_fraction=0.2, test_fraction=0.1, split_seed=1), root)
    assert other.splits["val"] != splits.splits["val"]


def test_explicit_split_folders_are_used_and_missing_ones_carved_from_train(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", per_class=10)
    make_image_folder(root / "val", per_class=3)
    splits = discover_splits(DataConfig(root=str(root), test_fraction=0.2), root)
    assert all(p.startswith("val/") for p, _ in splits.splits["val"]) and len(splits.splits["val"]) == 9
    assert all(p.startswith("train/") for p, _ in splits.splits["test"]) and len(splits.splits["test"]) == 6
    assert len(splits.splits["train"]) == 24


def test_k_folds_partition_every_non_test_image_stratified(tmp_path):
    """data.folds: each non-test image is validation in exactly one fold, classes spread evenly, the test split
    is the one the run without folds has; root/val joins the folds."""
    root = make_image_folder(tmp_path / "data", classes=3, per_class=20)
    plain = discover_splits(DataConfig(root=str(root), test_fraction=0.1), root)
    folds = [discover_splits(DataConfig(root=str(root), test_fraction=0.1, folds=3, fold=i), root) for i in range(3)]
    pool = {p for p, _ in plain.splits["train"] + plain.splits["val"]}
    for split in folds:
        assert split.splits["test"] == plain.splits["test"]
        train, val = ({p for p, _ in split.splits[s]} for s in ("train", "val"))
        assert not train & val and train | val == pool
        assert per_class(split.splits["val"]) == {0: 6, 1: 6, 2: 6}
    vals = [{p for p, _ in split.splits["val"]} for split in folds]
    assert sum(map(len, vals)) == len(set.union(*vals)) == len(pool) == 54
    assert discover_splits(DataConfig(root=str(root), test_fraction=0.1, folds=3, fold=1), root) == folds[1]
    with_val = tmp_path / "with_val"
    for split, n in (("train", 8), ("val", 4), ("test", 2)):
        make_image_folder(with_val / split, classes=2, per_class=n)
    split = discover_splits(DataConfig(root=str(with_val), folds=4, fold=3), with_val)
    assert len(split.splits["val"]) == 6 and len(split.splits["train"]) == 18 and len(split.splits["test"]) == 4
    assert any(p.startswith("val/") for p, _ in split.splits["train"])


def test_fold_settings_are_checked_and_the_fold_named_in_the_run():
    with pytest.raises(ConfigError, match=r"digits.yaml: data.fold: must be below data.folds \(5\)"):
        load_config(DIGITS, ["data.folds=5", "data.fold=5"])
    with pytest.raises(ConfigError, match="digits.yaml: data.fold: data.fold needs data.folds"):
        load_config(DIGITS, ["data.fold=1"])
    assert run_name_for(load_config(DIGITS, ["data.folds=5", "data.fold=2"]), ["data.folds=5", "data.fold=2"]) == \
        "digits_fold2_folds5"
    assert run_name_for(load_config(DIGITS, ["data.folds=5"]), ["data.folds=5"]) == "digits_fold0_folds5"


def test_split_classes_must_agree(tmp_path):
    root = tmp_path / "data"
    make_image_folder(root / "train", classes=2)
    make_image_folder(root / "val", classes=3)
    with pytest.raises(DataError, match=r"val: classes differ .* extra \['class_2'\]"):
        discover_splits(DataConfig(root=str(root)), root)


def test_folder_mistakes_are_clear(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        discover_splits(DataConfig(root=str(tmp_path / "missing")), tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="empty"):
        discover_splits(DataConfig(root=str(tmp_path / "empty")), tmp_path / "empty")
    make_image_folder(tmp_path / "tiny", classes=2, per_class=2)
    with pytest.raises(DataError, match="no validation images"):
        discover_splits(DataConfig(root=str(tmp_path / "tiny"), val_fraction=0.0), tmp_path / "tiny")


def test_splits_round_trip_through_the_run_dir(tmp_path):
    root = make_image_folder(tmp_path / "data")
    splits = discover_splits(DataConfig(root=str(root)), root)
    splits.save(tmp_path / "splits")
    assert DataSplits.load(tmp_path / "splits", root) == splits


GRADIENT = np.tile(np.linspace(0.0, 1.0, 64), (8, 1))  # 0 (left) to 1 (right), 64 wide


def gradient(mode: str) -> Image.Image:
    """A left-to-right ramp over the full range of ``mode`` (8-bit, 16-bit, 32-bit, float, bilevel)."""
    if mode in ("I;16", "I"):
        image = Image.fromarray((GRADIENT * 65535).round().astype(np.uint16 if mode == "I;16" else np.int32))
    elif mode == "F":
        image = Image.fromarray(GRADIENT.astype(np.float32))
    else:
        gray = Image.fromarray((GRADIENT * 255).round().astype(np.uint8))
        image = gray.convert("1") if mode == "1" else gray.convert(mode)
    assert image.mode == mode
    return image


@pytest.mark.parametrize("mode, suffix", [
    ("L", "png"), ("LA", "png"), ("RGB", "png"), ("RGBA", "png"), ("P", "png"), ("1", "png"), ("CMYK", "jpg"),
    ("YCbCr", "jpg"), ("I;16", "png"), ("I;16", "tif"), ("I", "tif"), ("F", "tif"), ("RGB", "webp"), ("L", "bmp"),
])
def test_every_image_mode_reads_as_its_content(tmp_path, mode, suffix):
    """Each mode's gradient reads back as the same 0-255 gradient (16-bit ones are not clipped to white)."""
    path = tmp_path / f"ramp.{suffix}"
    image = gradient(mode)
    image.save(path, **({"quality": 100} if suffix in ("jpg", "webp") else {}))
    rgb = np.asarray(load_image(path), dtype=np.float64)
    assert rgb.shape == (8, 64, 3)
    # The brightness of each band of 8 columns; bilevel images dither, JPEG and WebP are lossy.
    bands = rgb.mean(axis=(0, 2)).reshape(8, 8).mean(axis=1)
    expected = (GRADIENT[0] * 255).reshape(8, 8).mean(axis=1)
    assert np.abs(bands - expected).max() < (20 if mode == "1" else 3), (mode, bands.round())
    assert rgb[:, :4].mean() < 10 and rgb[:, -4:].mean() > 245, mode  # dark on the left, bright on the right


def test_unreadable_and_oversized_images_name_the_file(tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="bad.png: cannot read image"):
        load_image(tmp_path / "bad.png")
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    with pytest.raises(DataError, match=r"big.png: 100x100 .* above data.max_image_pixels \(9999\)"):
        load_image(tmp_path / "big.png", max_pixels=9999)
    assert load_image(tmp_path / "big.png", max_pixels=10000).size == (100, 100)


def test_links_are_followed_but_no_folder_or_image_twice(tmp_path):
    """A loop inside a class, a link to the root's parent, a second path to a folder and to an image, a
    broken link and hidden files: each image is taken once under its own class, and each skip is counted."""
    root = make_image_folder(tmp_path / "data", classes=2, per_class=10)
    outside = make_image_folder(tmp_path / "elsewhere", classes=1, per_class=4)
    (root / "class_0" / "loop").symlink_to("..")
    (root / "up").symlink_to("..")
    (root / "class_1" / "again").symlink_to(root / "class_0")
    (root / "class_1" / "same.png").symlink_to(root / "class_0" / "000.png")
    (root / "class_1" / "gone.png").symlink_to(tmp_path / "missing.png")
    (root / "class_1" / "._000.png").write_bytes(b"\0")
    os.mkfifo(root / "class_1" / "pipe.png")  # opening it would wait forever
    (root / "class_1" / "extra").symlink_to(outside / "class_0")  # a folder of more images, elsewhere
    splits = discover_splits(DataConfig(root=str(root), val_fraction=0.2, test_fraction=0.2), root)
    assert splits.classes == ["class_0", "class_1"]
    everything = [sample for samples in splits.splits.values() for sample in samples]
    assert len(everything) == len({path for path, _ in everything}) == 24
    assert per_class(everything) == {0: 10, 1: 14}
    assert splits.notes == [
        "data: skipped 1 broken link(s)",
        "data: skipped 3 folder link(s) to a folder already read (a loop, or a second path to it)",
        "data: skipped 1 hidden file(s) or folder(s)",
        "data: skipped 1 second path(s) to an image already taken",
        "data: skipped 1 special file(s) (pipes, sockets, devices)",
        "data: followed 1 link(s) that leave data.root",
    ]


def test_data_that_cannot_be_trained_is_refused_and_odd_data_noted(tmp_path):
    one = make_image_folder(tmp_path / "one", classes=1)
    with pytest.raises(DataError, match=r"1 class folder\(s\) \['class_0'\]: classification needs at least two"):
        discover_splits(DataConfig(root=str(one)), one)
    root = tmp_path / "data"
    make_image_folder(root / "train", classes=3, per_class=6)
    make_image_folder(root / "val", classes=3, per_class=2)
    make_image_folder(root / "test", classes=3, per_class=2)
    for image in (root / "test" / "class_2").iterdir():
        image.unlink()
    splits = discover_splits(DataConfig(root=str(root)), root)
    assert splits.notes == ["data: class(es) ['class_2'] have no test images: their test metrics are undefined"]
    splits.save(tmp_path / "saved")  # a resume reads the warnings back with the lists
    assert DataSplits.load(tmp_path / "saved", root) == splits
    for image in (root / "train" / "class_1").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"class\(es\) \['class_1'\] have no training images after the split"):
        discover_splits(DataConfig(root=str(root)), root)
    (root / "train" / "class_0").rename(root / "train" / "two\nlines")
    with pytest.raises(DataError, match="class folder names .* hold line breaks: rename them"):
        discover_splits(DataConfig(root=str(root)), root)


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
    with pytest.raises(ConfigError, match=r"data.augmentations\[0\] \(auto_augment\): 'imagenette' is not a valid"):
        build_transform(DataConfig(builtin="digits", augmentations=[{"name": "auto_augment", "policy": "imagenette"}]),
                        train=True)
    with pytest.raises(ConfigError, match=r"data.augmentations\[0\] \(rotation\)"):
        build_transform(DataConfig(builtin="digits", augmentations=[{"name": "rotation", "angle": 3}]), train=True)


def test_builtin_digits_materialised_once_as_image_folder(tmp_path):
    root = builtin_root("digits", str(tmp_path))
    files = sorted(root.rglob("*.png"))
    assert len(files) == 1797
    counts = {split: len(list((root / split).rglob("*.png"))) for split in ("train", "val", "test")}
    assert counts == {"train": 1259, "val": 269, "test": 269}
    assert sorted(p.name for p in (root / "train").iterdir()) == [str(d) for d in range(10)]
    with Image.open(files[0]) as image:
        assert image.size == (32, 32)
    assert len({p.name for p in files}) == 1797  # each source image in exactly one split
    stamp = files[0].stat().st_mtime_ns
    assert builtin_root("digits", str(tmp_path)) == root and files[0].stat().st_mtime_ns == stamp
    splits = discover_splits(DataConfig(builtin="digits"), root)
    assert len(splits.classes) == 10 and len(splits.splits["test"]) == 269


def _signalled_at_start(worker_id: int) -> None:
    """Stop signals while the workers start: to the training process, and to this worker after torch gave it
    its own SIGTERM handler (which would end it), before init_worker."""
    os.kill(os.getppid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)
    init_worker(worker_id)


def test_a_stop_signal_while_workers_start_kills_none_and_reaches_the_training_process(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=8)
    samples = discover_splits(DataConfig(root=str(root), val_fraction=0.25, test_fraction=0.0), root).splits["train"]
    dataset = ImageListDataset(root, samples, build_transform(DataConfig(root=str(root), image_size=16), train=False))
    loader = build_loader(dataset, batch_size=2, num_workers=2, seed=0)
    loader.worker_init_fn = _signalled_at_start
    got = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        assert len(list(batches_of(loader))) == 6  # every batch: no worker died
        time.sleep(0.1)
        assert got and set(got) == {signal.SIGUSR1}  # held while the workers started, then delivered
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_loader_workers_leave_stop_signals_to_the_process_that_owns_them(tmp_path):
    """A scheduler signals every process of a job: the workers must not die of it in the middle of an epoch."""
    root = make_image_folder(tmp_path / "data", classes=2, per_class=8)
    samples = discover_splits(DataConfig(root=str(root), val_fraction=0.25, test_fraction=0.0), root).splits["train"]
    dataset = ImageListDataset(root, samples, build_transform(DataConfig(root=str(root), image_size=16), train=False))
    batches = iter(build_loader(dataset, batch_size=2, shuffle=False, num_workers=2, seed=0))
    first = [next(batches), next(batches)]  # one from each worker: both have set themselves up
    for worker in batches._workers:
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            os.kill(worker.pid, signum)
    time.sleep(0.5)
    assert len([*first, *batches]) == 6  # every batch still comes


def test_more_workers_than_cpus_are_clamped_and_said_once(tmp_path, caplog):
    """Torch would warn at every loader that the workers exceed the CPUs; the harness uses as many as there are
    and says so once."""
    root = make_image_folder(tmp_path / "images", classes=2, per_class=4, size=8)
    cpus = len(os.sched_getaffinity(0))
    cfg = DataConfig(root=str(root), image_size=8, num_workers=cpus + 7)
    with caplog.at_level(logging.WARNING, logger="harness.data.workers"):
        assert loader_workers(cfg) == loader_workers(cfg) == cpus
    assert [record.getMessage() for record in caplog.records] == [
        f"data.num_workers: {cpus + 7} asked for, but this process may run on {cpus} CPU(s): using {cpus} loader workers"]
    samples = discover_splits(DataConfig(root=str(root), val_fraction=0.25, test_fraction=0.25), root).splits["train"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, labels, _ = next(iter(eval_loader(cfg, root, samples, batch_size=2, seed=0)))
    assert images.shape == (2, 3, 8, 8)
