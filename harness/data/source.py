"""Where a config's data comes from: its root folder (a built-in set, materialised once, or ``data.root``) and the
splits a run trains on."""

from __future__ import annotations

from pathlib import Path

from accelerate import Accelerator

from harness.config.schema import DataConfig
from harness.data import background
from harness.data.builtin import data_root
from harness.data.splits import DataSplits
from harness.runtime.collective import on_main


def run_splits(accelerator: Accelerator, cfg: DataConfig, saved: Path | None = None, exclude: Path | None = None
               ) -> DataSplits:
    """The splits a run trains on: those it ``saved`` (a resume reads them back and checks nothing again), or,
    for a new run, found and checked once on the main process, so that every process trains on exactly the
    same images (``exclude``: the folder of the runs, when it is inside the data); by the process the command
    forked for them at its start (``harness.data.background``) where it did. Built-in data is materialised by the
    main process first."""
    with accelerator.main_process_first():
        root = data_root(cfg)
    if saved is not None:
        return background.saved_splits(saved, root, cfg)
    return on_main(accelerator, lambda: background.found_splits(cfg, root, exclude))
