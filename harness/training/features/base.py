"""The seam where features plug into the training loop: the moments the Trainer calls them at.

A feature (the weight average, early stopping, mixup, ...) is one class with its own config section. It is built
from the config once the model is prepared (``build``: None when its section is off), and the Trainer calls
every feature at each moment below, in the order ``harness.training.features.registry`` lists them; a moment a
feature does not override does nothing. A feature with a ``state_dict`` is saved in every checkpoint and loaded
back with it (``accelerator.register_for_checkpointing``).

Moments, in the order a run meets them:

- ``start(state)``: the session starts, after a resume restored ``state``;
- ``mix(inputs, targets, epoch, batch)``: a training batch on the device, before the forward pass;
- ``after_update(model)``: an optimizer update was applied (a skipped one is not);
- ``weights()``: the other weights validated each epoch beside the model's own, by name; the record keeps
  their validation as ``<name>_val_loss``/``<name>_val_acc``, and the better weights decide "best" and are
  what the weights files hold and the final evaluation tests (``harness.evaluation.selection``);
- ``after_epoch(state)``: the epoch's record is in ``state.history``, before its checkpoint is saved (what a
  feature decides here is saved with it);
- ``end(state)``: the session's epochs are over (the final evaluation follows).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Callable

import torch
from accelerate import Accelerator
from torch import nn

from harness.checkpointing.state import TrainState
from harness.config.schema import Config

Swap = Callable[[nn.Module], AbstractContextManager]  # a context in which the model holds other weights


class Feature:
    @classmethod
    def build(cls, cfg: Config, accelerator: Accelerator, model: nn.Module, num_classes: int) -> Feature | None:
        """The feature for this run, or None when its config section leaves it off."""
        raise NotImplementedError

    def start(self, state: TrainState) -> None:
        pass

    def mix(self, inputs: torch.Tensor, targets: torch.Tensor, epoch: int, batch: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
        return inputs, targets

    def after_update(self, model: nn.Module) -> None:
        pass

    def weights(self) -> dict[str, Swap]:
        return {}

    def after_epoch(self, state: TrainState) -> None:
        pass

    def end(self, state: TrainState) -> None:
        pass


class Features:
    """The run's features, called together at each moment."""

    def __init__(self, features: list[Feature]) -> None:
        self.features = features

    def start(self, state: TrainState) -> None:
        for feature in self.features:
            feature.start(state)

    def mix(self, inputs: torch.Tensor, labels: torch.Tensor, epoch: int, batch: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch and its targets for the loss: the labels, unless a feature mixes them into soft targets."""
        targets = labels
        for feature in self.features:
            inputs, targets = feature.mix(inputs, targets, epoch, batch)
        return inputs, targets

    def after_update(self, model: nn.Module) -> None:
        for feature in self.features:
            feature.after_update(model)

    def weights(self) -> dict[str, Swap]:
        return {name: swap for feature in self.features for name, swap in feature.weights().items()}

    def after_epoch(self, state: TrainState) -> None:
        for feature in self.features:
            feature.after_epoch(state)

    def end(self, state: TrainState) -> None:
        for feature in self.features:
            feature.end(state)

    def with_state(self) -> list[Feature]:
        """The features a checkpoint carries."""
        return [feature for feature in self.features if hasattr(feature, "state_dict")]
