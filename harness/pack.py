"""Pack an image folder into a few large tar shards: ``python harness/pack.py SRC_FOLDER OUT_FOLDER``.

Then ``data.root: OUT_FOLDER`` trains exactly as ``data.root: SRC_FOLDER`` (the same classes, splits, pixels and
order), reading one file per shard instead of one per image. The entry point only parses the command line;
``harness.data.packing`` does the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package from the repo, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from harness.cli import Parser, at_least, run_command  # noqa: E402

SHARD_MB = 256  # a shard's size: a few hundred MB, as parallel file systems like them


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(
        description="Mirror an image folder (with its train/, val/ and test/ if any) into tar shards with an index "
                    "and the image check's verdicts, for file systems where opening many small files is slow.")
    parser.add_argument("source", metavar="SRC_FOLDER", help="the image folder, as data.root would name it")
    parser.add_argument("out", metavar="OUT_FOLDER", help="the packed folder to make (must not exist)")
    parser.add_argument("--shard-mb", type=at_least(1), default=SHARD_MB, help=f"shard size in MiB (default {SHARD_MB})")
    parser.add_argument("--force", action="store_true", help="replace an earlier packed folder at OUT_FOLDER")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return run_command("harness.data.packing:pack", args)


if __name__ == "__main__":
    sys.exit(main())
