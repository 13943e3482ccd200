"""Test-time views: each set's views are the images they say (a mirror image is a mirror image, a corner crop the
corner), and averaging views averages their probabilities."""

import pytest
import torch
import torch.nn.functional as F

from harness.evaluation.tta import TTA_SETS, mean_log_probabilities, unseen_views


def images() -> torch.Tensor:
    """Two 3-channel images with no symmetry: every flip or crop moves their values."""
    return torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) ** 1.5


def test_the_views_are_the_image_its_mirror_images_and_its_flips():
    x = images()
    assert [torch.equal(view(x), x) for view in TTA_SETS["identity"]] == [True]
    identity, mirror = (view(x) for view in TTA_SETS["hflip"])
    assert torch.equal(identity, x) and torch.equal(mirror, x[..., torch.arange(7, -1, -1)])  # left and right swap
    assert not torch.equal(mirror, x.flip(-2))
    expected = [x, x.flip(-1), x.flip(-2), x.flip(-2).flip(-1)]
    assert all(torch.equal(view(x), want) for view, want in zip(TTA_SETS["flips"], expected, strict=True))


def test_five_crops_are_the_centre_and_the_corners_resized_back():
    x = images()
    crops = [view(x) for view in TTA_SETS["five_crop"]]
    assert len(crops) == 5 and all(crop.shape == x.shape for crop in crops)
    side = 7  # 7/8 of 8
    corners = {(0, 0): x[..., :side, :side], (0, 1): x[..., :side, -side:], (1, 0): x[..., -side:, :side],
               (1, 1): x[..., -side:, -side:]}
    for crop, (top, left) in zip(crops[1:], [(0, 0), (0, 1), (1, 0), (1, 1)]):
        want = F.interpolate(corners[top, left], size=(8, 8), mode="bilinear", align_corners=False)
        assert torch.equal(crop, want)


def test_the_mean_of_views_is_the_mean_of_their_probabilities_and_of_one_the_view_itself():
    a, b = torch.randn(4, 5).log_softmax(1), torch.randn(4, 5).log_softmax(1)
    assert torch.equal(mean_log_probabilities([a]), a)
    assert torch.allclose(mean_log_probabilities([a, b]).exp(), (a.exp() + b.exp()) / 2, atol=1e-6)


@pytest.mark.parametrize("tta, augmentations, unseen", [
    ("identity", [], []),
    ("hflip", [{"name": "random_crop", "padding": 2}], ["hflip"]),
    ("hflip", ["hflip"], []),
    ("flips", ["hflip"], ["vflip"]),
    ("five_crop", ["hflip"], ["random_crop or random_resized_crop"]),
    ("five_crop", [{"name": "random_resized_crop"}], []),
])
def test_views_the_training_never_showed_are_named(tta, augmentations, unseen):
    assert unseen_views(tta, augmentations) == unseen
