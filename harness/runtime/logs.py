"""The console and the run's log file: the main process speaks, the others report errors only."""

from __future__ import annotations

import logging
import os
import sys

from accelerate import Accelerator


def setup_logging(accelerator: Accelerator | None = None) -> None:
    """Console logging from the main process only (the others report errors); accelerate's chatter muted.
    Before the Accelerator exists, the launcher's RANK says which process is the main one."""
    main = accelerator.is_main_process if accelerator else os.environ.get("RANK", "0") == "0"
    logging.basicConfig(
        level=logging.INFO if main else logging.ERROR,
        format="%(asctime)s %(levelname)s %(message)s",
        datefmt="%H:%M:%S",
        stream=sys.stdout,
        force=True,
    )
    for noisy in ("accelerate", "torch.distributed", "deepspeed"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def log_to_file(accelerator: Accelerator, path) -> None:
    if accelerator.is_main_process:
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logging.getLogger().addHandler(handler)
