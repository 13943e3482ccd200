"""data.on_bad_image: with ``error`` a new run reads the headers only, and a file whose pixels alone are broken is
named, with every other bad file, when it is first read; with ``skip`` every file is decoded before training."""

from pathlib import Path

import pytest

from harness.config.schema import DataConfig
from harness.data.check import refuse_bad_images
from harness.data.files import files_at
from harness.data.index import Verdict, load_index
from harness.data.splits import discover_splits
from harness.errors import DataError
from tests.helpers import make_image_folder


def cut_short(path: Path) -> None:
    """``path`` cut to half its bytes, as a failed copy leaves it: its header reads, its pixels do not decode."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture
def folder(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=8, size=24)
    cfg = DataConfig(root=str(root), val_fraction=0.25, test_fraction=0.25, cache_dir=str(tmp_path / "cache"))
    return root, cfg


def paths_of(data) -> list[str]:
    return [path for samples in data.splits.values() for path, _ in samples]


def test_error_reads_the_headers_and_names_every_bad_file_once_one_is_read(folder):
    root, cfg = folder
    cut_short(root / "class_0" / "003.png")
    cut_short(root / "class_1" / "005.png")
    data = discover_splits(cfg, root)  # headers only: both are in the splits
    assert {"class_0/003.png", "class_1/005.png"} <= set(paths_of(data)) and data.skipped == {}
    index = load_index(Path(cfg.cache_dir), root)
    stat = files_at(root).stat("class_0/003.png")
    assert index.get("class_0/003.png", stat) == Verdict(24, 24, None, False)  # its header, not decoded
    # One of them read: the error names both, with what to do now that the run has started.
    error = refuse_bad_images(cfg, root, paths_of(data))
    message = str(error)
    assert message.startswith(f"{root}: 2 image(s) cannot be used: class_0/003.png (OSError: ")
    assert "; class_1/005.png (OSError: " in message
    assert message.endswith("Fix them, and the same command continues the run; or leave them out in a new run: "
                            "data.on_bad_image=skip, with --force or another --run-name")
    # The index keeps what that check decoded: the next start refuses at once, naming both.
    with pytest.raises(DataError, match=r"2 image\(s\) cannot be used: class_0/003.png .*; class_1/005.png .*"
                                        r"Fix or remove them, or set data.on_bad_image=skip"):
        discover_splits(cfg, root)


def test_a_bad_header_refuses_naming_the_files_whose_pixels_alone_are_broken_too(folder):
    root, cfg = folder
    cut_short(root / "class_0" / "003.png")
    (root / "class_1" / "notes.png").write_text("not an image")
    with pytest.raises(DataError, match=r"2 image\(s\) cannot be used: class_0/003.png \(OSError: .*\); "
                                        r"class_1/notes.png \(UnidentifiedImageError"):
        discover_splits(cfg, root)


def test_skip_decodes_what_a_header_check_left_undecoded(folder):
    root, cfg = folder
    cut_short(root / "class_0" / "003.png")
    assert discover_splits(cfg, root).skipped == {}  # error: its header read, kept in the index
    cfg.on_bad_image = "skip"
    skipped = discover_splits(cfg, root).skipped
    assert list(skipped) == ["class_0/003.png"] and skipped["class_0/003.png"].startswith("OSError: ")


def test_mended_files_give_no_error(folder):
    root, cfg = folder
    data = discover_splits(cfg, root)
    assert refuse_bad_images(cfg, root, paths_of(data)) is None
