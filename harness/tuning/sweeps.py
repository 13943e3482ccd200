"""Sweeps: a YAML file of runs for a SLURM job array, one set of config overrides per array task.

``grid`` gives every combination of its values, ``runs`` lists the runs one by one (at most one of each per
file, to keep the numbering obvious)::

    grid:                     # 2 x 2 = 4 runs: --array=0-3
      optim.lr: [0.1, 0.01]
      train.batch_size: [32, 64]

    runs:                     # 2 runs: --array=0-1
      - {optim.lr: 0.1, train.epochs: 20}
      - {optim.name: adamw, optim.lr: 0.001}

The sweep command (``python -m harness.sweep FILE [--config CONFIG]``) lists the runs with their array indices
(and checks each against the config); ``--task I`` prints run I's overrides, one per line, for ``slurm/sweep.sh``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import yaml

from harness.config.loading import load_config
from harness.config.yaml_text import read_yaml
from harness.errors import ConfigError


def load_sweep(path: str | Path) -> list[list[str]]:
    """The runs of a sweep file, in array order, each as ``section.key=value`` overrides."""
    try:
        raw = read_yaml(Path(path))
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the sweep file ({error.strerror})") from None
    if not isinstance(raw, dict) or len(raw) != 1 or next(iter(raw)) not in ("grid", "runs"):
        raise ConfigError(f"{path}: a sweep file holds either 'grid:' (key: [values]) or 'runs:' (a list of "
                          "{key: value} mappings)")
    kind, body = next(iter(raw.items()))
    if kind == "grid":
        if not isinstance(body, dict) or not body or not all(isinstance(v, list) and v for v in body.values()):
            raise ConfigError(f"{path}: grid: each key needs a non-empty list of values, e.g. optim.lr: [0.1, 0.01]")
        runs = [dict(zip(body, values)) for values in itertools.product(*body.values())]
    else:
        if not isinstance(body, list) or not body or not all(isinstance(run, dict) for run in body):
            raise ConfigError(f"{path}: runs: a list of mappings, e.g. - {{optim.lr: 0.1}}")
        runs = body
    return [[f"{key}={_yaml_value(value)}" for key, value in run.items()] for run in runs]


def _yaml_value(value) -> str:
    """A value as the override parser reads it back (YAML flow style, one line)."""
    text = yaml.safe_dump(value, default_flow_style=True, width=float("inf")).strip()
    return text.removesuffix("...").strip()


def sweep(args: argparse.Namespace) -> int:
    """The sweep command: list the runs (checked against ``--config``), or print one array task's overrides."""
    runs = load_sweep(args.sweep)
    if args.config:
        for overrides in runs:
            load_config(args.config, overrides)
    if args.task is None:
        for index, overrides in enumerate(runs):
            print(index, " ".join(overrides))
        print(f"{len(runs)} runs: sbatch --array=0-{len(runs) - 1} slurm/sweep.sh CONFIG {args.sweep}")
        return 0
    if args.task >= len(runs):
        raise ConfigError(f"{args.sweep}: array task {args.task} is out of range: the sweep has {len(runs)} "
                          f"runs (--array=0-{len(runs) - 1})")
    print("\n".join(runs[args.task]))
    return 0
