"""Choosing by validation: which of an epoch's weights count, and whether an epoch beats the best one so far.

An epoch's record (``harness.training.meter.epoch_record``) holds the validation of the model's own weights
(``val_loss``, ``val_acc``) and of every other set of weights a feature validated beside them, under its name
(``ema_val_loss``, ``ema_val_acc``: the weight average of ``train.ema``).
"""

from __future__ import annotations

from harness.config.schema import EarlyStoppingConfig

OWN = "raw"  # the model's own weights, as records and weights files name them

# checkpoint.monitor -> whether a higher value is better
HIGHER_IS_BETTER = {"val_acc": True, "val_loss": False}
# checkpoint.monitor -> what decides between epochs that tie on it
TIE_BREAKER = {"val_acc": "val_loss", "val_loss": "val_acc"}


def candidates(record: dict) -> list[str]:
    """The weights an epoch validated: the model's own first, then the others in the order they were added."""
    return [OWN] + [key.removesuffix("_val_acc") for key in record if key.endswith("_val_acc")]


def validation_of(record: dict, weights: str) -> dict:
    """The validation figures of one of an epoch's ``candidates``."""
    prefix = "" if weights == OWN else f"{weights}_"
    return {"val_acc": record[f"{prefix}val_acc"], "val_loss": record[f"{prefix}val_loss"]}


def _better(scores: dict, than: dict, monitor: str) -> bool:
    """``scores`` beat ``than`` on ``monitor``; a tie on it is decided by the other validation metric (an equal
    accuracy with a lower loss wins), a tie on both is not better."""
    for key in (monitor, TIE_BREAKER[monitor]):
        if scores[key] != than[key]:
            return scores[key] > than[key] if HIGHER_IS_BETTER[key] else scores[key] < than[key]
    return False


def chosen_weights(record: dict, monitor: str) -> str:
    """Which weights of an epoch count: the candidate that validated best; an earlier one (the model's own
    first) wins a tie."""
    chosen = OWN
    for name in candidates(record)[1:]:
        if _better(validation_of(record, name), validation_of(record, chosen), monitor):
            chosen = name
    return chosen


def scores(record: dict, monitor: str) -> dict:
    """The validation figures of the epoch's chosen weights: what "best" and early stopping compare."""
    return validation_of(record, chosen_weights(record, monitor))


def beats(record: dict, best: dict | None, monitor: str) -> bool:
    """Whether an epoch's row is better than ``best`` on ``monitor`` (see ``_better``; a tie keeps the earlier
    epoch), each by its chosen weights."""
    return best is None or _better(scores(record, monitor), scores(best, monitor), monitor)


def stopped_early_at(history: list[dict], monitor: str, rule: EarlyStoppingConfig | None) -> int | None:
    """The epoch (from 1) after which ``train.early_stopping`` ends a run with ``history``: the
    ``patience``-th in a row whose ``monitor`` did not improve on the best so far by more than ``min_delta``."""
    if rule is None:
        return None
    reference, waited = None, 0
    for record in history:
        value = scores(record, monitor)[monitor]
        if reference is None or (value - reference if HIGHER_IS_BETTER[monitor] else reference - value) > rule.min_delta:
            reference, waited = value, 0
        else:
            waited += 1
            if waited >= rule.patience:
                return record["epoch"]
    return None
