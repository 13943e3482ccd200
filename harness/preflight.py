"""Pre-flight of a launch across nodes: ``python harness/preflight.py --main-host node1 --port 29501
--machine-rank 1 --machines 2`` on each node (slurm/launch_machine.sh runs it), before ``accelerate launch``.

The entry point only parses the command line; ``harness.runtime.preflight`` does the rest.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package from the repo, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from harness.cli import Parser, at_least, run_command  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(description="Check that this node reaches the main node's port and exchanges data with every "
                    "other node, each within --timeout seconds; one line naming the node and the cause otherwise.")
    parser.add_argument("--main-host", required=True, help="where the nodes meet (the first node of the job)")
    parser.add_argument("--port", type=at_least(1), required=True)
    parser.add_argument("--machine-rank", type=at_least(0), required=True, help="this node's rank, from 0")
    parser.add_argument("--machines", type=at_least(1), required=True, help="how many nodes")
    parser.add_argument("--timeout", type=at_least(1), default=60, metavar="SECONDS", help="for each step (default 60)")
    args = parser.parse_args(argv)
    if args.machine_rank >= args.machines:
        parser.error(f"--machine-rank {args.machine_rank} is not below --machines {args.machines}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "FATAL")  # c10d writes a page per retry; the one line says it
    return run_command("harness.runtime.preflight:preflight", args)


if __name__ == "__main__":
    sys.exit(main())
