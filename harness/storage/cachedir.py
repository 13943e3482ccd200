"""Where the harness keeps what outlives a run: the built-in data sets, image caches and image indexes."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: str | None) -> Path:
    """The folder of everything the harness keeps between runs: ``data.cache_dir``, or the default."""
    if cache_dir:
        return Path(cache_dir).expanduser()
    if os.environ.get("HARNESS_CACHE_DIR"):
        return Path(os.environ["HARNESS_CACHE_DIR"])
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "harness"
