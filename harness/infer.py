"""Infer: ``accelerate launch -q --config_file launch_configs/cpu.yaml harness/infer.py --run runs/<name> [--split test] [--checkpoint best|last] [--tta SET]``, or ``--ensemble RUN RUN ...``.

The entry point only parses the command line; ``harness.inference.command`` does the rest.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package from the repo, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

from harness.cli import Parser, at_least, run_command  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(description="Predictions and metrics from a finished run.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--run", help="the run directory, e.g. runs/digits")
    which.add_argument("--ensemble", nargs="+", metavar="RUN", help="several run directories (the same classes and "
                       "preprocessing): their probabilities averaged; the first run's config and splits are used")
    parser.add_argument("--split", default="test", choices=["train", "val", "test"], help="default: test")
    parser.add_argument("--checkpoint", default="best", choices=["best", "last"], help="default: best")
    given = parser.add_mutually_exclusive_group()
    given.add_argument("--images", nargs="+", metavar="PATH", help="unlabeled image files or folders instead of a split")
    given.add_argument("--labeled", metavar="DIR", help="a folder with a sub-folder per class (DIR/<class>/...) "
                       "instead of a split: the images are scored against those labels (metrics, report.html); "
                       "every sub-folder must be a class of the run")
    parser.add_argument("--out", help="output folder (default: <run>/inference/<split>_<checkpoint>, or "
                        "images-<name>-<hash>_<checkpoint> for --images, labeled-<name>-<hash>_<checkpoint> for "
                        "--labeled; _<precision> when --mixed-precision changes it)")
    parser.add_argument("--force", action="store_true", help="replace the outputs of an earlier inference in that folder")
    parser.add_argument("--show", type=at_least(0), default=10, metavar="N",
                        help="print the first N predictions (path, label, prediction, confidence); default 10, 0: none")
    parser.add_argument("--batch-size", type=at_least(1), help="default: the run's eval batch size")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"], help="default: as the run trained")
    parser.add_argument("--no-calibration", action="store_true", help="the model's own probabilities, not those "
                        "calibrated by the temperature fitted on the run's validation split (the default)")
    parser.add_argument("--tta", choices=["identity", "hflip", "flips", "five_crop"],
                        help="test-time augmentation: the probabilities of these views of each image averaged")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_command("harness.inference.command:infer", parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
