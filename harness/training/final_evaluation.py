"""The end of a run: the best weights evaluated on the final splits (``train.final_eval_splits``), a temperature
fitted on the validation split (``harness.evaluation.calibration``), and reports, predictions, curves, figures and
report.html.

"The best weights" are the best epoch's chosen ones (``harness.evaluation.selection.chosen_weights``): the model's
own, or other weights a feature keeps (the weight average of ``train.ema``) when those validated better.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext

from harness.checkpointing.loading import restore_best
from harness.checkpointing.weights import write_weights
from harness.data.workers import release_workers
from harness.evaluation.calibration import fit_temperature, unfitted
from harness.evaluation.evaluate import evaluate
from harness.evaluation.predictions import Predictions
from harness.evaluation.selection import OWN, chosen_weights
from harness.models.inputs import ModelInputs
from harness.optim.schedules import lr_per_update, updates_per_epoch
from harness.reporting.outputs import write_split_outputs
from harness.reporting.page import ReportInputs, write_report
from harness.reporting.plots import curves_figure, save_png
from harness.training.parts import Parts
from harness.training.probes import pause_at

logger = logging.getLogger(__name__)

FULL_TRAIN_PASS_UP_TO = 100_000  # train images: the final evaluation covers the train split by default up to this


def weights_of(parts: Parts, record: dict):
    """A context in which ``parts.model`` holds the weights ``record``'s epoch chose."""
    chosen = chosen_weights(record, parts.cfg.checkpoint.monitor)
    return nullcontext() if chosen == OWN else parts.features.weights()[chosen](parts.model)


def weights_meta(parts: Parts, record: dict) -> dict:
    """What a weights file of ``record``'s epoch carries."""
    return {**parts.weights_meta, "epoch": record["epoch"], "weights": chosen_weights(record, parts.cfg.checkpoint.monitor),
            "val_acc": record["val_acc"], "val_loss": record["val_loss"]}


def evaluate_best(parts: Parts, inputs: ModelInputs, last_val: tuple[int, dict[str, Predictions]] | None
                  ) -> dict[str, float | str]:
    """Load the best checkpoint; evaluate each split; fit the temperature on the validation split; write the
    weights (with it), reports, predictions (calibrated), curves, figures and report.html. ``last_val``: this
    session's last validation, (epoch, predictions by weights), reused when it is the best's."""
    state = parts.state
    restore_best(parts.accelerator, parts.rundir, state)
    best = state.history[state.best_epoch - 1]
    weights = chosen_weights(best, parts.cfg.checkpoint.monitor)
    results, raw = {}, {}
    with weights_of(parts, best):
        logger.info(f"evaluating the best weights (epoch {state.best_epoch}, {state.best_checkpoint}"
                    + ("" if weights == OWN else f", the {weights} weights") + ")")
        splits = final_splits(parts.cfg.train.final_eval_splits, parts.splits.splits)
        for split in dict.fromkeys([*splits, "val"]):  # the temperature is fitted on val, reported or not
            loader = parts.eval_loaders[split]
            reuse = split == "val" and last_val and last_val[0] == state.best_epoch == state.epoch
            raw[split] = last_val[1][weights] if reuse else evaluate(parts.accelerator, parts.model, loader, inputs)
            release_workers(loader)
            if split in splits:
                preds = raw[split]
                results[f"{split}_acc"], results[f"{split}_loss"] = preds.accuracy(), preds.loss()
                logger.info(f"{split}: accuracy {preds.accuracy():.4f} loss {preds.loss():.4f} ({len(preds)} images)")
        temperature, fit, calibration = _calibrate(raw["val"])
        # Written again from the loaded model, so it matches the best checkpoint whatever stopped in between.
        write_weights(parts.accelerator, parts.model, parts.rundir, "best",
                      {**weights_meta(parts, best), **calibration})
    results.update(calibration)
    pause_at("reports")
    if parts.accelerator.is_main_process:
        reported = {split: raw[split] if temperature is None else raw[split].scaled(temperature)
                    for split in splits}
        confusion = {split: _write_split(parts, split, reported[split]) for split in splits}
        updates = updates_per_epoch(len(parts.train_loader), parts.cfg.train.grad_accum_steps)
        rates = lr_per_update(parts.cfg.optim, parts.cfg.scheduler, parts.cfg.train.epochs, updates,
                              parts.cfg.model.freeze_backbone_epochs)
        curves = save_png(curves_figure(state.history, rates, updates, state.best_epoch),
                          parts.rundir.reports / "curves.png")
        shown = "test" if "test" in splits else splits[-1]
        write_report(parts.rundir.report, ReportInputs(
            title=f"{parts.rundir.name}: {shown} split, best weights (epoch {state.best_epoch})", split=shown,
            classes=parts.splits.classes, preds=reported[shown],
            paths=[path for path, _ in parts.splits.splits[shown]], root=parts.splits.root, temperature=temperature,
            facts=_facts(parts, results), curves=curves, confusion=confusion[shown], fit=fit,
            config_text=parts.rundir.config.read_text()))
    return results


def _calibrate(val: Predictions) -> tuple[float | None, tuple[float, float] | None, dict[str, float | str]]:
    """The temperature fitted on the validation predictions ``val``, their log loss before and after, and what the
    weights and summary.json record: the temperature, or why none was fitted (None, None then)."""
    why = unfitted(val)
    if why:
        calibration = {"uncalibrated": f"no temperature fitted on the validation split: {why}"}
        logger.warning(f"{calibration['uncalibrated']}; the predictions and report.html give the model's own "
                       "probabilities")
        return None, None, calibration
    temperature = fit_temperature(val)
    fit = (val.loss(), val.scaled(temperature).loss())
    logger.info(f"temperature {temperature:.4f} (fitted on val: log loss {fit[0]:.4f} -> {fit[1]:.4f}); "
                "the predictions and report.html give calibrated probabilities")
    return temperature, fit, {"temperature": temperature}


def _facts(parts: Parts, results: dict[str, float | str]) -> list[tuple[str, object]]:
    state, cfg = parts.state, parts.cfg
    facts = [("run", str(parts.rundir.root)), ("model", cfg.model.name),
             ("epochs", f"{state.epoch} of {cfg.train.epochs}"
              + (f" (stopped early at {state.stopped_early_at})" if state.stopped_early_at else "")),
             ("best epoch", f"{state.best_epoch} ({state.best_checkpoint})"),
             (f"best {cfg.checkpoint.monitor}", state.best_metric),
             ("images", ", ".join(f"{split} {len(samples)}" for split, samples in parts.splits.splits.items()))]
    facts += [(key.replace("_", " "), value) for key, value in results.items()]
    facts += [(key, value) for key, value in parts.summary.fields.items()
              if key in ("distributed_type", "num_processes", "device", "mixed_precision")]
    return facts


def final_splits(named: list[str] | None, splits: dict[str, list]) -> list[str]:
    """The splits of the run the final evaluation covers, in their order: ``train.final_eval_splits``, or by default
    all but a train split of more than ``FULL_TRAIN_PASS_UP_TO`` images."""
    if named is None:
        named = [split for split in splits if split != "train" or len(splits[split]) <= FULL_TRAIN_PASS_UP_TO]
    return [split for split in splits if split in named]


def _write_split(parts: Parts, split: str, preds: Predictions):
    """The split's CSV, text report and confusion matrix; the matrix's pixels are returned."""
    pixels = write_split_outputs(
        preds, parts.splits.classes, [path for path, _ in parts.splits.splits[split]],
        report=parts.rundir.reports / f"classification_report_{split}.txt",
        matrix_png=parts.rundir.reports / f"confusion_matrix_{split}.png",
        csv_path=parts.rundir.predictions / f"{split}.csv",
        title=f"{parts.rundir.name} - {split} (best, epoch {parts.state.best_epoch})",
    )
    parts.reporter.image(f"confusion_matrix/{split}", pixels, parts.state.global_step)
    return pixels
