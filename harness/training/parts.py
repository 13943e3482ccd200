"""The parts of a training run, built and prepared by the Accelerator in the order it needs, in one object.

seed -> splits -> loaders -> model, optimizer, loss -> run directory -> prepare (loaders first, then model,
optimizer and scheduler together) -> features -> [load_checkpoint] -> reporter and summary.
"""

from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed
from torch import nn
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LRScheduler
from torch.utils.data import DataLoader

from harness.checkpointing.loading import load_checkpoint
from harness.checkpointing.saving import clean_temporary
from harness.checkpointing.state import TrainState
from harness.checkpointing.weights import weights_metadata
from harness.config.schema import Config
from harness.data.loaders import training_loaders
from harness.data.source import run_splits
from harness.data.splits import DataSplits
from harness.data.workers import loader_workers
from harness.models.blocks import block_classes
from harness.models.buffers import match_buffers_to_params
from harness.models.registry import num_parameters, training_model
from harness.optim.losses import build_criterion
from harness.optim.optimizers import build_optimizer
from harness.optim.schedules import build_scheduler, updates_per_epoch
from harness.reporting.history import Reporter
from harness.reporting.summary import RunSummary
from harness.runtime.accelerator import environment
from harness.runtime.deepspeed import size_deepspeed_buckets
from harness.runtime.fsdp import fsdp_compute_dtype, shard_blocks
from harness.runtime.logs import log_to_file
from harness.storage.rundir import RunDir
from harness.training.features.base import Features
from harness.training.features.registry import build_features
from harness.training.plan import RunPlan
from harness.training.probes import pause_at

logger = logging.getLogger(__name__)


@dataclass
class Parts:
    """A training run's parts, built and prepared: everything the Trainer works with."""

    accelerator: Accelerator
    cfg: Config
    rundir: RunDir
    splits: DataSplits
    train_loader: DataLoader  # shuffled and augmented
    eval_loaders: dict[str, DataLoader]  # one per split, unshuffled and unaugmented
    model: nn.Module
    optimizer: Optimizer
    scheduler: LRScheduler
    criterion: nn.Module
    features: Features  # the weight average, early stopping, mixup, ... (harness.training.features)
    state: TrainState  # restored from the checkpoint when resuming
    reporter: Reporter
    summary: RunSummary
    weights_meta: dict  # what every weights file of the run carries


def build_parts(plan: RunPlan, accelerator: Accelerator) -> Parts:
    """The run's parts. Nothing is written to the run directory before everything that can be checked has been:
    the data, the model (a forward pass at the configured size), the optimizer and schedule, and the checkpoint
    to continue, loaded; so a refusal or a failure here leaves the directory as it was."""
    cfg, rundir = plan.cfg, plan.rundir
    set_seed(cfg.train.seed, deterministic=cfg.train.deterministic)
    pause_at("data")
    splits = run_splits(accelerator, cfg.data, saved=rundir.splits if plan.resume_from else None,
                        exclude=rundir.root.parent)
    train_loader, eval_loaders, model, optimizer, scheduler, criterion, parameters = _prepared(accelerator, cfg, splits)
    features = build_features(cfg, accelerator, model, len(splits.classes))
    for feature in features.with_state():  # before a checkpoint is loaded: it holds their state too
        accelerator.register_for_checkpointing(feature)
    state, said = _restore(accelerator, cfg, plan.resume_from)

    _prepare_run_dir(accelerator, plan, splits)
    pause_at("written")
    env = environment(accelerator)
    notes = _announce(rundir, env, splits, cfg)
    for line, log in zip(said, (logger.info, logger.warning)):
        log(line)
    main = accelerator.is_main_process
    reporter = Reporter(rundir, main, cfg.log.tensorboard,
                        purge_step=state.global_step + 1 if plan.resume_from else None)
    facts = {
        "run": rundir.name, "run_dir": str(rundir.root), "started_at": state.started_at,
        "resumed_from": str(plan.resume_from) if plan.resume_from else None, **env,
        "num_parameters": parameters, "num_classes": len(splits.classes),
        "images": {split: len(samples) for split, samples in splits.splits.items()},
        "skipped_images": len(splits.skipped), "warnings": notes,
    }
    return Parts(
        accelerator, cfg, rundir, splits, train_loader, eval_loaders, model, optimizer, scheduler, criterion, features,
        state, reporter, summary=RunSummary(rundir, main, state, cfg.train.epochs, cfg.checkpoint.monitor, facts),
        weights_meta=weights_metadata(cfg, splits.classes, rundir.name, accelerator.mixed_precision),
    )


def _prepared(accelerator: Accelerator, cfg: Config, splits: DataSplits) -> tuple:
    """The loaders, model, optimizer, schedule and loss, prepared by the Accelerator; and the parameter count."""
    pause_at("cache")
    train_loader, eval_loaders = training_loaders(cfg, splits)
    pause_at("model")
    model = training_model(cfg, len(splits.classes))
    optimizer = build_optimizer(cfg.optim, model)
    criterion = build_criterion(cfg.loss, splits.class_counts("train")).to(accelerator.device)
    # Loaders first: the schedule is defined in optimizer updates, which depend on the per-process loader length.
    train_loader, *prepared_eval = accelerator.prepare(train_loader, *eval_loaders.values())
    eval_loaders = dict(zip(eval_loaders, prepared_eval))
    scheduler = build_scheduler(cfg.scheduler, optimizer, cfg.train.epochs,
                                updates_per_epoch(len(train_loader), cfg.train.grad_accum_steps),
                                cfg.model.freeze_backbone_epochs)
    parameters = num_parameters(model)  # before ZeRO-3 or FSDP shards them
    size_deepspeed_buckets(accelerator, parameters)
    shard_blocks(accelerator, block_classes(model))
    # Together, so that under DeepSpeed the engine owns (steps and checkpoints) the scheduler.
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    match_buffers_to_params(model, fsdp_compute_dtype(accelerator))
    return train_loader, eval_loaders, model, optimizer, scheduler, criterion, parameters


def _announce(rundir: RunDir, env: dict, splits: DataSplits, cfg: Config) -> list[str]:
    """Log where and on what the run trains, and warn of what the data check and the config noted (returned)."""
    distributed = "" if env["distributed_type"] == "NO" else f" ({env['distributed_type']})"
    if "fsdp_units" in env:
        distributed = f" (FSDP2, sharding {env['fsdp_units']})"
    logger.info(f"run {rundir.root}  ({env['num_processes']} process(es){distributed}, device {env['device']}, "
                f"{env['threads']} thread(s) each, mixed precision {env['mixed_precision']})")
    logger.info(f"data {splits.root}: {len(splits.classes)} classes, "
                + ", ".join(f"{split} {len(samples)}" for split, samples in splits.splits.items())
                + f"; {loader_workers(cfg.data)} loader worker(s) per process, cache {cfg.data.cache}")
    notes = splits.notes + cfg.notes()
    for note in notes:
        logger.warning(note)
    return notes


def _prepare_run_dir(accelerator: Accelerator, plan: RunPlan, splits: DataSplits) -> None:
    """Once the run is known to start: a run started over with --force loses its old directory; a run that never
    reached a checkpoint loses what its attempt made (outputs only: other files stay); the config and split lists
    are (re)written, what a killed save left is removed, and the log goes to train.log too."""
    rundir, existed = plan.rundir, plan.rundir.root.exists()
    if accelerator.is_main_process:
        if plan.replace:
            shutil.rmtree(rundir.root)
        elif plan.resume_from is None:
            rundir.remove_outputs()
        rundir.root.mkdir(parents=True, exist_ok=True)
        try:
            plan.cfg.save(rundir.config)
            splits.save(rundir.splits)
        except BaseException:
            if not existed or plan.replace:  # half a run directory would stop the next attempt ("not a run")
                shutil.rmtree(rundir.root, ignore_errors=True)
            raise
    accelerator.wait_for_everyone()
    clean_temporary(accelerator, rundir)
    log_to_file(accelerator, rundir.log_file)


def _restore(accelerator: Accelerator, cfg: Config, resume_from: Path | None) -> tuple[TrainState, list[str]]:
    """The train state, loaded with everything else when resuming; and what the log says of it, once the run
    directory is open (where the checkpoint was, and what moving it to this number of processes changed)."""
    state, said = TrainState(), []
    if resume_from:
        load_checkpoint(accelerator, resume_from, state)
        said.append(f"resumed from {resume_from} (step {state.global_step}): {state.where()}")
    moved = state.move_to(accelerator.num_processes)
    state.config = cfg.to_dict()
    state.started_at = state.started_at or time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return state, said + [moved] if moved else said
