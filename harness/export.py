"""Export: ``python harness/export.py --run runs/<name> --format onnx|torch_export|torchscript [--checkpoint best|last]``.

The entry point only parses the command line; ``harness.inference.export`` does the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package from the repo, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from harness.cli import Parser, at_least, run_command  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(description="Export a finished run's model (ONNX, torch.export or TorchScript) with its "
                    "preprocessing recorded, then check it against PyTorch on the run's test split.")
    parser.add_argument("--run", required=True, help="the run directory, e.g. runs/digits")
    parser.add_argument("--format", required=True, choices=["onnx", "torch_export", "torchscript"],
                        help="torch_export: a torch.export program (.pt2); torchscript is deprecated by PyTorch")
    parser.add_argument("--no-calibration", action="store_true", help="the model's own logits, not divided by the "
                        "temperature fitted on the run's validation split (the default)")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"], help="default: best")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"],
                        help="the images the export is checked on (default: test)")
    parser.add_argument("--out", help="the file to write (default: <run>/export/<checkpoint>.onnx, .pt2 or "
                        ".torchscript.pt)")
    parser.add_argument("--force", action="store_true", help="replace the file (and its .json) of an earlier export")
    parser.add_argument("--batch-size", type=at_least(1), default=64, help="for the check (default 64)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command("harness.inference.export:export", parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
