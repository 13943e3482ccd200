"""The loss: cross-entropy with the config's label smoothing and class weights."""

from __future__ import annotations

import torch
from torch import nn

from harness.config.schema import LossConfig
from harness.errors import ConfigError


def build_criterion(cfg: LossConfig, class_counts: list[int]) -> nn.Module:
    """Cross-entropy with optional label smoothing and class weights ('balanced': n / (k * n_class))."""
    weight = None
    if cfg.class_weights == "balanced":
        total, k = sum(class_counts), len(class_counts)
        weight = torch.tensor([total / (k * max(1, c)) for c in class_counts], dtype=torch.float32)
    elif cfg.class_weights is not None:
        if len(cfg.class_weights) != len(class_counts):
            raise ConfigError(
                f"loss.class_weights: has {len(cfg.class_weights)} values but the data has {len(class_counts)} classes"
            )
        weight = torch.tensor(cfg.class_weights, dtype=torch.float32)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
