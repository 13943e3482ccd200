"""The console and the run's log file: the main process speaks, the others report errors only.

The console holds the harness's own lines (``HH:MM:SS LEVEL message``). A library's warnings and errors get
through, their source named (``HH:MM:SS WARNING [accelerate.utils] ...``); its information lines do not (matplotlib
saying it built a font cache on a new machine, accelerate describing itself).
"""

from __future__ import annotations

import logging
import os
import sys

from accelerate import Accelerator


class SourceFormatter(logging.Formatter):
    """The harness's lines as they are; another library's with its logger's name in front of the message."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        line = super().formatMessage(record)
        if record.name == "harness" or record.name.startswith("harness."):
            return line
        return line.replace(record.message, f"[{record.name}] {record.message}", 1)


def setup_logging(accelerator: Accelerator | None = None) -> None:
    """Console logging from the main process only (the others report errors). Before the Accelerator exists, the
    launcher's RANK says which process is the main one."""
    main = accelerator.is_main_process if accelerator else os.environ.get("RANK", "0") == "0"
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(SourceFormatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
    logging.basicConfig(level=logging.WARNING if main else logging.ERROR, handlers=[handler], force=True)
    logging.getLogger("harness").setLevel(logging.INFO if main else logging.ERROR)


def log_to_file(accelerator: Accelerator, path) -> None:
    if accelerator.is_main_process:
        handler = logging.FileHandler(path, encoding="utf-8")
        handler.setFormatter(SourceFormatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
        logging.getLogger().addHandler(handler)
