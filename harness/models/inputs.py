"""What a model takes: a batch from the loaders made into its input on the device, for training and evaluation
alike."""

from __future__ import annotations

import torch

from harness.config.schema import DataConfig


def input_dtype(model) -> torch.dtype:
    """The dtype the model's parameters hold: float32, except under DeepSpeed bf16/fp16, which casts the model
    itself and wants its inputs cast alike."""
    return next(model.parameters()).dtype


class ModelInputs:
    """A batch from the loaders made into the model's input on the device: ``uint8`` images are scaled to 0-1
    and normalised here, with the very operations (and results) of torchvision's ToTensor and Normalize; then
    the model's dtype and memory format (``model.channels_last``)."""

    def __init__(self, model, cfg: DataConfig, channels_last: bool = False) -> None:
        self.dtype = input_dtype(model)
        self.mean, self.std = torch.tensor(cfg.mean).view(-1, 1, 1), torch.tensor(cfg.std).view(-1, 1, 1)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if images.dtype == torch.uint8:
            if self.mean.device != images.device:
                self.mean, self.std = self.mean.to(images.device), self.std.to(images.device)
            images = images.float().div_(255).sub_(self.mean).div_(self.std)
        return images.to(self.dtype, memory_format=self.memory_format)
