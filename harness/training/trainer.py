"""The Trainer: the epoch loop over a run's parts (``harness.training.parts.Parts``) around its one Accelerator.

Nothing here branches on device, precision or distribution: ``accelerator.prepare``/``accumulate``/
``autocast``/``backward``/``clip_grad_norm_``/``gather_for_metrics`` carry those differences. Features (the
weight average, early stopping, mixup) act at named moments (``harness.training.features``).
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time

import torch
from tqdm.auto import tqdm

from harness.checkpointing.folders import checkpoint_name, latest_label
from harness.checkpointing.saving import save_checkpoint
from harness.checkpointing.weights import copy_weights, write_weights
from harness.data.workers import release_workers
from harness.errors import TrainingDiverged
from harness.evaluation.evaluate import evaluate
from harness.evaluation.predictions import Predictions
from harness.evaluation.selection import OWN, beats, scores
from harness.models.buffers import sync_buffers
from harness.models.inputs import ModelInputs
from harness.runtime.signals import StopRequest, TrainingInterrupted
from harness.training.final_evaluation import evaluate_best, weights_meta, weights_of
from harness.training.meter import DataWait, EpochMeter, Padding, TrainedEpoch, epoch_record
from harness.training.parts import Parts
from harness.training.poll import Poller
from harness.training.probes import LoopProbes, pause_at
from harness.training.step import OptimizerStep, Update

logger = logging.getLogger(__name__)


class Trainer:
    """Trains a run's parts. ``fit`` runs the epochs: train, validate, record the epoch, checkpoint, write the
    weights, report. ``finish`` evaluates the best weights on every split and writes the reports.

    A stop signal ends the loop at the next optimizer update with a checkpoint and ``TrainingInterrupted``;
    so does the end of a session's epoch budget (``--stop-after-epochs``), with exit code 0."""

    def __init__(self, parts: Parts, stop: StopRequest | None = None) -> None:
        self.parts = parts
        self.inputs = ModelInputs(parts.model, parts.cfg.data, parts.cfg.model.channels_last)
        self.stop = stop or StopRequest()  # the command's, installed from its start
        self.step = OptimizerStep(parts, Poller(parts.accelerator, parts.cfg, self.stop))
        self.probes = LoopProbes(parts.accelerator.process_index)
        self.padding = Padding(len(parts.splits.splits["train"]), parts.accelerator.num_processes,
                               parts.accelerator.process_index, parts.cfg.train.batch_size)
        self.last_val: tuple[int, dict[str, Predictions]] | None = None  # this session's last validation

    def fit(self, stop_after_epochs: int | None = None) -> None:
        """Train to ``train.epochs``, or only ``stop_after_epochs`` more."""
        parts, state, epochs = self.parts, self.parts.state, self.parts.cfg.train.epochs
        end = epochs if stop_after_epochs is None else min(epochs, state.epoch + stop_after_epochs)
        parts.features.start(state)
        with self.stop.deferred():  # a stop signal waits for the next update's checkpoint
            try:
                for epoch in range(state.epoch, end):
                    if state.stopped_early_at is not None:
                        break
                    trained = self._train_epoch(epoch)
                    val, val_seconds = self._validate()
                    self.last_val = (epoch + 1, val)
                    self._end_epoch(epoch, trained, val, val_seconds)
                    if epoch == 0:
                        pause_at("epoch", self.stop)
                    if self.stop.signum is not None:  # arrived during validation or the save: already checkpointed
                        raise self.stop.interrupted()
            finally:
                release_workers(parts.train_loader)
        if self.stop.signum is not None:  # arrived after the loop's last look: the last epoch is checkpointed
            raise self.stop.interrupted(together=False)
        parts.features.end(state)
        if state.stopped_early_at is None and end < epochs:
            raise TrainingInterrupted(f"stopped after {stop_after_epochs} epoch(s) (--stop-after-epochs)", 0)

    def finish(self) -> dict[str, float | str]:
        """The best weights on every split, with the run's reports (``harness.training.final_evaluation``)."""
        pause_at("final")
        return evaluate_best(self.parts, self.inputs, self.last_val)

    # ------------------------------------------------------------------------------------------------
    # One training pass

    def _train_epoch(self, epoch: int) -> TrainedEpoch:
        parts, accelerator = self.parts, self.parts.accelerator
        loader, skip = self._epoch_loader(epoch)
        batches = len(parts.train_loader)
        meter = EpochMeter(accelerator, parts.state.epoch_sums)
        bar = tqdm(total=batches, initial=skip, desc=f"epoch {epoch + 1}/{parts.cfg.train.epochs}", leave=False,
                   disable=not (accelerator.is_main_process and parts.cfg.log.progress and sys.stderr.isatty()))
        wait = DataWait()
        started = time.perf_counter()
        parts.model.train()
        for batch_index, (images, labels, indices) in enumerate(wait.batches(loader), start=skip):
            self.probes.trace(epoch, batch_index, indices)
            with accelerator.accumulate(parts.model):
                loss, logits, targets = self._forward_backward(images, labels, epoch, batch_index)
                self._measure(meter, loss, logits, labels, targets, self.step.add(loss), batch_index)
                bar.update(1)
                if not accelerator.sync_gradients:  # inside an accumulation window: its update comes later
                    continue
                update = self.step.apply(epoch, batch_index, last=batch_index + 1 == batches)
            self._after_update(update, meter, bar, started, epoch_ends=batch_index + 1 == batches)
        bar.close()
        seconds = time.perf_counter() - started
        parts.state.train_seconds += seconds
        return meter.result(seconds, wait.seconds)

    def _epoch_loader(self, epoch: int):
        """The train loader set to ``epoch`` (its sampler hands the epoch on to the augmentations), past the
        batches a mid-epoch checkpoint already trained."""
        loader, skip = self.parts.train_loader, self.parts.state.batch_in_epoch
        loader.set_epoch(epoch)
        if not skip:
            return loader, 0
        logger.info(f"resuming epoch {epoch + 1} at batch {skip + 1}/{len(loader)}")
        return self.parts.accelerator.skip_first_batches(loader, skip), skip

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch_index: int
                          ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's loss (detached), logits and targets, after its backward pass; the features mix it first."""
        parts = self.parts
        inputs, targets = parts.features.mix(self.inputs(images), labels, epoch, batch_index)
        with parts.accelerator.autocast():
            logits = parts.model(inputs)
            loss = parts.criterion(logits.float(), targets)
        loss = self.probes.fault(loss, parts.state.global_step + 1)
        parts.accelerator.backward(loss)
        return loss.detach(), logits, targets

    def _measure(self, meter: EpochMeter, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                 targets: torch.Tensor, finite: torch.Tensor, batch_index: int) -> None:
        """Add the batch to the epoch's sums, its samples that are the epoch's own only (``Padding``)."""
        own = self.padding.own(batch_index, len(labels))
        if own == len(labels):
            meter.add(loss, logits, labels, finite)
        elif own:
            with torch.no_grad():
                loss = self.parts.criterion(logits[:own].float(), targets[:own])
            meter.add(loss, logits[:own], labels[:own], finite)

    def _after_update(self, update: Update, meter: EpochMeter, bar, started: float, epoch_ends: bool) -> None:
        """Log every ``log.every_n_steps`` updates; save and stop on a stop request; save when a checkpoint is due
        inside the epoch (its end saves anyway)."""
        if update.step % self.parts.cfg.log.every_n_steps == 0:
            loss = meter.window_loss()
            self.parts.reporter.scalars({"train/loss": loss, "train/lr": self.parts.scheduler.get_last_lr()[0]},
                                        update.step)
            bar.set_postfix(loss=f"{loss:.4f}")
        if update.stop:
            bar.close()
            self._save_and_stop(meter, time.perf_counter() - started)
        if update.save_due and not epoch_ends:
            self._save(meter)

    def _validate(self) -> tuple[dict[str, Predictions], float]:
        """Predictions on the validation split by the model's own weights (``raw``) and by every other set of
        weights the features keep (``ema``), and the seconds the model's own took."""
        parts, started = self.parts, time.perf_counter()
        val = {OWN: evaluate(parts.accelerator, parts.model, parts.eval_loaders["val"], self.inputs)}
        seconds = time.perf_counter() - started
        for name, swapped_in in parts.features.weights().items():
            with swapped_in(parts.model):
                val[name] = evaluate(parts.accelerator, parts.model, parts.eval_loaders["val"], self.inputs)
        return val, seconds

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def _save(self, meter: EpochMeter | None = None) -> None:
        """Checkpoint now; inside an epoch (``meter``), with the epoch's sums so far. Every process calls it."""
        if meter is not None:
            self.parts.state.epoch_sums = meter.totals()
        # Each process's BatchNorm statistics move with its own batches. A checkpoint holds the main process's, as
        # the weights do and evaluation uses: DDP and DeepSpeed save them from the main process, FSDP's sharded
        # save from whichever process it picks for a tensor every process holds, so they are made equal first.
        sync_buffers(self.parts.accelerator, self.parts.model)
        save_checkpoint(self.parts.accelerator, self.parts.rundir, self.parts.state, self.parts.cfg.checkpoint.keep_last)
        self.step.poller.saved()

    def _save_and_stop(self, meter: EpochMeter, seconds: float) -> None:
        """A stop was requested: checkpoint in the middle of the epoch, then end the session."""
        state = self.parts.state
        state.train_seconds += seconds
        logger.warning(f"stop requested ({self.stop.name or 'by another process'}): saving a checkpoint, "
                       f"{state.where()}")
        self._save(meter)
        if self.stop.signum is None:  # another process got the signal; exit the same way
            self.stop.signum = signal.SIGTERM
        raise self.stop.interrupted()

    # ------------------------------------------------------------------------------------------------
    # The end of an epoch

    def _end_epoch(self, epoch: int, trained: TrainedEpoch, val: dict[str, Predictions], val_seconds: float) -> None:
        parts, state, monitor = self.parts, self.parts.state, self.parts.cfg.checkpoint.monitor
        record = epoch_record(epoch, trained, val, val_seconds, parts.scheduler.get_last_lr()[0])
        improved = beats(record, state.best_record(), monitor)
        if not math.isfinite(record["val_loss"]):
            raise TrainingDiverged(f"non-finite validation loss after epoch {epoch + 1}; nothing of it was saved, the "
                                   f"last checkpoint ({latest_label(parts.rundir)}) is intact: lower optim.lr or set "
                                   "train.clip_grad_norm")
        state.history.append(record)
        state.epoch, state.batch_in_epoch, state.epoch_sums = epoch + 1, 0, []
        if improved:
            state.best_metric, state.best_epoch = scores(record, monitor)[monitor], epoch + 1
            state.best_checkpoint = checkpoint_name(state.global_step)
        parts.features.after_epoch(state)  # before the save: the checkpoint records what they decide
        self._save()
        with weights_of(parts, record):
            write_weights(parts.accelerator, parts.model, parts.rundir, "last", weights_meta(parts, record))
        if improved and parts.accelerator.is_main_process:
            copy_weights(parts.rundir, "last", "best")
        self._report_epoch(record, improved)

    def _report_epoch(self, record: dict, improved: bool) -> None:
        parts = self.parts
        # Every scalar is on the optimizer-update axis, so a resume can purge what followed its checkpoint.
        parts.reporter.scalars({f"epoch/{key}": value for key, value in record.items()}, parts.state.global_step)
        parts.reporter.write_history(parts.state.history)
        parts.summary.write(last=record)
        parts.reporter.flush()
        logger.info(
            f"epoch {record['epoch']}/{parts.cfg.train.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.4f}  val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}  "
            f"lr {record['lr']:.3g}  {record['train_images_per_second']:.0f} img/s (val "
            f"{record['val_images_per_second']:.0f}, data wait {record['data_wait']:.0%}){'  *best*' if improved else ''}"
        )
