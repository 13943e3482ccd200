"""Training from start to end: config -> run dir -> data -> model -> prepare -> [resume] -> fit -> test."""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from harness.accel import build_accelerator, log_to_file, setup_logging
from harness.builtin import builtin_root
from harness.checkpoint import TrainState, clean_temporary, latest_checkpoint, read_marker, resolve_checkpoint
from harness.config import Config, DataConfig, load_config, run_name_for
from harness.data import DataSplits, ImageListDataset, build_loader, build_transform, discover_splits
from harness.engine import Trainer, match_buffers_to_params
from harness.errors import CheckpointError, ConfigError, UserError, user_message
from harness.models import build_model, num_parameters
from harness.optim import build_criterion, build_optimizer, build_scheduler
from harness.reporting import Reporter
from harness.rundir import RunDir
from harness.signals import TrainingInterrupted

logger = logging.getLogger(__name__)


def data_root(cfg: DataConfig) -> Path:
    return builtin_root(cfg.builtin, cfg.cache_dir) if cfg.builtin else Path(cfg.root).expanduser()


def eval_loaders(cfg: Config, splits: DataSplits) -> dict:
    """One unshuffled, unaugmented loader per split."""
    transform = build_transform(cfg.data, train=False)
    batch_size = cfg.train.eval_batch_size or cfg.train.batch_size
    return {
        split: build_loader(ImageListDataset(splits.root, samples, transform), batch_size, shuffle=False,
                            num_workers=cfg.data.num_workers, seed=cfg.train.seed)
        for split, samples in splits.splits.items()
    }


@dataclass
class RunPlan:
    cfg: Config
    run: RunDir
    resume_from: Path | None  # the checkpoint to continue from; None: start from the beginning


def resolve_run(args: argparse.Namespace) -> RunPlan:
    """Decide what this command does: continue which checkpoint of which run, or start which run afresh."""
    if args.resume not in ("auto", "never"):
        run, checkpoint = resolve_checkpoint(Path(args.resume))
        return RunPlan(load_config(args.config or run.config, args.overrides), run, checkpoint)
    if not args.config:
        raise CheckpointError("--config is required to start a run (or --resume RUN_DIR to continue one)")
    cfg = load_config(args.config, args.overrides)
    # The saved config names the data absolutely, so inference and resumes work from any directory.
    for key in ("root", "cache_dir"):
        if getattr(cfg.data, key):
            setattr(cfg.data, key, str(Path(getattr(cfg.data, key)).expanduser().resolve()))
    run = RunDir(Path(args.output_dir) / (args.run_name or run_name_for(cfg, args.overrides)))
    if args.force or not run.root.exists():
        return RunPlan(cfg, run, None)
    if not run.config.is_file():
        raise CheckpointError(f"{run.root} exists and is not a run directory: choose another --run-name or --output-dir")
    hint = "--run-name NAME starts another run, --force starts over in it (deleting it)"
    if args.resume == "never":
        raise CheckpointError(f"{run.root} already holds a run (--resume never): {hint}")
    changed = _first_difference(load_config(run.config).to_dict(), cfg.to_dict())
    if changed:
        raise CheckpointError(f"{run.root} holds a run with another config ({changed}): --resume {run.root} "
                              f"continues it with its own config, {hint}")
    return RunPlan(cfg, run, latest_checkpoint(run))  # None: it never got to a checkpoint; start over


def _first_difference(saved: dict, new: dict, prefix: str = "") -> str | None:
    for key in sorted(set(saved) | set(new)):
        a, b = saved.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            found = _first_difference(a, b, f"{prefix}{key}.")
            if found:
                return found
        elif a != b:
            return f"{prefix}{key}: {a!r} there, {b!r} here"
    return None


def train(args: argparse.Namespace) -> int:
    """Run training; returns the process exit code."""
    setup_logging()
    plan = resolve_run(args)
    cfg, run, resume_from = plan.cfg, plan.run, plan.resume_from
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.train.grad_accum_steps, cfg.train.seed,
                                    cfg.train.clip_grad_norm, cfg.train.batch_size)
    setup_logging(accelerator)
    if accelerator.distributed_type == DistributedType.DEEPSPEED and cfg.train.skip_nonfinite_steps:
        raise ConfigError("train.skip_nonfinite_steps: not possible under DeepSpeed, whose engine applies the "
                          "update inside backward; set it to 0 (a non-finite loss then stops the run)")
    if resume_from and _is_finished(run, resume_from, cfg.train.epochs):
        logger.info(f"{run.root} already completed its {cfg.train.epochs} epochs: nothing to do "
                    f"(--resume {run.root} train.epochs=N trains longer, --force starts over)")
        return 0
    set_seed(cfg.train.seed, deterministic=cfg.train.deterministic)

    with accelerator.main_process_first():  # materialise built-in data once
        root = data_root(cfg.data)
    splits = DataSplits.load(run.splits, root) if resume_from else discover_splits(cfg.data, root)
    train_set = ImageListDataset(root, splits.splits["train"], build_transform(cfg.data, train=True),
                                 augment_seed=cfg.train.seed)
    train_loader = build_loader(train_set, cfg.train.batch_size, shuffle=True, num_workers=cfg.data.num_workers,
                                seed=cfg.train.seed)
    loaders = eval_loaders(cfg, splits)
    model = build_model(cfg.model, len(splits.classes))
    optimizer = build_optimizer(cfg.optim, model)
    class_counts = [sum(1 for _, label in splits.splits["train"] if label == c) for c in range(len(splits.classes))]
    criterion = build_criterion(cfg.loss, class_counts).to(accelerator.device)

    _prepare_run_dir(accelerator, run, cfg, splits, fresh=resume_from is None)
    clean_temporary(accelerator, run)
    log_to_file(accelerator, run.log_file)
    env = _environment(accelerator)
    logger.info(f"run {run.root}  ({env['distributed_type']}, {env['num_processes']} process(es), "
                f"device {env['device']}, mixed precision {env['mixed_precision']})")
    logger.info(f"data {root}: {len(splits.classes)} classes, "
                + ", ".join(f"{s} {len(v)}" for s, v in splits.splits.items()))

    # Loaders first: the schedule is defined in optimizer updates, which depend on the per-process loader length.
    train_loader, *prepared_eval = accelerator.prepare(train_loader, *loaders.values())
    loaders = dict(zip(loaders, prepared_eval))
    updates_per_epoch = math.ceil(len(train_loader) / cfg.train.grad_accum_steps)
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.train.epochs, updates_per_epoch)
    # Together, so that under DeepSpeed the engine owns (steps and checkpoints) the scheduler.
    model, prepared_optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    match_buffers_to_params(model)
    state = TrainState()
    accelerator.register_for_checkpointing(state)
    if resume_from:
        accelerator.load_state(str(resume_from))
        logger.info(f"resumed from {resume_from}: epoch {state.epoch}, batch {state.batch_in_epoch}, "
                    f"step {state.global_step}")
    if resume_from and state.num_processes != accelerator.num_processes:
        _convert_position(state, accelerator.num_processes)
    state.num_processes = accelerator.num_processes
    state.config = cfg.to_dict()
    state.started_at = state.started_at or time.strftime("%Y-%m-%dT%H:%M:%S%z")

    reporter = Reporter(run, accelerator.is_main_process, cfg.log.tensorboard,
                        purge_step=state.global_step + 1 if resume_from else None)
    weights_meta = {
        "run": run.name, "model": cfg.model.name, "model_kwargs": cfg.model.kwargs, "classes": splits.classes,
        "image_size": cfg.data.image_size, "mean": cfg.data.mean, "std": cfg.data.std,
        "mixed_precision": accelerator.mixed_precision,
    }
    trainer = Trainer(accelerator, cfg, run, model, prepared_optimizer, scheduler, criterion, train_loader,
                      loaders["val"], state, reporter, weights_meta)
    reporter.update_summary(
        status="running", run=run.name, run_dir=str(run.root), started_at=state.started_at,
        resumed_from=str(resume_from) if resume_from else None, **env,
        num_parameters=num_parameters(accelerator.unwrap_model(model)), num_classes=len(splits.classes),
        images={split: len(samples) for split, samples in splits.splits.items()}, **trainer.progress_fields(),
    )
    try:
        trainer.fit(args.stop_after_epochs)
        results = trainer.test(loaders, {s: [p for p, _ in v] for s, v in splits.splits.items()}, splits.classes)
    except TrainingInterrupted as stop:
        reporter.update_summary(status="interrupted", reason=str(stop), **trainer.progress_fields())
        logger.warning(f"{stop}; continue with --resume {run.root}")
        _leave_together(accelerator)
        return stop.exit_code
    except KeyboardInterrupt:  # during the final evaluation, after the last checkpoint: resuming redoes it
        reporter.update_summary(status="interrupted", reason="KeyboardInterrupt", **trainer.progress_fields())
        raise
    except BaseException as error:
        message = user_message(error) if isinstance(error, UserError) else f"{type(error).__name__}: {error}"
        reporter.update_summary(status="failed", error=message, **trainer.progress_fields())
        raise
    finally:
        reporter.close()
    reporter.update_summary(status="completed", **trainer.progress_fields(), **results)
    logger.info(f"done: best {cfg.checkpoint.monitor} {state.best_metric:.4f} (epoch {state.best_epoch}), "
                + ", ".join(f"{k} {v:.4f}" for k, v in results.items() if k.endswith("_acc"))
                + f"; outputs in {run.root}")
    _leave_together(accelerator)
    return 0


def _convert_position(state: TrainState, processes: int) -> None:
    """Carry the position inside the epoch over to another number of processes (same per-process batch)."""
    samples = state.batch_in_epoch * state.num_processes
    state.batch_in_epoch = samples // processes
    logger.warning(
        f"resuming a checkpoint of {state.num_processes} process(es) with {processes}: the epoch continues after "
        f"{state.batch_in_epoch * processes} of its {samples} trained batches"
        + (f" (replaying {samples % processes})" if samples % processes else "")
        + "; per-process RNG streams and the number of updates per epoch (the schedule's pace) change with the world size"
    )


def _leave_together(accelerator: Accelerator) -> None:
    """Every process waits for the others, then the process group is torn down: a process that exits while
    another still writes reports can take the job down with it (DeepSpeed's shared-memory transport aborts)."""
    accelerator.wait_for_everyone()
    accelerator.end_training()


def _prepare_run_dir(accelerator: Accelerator, run: RunDir, cfg: Config, splits: DataSplits, fresh: bool) -> None:
    if accelerator.is_main_process:
        if fresh:
            shutil.rmtree(run.root, ignore_errors=True)
        run.root.mkdir(parents=True, exist_ok=True)
        cfg.save(run.config)
        splits.save(run.splits)
    accelerator.wait_for_everyone()


def _environment(accelerator: Accelerator) -> dict:
    return {
        "device": str(accelerator.device),
        "distributed_type": str(accelerator.distributed_type).rsplit(".", 1)[-1],
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }


def _is_finished(run: RunDir, checkpoint: Path, epochs: int) -> bool:
    """The run completed (final evaluation included) and its newest checkpoint is at the last epoch."""
    try:
        status = json.loads(run.summary_json.read_text()).get("status")
        epoch = read_marker(checkpoint)["epoch"]
    except (OSError, ValueError, KeyError):
        return False
    return status == "completed" and epoch >= epochs
