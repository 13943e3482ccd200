"""Compare runs side by side: ``python harness/compare.py runs/a runs/b ...`` (or ``harness-compare``).

One row per run from its ``summary.json`` and ``config.yaml``: status, progress, the best validation metric and
its epoch, the final test accuracy, and the config values that differ between the runs (a sweep's parameters).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: import the package from the repo, not this folder's modules
    sys.path[0] = str(Path(__file__).resolve().parent.parent)

import yaml  # noqa: E402

from harness.cli import run_cli  # noqa: E402
from harness.errors import ConfigError  # noqa: E402
from harness.rundir import RunDir  # noqa: E402

SKIPPED_BEST = ("best_epoch", "best_checkpoint")


def compare_table(paths: list[Path]) -> list[list[str]]:
    """The rows of the comparison, a header first."""
    runs = [_read(RunDir(path)) for path in paths]
    varying = [key for key in sorted({k for _, config in runs for k in config})
               if len({json.dumps(config.get(key), sort_keys=True) for _, config in runs}) > 1]
    rows = [["run", "status", "epoch", "best val", "best epoch", "test acc", *varying]]
    for path, (summary, config) in zip(paths, runs):
        best = next(((k, v) for k, v in summary.items() if k.startswith("best_") and k not in SKIPPED_BEST), None)
        rows.append([
            path.name,
            str(summary.get("status") or "-"),
            f"{summary.get('epoch', '-')}/{summary.get('epochs', '-')}",
            f"{best[0][5:]} {_number(best[1])}" if best else "-",
            str(summary.get("best_epoch") or "-"),
            _number(summary.get("test_acc")),
            *(_value(config.get(key)) for key in varying),
        ])
    return rows


def _read(run: RunDir) -> tuple[dict, dict]:
    if not run.is_run():
        raise ConfigError(f"{run.root}: not a run directory (no config.yaml)")
    try:
        summary = json.loads(run.summary_json.read_text())
    except (OSError, ValueError):
        summary = {}  # a run that failed before it wrote one still gets its row
    return summary, _flat(yaml.safe_load(run.config.read_text()) or {})


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _number(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else "-" if value is None else str(value)


def _value(value) -> str:
    return _number(value) if isinstance(value, float) else json.dumps(value) if not isinstance(value, str) else value


def format_table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Compare runs side by side (e.g. a sweep: runs/*-j1234_*).")
    parser.add_argument("runs", nargs="+", type=Path, help="run directories")
    args = parser.parse_args(argv)
    return run_cli(lambda: print(format_table(compare_table(args.runs))) or 0)


if __name__ == "__main__":
    sys.exit(main())
