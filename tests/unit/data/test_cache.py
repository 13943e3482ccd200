"""data.cache: the same images as the files, bit for bit; rebuilt when the data changes; built once by
processes that ask for it at the same time; reused across runs."""

import multiprocessing
import os

import numpy as np
import pytest
import torch
from PIL import Image

from harness.config.schema import DataConfig
from harness.data.cache import Decoder, cache_folder, image_cache
from harness.data.loaders import ImageListDataset
from harness.data.splits import discover_splits
from harness.data.transforms import build_transform
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
    first = image_cache("disk", root, samples, cfg)
    (entry,) = cache_folder(cfg).glob("*.npy")
    built = entry.stat().st_mtime_ns
    again = image_cache("disk", root, samples, cfg)  # another run: read, not built
    assert entry.stat().st_mtime_ns == built and np.array_equal(first.pixels, again.pixels)
    # One file replaced (new pixels, a new modification time): a new entry with the new image.
    changed = root / samples[3][0]
    Image.new("RGB", (20, 20), (1, 2, 3)).save(changed)
    os.utime(changed, ns=(built + 10**9, built + 10**9))
    rebuilt = image_cache("disk", root, samples, cfg)
    assert len(list(cache_folder(cfg).glob("*.npy"))) == 2
    assert (rebuilt.pixels[3] == (1, 2, 3)).all() and np.array_equal(rebuilt.pixels[:3], first.pixels[:3])
    # A different image size is another entry too.
    cfg.image_size = 10
    assert image_cache("disk", root, samples, cfg).pixels.shape[1:3] == (10, 10)
    assert len(list(cache_folder(cfg).glob("*.npy"))) == 3


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
