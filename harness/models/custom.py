"""Custom models, registered by name for ``model.name``.

Adding a model is one function here decorated with ``@register_model("name")`` that takes ``num_classes`` (and
any keyword arguments, which come from ``model.kwargs`` in the config) and returns an ``nn.Module``.
"""

from __future__ import annotations

import torchvision
from torch import nn

from harness.models.registry import register_model

NORMS = {
    "batch": nn.BatchNorm2d,
    # per-sample normalisation: results do not depend on how a batch is split over processes or micro-batches
    "group": lambda channels: nn.GroupNorm(min(8, channels), channels),
    "none": lambda channels: nn.Identity(),
}


@register_model("compact_cnn")
def compact_cnn(num_classes: int, width: int = 32, dropout: float = 0.0, norm: str = "batch") -> nn.Module:
    """A small VGG-style CNN for small images (32x32 and up): three stages, global average pooling."""
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {norm!r}")

    def block(c_in: int, c_out: int) -> nn.Sequential:
        return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=norm == "none"), NORMS[norm](c_out),
                             nn.ReLU(inplace=True))

    w = width
    return nn.Sequential(
        block(3, w),
        block(w, w),
        nn.MaxPool2d(2),
        block(w, 2 * w),
        block(2 * w, 2 * w),
        nn.MaxPool2d(2),
        block(2 * w, 4 * w),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Dropout(dropout),
        nn.Linear(4 * w, num_classes),
    )


@register_model("vit")
def vit(num_classes: int, image_size: int = 224, patch_size: int = 16, num_layers: int = 12, num_heads: int = 12,
        hidden_dim: int = 768, mlp_dim: int = 3072, dropout: float = 0.0, attention_dropout: float = 0.0) -> nn.Module:
    """A Vision Transformer of any size, torchvision's implementation (the defaults are ViT-B/16's; ViT-L/16:
    num_layers 24, num_heads 16, hidden_dim 1024, mlp_dim 4096): for sizes torchvision names no builder for, or
    small images. ``image_size`` must be ``data.image_size``. For torchvision's pretrained weights, use its names
    (``vit_b_16``, ``vit_l_16``, ...)."""
    return torchvision.models.VisionTransformer(
        image_size=image_size, patch_size=patch_size, num_layers=num_layers, num_heads=num_heads,
        hidden_dim=hidden_dim, mlp_dim=mlp_dim, dropout=dropout, attention_dropout=attention_dropout,
        num_classes=num_classes)
