"""The optimizer: its parameter groups (backbone or head, decayed or not) with their own learning rates and
weight decay."""

from __future__ import annotations

import torch
from torch import nn

from harness.config.schema import OptimConfig
from harness.errors import ConfigError
from harness.models.registry import classifier


def build_optimizer(cfg: OptimConfig, model: nn.Module) -> torch.optim.Optimizer:
    """The optimizer over ``param_groups``; each group's ``lr`` and ``weight_decay`` are its own."""
    groups = param_groups(cfg, model)
    if cfg.name == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                               weight_decay=cfg.weight_decay)
    if cfg.nesterov:
        raise ConfigError(f"optim.nesterov: only applies to sgd, not {cfg.name}")
    optimizer = torch.optim.Adam if cfg.name == "adam" else torch.optim.AdamW
    return optimizer(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


def param_groups(cfg: OptimConfig, model: nn.Module) -> list[dict]:
    """The trainable parameters in up to four groups, the backbone's first: backbone or head (the classifier,
    ``harness.models.registry.classifier``; its lr is ``optim.lr * optim.head_lr_multiplier``), each with weight
    decay or without it (as timm does: a parameter of one dimension, a bias or a normalisation weight, is not
    decayed unless ``optim.decay_norm_and_bias``). Each group says its ``role``: the schedule freezes the
    backbone by it."""
    head = {id(p) for p in classifier(model)[1].parameters()}
    groups: dict[tuple[str, bool], list] = {}
    for p in model.parameters():
        if p.requires_grad:
            role = "head" if id(p) in head else "backbone"
            groups.setdefault((role, cfg.decay_norm_and_bias or p.ndim > 1), []).append(p)
    return [{"params": params, "role": role, "weight_decay": cfg.weight_decay if decayed else 0.0,
             "lr": cfg.lr * (cfg.head_lr_multiplier if role == "head" else 1.0)}
            for (role, decayed), params in sorted(groups.items(), key=lambda item: (item[0][0] == "head", not item[0][1]))]
