"""Models by name: every torchvision classification model, timm's (``timm/<name>``, the timm extra), and the
custom ones registered with ``@register_model`` (``harness.models.custom``)."""

from __future__ import annotations

import difflib
import fnmatch
import os
from pathlib import Path
from typing import Callable

import torch
import torchvision
from torch import nn

from harness.config.schema import Config, ModelConfig
from harness.errors import ConfigError, MissingDependency, UserError, one_line
from harness.models.blocks import checkpoint_activations

CUSTOM_MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def wrap(fn: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        CUSTOM_MODELS[name] = fn
        return fn

    return wrap


TIMM_PREFIX = "timm/"  # model.name: timm/<name> builds timm's model <name> (the timm extra)


def available_models(pattern: str = "*") -> list[str]:
    """Every model ``model.name`` accepts that matches ``pattern`` (shell-style): the custom ones, torchvision's,
    and timm's (``timm/<name>``) when timm is installed."""
    names = sorted(CUSTOM_MODELS) + torchvision.models.list_models(module=torchvision.models)
    try:
        import timm
    except ImportError:
        timm = None
    names += [TIMM_PREFIX + name for name in timm.list_models()] if timm else []
    return [name for name in names if fnmatch.fnmatch(name, pattern)]


def build_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    if cfg.name.startswith(TIMM_PREFIX):
        return _timm_model(cfg, num_classes)
    try:
        if cfg.name in CUSTOM_MODELS:
            if cfg.pretrained:
                raise ConfigError(f"model.pretrained: {cfg.name} has no pretrained weights; set model.pretrained: false")
            return CUSTOM_MODELS[cfg.name](num_classes=num_classes, **cfg.kwargs)
        if cfg.name not in torchvision.models.list_models(module=torchvision.models):
            close = difflib.get_close_matches(cfg.name, available_models(), n=1)
            hint = f"did you mean '{close[0]}'?" if close else "see torchvision.models.list_models() or harness.models"
            raise ConfigError(f"model.name: unknown model '{cfg.name}' ({hint})")
        if not cfg.pretrained:
            return torchvision.models.get_model(cfg.name, weights=None, num_classes=num_classes, **cfg.kwargs)
        model = torchvision.models.get_model(cfg.name, weights=_cached_weights(cfg.name), **cfg.kwargs)
        _replace_head(model, num_classes)
        return model
    except UserError:
        raise
    except Exception as error:  # bad model.kwargs, or a size the architecture refuses (models assert, too)
        raise ConfigError(f"model.kwargs: {cfg.name} cannot be built with {cfg.kwargs}: {one_line(error)}") from None


def _timm_model(cfg: ModelConfig, num_classes: int) -> nn.Module:
    """timm's model, with its head for ``num_classes``; pretrained weights only from the local Hugging Face
    cache, where timm keeps them (nothing is downloaded)."""
    name = cfg.name[len(TIMM_PREFIX):]
    try:
        import timm
    except ImportError:
        raise MissingDependency(f"model.name: {cfg.name} needs timm, not installed: pip install -e '.[timm]'") from None

    if not timm.is_model(name):
        close = difflib.get_close_matches(name, timm.list_models(), n=1)
        hint = f"did you mean '{TIMM_PREFIX}{close[0]}'?" if close else "see harness-train --list-models 'timm/*'"
        raise ConfigError(f"model.name: unknown timm model '{name}' ({hint})")
    overlay = {"file": _cached_timm_weights(name)} if cfg.pretrained else None
    try:
        return timm.create_model(name, pretrained=cfg.pretrained, pretrained_cfg_overlay=overlay,
                                 num_classes=num_classes, **cfg.kwargs)
    except Exception as error:
        raise ConfigError(f"model.kwargs: {cfg.name} cannot be built with {cfg.kwargs}: {one_line(error)}") from None


def _cached_timm_weights(name: str) -> str:
    """The file of timm's default weights for ``name`` in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache
    from timm.models import get_pretrained_cfg

    pretrained = get_pretrained_cfg(name)
    hub = pretrained.hf_hub_id if pretrained else None
    for filename in ("model.safetensors", "pytorch_model.bin"):
        path = try_to_load_from_cache(hub, filename) if hub else None
        if isinstance(path, str):
            return path
    raise ConfigError(f"model.pretrained: weights for timm/{name} are not in the local Hugging Face cache "
                      f"({hub or 'timm has none'}); fetch them once where there is a network "
                      f"(timm.create_model('{name}', pretrained=True)) or set model.pretrained: false")


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _cached_weights(name: str):
    """torchvision's default weights for ``name``, only if already in the local torch hub cache."""
    weights = torchvision.models.get_model_weights(name).DEFAULT
    path = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not path.is_file():
        raise ConfigError(
            f"model.pretrained: weights for {name} are not in the local torch cache ({path}); "
            "copy the file there or set model.pretrained: false (nothing is downloaded)"
        )
    return weights


def classifier(model: nn.Module) -> tuple[str, nn.Module]:
    """The model's head and its name: its last Linear, or 1x1 Conv2d for SqueezeNet."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))][-1]


def _replace_head(model: nn.Module, num_classes: int) -> None:
    """Swap the classifier for one with num_classes outputs."""
    name, old = classifier(model)
    if isinstance(old, nn.Linear):
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
    else:
        new = nn.Conv2d(old.in_channels, num_classes, kernel_size=old.kernel_size, stride=old.stride)
    parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
    setattr(parent, name.rpartition(".")[2], new)


def training_model(cfg: Config, num_classes: int) -> nn.Module:
    """The model a run trains: ``model.*`` built, checked on an image of ``data.image_size``, in its memory format,
    its blocks' activations checkpointed with ``model.activation_checkpointing``, compiled with ``train.compile``."""
    model = build_model(cfg.model, num_classes)
    check_takes(model, cfg.model, cfg.data.image_size)
    if cfg.model.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if cfg.model.activation_checkpointing:
        checkpoint_activations(model, cfg.model.name)
    if cfg.train.compile:
        # In place, so that the state dict (checkpoints, weights) keeps its keys. One graph for every batch
        # size: otherwise a last, smaller batch recompiles with other kernels, and a resumed run, which meets
        # the sizes in another order, would compute with other kernels than the run it continues.
        model.compile(dynamic=True)
    return model


def check_takes(model: nn.Module, cfg: ModelConfig, image_size: int) -> None:
    """One forward pass of a blank image of the configured size, in evaluation mode, the RNG and the model's
    statistics left as they were: a model that cannot take the size (or its kwargs) is a one-line error before the
    run starts, not a traceback at its first batch."""
    training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model(torch.zeros(1, 3, image_size, image_size))
    except Exception as error:
        raise ConfigError(f"model.name: {cfg.name} cannot take {image_size}x{image_size} images (data.image_size) with "
                          f"model.kwargs {cfg.kwargs}: {one_line(error)}; change one of them") from None
    finally:
        model.train(training)
