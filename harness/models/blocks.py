"""A model's blocks, its repeated layers (a ViT's encoder blocks, a ResNet's residual blocks, a ConvNeXt's
stages' blocks), found the way torchvision, timm and most custom models hold them; and activation checkpointing
of those blocks (``model.activation_checkpointing``).

A block is a module held in an ``nn.Sequential`` or ``nn.ModuleList`` (or a subclass) that has parameters in
modules of its own and is not itself a container of such modules; the model's blocks are the outermost ones. FSDP shards each block's
class on its own (``harness.runtime.fsdp``); activation checkpointing recomputes each block's activations in the
backward pass instead of keeping them.
"""

from __future__ import annotations

from contextlib import contextmanager, nullcontext
from functools import partial
from typing import Iterator

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from harness.errors import ConfigError

CONTAINERS = (nn.Sequential, nn.ModuleList)


def blocks(model: nn.Module) -> list[nn.Module]:
    """The model's blocks, in the order ``named_modules`` meets them (none for a model without containers)."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        for child in module.children():
            if isinstance(module, CONTAINERS) and _composite(child) and not _holds_blocks(child):
                found.append(child)
            else:
                visit(child)

    visit(model)
    return found


def _composite(module: nn.Module) -> bool:
    """Parameters below it, in modules of its own."""
    return next(module.parameters(), None) is not None and next(module.children(), None) is not None


def _holds_blocks(module: nn.Module) -> bool:
    """A container whose elements are blocks themselves (a ResNet stage, an EfficientNet stage)."""
    return isinstance(module, CONTAINERS) and any(_composite(child) for child in module.children())


def block_classes(model: nn.Module) -> list[str]:
    """The class names of the model's blocks, plain containers left out (naming ``Sequential`` would take every
    one of them, the model itself included)."""
    return sorted({type(block).__name__ for block in blocks(model) if type(block) not in CONTAINERS})


def checkpoint_activations(model: nn.Module, name: str) -> None:
    """Recompute each block's activations in the backward pass (``model.activation_checkpointing``), with the
    same random numbers (dropout) and without touching the buffers twice (BatchNorm's statistics move once per
    forward, as without): the gradients, and so the weights, are the ones the model computes without it. The
    blocks keep their parameter names (checkpoints and weights files are unchanged)."""
    found = blocks(model)
    if not found:
        raise ConfigError(f"model.activation_checkpointing: {name} has no blocks to checkpoint (modules held in an "
                          "nn.Sequential or nn.ModuleList, as torchvision and timm hold their layers); set it to false")
    for block in found:
        block.forward = partial(_checkpointed, block.forward, block)


def _checkpointed(forward, block: nn.Module, *args, **kwargs):
    if not torch.is_grad_enabled():  # evaluation: nothing is kept for a backward pass anyway
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, context_fn=partial(_recompute_contexts, block), **kwargs)


def _recompute_contexts(block: nn.Module):
    """What surrounds the forward pass, and the recomputation."""
    return nullcontext(), _buffers_kept(block)


@contextmanager
def _buffers_kept(block: nn.Module) -> Iterator[None]:
    """The recomputation leaves the block's buffers as the forward pass left them."""
    kept = [(buffer, buffer.clone()) for buffer in block.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buffer, value in kept:
                buffer.copy_(value)
