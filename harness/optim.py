"""Optimizer, learning-rate schedule and loss.

Schedules are defined in optimizer updates (``epochs * updates_per_epoch``) and the scheduler is stepped
once per update, so the learning rate is right for any number of processes and any accumulation.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR

from harness.config import LossConfig, OptimConfig, SchedulerConfig
from harness.errors import ConfigError


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.name == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov, weight_decay=cfg.weight_decay
        )
    if cfg.nesterov:
        raise ConfigError(f"optim.nesterov: only applies to sgd, not {cfg.name}")
    optimizer = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return optimizer(params, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def updates_per_epoch(batches: int, grad_accum_steps: int) -> int:
    """Optimizer updates in an epoch of ``batches`` per process (the last, shorter accumulation counts)."""
    return math.ceil(batches / grad_accum_steps)


def build_scheduler(
    cfg: SchedulerConfig, optimizer: torch.optim.Optimizer, epochs: int, updates_per_epoch: int
) -> LRScheduler:
    total = max(1, epochs * updates_per_epoch)
    if cfg.name == "onecycle":
        has_momentum = any("momentum" in g and g["momentum"] > 0 or "betas" in g for g in optimizer.param_groups)
        max_lr = [g["lr"] for g in optimizer.param_groups]
        return OneCycleLR(
            optimizer, max_lr=max_lr, total_steps=total, pct_start=cfg.pct_start, cycle_momentum=has_momentum
        )
    warmup = round(cfg.warmup_epochs * updates_per_epoch)
    step_size = max(1, round(cfg.step_size * updates_per_epoch))
    base_lr = optimizer.param_groups[0]["lr"]
    floor = min(1.0, cfg.min_lr / base_lr)

    def factor(update: int) -> float:
        if update < warmup:
            return cfg.warmup_start_factor + (1.0 - cfg.warmup_start_factor) * update / warmup
        if cfg.name == "step":
            return cfg.gamma ** (update // step_size)
        if cfg.name == "cosine":
            progress = min(1.0, (update - warmup) / max(1, total - warmup))
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return LambdaLR(optimizer, factor)


def lr_per_update(optim: OptimConfig, schedule: SchedulerConfig, epochs: int, updates_per_epoch: int) -> list[float]:
    """The learning rate of every optimizer update of a run, replayed on a stand-in optimizer (for the curves)."""
    optimizer = build_optimizer(optim, nn.Linear(1, 1))
    scheduler = build_scheduler(schedule, optimizer, epochs, updates_per_epoch)
    optimizer.step()  # changes nothing (no gradients); torch expects it before the scheduler's first step
    rates = []
    for update in range(max(1, epochs * updates_per_epoch)):
        if update:
            scheduler.step()
        rates.append(scheduler.get_last_lr()[0])
    return rates


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
