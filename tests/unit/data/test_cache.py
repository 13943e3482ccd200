"""data.cache: the same images as the files, bit for bit, filled as they are first read; one file per machine that
every process fills and reads; a new one when the data changes; damaged files and slots never read as images;
memory caches removed when their last process ends; disk caches reused across runs."""

import multiprocessing
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.config.schema import DataConfig
from harness.data.cache import cache_folder, check_memory, image_cache, memory_folder
from harness.data.images import load_image
from harness.data.loaders import ImageListDataset
from harness.data.splits import discover_splits
from harness.data.transforms import build_transform, resizer
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
    assert cache.cached() == 0  # nothing decoded before it is read
    files = items(root, cfg, samples, None)
    assert all(torch.equal(a, b) for a, b in zip(files, items(root, cfg, samples, cache)))  # filling, then read
    assert cache.cached() == len(samples)
    assert all(torch.equal(a, b) for a, b in zip(files, items(root, cfg, samples, cache)))  # all from the cache
    assert image_cache("none", root, samples, cfg) is None


def test_the_disk_cache_is_reused_and_a_new_one_made_when_a_file_changes(data):
    root, cfg, samples = data
    changed = root / samples[3][0]
    Image.new("RGB", (20, 20), (9, 9, 9)).save(changed, format="BMP")  # uncompressed: its size is its dimensions'
    first = image_cache("disk", root, samples, cfg)
    items(root, cfg, samples, first)
    (entry,) = cache_folder(cfg).glob("*.cache")
    again = image_cache("disk", root, samples, cfg)  # another run: read, not decoded again
    assert again.cached() == len(samples) and np.array_equal(first.pixels, again.pixels)
    # One file rewritten with other pixels, byte for byte the same size, later: a new entry with the new image.
    size, built = changed.stat().st_size, entry.stat().st_mtime_ns
    Image.new("RGB", (20, 20), (1, 2, 3)).save(changed, format="BMP")
    os.utime(changed, ns=(built + 10**9, built + 10**9))
    assert changed.stat().st_size == size  # only the modification time tells the two files apart
    rebuilt = image_cache("disk", root, samples, cfg)
    assert len(list(cache_folder(cfg).glob("*.cache"))) == 2 and rebuilt.cached() == 0
    assert (np.asarray(rebuilt.image(3)) == (1, 2, 3)).all()
    # A different image size is another entry too.
    cfg.image_size = 10
    assert image_cache("disk", root, samples, cfg).pixels.shape[1:3] == (10, 10)
    assert len(list(cache_folder(cfg).glob("*.cache"))) == 3


def test_a_damaged_file_is_made_again_a_damaged_slot_is_decoded_again_and_a_full_disk_refused(data, caplog,
                                                                                           monkeypatch):
    root, cfg, samples = data
    expected = items(root, cfg, samples, None)
    items(root, cfg, samples, image_cache("disk", root, samples, cfg))
    (entry,) = cache_folder(cfg).glob("*.cache")
    with open(entry, "r+b") as f:
        f.truncate(entry.stat().st_size // 2)  # as a full disk or a killed copy leaves it
    with caplog.at_level("WARNING", logger="harness.data.cache"):
        again = image_cache("disk", root, samples, cfg)
    assert "is damaged" in caplog.text and "building it again" in caplog.text and again.cached() == 0
    assert all(torch.equal(a, b) for a, b in zip(expected, items(root, cfg, samples, again)))
    again.pixels[2] = 255 - again.pixels[2]  # a slot's pixels changed behind its checksum: read from the file
    again.pixels[5, 0, 0] ^= 1
    assert all(torch.equal(a, b) for a, b in zip(expected, items(root, cfg, samples, again)))
    monkeypatch.setattr("harness.data.cache.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 10))
    cfg.image_size = 12  # another entry, which 10 free bytes cannot hold
    with pytest.raises(DataError, match=r"data.cache: disk needs 0.0 GB in .* for 8 images at 12px, and 0.0 GB is "
                                        "free: free some"):
        image_cache("disk", root, samples, cfg)
    assert not [path for path in cache_folder(cfg).iterdir() if path.suffix == ".cache" and path != entry]


def test_a_memory_cache_the_machine_cannot_hold_is_refused_before_anything_is_allocated():
    cfg = DataConfig(builtin="digits", cache="memory", image_size=4096)
    with pytest.raises(DataError, match=r"data.cache: memory needs 100.7 GB for 2000 images at 4096px, and this "
                                        r"machine has [\d.]+ GB available \(/dev/shm: [\d.]+ GB free\): use "
                                        "data.cache: disk"):
        check_memory(2000, cfg)
    check_memory(2000, DataConfig(builtin="digits", cache="disk", image_size=4096))  # not in memory: no limit here


def _fill(args):
    """In another process: read every image through the cache (each of three fills its third first, then reads all);
    the pixels' sum, the images cached, and the cache file."""
    mode, root, cfg, samples, part = args
    cache = image_cache(mode, root, samples, cfg)
    for index in [*range(part, len(samples), 3), *range(len(samples))]:
        cache.image(index)
    return int(cache.pixels.sum(dtype=np.int64)), cache.cached(), cache.path


@pytest.mark.parametrize("mode", ["memory", "disk"])
def test_processes_share_one_file_that_each_fills_and_all_read_whole(data, mode):
    root, cfg, samples = data
    with multiprocessing.get_context("fork").Pool(3) as pool:
        results = pool.map(_fill, [(mode, root, cfg, samples, part) for part in range(3)])
    resize = resizer(cfg.image_size)
    expected = sum(int(np.asarray(resize(load_image(root / path))).sum(dtype=np.int64)) for path, _ in samples)
    assert results == [(expected, len(samples), results[0][2])] * 3  # one file, whole, the files' pixels
    assert results[0][2].parent == (memory_folder() if mode == "memory" else cache_folder(cfg))
    assert not [p for p in results[0][2].parent.iterdir() if p.name.startswith(f".{results[0][2].stem}-")]


def test_a_copy_for_a_spawned_worker_maps_the_same_file(data):
    root, cfg, samples = data
    cache = image_cache("disk", root, samples, cfg)
    copy = pickle.loads(pickle.dumps(cache))
    assert len(pickle.dumps(cache)) < 10_000  # the file is not in the copy
    copy.image(4)
    assert cache.cached() == 1 and np.array_equal(cache.pixels[4], copy.pixels[4])


@pytest.mark.slow  # three processes that import torch
def test_a_memory_cache_goes_with_its_last_process_and_a_killed_ones_with_the_next_start(data):
    root, cfg, samples = data

    def script(size: int, then: str = "") -> list[str]:
        return [sys.executable, "-c", "from harness.data.cache import image_cache; from harness.config.schema import "
                f"DataConfig; cache = image_cache('memory', {str(root)!r}, {samples!r}, DataConfig(image_size={size})); "
                "cache.image(0); print(cache.path, flush=True)" + then]

    def ended(size: int) -> Path:
        return Path(subprocess.run(script(size), capture_output=True, text=True, check=True).stdout.strip())

    alone = ended(11)
    assert alone.parent == memory_folder() and not alone.exists()  # its only user ended: removed
    ours = image_cache("memory", root, samples, cfg)
    assert ended(cfg.image_size) == ours.path and ours.path.exists()  # another user ended; this one uses it: kept
    killed = subprocess.Popen(script(12, "; import time; time.sleep(60)"), stdout=subprocess.PIPE, text=True)
    left = Path(killed.stdout.readline().strip())
    killed.kill()
    killed.wait()
    assert left.exists()  # a killed process removes nothing
    cfg.image_size = 9
    image_cache("memory", root, samples, cfg)  # the next start on the machine
    assert not left.exists() and ours.path.exists()


def test_a_cache_that_cannot_be_made_leaves_the_run_reading_the_files(data, tmp_path, caplog):
    root, cfg, samples = data
    (tmp_path / "blocker").write_text("")
    cfg.cache_dir = str(tmp_path / "blocker")  # a file where the cache folder should be
    with caplog.at_level("WARNING", logger="harness.data.cache"):
        assert image_cache("disk", root, samples, cfg) is None
    assert "could not be made (Not a directory): reading the image files every epoch instead" in caplog.text
