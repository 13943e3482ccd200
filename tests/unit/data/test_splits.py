"""Splits: stratified and seeded, from split folders or carved from train, k-fold, the classes checked, the
link policy, saved and read back."""

import os
from collections import Counter

import pytest

from harness.config.schema import DataConfig
from harness.data.splits import DataSplits, discover_splits
from harness.errors import DataError
from tests.helpers import make_image_folder


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
