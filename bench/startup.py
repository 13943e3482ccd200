"""How fast the entry points answer before any work: ``--help`` and an argument error, beside the import of
torch that a training cannot avoid; with ``--quickstart``, also the README's quickstart from start to end (the
figure the README quotes). Medians of ``--repeats`` runs, each a fresh process.

    python bench/startup.py [--quickstart]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMANDS = {
    "train.py --help": ["harness/train.py", "--help"],
    "infer.py --help": ["harness/infer.py", "--help"],
    "compare.py --help": ["harness/compare.py", "--help"],
    "train.py (no --config: an argument error)": ["harness/train.py", "--stop-after-epochs", "0"],
    "import torch, torchvision (reference)": ["-c", "import torch, torchvision"],
}


def seconds(arguments: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, *arguments], cwd=REPO, capture_output=True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quickstart", action="store_true", help="also time the quickstart (configs/digits.yaml)")
    args = parser.parse_args()
    commands = dict(COMMANDS)
    if args.quickstart:
        out = tempfile.mkdtemp(prefix="harness-quickstart-")  # each repeat starts the run over (--force)
        commands["the quickstart, start to end"] = ["harness/train.py", "--config", "configs/digits.yaml",
                                                    "--output-dir", out, "--force"]
    for name, arguments in commands.items():
        times = [seconds(arguments) for _ in range(args.repeats)]
        print(f"  {name:45s} {statistics.median(times):6.2f} s  (min {min(times):.2f})", flush=True)


if __name__ == "__main__":
    main()
