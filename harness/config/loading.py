"""Reading a run config: a YAML file, dotted CLI overrides applied, turned into the checked ``Config``.

Overrides on the command line use the dotted form ``section.key=value`` (the value is parsed as YAML:
``optim.lr=0.01``, ``train.deterministic=true``, ``data.mean=[0.5,0.5,0.5]``, ``train.clip_grad_norm=null``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from harness.config.schema import Config
from harness.config.typed import build_typed
from harness.config.yaml_text import parse_yaml, read_yaml
from harness.errors import ConfigError

def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply ``key=value`` overrides, and return the checked Config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    raw = read_yaml(path)
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    apply_overrides(raw, overrides)
    raw.setdefault("name", path.stem)
    cfg = build_typed(Config, raw, prefix="", source=str(path))
    cfg.check(str(path))
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"override {text!r}: expected the form section.key=value, e.g. optim.lr=0.01")
    try:
        parsed = parse_yaml(value, f"override {text!r}") if value.strip() else None
    except ConfigError:
        parsed = value
    return key, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> None:
    for text in overrides:
        key, value = parse_override(text)
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value
