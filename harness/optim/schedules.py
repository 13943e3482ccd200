"""The learning-rate schedule, defined in optimizer updates (``epochs * updates_per_epoch``) and stepped once per
update, so the learning rate is right for any number of processes and any accumulation.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from harness.config.schema import OptimConfig, SchedulerConfig
from harness.errors import ConfigError
from harness.optim.optimizers import build_optimizer


def updates_per_epoch(batches: int, grad_accum_steps: int) -> int:
    """Optimizer updates in an epoch of ``batches`` per process (the last, shorter accumulation counts)."""
    return math.ceil(batches / grad_accum_steps)


def build_scheduler(
    cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int, updates_per_epoch: int, freeze_epochs: int = 0
) -> LRScheduler:
    """The learning rate per update; the backbone's groups at 0 for the first ``freeze_epochs``
    (``model.freeze_backbone_epochs``: their weights do not move, the head trains)."""
    total = max(1, epochs * updates_per_epoch)
    if cfg.name == "onecycle" and freeze_epochs:
        raise ConfigError("model.freeze_backbone_epochs: not with scheduler.name: onecycle (its own warmup would "
                          "start again); use cosine or step")
    if cfg.name == "onecycle":
        has_momentum = any("momentum" in g and g["momentum"] > 0 or "betas" in g for g in optimizer.param_groups)
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=total, pct_start=cfg.pct_start, cycle_momentum=has_momentum
        )
    warmup = round(cfg.warmup_epochs * updates_per_epoch)
    step_size = max(1, round(cfg.step_size * updates_per_epoch))
    floor = min(1.0, cfg.min_lr / optimizer.defaults["lr"])
    frozen = freeze_epochs * updates_per_epoch

    def factor(update: int) -> float:
        if update < warmup:
            return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * update / warmup
        if cfg.name == "step":
            return cfg.gamma ** (update // step_size)
        if cfg.name == "cosine":
            progress = min(1.0, (update - warmup) / max(1, total - warmup))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    def backbone_factor(update: int) -> float:
        return 0.0 if update < frozen else factor(update)

    return LambdaLR(optimizer, [backbone_factor if g.get("role") == "backbone" else factor
                                for g in optimizer.param_groups])


def lr_per_update(optim: OptimConfig, schedule: SchedulerConfig, epochs: int, updates_per_epoch: int,
                  freeze_epochs: int = 0) -> list[float]:
    """The learning rate of every optimizer update of a run (the backbone's, as the history records it), replayed
    on a stand-in optimizer (for the curves)."""
    optimizer = build_optimizer(optim, nn.Sequential(nn.Linear(1, 1), nn.Linear(1, 1)))
    scheduler = build_scheduler(schedule, optimizer, epochs, updates_per_epoch, freeze_epochs)
    optimizer.step()  # changes nothing (no gradients); torch expects it before the scheduler's first step
    rates = []
    for update in range(max(1, epochs * updates_per_epoch)):
        if update:
            scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    return rates
