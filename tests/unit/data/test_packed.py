"""Packed data: a packed folder gives its source's listing, splits, skips, verdicts and pixels; each shard is opened
once; tar gives the folder back; a damaged pack and every misuse of the pack command are one line."""

import os
import shutil
import tarfile

import pytest
import torch
from PIL import Image

from harness.config.schema import DataConfig
from harness.data.files import files_at
from harness.data.loaders import ImageListDataset
from harness.data.splits import discover_splits
from harness.data.transforms import build_transform
from harness.errors import DataError
from tests.helpers import PYTHON, launch, make_image_folder, one_line_error

AUGMENTATIONS = ["hflip", {"name": "random_crop", "padding": 3}]


def pack(source, out, *options, env, check=True):
    return launch("pack.py", [source, out, *options], env, launcher=PYTHON, check=check)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A folder with odd members (a bad image, a hidden file, a link to an image already taken, a nested folder),
    and its pack in shards of 1 MiB or less."""
    base = tmp_path_factory.mktemp("packed")
    source = make_image_folder(base / "source", classes=3, per_class=14, size=150)  # about 3 MB: three shards
    (source / "class_1" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    (source / "class_0" / ".hidden.png").write_bytes(b"")
    os.symlink(source / "class_0" / "000.png", source / "class_2" / "same.png")
    (source / "class_2" / "nested").mkdir()
    Image.new("RGB", (30, 20), (200, 10, 10)).save(source / "class_2" / "nested" / "deep.jpg")
    out = base / "out"
    result = pack(source, out, "--shard-mb", "1", env={**os.environ})  # the session's cache folder (conftest)
    assert "packed 44 images" in result.stderr + result.stdout
    return source, out


@pytest.mark.parametrize("options", [{}, {"folds": 3, "fold": 1}, {"val_fraction": 0.3, "test_fraction": 0.0}])
def test_a_packed_folder_gives_its_sources_splits_skips_and_notes(folders, tmp_path, options):
    source, out = folders
    cfg = DataConfig(on_bad_image="skip", cache_dir=str(tmp_path), **options)
    folder, packed = discover_splits(cfg, source), discover_splits(cfg, out)
    assert packed.classes == folder.classes and packed.splits == folder.splits
    assert packed.skipped == folder.skipped == {"class_1/broken.png": folder.skipped["class_1/broken.png"]}
    assert packed.notes == folder.notes and any("second path" in note for note in folder.notes)
    assert len(list((tmp_path / "index").glob("*.npz"))) == 1  # the source's: the pack brings its own


def test_every_sample_is_the_same_tensor_and_each_shard_is_opened_once(folders, monkeypatch):
    source, out = folders
    samples = discover_splits(DataConfig(on_bad_image="skip"), source).splits["train"]
    opened, real_open = [], os.open
    monkeypatch.setattr("harness.data.packed.os.open", lambda path, *a: opened.append(path) or real_open(path, *a))
    cfg = DataConfig(image_size=24, augmentations=AUGMENTATIONS)

    def items(root):
        dataset = ImageListDataset(root, samples, build_transform(cfg, train=True), augment_seed=3)
        return [dataset[epoch, index][0] for epoch in (0, 1) for index in range(len(dataset))]

    assert all(torch.equal(a, b) for a, b in zip(items(source), items(out)))
    shards = sorted(out.glob("shard-*.tar"))
    assert len(shards) >= 2 and sorted(opened) == shards  # every shard read, each opened once for two epochs


def test_tar_gives_the_folder_back(folders, tmp_path):
    source, out = folders
    for shard in sorted(out.glob("shard-*.tar")):
        with tarfile.open(shard) as tar:
            tar.extractall(tmp_path, filter="data")
    restored = sorted(path.relative_to(tmp_path) for path in tmp_path.rglob("*") if path.is_file())
    listed = [path for files in files_at(out).pack.listing["files"].values() for _, path in files]
    assert [str(path) for path in restored] == sorted(listed)
    assert all((tmp_path / path).read_bytes() == (source / path).read_bytes() for path in listed)


def test_a_damaged_pack_is_one_line_naming_the_file(folders, tmp_path):
    _, out = folders
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    shard = sorted(broken.glob("shard-*.tar"))[-1]
    with open(shard, "r+b") as f:
        f.truncate(1024)
    files = files_at(broken)
    with pytest.raises(DataError, match=f"{shard}: ends before .* \\(a truncated shard\\): pack the folder again"):
        files.load(files.pack.paths[-1])  # the last file of the last shard
    (broken / "pack.json").write_text("{")
    files_at.cache_clear()
    with pytest.raises(DataError, match=r"pack.json: a damaged pack \(JSONDecodeError: .*\): pack the folder again"):
        discover_splits(DataConfig(), broken)


@pytest.mark.slow  # six commands, each a process
def test_what_cannot_be_packed_is_refused_in_one_line_and_nothing_is_written(folders, tmp_path):
    source, out = folders
    env = {**os.environ}
    before = sorted(source.rglob("*"))
    for target, expected in [
        (source / "packed", f"{source / 'packed'}: inside {source} (or holding it), where it would be read as a class "
                            "folder: pack into a folder outside the data"),
        (out, f"{out}: exists, an earlier pack: add --force to replace it"),
        (source.parent, f"{source.parent}: inside {source} (or holding it)"),
    ]:
        refused = pack(source, target, env=env, check=False)
        assert refused.returncode == 2 and one_line_error(refused).startswith(expected), refused.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    refused = pack(source, tmp_path / "mine", "--force", env=env, check=False)
    assert one_line_error(refused) == f"{tmp_path / 'mine'}: exists, not a packed folder, which is never replaced: " \
                                      "choose a new folder"
    assert (tmp_path / "mine" / "notes.txt").read_text() == "mine"
    assert one_line_error(pack(out, tmp_path / "again", env=env, check=False)) == \
        f"{out}: already a packed folder: train on it as it is"
    assert sorted(source.rglob("*")) == before and not (tmp_path / "again").exists()
    replaced = tmp_path / "replaced"
    shutil.copytree(out, replaced)
    pack(source, replaced, "--force", "--shard-mb", "64", env=env)  # one shard now
    assert [path.name for path in replaced.glob("shard-*.tar")] == ["shard-00000.tar"]
