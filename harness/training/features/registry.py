"""The features around the training loop, in the order they act at each moment. Adding one is its module (a
``Feature``), its config section, and a line here."""

from __future__ import annotations

from accelerate import Accelerator
from torch import nn

from harness.config.schema import Config
from harness.training.features.base import Features
from harness.training.features.early_stopping import EarlyStopping
from harness.training.features.ema import WeightAverage
from harness.training.features.mixup import Mixup

FEATURES = (
    Mixup,  # data.mixup
    WeightAverage,  # train.ema
    EarlyStopping,  # train.early_stopping
)


def build_features(cfg: Config, accelerator: Accelerator, model: nn.Module, num_classes: int) -> Features:
    built = (feature.build(cfg, accelerator, model, num_classes) for feature in FEATURES)
    return Features([feature for feature in built if feature is not None])
