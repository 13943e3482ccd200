"""Train: ``accelerate launch -q --config_file launch_configs/cpu.yaml harness/train.py --config configs/digits.yaml [section.key=value ...]``.

The entry point only parses the command line; ``harness.training.command`` does the rest.
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
        description="Train an image classifier. Overrides use the dotted form section.key=value.",
        epilog="example: accelerate launch -q --config_file launch_configs/cpu.yaml harness/train.py --config configs/digits.yaml optim.lr=0.05 train.epochs=5",
    )
    parser.add_argument("--config", help="run config (YAML); optional with --resume (the run's own is used)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value", help="config overrides")
    parser.add_argument("--run-name", help="default: the config name plus the overrides; {name} in it stands for "
                        "that default, e.g. --run-name '{name}-seed1'")
    parser.add_argument("--output-dir", default="runs", help="parent of run directories (default: runs)")
    parser.add_argument("--resume", default="auto", metavar="auto|never|PATH",
                        help="auto (default): continue the run directory's unfinished run if the config is the same; "
                        "never: refuse an existing run directory; PATH: a run directory or a checkpoint to continue")
    parser.add_argument("--force", action="store_true", help="start over in an existing run directory, deleting it")
    parser.add_argument("--stop-after-epochs", type=at_least(1), metavar="N",
                        help="train at most N more epochs in this session, then checkpoint and exit 0 (resumable)")
    parser.add_argument("--list-models", nargs="?", const="*", metavar="PATTERN",
                        help="list the model names model.name accepts (torchvision, custom, and timm/<name> with the "
                        "timm extra), those matching PATTERN (shell-style, e.g. 'timm/convnext*'), and exit")
    return parser.parse_intermixed_args(argv)  # overrides before or after the options


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)  # before the heavy imports: --help and usage errors answer at once
    if args.list_models is not None:
        from harness.models.registry import available_models

        print("\n".join(available_models(args.list_models)))
        return 0
    from harness.training.plan import splits_early

    splits_early(args)  # the run's data is found or read on another core while the command imports torch
    return run_command("harness.training.command:train", args)


if __name__ == "__main__":
    sys.exit(main())
