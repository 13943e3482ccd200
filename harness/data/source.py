"""Where a config's data comes from: its root folder (a built-in set, materialised once, or ``data.root``) and the
splits a run trains on."""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator

from harness.config.schema import DataConfig
from harness.data.builtin import builtin_root
from harness.data.splits import DataSplits, discover_splits
from harness.runtime.collective import on_main


def data_root(cfg: DataConfig) -> Path:
    """The image folder a data config names: a built-in set (materialised on first use) or ``data.root``."""
    return builtin_root(cfg.builtin, cfg.cache_dir) if cfg.builtin else Path(cfg.root).expanduser()


def run_splits(accelerator: Accelerator, cfg: DataConfig, saved: Path | None = None, exclude: Path | None = None
               ) -> DataSplits:
    """The splits a run trains on: those it ``saved`` (a resume reads them back and checks nothing again), or,
    for a new run, found and checked once on the main process, so that every process trains on exactly the
    same images (``exclude``: the folder of the runs, when it is inside the data). Built-in data is materialised
    by the main process first."""
    with accelerator.main_process_first():
        root = data_root(cfg)
    if saved is not None:
        return DataSplits.load(saved, root)
    return on_main(accelerator, lambda: discover_splits(cfg, root, exclude))
