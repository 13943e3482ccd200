"""``data.mixup``: mixup and CutMix of training batches (torchvision's v2 ``MixUp`` and ``CutMix``), on the
device, after normalisation, with soft targets for the loss (label smoothing and class weights apply to them).

Each batch draws its randomness (whether to mix, which of the two, the mixing weight, the box) from a seed of
its own, (train.seed, epoch, batch, process): the same mix whatever the number of loader workers, and again
after a resume. A batch is mixed with itself rolled by one sample, as torchvision does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torchvision.transforms import v2

from harness.config.schema import Config, MixupConfig
from harness.training.features.base import Feature


def _batch_seed(seed: int, epoch: int, batch: int, process: int) -> int:
    return (seed * 0x9E3779B1 + epoch * 0x85EBCA77 + batch * 0xC2B2AE3D + process * 0x27D4EB2F + 1) % (2**63)


class Mixup(Feature):
    @classmethod
    def build(cls, cfg: Config, accelerator: Accelerator, model: nn.Module, num_classes: int) -> Mixup | None:
        if cfg.data.mixup is None:
            return None
        return cls(cfg.data.mixup, num_classes, cfg.train.seed, accelerator.process_index)

    def __init__(self, cfg: MixupConfig, num_classes: int, seed: int, process: int) -> None:
        self.cfg, self.num_classes, self.seed, self.process = cfg, num_classes, seed, process
        self.mixup = v2.MixUp(alpha=cfg.alpha, num_classes=num_classes) if cfg.alpha > 0 else None
        self.cutmix = v2.CutMix(alpha=cfg.cutmix_alpha, num_classes=num_classes) if cfg.cutmix_alpha > 0 else None

    def mix(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch: int
            ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch mixed (or not, with probability 1 - ``prob``) and its soft targets, images x classes."""
        with torch.random.fork_rng(devices=[]):  # the draws are on the CPU, whatever the device
            torch.manual_seed(_batch_seed(self.seed, epoch, batch, self.process))
            mixed, which = torch.rand(2).tolist()
            if mixed >= self.cfg.prob:
                return images, F.one_hot(labels, self.num_classes).float()
            cutmix = self.cutmix is not None and (self.mixup is None or which < self.cfg.switch_prob)
            images, targets = (self.cutmix if cutmix else self.mixup)(images, labels)
        return images, targets.float()
