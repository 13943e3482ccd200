"""The LR finder (the ``harness/lr_find.py`` command): the config's training step, from its initial weights, with the
learning rate rising exponentially from ``--start-lr`` to ``--end-lr`` over ``--steps`` optimizer updates.

The loss of every update (the mean over every process's batch) is smoothed (an exponential moving average,
bias-corrected, as fastai does); the sweep stops early once that is 4 times its lowest (diverged). The
suggestion is the learning rate where the smoothed loss falls fastest, before its lowest point. The batches
are the training's own (order and augmentations seeded alike), so 2 processes at ``train.batch_size`` B and 1
process at 2B sweep the same data and suggest the same rate. ``data.mixup`` and accumulation are not applied.
Writes ``lr_find.csv`` and ``lr_find.png`` to ``--out``; nothing of a run.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import logging
import math
from pathlib import Path
from typing import Iterator

import numpy as np
from accelerate.utils import set_seed

from harness.config.loading import load_config
from harness.data.cache import check_memory, image_cache
from harness.data.loaders import train_loader
from harness.data.source import run_splits
from harness.data.workers import batches_of
from harness.models.inputs import ModelInputs
from harness.models.registry import training_model
from harness.optim.losses import build_criterion
from harness.optim.optimizers import build_optimizer
from harness.reporting.plots import save_png
from harness.runtime.accelerator import build_accelerator
from harness.runtime.collective import leave_together
from harness.runtime.logs import setup_logging
from harness.storage.atomic import atomic_path
from harness.storage.rundir import check_outputs

logger = logging.getLogger(__name__)
SMOOTHING = 0.98
DIVERGED = 4.0  # times the lowest smoothed loss


def find_lr(args: argparse.Namespace) -> int:
    setup_logging()
    cfg = load_config(args.config, args.overrides)
    cfg.data.settle()
    out = Path(args.out or Path("lr_find") / cfg.name)
    check_outputs([out / "lr_find.csv", out / "lr_find.png"], args.force, "--out DIR writes elsewhere")
    accelerator = build_accelerator(cfg.train.mixed_precision, 1, cfg.train.clip_grad_norm, cfg.train.batch_size)
    setup_logging(accelerator)
    set_seed(cfg.train.seed, deterministic=cfg.train.deterministic)
    splits = run_splits(accelerator, cfg.data)
    check_memory(len(splits.splits["train"]), cfg.data)
    loader = train_loader(cfg, splits, image_cache(cfg.data.cache, splits.root, splits.splits["train"], cfg.data))
    model = training_model(cfg, len(splits.classes))
    optimizer = build_optimizer(cfg.optim, model)
    criterion = build_criterion(cfg.loss, splits.class_counts("train")).to(accelerator.device)
    model, optimizer, loader = accelerator.prepare(model, optimizer, loader)
    rates = np.geomspace(args.start_lr, args.end_lr, args.steps)
    losses = _sweep(accelerator, model, optimizer, criterion, loader, ModelInputs(model, cfg.data,
                    cfg.model.channels_last), rates, [g["lr"] / cfg.optim.lr for g in optimizer.param_groups])
    rates, smoothed = rates[:len(losses)], smooth(losses)
    suggested = suggestion(rates, smoothed)
    if accelerator.is_main_process:
        _write(out, rates, losses, smoothed, suggested)
        logger.info(f"{len(losses)} updates from lr {rates[0]:.3g} to {rates[-1]:.3g}: suggested optim.lr "
                    f"{suggested:.3g} (the steepest fall of the loss); {out / 'lr_find.csv'}, {out / 'lr_find.png'}")
    leave_together(accelerator)
    return 0


def _sweep(accelerator, model, optimizer, criterion, loader, inputs: ModelInputs, rates: np.ndarray,
           multipliers: list[float]) -> list[float]:
    """The loss of each update at ``rates`` (every group at its multiple of it), until it diverges."""
    full = len(loader.dataset) // loader.total_batch_size  # accelerate's loader: the batch of all processes
    losses, lowest, batches = [], math.inf, _endless(loader, max(1, full))
    model.train()
    for rate in rates:
        for group, multiplier in zip(optimizer.param_groups, multipliers):
            group["lr"] = float(rate) * multiplier
        images, labels, _ = next(batches)
        with accelerator.autocast():
            loss = criterion(model(inputs(images)).float(), labels)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(accelerator.reduce(loss.detach(), reduction="mean").item())
        current = smooth(losses)[-1]
        lowest = min(lowest, current)
        if not math.isfinite(current) or current > DIVERGED * lowest:
            break
    return losses


def _endless(loader, full_batches: int) -> Iterator:
    """The loader's batches, epoch after epoch, the first ``full_batches`` of each: an epoch's last, short or
    padded batch (which differs with the number of processes) is left out."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from itertools.islice(batches_of(loader), full_batches)
        epoch += 1


def smooth(losses: list[float]) -> np.ndarray:
    """The bias-corrected exponential moving average of ``losses``."""
    average, out = 0.0, []
    for i, loss in enumerate(losses, start=1):
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        out.append(average / (1 - SMOOTHING ** i))
    return np.array(out)


def suggestion(rates: np.ndarray, smoothed: np.ndarray) -> float:
    """The rate where ``smoothed`` falls fastest per decade of learning rate, between its first tenth (where the
    average has seen too few losses to mean much) and its lowest point."""
    start = max(2, len(smoothed) // 10)
    end = start + int(np.nanargmin(smoothed[start:])) + 1
    if end - start < 3:
        return float(rates[max(start, end - 1)])
    slopes = np.gradient(smoothed[start:end], np.log10(rates[start:end]))
    return float(rates[start + int(np.argmin(slopes))])


def _write(out: Path, rates: np.ndarray, losses: list[float], smoothed: np.ndarray, suggested: float) -> None:
    from matplotlib.figure import Figure

    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "lr_find.csv") as tmp, open(tmp, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["lr", "loss", "smoothed_loss"])
        writer.writerows(zip(rates.tolist(), losses, smoothed.tolist()))
    figure = Figure(figsize=(7, 4.5))
    ax = figure.subplots()
    ax.plot(rates, losses, alpha=0.3, label="loss")
    ax.plot(rates, smoothed, label="smoothed")
    ax.axvline(suggested, color="grey", linestyle="--", label=f"suggested {suggested:.3g}")
    ax.set(xscale="log", xlabel="learning rate", ylabel="loss", title="LR finder")
    ax.set_ylim(bottom=0.9 * float(np.nanmin(losses)),
                top=1.05 * min(float(np.nanmax(smoothed)), DIVERGED * float(np.nanmin(smoothed))))
    ax.grid(alpha=0.3)
    ax.legend()
    figure.tight_layout()
    save_png(figure, out / "lr_find.png")
