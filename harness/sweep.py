"""Sweeps for SLURM job arrays: ``python -m harness.sweep sweeps/lr.yaml [--config CONFIG] [--task I]``.

The entry point only parses the command line; ``harness.tuning.sweeps`` does the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package from the repo, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from harness.cli import Parser, at_least, run_command  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(prog="python -m harness.sweep", description="List or pick the runs of a sweep.")
    parser.add_argument("sweep", help="the sweep file (YAML: grid: or runs:)")
    parser.add_argument("--config", help="check every run's overrides against this run config")
    parser.add_argument("--task", type=at_least(0), metavar="I", help="print run I's overrides, one per line")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command("harness.tuning.sweeps:sweep", parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
