"""The splits of a data set: which images are train, val and test, found once and kept.

Every split is a list of ``(relative path, class index)`` under one data root. The lists are found once
(``discover_splits``: the link policy and the image checks of ``harness.data.images``, then a stratified split),
saved in the run directory, and read back by a resume and by inference, so a run's test set never changes
after training.
"""

from __future__ import annotations

import csv
import logging
import os
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from harness.config.schema import DataConfig
from harness.data.check import leave_out_bad_images
from harness.data.files import files_at, fingerprint
from harness.data.images import Found, find_images
from harness.data.index import Stat
from harness.data.packed import is_packed
from harness.errors import DataError
from harness.storage.atomic import atomic_path, write_atomic

logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
Samples = list[tuple[str, int]]


@dataclass
class DataSplits:
    root: Path
    classes: list[str]
    splits: dict[str, Samples]  # split name -> (path relative to root, class index)
    skipped: dict[str, str] = field(default_factory=dict)  # unreadable images left out (data.on_bad_image: skip)
    notes: list[str] = field(default_factory=list)  # what the log and the summary warn about the data
    # Split name -> the fingerprint of its files as a new run's walk found them (the image caches' key); not saved.
    fingerprints: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / "classes.txt", "".join(f"{name}\n" for name in self.classes))
        for split, samples in self.splits.items():
            _write_csv(folder / f"{split}.csv", ["path", "label"],
                       [(path, self.classes[label]) for path, label in samples])
        if self.skipped:
            _write_csv(folder / "skipped_images.csv", ["path", "problem"], sorted(self.skipped.items()))
        if self.notes:
            write_atomic(folder / "warnings.txt", "".join(f"{note}\n" for note in self.notes))

    def class_counts(self, split: str) -> list[int]:
        """Images per class in ``split``, in class order."""
        counts = [0] * len(self.classes)
        for _, label in self.splits[split]:
            counts[label] += 1
        return counts

    @classmethod
    def load(cls, folder: Path, root: Path) -> "DataSplits":
        """Read the class list and the split lists a run saved; a damaged one is a DataError naming it."""
        if not (folder / "classes.txt").is_file():
            raise DataError(f"{folder}: no classes.txt: not the splits folder of a run")
        try:
            classes = (folder / "classes.txt").read_text(encoding="utf-8").splitlines()
            index = {name: i for i, name in enumerate(classes)}
            splits = {split: [(row["path"], index[row["label"]]) for row in _read_csv(folder / f"{split}.csv")]
                      for split in SPLITS if (folder / f"{split}.csv").exists()}
            skipped = {row["path"]: row["problem"] for row in _read_csv(folder / "skipped_images.csv")}
            notes = _read_lines(folder / "warnings.txt")
        except (KeyError, ValueError, csv.Error) as error:  # UnicodeDecodeError is a ValueError
            raise DataError(f"{folder}: the run's split lists are damaged ({type(error).__name__}: {error}); the run "
                            "cannot be resumed or evaluated on its own splits") from None
        return cls(Path(root), classes, splits, skipped, notes)


def _read_csv(path: Path) -> list[dict]:
    """The rows of a CSV file the harness wrote (none if it is absent); a field that is not there is a KeyError
    when read, a row with too few fields one too."""
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if None in row.values() or None in row:
            raise ValueError(f"{path.name}: a row with {len(row)} fields where the header has others")
    return rows


def _read_lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines() if path.is_file() else []


def _write_csv(path: Path, header: list[str], rows: list) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


# ----------------------------------------------------------------------------------------------------
# Finding the splits


def discover_splits(cfg: DataConfig, root: Path, exclude: Path | None = None) -> DataSplits:
    """root/{train,val,test}/<class>/* where present; a missing val or test split is carved out of the
    train pool (root/train, or root itself when it has no train/ folder), stratified by class. With
    ``data.folds``, train and val are fold ``data.fold`` of k stratified folds of every non-test image instead.
    Every image is checked first (``harness.data.check``); what cannot be trained is refused, what is odd is noted.
    ``exclude`` (the folder of the runs) and run directories are never read as data. A packed folder gives the
    listing its source gave when it was packed."""
    if not root.is_dir():
        raise DataError(f"data.root: {root} is not a folder")
    listing, found = packed_listing(root) if is_packed(root) else list_images(root, exclude)
    present = listing["present"]
    pool_dir = root / "train" if present else root
    classes = listing["classes"]["train"]
    if len(classes) < 2:
        raise DataError(f"{pool_dir}: {len(classes)} class folder(s) {classes}: classification needs at least two")
    unlisted = [name for name in classes if name != name.strip() or "\n" in name or "\r" in name]
    if unlisted:  # classes.txt holds one name per line
        raise DataError(f"{pool_dir}: class folder names {unlisted} begin or end with spaces or hold line breaks: rename them")
    named = {group: [tuple(file) for file in files] for group, files in listing["files"].items()}
    for split in ("val", "test"):
        if split in present and listing["classes"][split] != classes:
            split_classes = listing["classes"][split]
            missing, extra = sorted(set(classes) - set(split_classes)), sorted(set(split_classes) - set(classes))
            raise DataError(f"{root / split}: classes differ from {pool_dir}: missing {missing}, extra {extra}")
    _check_names(root, classes, [file for files in named.values() for file in files])
    index = {name: i for i, name in enumerate(classes)}
    skipped = leave_out_bad_images(cfg, root, named, found.stats)
    splits = {split: [(path, index[label]) for label, path in files] for split, files in named.items()}
    if cfg.folds:  # every image that is not test (root/val included) goes into the folds
        splits["train"] += splits.pop("val", [])
        if "test" not in present:
            splits.update(stratified_split(splits["train"], {"test": cfg.fraction("test")}, seed=cfg.split_seed))
        splits.update(stratified_folds(splits["train"], cfg.folds, cfg.fold, seed=cfg.split_seed))
    else:
        carve = {s: cfg.fraction(s) for s in ("test", "val") if s not in present}
        if carve:
            splits.update(stratified_split(splits["train"], carve, seed=cfg.split_seed))
    splits = {s: splits[s] for s in SPLITS if splits.get(s)}
    data = DataSplits(root, classes, splits, skipped, _found_notes(found), _fingerprints(cfg, root, splits, found.stats))
    _check_classes(data, root)
    return data


def read_splits(folder: Path, root: Path, cfg: DataConfig) -> DataSplits:
    """The splits a run saved in ``folder``, read back (``DataSplits.load``), with their files' fingerprints."""
    data = DataSplits.load(folder, root)
    data.fingerprints = _fingerprints(cfg, root, data.splits)
    return data


def _fingerprints(cfg: DataConfig, root: Path, splits: dict[str, Samples], stats: dict[str, Stat] | None = None
                  ) -> dict[str, str]:
    """Each split's ``fingerprint``, where ``data.cache`` names its image caches by them."""
    return {} if cfg.cache == "none" else {split: fingerprint(root, samples, stats) for split, samples in splits.items()}


def list_images(root: Path, exclude: Path | None = None) -> tuple[dict, Found]:
    """The walk of a data root: the split folders present, and for the train pool (root/train, or root) and each of
    val/ and test/ its class folders and (class, path) files; with what the walk found (skips, each file's stat)."""
    present = [s for s in SPLITS if (root / s).is_dir()]
    if present and "train" not in present:
        raise DataError(f"{root}: has {'/, '.join(present)}/ but no train/ folder")
    found = Found(excluded={os.path.realpath(exclude)} if exclude else set())
    listing: dict = {"present": present, "classes": {}, "files": {}}
    for group, folder in [("train", root / "train" if present else root),
                          *((split, root / split) for split in ("val", "test") if split in present)]:
        listing["classes"][group], listing["files"][group] = find_images(folder, root, found)
    return listing, found


def packed_listing(root: Path) -> tuple[dict, Found]:
    """The listing a packed folder's source gave, with what its walk found."""
    files = files_at(root)
    listing = files.pack.listing
    return listing, Found(skipped=Counter(listing["skipped"]), outside=listing["outside"], stats=files.pack.stats())


def _check_names(folder: Path, classes: list[str], files: list[tuple[str, str]]) -> None:
    """Class folders and files whose names are not UTF-8 (bytes the file system keeps, which no list of the run can
    hold) are refused, a few of them named."""
    bad = []
    for name in [*classes, *(path for _, path in files)]:
        try:
            name.encode("utf-8")
        except UnicodeEncodeError:
            bad.append(os.fsencode(name))
    if bad:
        raise DataError(f"{folder}: {len(bad)} folder or file name(s) are not UTF-8, e.g. {bad[:3]}: rename them "
                        "(e.g. with convmv)")


def _found_notes(found: Found) -> list[str]:
    notes = [f"data: skipped {count} {reason}" for reason, count in sorted(found.skipped.items())]
    if found.outside:
        notes.append(f"data: followed {found.outside} link(s) that leave data.root")
    return notes


def _check_classes(data: DataSplits, root: Path) -> None:
    """Refuse a class without training images; note a class without validation or test images."""
    if not data.splits.get("val"):
        raise DataError(f"{root}: no validation images: add a val/ folder or set data.val_fraction above 0")
    for split in ("train", "val", "test"):
        if split not in data.splits:
            continue
        empty = [name for name, count in zip(data.classes, data.class_counts(split)) if count == 0]
        if empty and split == "train":
            raise DataError(f"{root}: class(es) {empty} have no training images after the split: add images, "
                            "or lower data.val_fraction / data.test_fraction")
        if empty:
            data.notes.append(f"data: class(es) {empty} have no {split} images: their {split} metrics are undefined")


def stratified_split(samples: Samples, fractions: dict[str, float], seed: int) -> dict[str, Samples]:
    """Split ``samples`` per class: each named split gets round(fraction * class size) of every class, the
    rest stays in ``train``. Depends only on ``seed`` and the sample list."""
    out: dict[str, Samples] = {"train": [], **{name: [] for name in fractions}}
    for members in _shuffled_classes(samples, seed):
        start = 0
        for name, fraction in fractions.items():
            count = int(round(fraction * len(members)))
            out[name] += members[start : start + count]
            start += count
        out["train"] += members[start:]
    return {name: sorted(split) for name, split in out.items()}


def stratified_folds(samples: Samples, folds: int, fold: int, seed: int) -> dict[str, Samples]:
    """Fold ``fold`` of ``folds`` as the ``val`` split, the others as ``train``: every class is shuffled
    (depending only on ``seed``) and dealt round the folds, continuing where the previous class stopped, so
    each fold holds a near-equal share of every class and of the whole."""
    out: dict[str, Samples] = {"train": [], "val": []}
    dealt = 0
    for members in _shuffled_classes(samples, seed):
        for sample in members:
            out["val" if dealt % folds == fold else "train"].append(sample)
            dealt += 1
    return {name: sorted(split) for name, split in out.items()}


def _shuffled_classes(samples: Samples, seed: int) -> Iterator[Samples]:
    """Each class's samples, class by class in label order, shuffled by one generator seeded with ``seed``."""
    rng = random.Random(seed)
    by_class: dict[int, Samples] = {}
    for sample in samples:
        by_class.setdefault(sample[1], []).append(sample)
    for label in sorted(by_class):
        members = sorted(by_class[label])
        rng.shuffle(members)
        yield members
