"""``train.early_stopping``: the run ends once ``patience`` epochs in a row have not improved
``checkpoint.monitor`` (of each epoch's chosen weights) by more than ``min_delta`` on the best before them.

The decision is a function of the history and the session's config alone, made again when a session starts
(``--resume RUN train.early_stopping.patience=N`` with a larger patience trains on) and after every epoch,
before its checkpoint, which records it (``stopped_early_at``). The final evaluation runs as usual after it.
"""

from __future__ import annotations

import logging

from accelerate import Accelerator
from torch import nn

from harness.checkpointing.state import TrainState
from harness.config.schema import Config, EarlyStoppingConfig
from harness.evaluation.selection import stopped_early_at
from harness.training.features.base import Feature

logger = logging.getLogger(__name__)


class EarlyStopping(Feature):
    @classmethod
    def build(cls, cfg: Config, accelerator: Accelerator, model: nn.Module, num_classes: int) -> EarlyStopping:
        # Built with the rule off too: a session without it must clear what an earlier session decided.
        return cls(cfg.train.early_stopping, cfg.checkpoint.monitor, cfg.train.epochs)

    def __init__(self, rule: EarlyStoppingConfig | None, monitor: str, epochs: int) -> None:
        self.rule, self.monitor, self.epochs = rule, monitor, epochs

    def start(self, state: TrainState) -> None:
        self.after_epoch(state)

    def after_epoch(self, state: TrainState) -> None:
        """``state.stopped_early_at``: the epoch after which the run ends early; None if it does not."""
        at = stopped_early_at(state.history, self.monitor, self.rule)
        state.stopped_early_at = at if at is not None and at < self.epochs else None

    def end(self, state: TrainState) -> None:
        if state.stopped_early_at is not None:
            logger.info(f"early stopping after epoch {state.stopped_early_at} of {self.epochs}: {self.monitor} has not "
                        f"improved by more than {self.rule.min_delta:g} in the last {self.rule.patience} epoch(s)")
