"""Image files: every mode read as its real content, and unreadable or oversized files named."""

import numpy as np
import pytest
from PIL import Image

from harness.data.images import load_image
from harness.errors import DataError

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
