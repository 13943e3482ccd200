"""``train.ema``: an exponential moving average of the model's weights, kept beside them.

After each optimizer update, every floating-point tensor of the model's state (parameters and BatchNorm
statistics) is folded into its average, ``average += (1 - decay_t) * (weights - average)``, with ``decay_t``
rising linearly from 0 to ``decay`` over ``warmup_steps`` updates. Parameters are the same on every process,
so their averages are; buffers are each process's own, and the main process's count (as for the model:
evaluation and checkpoints use them). Under FSDP each process averages its own shard of every parameter, as
the optimizer updates it. The average is saved in every checkpoint (``save_state``'s custom object, whole: the
shards are gathered) and resumed bit for bit. Each epoch validates it beside the weights (``ema_val_loss``, ``ema_val_acc``); the
better of the two decides "best", is what the weights files hold and what the final evaluation tests.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

import torch
from accelerate import Accelerator
from torch import nn

from harness.config.schema import Config, EmaConfig
from harness.runtime.accelerator import bare
from harness.runtime.fsdp import gathered, local_shard, shard_of
from harness.training.features.base import Feature, Swap

NAME = "ema"  # what records and weights files call the average


class WeightAverage(Feature):
    @classmethod
    def build(cls, cfg: Config, accelerator: Accelerator, model: nn.Module, num_classes: int) -> WeightAverage | None:
        return cls(cfg.train.ema, model) if cfg.train.ema else None

    def __init__(self, cfg: EmaConfig, model) -> None:
        self.decay, self.warmup_steps = cfg.decay, cfg.warmup_steps
        state = self._state(model)
        self.names = [name for name, tensor in state.items() if tensor.is_floating_point()]
        self.layouts = [state[name].detach() for name in self.names]  # whole, or how FSDP shards it
        # In float32 at least: a bf16 average would round most updates of a high decay away.
        self.averages = [tensor.clone().float() for tensor in self._tensors(model)]
        self.updates = 0

    @staticmethod
    def _state(model) -> dict[str, torch.Tensor]:
        return bare(model).state_dict(keep_vars=True)

    def _tensors(self, model) -> list[torch.Tensor]:
        """The model's tensors the average follows, this process's shard of each under FSDP (their storage)."""
        state = self._state(model)
        return [local_shard(state[name].detach()) for name in self.names]

    def decay_now(self) -> float:
        """The decay of the next update."""
        if self.warmup_steps == 0:
            return self.decay
        return self.decay * min(1.0, self.updates / self.warmup_steps)

    def weights(self) -> dict[str, Swap]:
        return {NAME: self.swapped_in}

    @torch.no_grad()
    def after_update(self, model) -> None:
        """Fold the model's weights after an optimizer update into the average."""
        current = self._tensors(model)
        weight = 1.0 - self.decay_now()
        torch._foreach_lerp_(self.averages, [t.to(a.dtype) for t, a in zip(current, self.averages)], weight)
        self.updates += 1

    @contextmanager
    def swapped_in(self, model) -> Iterator[None]:
        """The model holds the averaged weights inside, its own again after (bit for bit)."""
        current = self._tensors(model)
        own = [tensor.clone() for tensor in current]
        with torch.no_grad():
            torch._foreach_copy_(current, self.averages)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(current, own)

    # save_state / load_state (registered for checkpointing): plain tensors and numbers, weights-only loadable.
    # Every process calls both: under FSDP, saving gathers the shards, loading takes this process's shard.
    def state_dict(self) -> dict:
        averages = {name: gathered(average, like).cpu()
                    for name, average, like in zip(self.names, self.averages, self.layouts)}
        return {"updates": self.updates, "averages": averages}

    def load_state_dict(self, state: dict) -> None:
        saved = state["averages"]
        if sorted(saved) != sorted(self.names):
            raise ValueError("the checkpoint's weight average (train.ema) is of another model")
        for name, average, like in zip(self.names, self.averages, self.layouts):
            average.copy_(shard_of(saved[name], like))
        self.updates = int(state["updates"])
