"""Built-in data: the digits written once as an image folder."""

from PIL import Image

from harness.config.schema import DataConfig
from harness.data.builtin import builtin_root
from harness.data.splits import discover_splits


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
