"""What a train command asks for: a new run, the continuation of which checkpoint, or a refusal.

Decided from the command line and the files on disk alone, before anything is built.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass
from pathlib import Path

from harness.checkpointing.folders import STATE, latest_checkpoint, read_marker, read_pointer, step_folders, verify
from harness.config.loading import load_config
from harness.config.naming import checked_run_name, run_name_for
from harness.config.schema import Config
from harness.data import background
from harness.data.builtin import data_root
from harness.errors import CheckpointError, UserError
from harness.storage.rundir import RunDir, protected_part
from harness.evaluation.selection import stopped_early_at

START_OVER_HINT = "--run-name NAME starts another run, --force starts over in it (deleting it)"


@dataclass
class RunPlan:
    cfg: Config
    rundir: RunDir
    resume_from: Path | None  # the checkpoint to continue from; None: start from the beginning
    replace: bool = False  # --force on an existing run: deleted once the new run is known to start

    def finished(self) -> str | None:
        """How the run completed (final evaluation included) and what would continue it, if the checkpoint to
        resume is its end: at its last epoch, or where ``train.early_stopping`` (as this config has it) ends it;
        None otherwise."""
        if self.resume_from is None:
            return None
        try:
            epoch = read_marker(self.resume_from)["epoch"]
            history = json.loads((self.resume_from / STATE).read_text()).get("history", [])
        except (OSError, ValueError, KeyError, AttributeError):
            return None
        if summary_status(self.rundir) != "completed":
            return None
        again = f"--resume {self.rundir.root}"
        if epoch >= self.cfg.train.epochs:
            return (f"completed its {self.cfg.train.epochs} epochs: nothing to do ({again} train.epochs=N trains "
                    "longer, --force starts over)")
        if epoch and stopped_early_at(history, self.cfg.checkpoint.monitor, self.cfg.train.early_stopping) == epoch:
            return (f"stopped early after epoch {epoch} (train.early_stopping): nothing to do ({again} "
                    "train.early_stopping.patience=N trains on if it allows more, --force starts over)")
        return None


def resolve_run(args: argparse.Namespace) -> RunPlan:
    """Decide what this command does: continue which checkpoint of which run, or start which run afresh."""
    if args.resume not in ("auto", "never"):
        rundir, checkpoint = resolve_checkpoint(Path(args.resume))
        cfg = load_config(args.config or rundir.config, args.overrides)
        cfg.data.settle()
        return RunPlan(cfg, rundir, checkpoint)
    if not args.config:
        raise CheckpointError("--config is required to start a run (or --resume RUN_DIR to continue one)")
    cfg = load_config(args.config, args.overrides)
    cfg.data.settle()
    name = (args.run_name or "{name}").replace("{name}", run_name_for(cfg, args.overrides))
    rundir = RunDir(Path(args.output_dir) / checked_run_name(name))
    if protected_part(rundir.root) is not None:
        raise CheckpointError(f"--output-dir {args.output_dir}: inside {protected_part(rundir.root)}, which only "
                              "that run's training writes: choose another --output-dir")
    if not rundir.root.exists() or (rundir.root.is_dir() and not any(rundir.root.iterdir())):
        return RunPlan(cfg, rundir, None)
    if not rundir.is_run():
        raise CheckpointError(f"{rundir.root} exists and is not a run directory (--force deletes only runs): "
                              "choose another --run-name or --output-dir")
    if args.force:
        return RunPlan(cfg, rundir, None, replace=True)
    if args.resume == "never":
        raise CheckpointError(f"{rundir.root} already holds a run (--resume never): {START_OVER_HINT}")
    changed = first_difference(load_config(rundir.config).to_dict(), cfg.to_dict())
    if changed:
        raise CheckpointError(f"{rundir.root} holds a run with another config ({changed}): --resume {rundir.root} "
                              f"continues it with its own config, {START_OVER_HINT}")
    checkpoint = latest_checkpoint(rundir)
    if checkpoint is None:
        refuse_if_it_trained(rundir)  # otherwise it never reached a checkpoint: it starts again, in place
    return RunPlan(cfg, rundir, checkpoint)


def splits_early(args: argparse.Namespace) -> None:
    """On the main process, start making the run's splits (found for a new run, read back for a resume) in a
    process forked before the command imports torch (``harness.data.background``)."""
    if os.environ.get("RANK", "0") == "0":
        background.start(lambda: splits_asked(args))


def splits_asked(args: argparse.Namespace) -> tuple | None:
    """The splits this command's run will ask for, where its data is a folder; None for built-in data, or where the
    command will refuse (it says why itself)."""
    try:
        plan = resolve_run(args)
    except UserError:
        return None
    data = plan.cfg.data
    if data.builtin:
        return None
    if plan.resume_from is None:
        return background.finding(data, data_root(data), plan.rundir.root.parent)
    return background.reading(plan.rundir.splits, data_root(data), data)


def refuse_if_it_trained(rundir: RunDir) -> None:
    """A run without a usable checkpoint that had one (its checkpoints deleted, say, to free space, or damaged)
    cannot continue, and what it made (weights, outputs) is not for a new run to delete without --force."""
    damaged = [(path.name, verify(path, content=True)) for path in step_folders(rundir)]
    if damaged:
        name, problem = damaged[-1]
        raise CheckpointError(f"{rundir.root}: no usable checkpoint, it cannot continue ({name}: {problem}): "
                              f"{START_OVER_HINT}")
    trained = [path.name for path in (rundir.weights, rundir.checkpoints / "latest", rundir.reports) if path.exists()]
    if trained or summary_status(rundir) == "completed":
        raise CheckpointError(f"{rundir.root}: holds a run that trained ({', '.join(trained) or 'completed'}) but "
                              f"has no checkpoint left to continue from: {START_OVER_HINT}")


def summary_status(rundir: RunDir) -> str | None:
    """The status a run's summary.json records; None when it has none (or it cannot be read)."""
    try:
        status = json.loads(rundir.summary_json.read_text()).get("status")
    except (OSError, ValueError, AttributeError):
        return None
    return status if isinstance(status, str) else None


def resolve_checkpoint(path: Path) -> tuple[RunDir, Path]:
    """An explicit --resume: a run directory (its latest complete checkpoint), a checkpoint folder, or one of
    the pointer files ``latest``/``best``. A broken checkpoint is an error naming it."""
    if path.is_file() and path.parent.name == "checkpoints":  # checkpoints/latest or checkpoints/best
        name = read_pointer(path)
        if name is None:
            raise CheckpointError(f"--resume {path}: does not name a checkpoint")
        path = path.parent / name
    if RunDir(path).is_run():
        rundir = RunDir(path)
        found = latest_checkpoint(rundir)
        if found is None:
            raise CheckpointError(f"--resume {path}: no complete checkpoint in {rundir.checkpoints}")
        return rundir, found
    if path.parent.name == "checkpoints" and path.is_dir():
        problem = verify(path, content=True)
        if problem:
            raise CheckpointError(f"--resume {path}: not a complete checkpoint: {problem}")
        return RunDir(path.parent.parent), path
    raise CheckpointError(f"--resume {path}: neither a run directory (with config.yaml) nor a checkpoint folder")


def first_difference(saved: dict, new: dict, prefix: str = "") -> str | None:
    """The first key (dotted, in sorted order) whose value differs between two nested dicts, shown both ways."""
    for key in sorted(set(saved) | set(new)):
        old_value, new_value = saved.get(key), new.get(key)
        if isinstance(old_value, dict) and isinstance(new_value, dict):
            found = first_difference(old_value, new_value, f"{prefix}{key}.")
            if found:
                return found
        elif old_value != new_value:
            return f"{prefix}{key}: {old_value!r} there, {new_value!r} here"
    return None
