"""Runs side by side: one row per run from its ``summary.json`` and ``config.yaml`` (status, progress, the best
validation metric and its epoch, the final test accuracy, and the config values that differ between the runs, a
sweep's parameters), then the mean and standard deviation over the runs (a cross-validation's score); the
runs' curves (``history.csv``) on one figure; and all of it, with their F1 per class, on one page.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from pathlib import Path

import numpy as np

from harness.config.yaml_text import read_yaml
from harness.errors import ConfigError
from harness.evaluation.predictions import confusion_counts
from harness.evaluation.scores import precision_recall_f1
from harness.reporting.page import escaped, image_html, page_html, table_html
from harness.reporting.plots import comparison_figure, render, save_png
from harness.reporting.tables import format_table
from harness.storage.atomic import write_atomic
from harness.storage.rundir import RunDir, check_outputs

SKIPPED_BEST = ("best_epoch", "best_checkpoint")


def compare_table(paths: list[Path]) -> list[list[str]]:
    """The rows of the comparison, a header first."""
    runs = [_read(RunDir(path)) for path in paths]
    varying = [key for key in sorted({k for _, config in runs for k in config})
               if len({json.dumps(config.get(key), sort_keys=True) for _, config in runs}) > 1]
    rows = [["run", "status", "epoch", "best val", "best epoch", "test acc", *varying]]
    bests = [_best(summary) for summary, _ in runs]
    for path, (summary, config), best in zip(paths, runs, bests):
        rows.append([
            path.name,
            str(summary.get("status") or "-"),
            f"{summary.get('epoch', '-')}/{summary.get('epochs', '-')}",
            f"{best[0]} {_number(best[1])}" if best else "-",
            str(summary.get("best_epoch") or "-"),
            _number(summary.get("test_acc")),
            *(_value(config.get(key)) for key in varying),
        ])
    monitors = {best[0] for best in bests if best}
    tests = [summary["test_acc"] for summary, _ in runs if isinstance(summary.get("test_acc"), float)]
    if len(runs) > 1 and len(monitors) == 1 and all(bests):  # e.g. the folds of a cross-validation
        rows.append([f"mean ± std of {len(runs)}", "", "", f"{monitors.pop()} {_spread([b[1] for b in bests])}", "",
                     _spread(tests) if len(tests) == len(runs) else "-", *([""] * len(varying))])
    return rows


def _best(summary: dict) -> tuple[str, float] | None:
    """The monitored metric's best value, e.g. ("val_acc", 0.98), from ``best_val_acc``."""
    for key, value in summary.items():
        if key.startswith("best_") and key not in SKIPPED_BEST and isinstance(value, float):
            return key[5:], value
    return None


def _spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.4f} ± {statistics.pstdev(values):.4f}"


def _read(rundir: RunDir) -> tuple[dict, dict]:
    if not rundir.is_run():
        raise ConfigError(f"{rundir.root}: not a run directory (no config.yaml)")
    try:
        summary = json.loads(rundir.summary_json.read_text())
    except (OSError, ValueError):
        summary = {}  # a run that failed before it wrote one still gets its row
    return summary, _flat(read_yaml(rundir.config) or {})


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


def plot_runs(paths: list[Path], out: Path) -> None:
    """The runs' validation accuracy and losses per epoch on one figure, written to ``out`` (PNG)."""
    save_png(comparison_figure(_histories(paths)), out)


def _histories(paths: list[Path]) -> dict[str, list[dict]]:
    histories = {}
    for path in paths:
        try:
            with open(RunDir(path).history_csv, newline="", encoding="utf-8") as f:
                histories[path.name] = [{key: float(value) for key, value in row.items()} for row in csv.DictReader(f)]
        except FileNotFoundError:
            raise ConfigError(f"{path}: no history.csv yet (the run has not finished an epoch)") from None
        except (ValueError, TypeError, csv.Error) as error:  # UnicodeDecodeError is a ValueError
            raise ConfigError(f"{RunDir(path).history_csv}: damaged ({type(error).__name__}: {error})") from None
    return histories


def class_f1(paths: list[Path]) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Each run's F1 per class on its test split (from ``predictions/test.csv``), by run name; and every class any
    of them has, in order of first appearance. A run without test predictions has none."""
    classes: dict[str, None] = {}
    scores = {}
    for path in paths:
        names = (path / "splits" / "classes.txt")
        csv_path = RunDir(path).predictions / "test.csv"
        if not names.is_file() or not csv_path.is_file():
            scores[path.name] = {}
            continue
        run_classes = names.read_text(encoding="utf-8").splitlines()
        classes.update(dict.fromkeys(run_classes))
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        index = {name: c for c, name in enumerate(run_classes)}
        labels, predicted = (np.array([index[row[key]] for row in rows], dtype=np.int64)
                             for key in ("label", "prediction"))
        _, _, f1, _ = precision_recall_f1(confusion_counts(labels, predicted, len(run_classes)))
        scores[path.name] = dict(zip(run_classes, map(float, f1)))
    return list(classes), scores


def write_comparison_page(paths: list[Path], out: Path) -> None:
    """The runs side by side on one page: the table, their curves on shared axes, and their F1 per class."""
    table = compare_table(paths)
    classes, f1 = class_f1(paths)
    rows = [[escaped(name)] + [f'<span data-run="{escaped(run)}" data-class="{escaped(name)}" data-value='
                               f'"{f1[run][name]!r}">{f1[run][name]:.4f}</span>' if name in f1[run] else "-"
                               for run in f1] for name in classes]
    sections = [f"<h1>{len(paths)} runs side by side</h1>",
                "<div class=wide>" + table_html([escaped(cell) for cell in table[0]],
                                                [[escaped(cell) for cell in row] for row in table[1:]]) + "</div>",
                "<h2>Curves</h2>\n" + image_html(render(comparison_figure(_histories(paths))), "the runs' curves"),
                "<h2>F1 per class (test split)</h2>\n"
                + (table_html(["class", *map(escaped, f1)], rows) if classes else "<p>No run has test predictions.</p>")]
    write_atomic(out, page_html(f"{len(paths)} runs side by side", sections))


def compare(args: argparse.Namespace) -> int:
    """The compare command (``harness/compare.py``): the table, ``--plot``'s figure and ``--html``'s page."""
    written = [path for path in (args.plot, args.html) if path]
    check_outputs(written, args.force, "--plot PNG / --html PAGE write elsewhere")
    print(format_table(compare_table(args.runs)))
    if args.plot:
        plot_runs(args.runs, args.plot)
        print(f"curves of {len(args.runs)} runs written to {args.plot}")
    if args.html:
        write_comparison_page(args.runs, args.html)
        print(f"{len(args.runs)} runs side by side written to {args.html}")
    return 0
