"""Test-time augmentation (``infer.py --tta SET``): each image is predicted in several views, made on the device
from the normalised batch, and the views' class probabilities are averaged.

- ``identity``: the image itself (the same predictions as no TTA);
- ``hflip``: the image and its mirror image;
- ``flips``: the image flipped horizontally, vertically and both ways, and itself;
- ``five_crop``: five crops of 7/8 of the side (the centre and the corners), each resized back to the input size.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

View = Callable[[torch.Tensor], torch.Tensor]  # images x channels x height x width -> the same shape


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _crops(share: float) -> list[View]:
    def crop(top: bool | None, left: bool | None) -> View:
        def view(x: torch.Tensor) -> torch.Tensor:
            height, width = x.shape[-2:]
            h, w = max(1, round(height * share)), max(1, round(width * share))
            y = (height - h) // 2 if top is None else 0 if top else height - h
            z = (width - w) // 2 if left is None else 0 if left else width - w
            return F.interpolate(x[..., y:y + h, z:z + w], size=(height, width), mode="bilinear", align_corners=False)
        return view

    return [crop(None, None)] + [crop(top, left) for top in (True, False) for left in (True, False)]


TTA_SETS: dict[str, list[View]] = {
    "identity": [_identity],
    "hflip": [_identity, lambda x: x.flip(-1)],
    "flips": [_identity, lambda x: x.flip(-1), lambda x: x.flip(-2), lambda x: x.flip(-1, -2)],
    "five_crop": _crops(7 / 8),
}


def mean_log_probabilities(log_probabilities: list[torch.Tensor]) -> torch.Tensor:
    """The log of the mean of several predictions' probabilities, from their log-probabilities; of one
    prediction, that prediction exactly."""
    if len(log_probabilities) == 1:
        return log_probabilities[0]
    stacked = torch.stack(log_probabilities)
    return torch.logsumexp(stacked, dim=0) - torch.log(torch.tensor(float(len(log_probabilities))))


# The augmentations a training needs for each set's views to look like what the model saw: any one of each group.
TRAINED_FOR = {"identity": [], "hflip": [["hflip"]], "flips": [["hflip"], ["vflip"]],
               "five_crop": [["random_crop", "random_resized_crop"]]}


def unseen_views(tta: str, augmentations: list) -> list[str]:
    """What a training with ``augmentations`` (``data.augmentations``) lacks for the views of ``tta``: the model
    never saw such images, and averaging over them can lower the accuracy (a mirrored digit is another glyph)."""
    trained = {spec if isinstance(spec, str) else spec.get("name") for spec in augmentations}
    return [" or ".join(group) for group in TRAINED_FOR[tta] if not trained & set(group)]
