"""The end of a run: the best weights evaluated on every split, with reports, predictions, curves and figures.

"The best weights" are the best epoch's chosen ones (``harness.epoch.chosen_weights``): the model's own, or its
weight average (``train.ema``) when that validated better.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

from harness.build import Run
from harness.checkpointing.loading import restore_best
from harness.checkpointing.weights import write_weights
from harness.data.workers import release_workers
from harness.evaluation.evaluate import evaluate
from harness.evaluation.predictions import Predictions
from harness.evaluation.selection import chosen_weights
from harness.models.inputs import ModelInputs
from harness.optim.schedules import lr_per_update, updates_per_epoch
from harness.reporting.outputs import write_split_outputs
from harness.reporting.plots import curves_figure, save_png

logger = logging.getLogger(__name__)


def weights_of(run: Run, record: dict):
    """A context in which ``run.model`` holds the weights ``record``'s epoch chose."""
    if chosen_weights(record, run.cfg.checkpoint.monitor) == "ema":
        return run.averaging.swapped_in(run.model)
    return nullcontext()


def weights_meta(run: Run, record: dict) -> dict:
    """What an exported weights file of ``record``'s epoch carries."""
    return {**run.weights_meta, "epoch": record["epoch"], "weights": chosen_weights(record, run.cfg.checkpoint.monitor),
            "val_acc": record["val_acc"], "val_loss": record["val_loss"]}


def test(run: Run, inputs: ModelInputs, last_val: tuple[int, dict[str, Predictions]] | None) -> dict[str, float]:
    """Load the best checkpoint; evaluate each split; write reports, predictions, curves and figures.
    ``last_val``: this session's last validation, (epoch, predictions by weights), reused when it is the best's."""
    state = run.state
    restore_best(run.accelerator, run.rundir, state)
    best = state.history[state.best_epoch - 1]
    weights = chosen_weights(best, run.cfg.checkpoint.monitor)
    results = {}
    with weights_of(run, best):
        # Written again from the loaded model, so it matches the best checkpoint whatever stopped in between.
        write_weights(run.accelerator, run.model, run.rundir, "best", weights_meta(run, best))
        logger.info(f"evaluating the best weights (epoch {state.best_epoch}, {state.best_checkpoint}"
                    + (", their average" if weights == "ema" else "") + ")")
        for split, loader in run.eval_loaders.items():
            reuse = split == "val" and last_val and last_val[0] == state.best_epoch == state.epoch
            preds = last_val[1][weights] if reuse else evaluate(run.accelerator, run.model, loader, inputs)
            release_workers(loader)
            results[f"{split}_acc"], results[f"{split}_loss"] = preds.accuracy(), preds.loss()
            logger.info(f"{split}: accuracy {preds.accuracy():.4f} loss {preds.loss():.4f} ({len(preds)} images)")
            if run.accelerator.is_main_process:
                _write_split(run, split, preds)
    if run.accelerator.is_main_process:
        updates = updates_per_epoch(len(run.train_loader), run.cfg.train.grad_accum_steps)
        rates = lr_per_update(run.cfg.optim, run.cfg.scheduler, run.cfg.train.epochs, updates,
                              run.cfg.model.freeze_backbone_epochs)
        save_png(curves_figure(state.history, rates, updates, state.best_epoch), run.rundir.reports / "curves.png")
    return results


def _write_split(run: Run, split: str, preds: Predictions) -> None:
    pixels = write_split_outputs(
        preds, run.splits.classes, [path for path, _ in run.splits.splits[split]],
        report=run.rundir.reports / f"classification_report_{split}.txt",
        matrix_png=run.rundir.reports / f"confusion_matrix_{split}.png",
        csv_path=run.rundir.predictions / f"{split}.csv",
        title=f"{run.rundir.name} - {split} (best, epoch {run.state.best_epoch})",
    )
    run.reporter.image(f"confusion_matrix/{split}", pixels, run.state.global_step)
