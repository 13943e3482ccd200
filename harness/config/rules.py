"""How a config section checks itself: each field's own ``Rule`` sits next to it (``rule(default,
at_least(1))``), and what involves several fields is the section's ``check_together``. A section may hold
another (``train.ema``): it is checked with it, its keys named in full."""

from __future__ import annotations

import dataclasses
from dataclasses import field
from typing import Any, Callable, NamedTuple


class Rule(NamedTuple):
    """What a field's value must meet (``holds``), and how an error says it (``requirement``)."""

    holds: Callable[[Any], bool]
    requirement: str  # completes "must ...", e.g. "be at least 1"


def rule(default: Any = dataclasses.MISSING, check: Rule | None = None, factory: Any = dataclasses.MISSING):
    """A field with a default (or a ``factory``) and the rule its value must meet (not checked when null)."""
    return field(default=default, default_factory=factory, metadata={"rule": check})


def at_least(low: int) -> Rule:
    return Rule(lambda value: value >= low, f"be at least {low}")


def count(n: int, what: str = "") -> Rule:
    return Rule(lambda values: len(values) == n, f"hold {n} values{what}")


POSITIVE = Rule(lambda value: value > 0, "be positive")
FRACTION = Rule(lambda value: 0.0 <= value < 1.0, "be in [0, 1)")
OPEN_FRACTION = Rule(lambda value: 0.0 < value < 1.0, "be in (0, 1)")
SHARE = Rule(lambda value: 0.0 < value <= 1.0, "be in (0, 1]")
PROBABILITY = Rule(lambda value: 0.0 <= value <= 1.0, "be in [0, 1]")


class InvalidValue(Exception):
    """A section's value breaks a rule; ``key`` is relative to the section ("" for the section itself)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class Section:
    """A config section: checks every field's rule and every section it holds, then ``check_together``."""

    def check(self) -> None:
        for spec in dataclasses.fields(self):
            value, check = getattr(self, spec.name), spec.metadata.get("rule")
            if isinstance(value, Section):
                try:
                    value.check()
                except InvalidValue as error:
                    raise InvalidValue(f"{spec.name}.{error.key}" if error.key else spec.name, str(error)) from None
            elif check and value is not None and not check.holds(value):
                optional = " (or null)" if str(spec.type).startswith("Optional[") else ""
                raise InvalidValue(spec.name, f"must {check.requirement}{optional}, got {value!r}")
        self.check_together()

    def check_together(self) -> None:
        """Rules that involve several fields of the section; raise InvalidValue."""
