"""Plain YAML data -> typed dataclasses: an unknown key or a wrong type is a one-line error naming the key."""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from typing import Any, Dict, List, Literal

from harness.errors import ConfigError

_SCALARS = {  # type -> (accepted Python types, what the error says); YAML's true/false are never numbers
    bool: (bool, "true or false"),
    int: (int, "an integer"),
    float: ((int, float), "a number"),
    str: (str, "a string"),
}
_EXPONENT_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")  # YAML 1.1 reads 1e-4 (no dot) as a string


def build_typed(cls, raw: Any, prefix: str, source: str):
    """An instance of dataclass ``cls`` from the mapping ``raw``; ``prefix`` is the dotted key of ``raw``
    (``"optim."``) and ``source`` the file named in errors."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {show(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key{suggest(str(key), names, prefix)}")
    values = {name: _coerce(raw[name], hints[name], prefix + name, source) for name in names if name in raw}
    return cls(**values)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build_typed(tp, {} if value is None else value, key + ".", source)
    if tp is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if origin is Literal:
        if value is False and "no" in args:  # YAML 1.1 reads a bare `no` (mixed_precision: no) as false
            return "no"
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            hint = suggest(str(value), [str(a) for a in args], "", quote=False)
            raise ConfigError(f"{source}: {key}: {show(value)} is not one of {choices}{hint}")
        return value
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key}: expected a list, got {show(value)}")
        return [_coerce(item, args[0], f"{key}[{i}]", source) for i, item in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {show(value)}")
        return dict(value)
    if tp is float and isinstance(value, str) and _EXPONENT_FLOAT.fullmatch(value):
        return float(value)
    if tp in _SCALARS:
        accepted, expected = _SCALARS[tp]
        if not isinstance(value, accepted) or (isinstance(value, bool) and tp is not bool):
            raise ConfigError(f"{source}: {key}: expected {expected}, got {show(value)}")
        return float(value) if tp is float else value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in the schema, not a user error


def show(value: Any) -> str:
    """A value as an error message shows it: its YAML-ish type and repr."""
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def suggest(word: str, choices: list[str], prefix: str, quote: bool = True) -> str:
    """`` (did you mean 'x'?)`` for a close match; for keys (``quote``) without one, the valid keys."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        return f" (valid keys: {', '.join(choices)})" if quote else ""
    return f" (did you mean '{prefix}{close[0]}'?)" if quote else f" (did you mean '{close[0]}'?)"
