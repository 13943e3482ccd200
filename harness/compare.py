"""Compare runs side by side: ``python harness/compare.py runs/a runs/b ... [--plot compare.png] [--html compare.html]``.

The entry point only parses the command line; ``harness.reporting.comparison`` does the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package from the repo, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from harness.cli import Parser, run_command  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(description="Compare runs side by side (e.g. a sweep: runs/*-j1234_*): status, "
                    "progress, the best validation metric, the test accuracy and the config values "
                    "that differ; then their mean and standard deviation.")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    parser.add_argument("--plot", type=Path, metavar="PNG", help="also draw the runs' curves on one figure there")
    parser.add_argument("--html", type=Path, metavar="PAGE", help="also write the runs side by side as one page "
                        "there: the table, their curves on shared axes, their F1 per class on the test split")
    parser.add_argument("--force", action="store_true", help="replace an existing --plot or --html file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command("harness.reporting.comparison:compare", parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
