"""Run directory names: from the config and the overrides (``digits_batch_size32_lr0.01``), checked to be one
plain folder name."""

from __future__ import annotations

import hashlib
import re
from typing import Any

from harness.config.loading import parse_override
from harness.config.schema import Config
from harness.errors import CheckpointError

NAME_VALUE_CHARS = 24  # a longer value is shortened in a run name, with a hash of the whole to keep names apart


def run_name_for(cfg: Config, overrides: list[str]) -> str:
    """``<config name>_<key><value>...`` with one part per override, sorted by key, e.g. digits_batch_size32_lr0.01;
    a path shows its last part (``data.root=~/data/shapes``: ``rootshapes``)."""
    parts = []
    for text in overrides:
        key, value = parse_override(text)
        parts.append((key.split(".")[-1], name_value(value)))
    if cfg.data.folds and "fold" not in dict(parts):  # k-fold runs of one config differ by their fold
        parts.append(("fold", str(cfg.data.fold)))
    name = "_".join([cfg.name or "run"] + [key + value for key, value in sorted(parts)])
    return re.sub(r"[^A-Za-z0-9._+-]+", "", name.replace(" ", ""))[:200]


def name_value(value: Any) -> str:
    """A value as a run or folder name shows it: a path by its last part, a list as ``0.5-0.5``, at most 24
    characters (a longer value cut, with a short hash of the whole)."""
    text = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
    if isinstance(value, str) and re.search(r"[/\\]", value.rstrip("/\\")):
        text = re.split(r"[/\\]", value.rstrip("/\\"))[-1]
    if not isinstance(value, (int, float)):  # a number keeps its sign and exponent
        text = re.sub(r"[^A-Za-z0-9_.+]+", "-", text).strip("-")  # [0.5, 0.5] -> 0.5-0.5
    if len(text) > NAME_VALUE_CHARS:
        text = f"{text[:NAME_VALUE_CHARS - 7]}-{hashlib.sha1(str(value).encode()).hexdigest()[:6]}"
    return text


def checked_run_name(name: str) -> str:
    """A run's folder name: one plain component, so that a run (and --force) stays inside --output-dir."""
    if name in ("", ".", "..") or "/" in name or "\\" in name or "\0" in name or len(name.encode()) > 200:
        raise CheckpointError(f"run name {name!r}: must be a plain folder name (no '/', not '.' or '..', at most "
                              "200 bytes), so that the run stays inside --output-dir")
    return name
