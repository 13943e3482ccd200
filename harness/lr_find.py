"""LR finder: ``accelerate launch -q --config_file launch_configs/cpu.yaml harness/lr_find.py --config configs/x.yaml [section.key=value ...]``.

The entry point only parses the command line; ``harness.tuning.lr_finder`` does the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package from the repo, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from harness.cli import Parser, at_least, run_command  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(
        description="Sweep the learning rate exponentially over a few hundred optimizer updates of a config's "
                    "training (no run is created or changed): the loss per learning rate, a plot and a suggestion.")
    parser.add_argument("--config", required=True, help="run config (YAML)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    parser.add_argument("--start-lr", type=float, default=1e-7, help="default 1e-7")
    parser.add_argument("--end-lr", type=float, default=10.0, help="default 10")
    parser.add_argument("--steps", type=at_least(10), default=100, help="optimizer updates (default 100)")
    parser.add_argument("--out", help="output folder (default: lr_find/<config name>)")
    parser.add_argument("--force", action="store_true", help="replace the files of an earlier sweep in that folder")
    args = parser.parse_intermixed_args(argv)
    if not 0 < args.start_lr < args.end_lr:
        parser.error("--start-lr and --end-lr: need 0 < start < end")
    return args


def main(argv: list[str] | None = None) -> int:
    return run_command("harness.tuning.lr_finder:find_lr", parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
