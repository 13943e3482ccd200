"""The image index: a later run on the same root opens only the files that are new or changed since the last check,
and finds the same splits and the same bad images; a damaged index is checked again, never trusted."""

import os
from pathlib import Path

import pytest
from PIL import Image

from harness.config.schema import DataConfig
from harness.data.index import ImageIndex, Stat, Verdict, load_index
from harness.data.splits import discover_splits
from harness.errors import DataError
from tests.helpers import make_image_folder


@pytest.fixture
def folder(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=8, size=12)
    (root / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    cfg = DataConfig(root=str(root), on_bad_image="skip", val_fraction=0.25, test_fraction=0.25,
                     cache_dir=str(tmp_path / "cache"))
    return root, cfg


def index_files(cfg) -> list[Path]:
    return sorted(Path(cfg.cache_dir, "index").glob("*.npz"))


def broken_behind_the_index(path):
    """Overwrite ``path`` with bytes that are no image, keeping its byte size and modification time (which the
    index trusts)."""
    stat = path.stat()
    path.write_bytes(b"\0" * stat.st_size)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


def test_a_later_check_reuses_the_verdicts_and_finds_the_same_splits(folder):
    root, cfg = folder
    first = discover_splits(cfg, root)
    assert list(first.skipped) == ["class_1/broken.png"]
    assert len(index_files(cfg)) == 1
    # A good file's content broken behind the index's back (same size, same time): the verdict is reused, not
    # made again, which is what keeps a second start from opening every file.
    broken_behind_the_index(root / "class_0" / "000.png")
    again = discover_splits(cfg, root)
    assert again.splits == first.splits and again.skipped == first.skipped
    # Touched (a new modification time): checked again, and now left out.
    os.utime(root / "class_0" / "000.png")
    touched = discover_splits(cfg, root)
    assert sorted(touched.skipped) == ["class_0/000.png", "class_1/broken.png"]


def test_a_file_of_another_size_is_checked_again(folder):
    root, cfg = folder
    discover_splits(cfg, root)
    broken = root / "class_1" / "broken.png"
    stat = broken.stat()
    Image.new("RGB", (12, 12), (0, 0, 250)).save(broken, format="PNG")  # now good, mtime put back as it was
    os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert broken.stat().st_size != stat.st_size
    assert discover_splits(cfg, root).skipped == {}


def test_the_size_limit_applies_to_the_kept_sizes(folder):
    root, cfg = folder
    discover_splits(cfg, root)
    cfg.max_image_pixels, cfg.on_bad_image = 100, "error"  # the images are 12x12: over it, known from the index
    with pytest.raises(DataError, match=r"17 image\(s\) cannot be used: .*12x12 is 0 megapixels, above "
                                        r"data.max_image_pixels \(100\)"):
        discover_splits(cfg, root)


def test_a_damaged_index_is_checked_again_with_a_warning(folder, caplog):
    root, cfg = folder
    first = discover_splits(cfg, root)
    (index,) = index_files(cfg)
    index.write_bytes(index.read_bytes()[:100])
    broken_behind_the_index(root / "class_0" / "000.png")  # a full check sees it
    with caplog.at_level("WARNING", logger="harness.data.index"):
        again = discover_splits(cfg, root)
    assert f"the image index {index} is damaged" in caplog.text and "checking every image again" in caplog.text
    assert sorted(again.skipped) == ["class_0/000.png", *first.skipped]
    assert len(load_index(root.parent / "cache", root)) == 17  # written whole again


def test_indexes_saved_at_once_keep_what_each_added(tmp_path):
    one, two = load_index(tmp_path, tmp_path / "root"), load_index(tmp_path, tmp_path / "root")
    one.add("a.png", Stat(10, 1), Verdict(4, 4, None, True))
    two.add("b.png", Stat(20, 2), Verdict(0, 0, "UnidentifiedImageError: x", True))
    one.save()
    two.save()
    kept = load_index(tmp_path, tmp_path / "root")
    assert kept.get("a.png", Stat(10, 1)) == Verdict(4, 4, None, True)
    assert kept.get("b.png", Stat(20, 2)) == Verdict(0, 0, "UnidentifiedImageError: x", True)
    assert kept.get("a.png", Stat(10, 2)) is None  # another modification time: no verdict
    assert len(load_index(tmp_path, tmp_path / "other")) == 0  # one index per root


def test_an_index_that_cannot_be_written_leaves_the_check_whole(folder, tmp_path, caplog):
    root, cfg = folder
    blocker = tmp_path / "file"
    blocker.write_text("")
    cfg.cache_dir = str(blocker)  # a file where the folder should be
    with caplog.at_level("WARNING", logger="harness.data.index"):
        data = discover_splits(cfg, root)
    assert list(data.skipped) == ["class_1/broken.png"]
    assert "the image index cannot be kept in" in caplog.text
    assert isinstance(load_index(blocker, root), ImageIndex)


def test_an_index_that_cannot_be_saved_leaves_the_run_going_with_a_warning(folder, caplog, monkeypatch):
    root, cfg = folder

    def full(*args, **kwargs):
        raise OSError(27, "File too large")

    monkeypatch.setattr("harness.data.index.np.savez", full)
    with caplog.at_level("WARNING", logger="harness.data.index"):
        data = discover_splits(cfg, root)
    assert list(data.skipped) == ["class_1/broken.png"]
    assert "could not be written (File too large): the next run on this folder checks its images again" in caplog.text
    assert index_files(cfg) == [] and not list(Path(cfg.cache_dir, "index").glob(".*.npz"))  # no temporary left
