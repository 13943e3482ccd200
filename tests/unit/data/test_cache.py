"""data.cache: the same images as the files, bit for bit; rebuilt when the data changes; built once by
processes that ask for it at the same time; reused across runs."""

import multiprocessing
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from harness.config.schema import DataConfig
from harness.data.cache import Decoder, cache_folder, check_memory, image_cache
from harness.data.loaders import ImageListDataset
from harness.data.splits import discover_splits
from harness.data.transforms import build_transform
from harness.errors import DataError
from tests.helpers import make_image_folder

AUGMENTATIONS = ["hflip", {"name": "random_crop", "padding": 3}, "color_jitter", "rotation"]


@pytest.fixture
def data(tmp_path):
    # 20 px files resized to 14: the cache keeps the resized image, never the file's
    root = make_image_folder(tmp_path / "data", classes=2, per_class=6, size=20)
    cfg = DataConfig(root=str(root), image_size=14, augmentations=AUGMENTATIONS, cache_dir=str(tmp_path / "cache"))
    samples = discover_splits(DataConfig(root=str(root), val_fraction=0.25, test_fraction=0.0), root).splits["train"]
    return root, cfg, samples


def items(root, cfg, samples, cache) -> list[torch.Tensor]:
    """Every sample of two epochs, augmented as training sees them."""
    dataset = ImageListDataset(root, samples, build_transform(cfg, train=True), augment_seed=5, cache=cache)
    return [dataset[epoch, index][0] for epoch in (0, 1) for index in range(len(dataset))]


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_a_cached_sample_is_the_same_tensor_as_one_read_from_its_file(data, mode):
    root, cfg, samples = data
    cache = image_cache(mode, root, samples, cfg)
    assert cache.pixels.shape == (len(samples), 14, 14, 3) and cache.pixels.dtype == np.uint8
    assert all(torch.equal(a, b) for a, b in zip(items(root, cfg, samples, None), items(root, cfg, samples, cache)))
    assert image_cache("none", root, samples, cfg) is None


def test_the_disk_cache_is_reused_and_rebuilt_when_a_file_changes(data):
    root, cfg, samples = data
    changed = root / samples[3][0]
    Image.new("RGB", (20, 20), (9, 9, 9)).save(changed, format="BMP")  # uncompressed: its size is its dimensions'
    first = image_cache("disk", root, samples, cfg)
    (entry,) = cache_folder(cfg).glob("*.npy")
    built = entry.stat().st_mtime_ns
    again = image_cache("disk", root, samples, cfg)  # another run: read, not built
    assert entry.stat().st_mtime_ns == built and np.array_equal(first.pixels, again.pixels)
    # One file rewritten with other pixels, byte for byte the same size, later: a new entry with the new image.
    size = changed.stat().st_size
    Image.new("RGB", (20, 20), (1, 2, 3)).save(changed, format="BMP")
    os.utime(changed, ns=(built + 10**9, built + 10**9))
    assert changed.stat().st_size == size  # only the modification time tells the two files apart
    rebuilt = image_cache("disk", root, samples, cfg)
    assert len(list(cache_folder(cfg).glob("*.npy"))) == 2
    assert (rebuilt.pixels[3] == (1, 2, 3)).all() and np.array_equal(rebuilt.pixels[:3], first.pixels[:3])
    # A different image size is another entry too.
    cfg.image_size = 10
    assert image_cache("disk", root, samples, cfg).pixels.shape[1:3] == (10, 10)
    assert len(list(cache_folder(cfg).glob("*.npy"))) == 3


def test_a_damaged_entry_is_built_again_with_a_warning_and_one_that_would_not_fit_is_refused(data, caplog,
                                                                                           monkeypatch):
    root, cfg, samples = data
    expected = np.array(image_cache("disk", root, samples, cfg).pixels)  # a copy: the mapping goes with the file
    (entry,) = cache_folder(cfg).glob("*.npy")
    with open(entry, "r+b") as f:
        f.truncate(entry.stat().st_size // 2)  # as a full disk or a killed copy leaves it
    with caplog.at_level("WARNING", logger="harness.data.cache"):
        again = image_cache("disk", root, samples, cfg)
    assert "is damaged" in caplog.text and "building it again" in caplog.text
    assert np.array_equal(again.pixels, expected)
    monkeypatch.setattr("harness.data.cache.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 10))
    cfg.image_size = 12  # another entry, which 10 free bytes cannot hold
    with pytest.raises(DataError, match=r"data.cache: disk needs 0.0 GB in .* for 8 images at 12px, and 0.0 GB is "
                                        "free: free some"):
        image_cache("disk", root, samples, cfg)
    assert not [path for path in cache_folder(cfg).iterdir() if path.suffix == ".npy" and path != entry]


def test_a_memory_cache_the_machine_cannot_hold_is_refused_before_anything_is_allocated(monkeypatch):
    cfg = DataConfig(builtin="digits", cache="memory", image_size=4096)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    with pytest.raises(DataError, match=r"data.cache: memory needs 201.3 GB for 2000 images at 4096px in 2 "
                                        r"process\(es\), and this machine has [\d.]+ GB available: use data.cache: disk"):
        check_memory(2000, cfg)
    check_memory(2000, DataConfig(builtin="digits", cache="disk", image_size=4096))  # not in memory: no limit here


def _build(args):
    root, cfg, samples = args
    return image_cache("disk", root, samples, cfg).pixels.sum(dtype=np.int64)


def test_processes_that_ask_at_once_build_it_once_and_all_read_it_whole(data, tmp_path, monkeypatch):
    root, cfg, samples = data
    builds, decode = tmp_path / "builds.txt", Decoder.into

    def counted(self, out):
        with open(builds, "a") as f:
            f.write(f"{os.getpid()}\n")
        return decode(self, out)

    monkeypatch.setattr(Decoder, "into", counted)  # the forked processes inherit it
    with multiprocessing.get_context("fork").Pool(3) as pool:
        sums = pool.map(_build, [(root, cfg, samples)] * 3)
    assert len(builds.read_text().splitlines()) == 1
    assert len(set(sums)) == 1 and sums[0] > 0
    assert [p.name for p in cache_folder(cfg).iterdir() if not p.name.endswith(".lock")] == [
        p.name for p in cache_folder(cfg).glob("*.npy")]  # one entry, no temporary file left
    assert len(list(cache_folder(cfg).glob("*.npy"))) == 1
