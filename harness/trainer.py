"""The Trainer: the epoch loop of a built run (``harness.build.Run``) around its one Accelerator.

Nothing here branches on device, precision or distribution: ``accelerator.prepare``/``accumulate``/
``autocast``/``backward``/``clip_grad_norm_``/``gather_for_metrics`` carry those differences.
"""

from __future__ import annotations

import logging
import math
import signal
import sys
import time

import torch
from tqdm.auto import tqdm

from harness.build import Run
from harness.checkpointing.folders import checkpoint_name, latest_name
from harness.checkpointing.saving import save_checkpoint
from harness.checkpointing.weights import copy_weights, write_weights
from harness.data.workers import release_workers
from harness.epoch import DataWait, EpochMeter, TrainedEpoch, epoch_record, stopped_early_at
from harness.errors import TrainingDiverged
from harness.evaluation.evaluate import evaluate
from harness.evaluation.predictions import Predictions
from harness.evaluation.selection import beats, scores
from harness.final import test, weights_meta, weights_of
from harness.mixing import BatchMixer
from harness.models.inputs import ModelInputs
from harness.poll import Poll, Poller
from harness.probes import LoopProbes
from harness.runtime.signals import StopRequest, TrainingInterrupted

logger = logging.getLogger(__name__)


class Trainer:
    """Trains a built run. ``fit`` runs the epochs: train, validate, record the epoch, checkpoint, export the
    weights, report. ``test`` evaluates the best weights on every split and writes the reports.

    A stop signal ends the loop at the next optimizer update with a checkpoint and ``TrainingInterrupted``;
    so does the end of a session's epoch budget (``--stop-after-epochs``), with exit code 0."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.inputs = ModelInputs(run.model, run.cfg.data, run.cfg.model.channels_last)
        self.stop = StopRequest()
        self.poller = Poller(run.accelerator, run.cfg, self.stop)
        self.probes = LoopProbes(run.accelerator.process_index)
        self.mixer = (BatchMixer(run.cfg.data.mixup, len(run.splits.classes), run.cfg.train.seed,
                                 run.accelerator.process_index) if run.cfg.data.mixup else None)
        self.where: dict[int, tuple[int, int]] = {}  # update -> (epoch, batch), since the last poll that checked
        self.last_val: tuple[int, dict[str, Predictions]] | None = None  # this session's last validation

    def fit(self, stop_after_epochs: int | None = None) -> None:
        """Train to ``train.epochs``, or only ``stop_after_epochs`` more."""
        epochs = self.run.cfg.train.epochs
        end = epochs if stop_after_epochs is None else min(epochs, self.run.state.epoch + stop_after_epochs)
        self._decide_early_stop()
        self.stop.install()
        try:
            for epoch in range(self.run.state.epoch, end):
                if self.run.state.stopped_early_at is not None:
                    break
                trained = self._train_epoch(epoch)
                val, val_seconds = self._validate()
                self.last_val = (epoch + 1, val)
                self._end_epoch(epoch, trained, val, val_seconds)
                if self.stop.signum is not None:  # arrived during validation or the save: already checkpointed
                    raise self.stop.interrupted()
        finally:
            self.stop.uninstall()
            release_workers(self.run.train_loader)
        if self.run.state.stopped_early_at is not None:
            self._say_stopped_early()
        elif end < epochs:
            raise TrainingInterrupted(f"stopped after {stop_after_epochs} epoch(s) (--stop-after-epochs)", 0)

    def _validate(self) -> tuple[dict[str, Predictions], float]:
        """Predictions on the validation split by the weights (``raw``) and their average (``ema``, with
        ``train.ema``), and the seconds the weights' own took."""
        run, started = self.run, time.perf_counter()
        val = {"raw": evaluate(run.accelerator, run.model, run.eval_loaders["val"], self.inputs)}
        seconds = time.perf_counter() - started
        if run.averaging is not None:
            with run.averaging.swapped_in(run.model):
                val["ema"] = evaluate(run.accelerator, run.model, run.eval_loaders["val"], self.inputs)
        return val, seconds

    def _decide_early_stop(self) -> None:
        """``state.stopped_early_at``: the epoch after which ``train.early_stopping`` ends the run, from its
        history and the session's config (a resume with a longer patience trains on); None if it does not."""
        run, state = self.run, self.run.state
        at = stopped_early_at(state.history, run.cfg.checkpoint.monitor, run.cfg.train.early_stopping)
        state.stopped_early_at = at if at is not None and at < run.cfg.train.epochs else None

    def _say_stopped_early(self) -> None:
        run, state, rule = self.run, self.run.state, self.run.cfg.train.early_stopping
        logger.info(f"early stopping after epoch {state.stopped_early_at} of {run.cfg.train.epochs}: "
                    f"{run.cfg.checkpoint.monitor} has not improved by more than {rule.min_delta:g} in the last "
                    f"{rule.patience} epoch(s)")

    # ------------------------------------------------------------------------------------------------
    # One training pass

    def _train_epoch(self, epoch: int) -> TrainedEpoch:
        run, state, accelerator = self.run, self.run.state, self.run.accelerator
        loader, skip = self._epoch_loader(epoch)
        batches = len(run.train_loader)
        meter = EpochMeter(accelerator, state.epoch_sums)
        bar = tqdm(total=batches, initial=skip, desc=f"epoch {epoch + 1}/{run.cfg.train.epochs}", leave=False,
                   disable=not (accelerator.is_main_process and run.cfg.log.progress and sys.stderr.isatty()))
        nonfinite = torch.zeros((), device=accelerator.device, dtype=torch.bool)  # in the accumulation window
        wait = DataWait()
        started = time.perf_counter()
        run.model.train()
        for batch_index, (images, labels, indices) in enumerate(wait.batches(loader), start=skip):
            self.probes.trace(epoch, batch_index, indices)
            with accelerator.accumulate(run.model):
                loss, logits = self._forward_backward(images, labels, epoch, batch_index)
                finite = torch.isfinite(loss)
                nonfinite |= ~finite
                poll = (self._update(nonfinite, epoch, batch_index, last=batch_index + 1 == batches)
                        if accelerator.sync_gradients else None)
            meter.add(loss, logits, labels, finite)
            bar.update(1)
            if poll is None:  # inside an accumulation window
                continue
            nonfinite.zero_()
            state.global_step += 1
            state.batch_in_epoch = batch_index + 1
            if state.global_step % run.cfg.log.every_n_steps == 0:
                self._log_step(meter, bar)
            if poll.stop:
                bar.close()
                self._save_and_stop(meter, time.perf_counter() - started)
            if poll.save_due and batch_index + 1 < batches:  # the epoch's end saves anyway
                self._save(meter)
        bar.close()
        seconds = time.perf_counter() - started
        state.train_seconds += seconds
        return meter.result(seconds, wait.seconds)

    def _epoch_loader(self, epoch: int):
        """The train loader set to ``epoch`` (its sampler hands the epoch on to the augmentations), past the
        batches a mid-epoch checkpoint already trained."""
        loader, skip = self.run.train_loader, self.run.state.batch_in_epoch
        loader.set_epoch(epoch)
        if not skip:
            return loader, 0
        logger.info(f"resuming epoch {epoch + 1} at batch {skip + 1}/{len(loader)}")
        return self.run.accelerator.skip_first_batches(loader, skip), skip

    def _forward_backward(self, images: torch.Tensor, labels: torch.Tensor, epoch: int, batch_index: int
                          ) -> tuple[torch.Tensor, torch.Tensor]:
        """The batch's loss (detached) and logits, after its backward pass; mixed first with ``data.mixup``."""
        run, inputs, targets = self.run, self.inputs(images), labels
        if self.mixer is not None:
            inputs, targets = self.mixer(inputs, labels, epoch, batch_index)
        with run.accelerator.autocast():
            logits = run.model(inputs)
            loss = run.criterion(logits.float(), targets)
        loss = self.probes.fault(loss, run.state.global_step + 1)
        run.accelerator.backward(loss)
        return loss.detach(), logits

    def _update(self, nonfinite: torch.Tensor, epoch: int, batch_index: int, last: bool) -> Poll:
        """The optimizer update at the end of an accumulation window (``last``: the epoch's): clip, poll, step
        or skip, schedule."""
        run, clip, step = self.run, self.run.cfg.train.clip_grad_norm, self.run.state.global_step + 1
        if clip is not None:
            norm = run.accelerator.clip_grad_norm_(run.model.parameters(), clip)
            if run.accelerator.scaler is None and norm is not None:  # fp16's scaler skips overflowing steps itself
                nonfinite = nonfinite | ~torch.isfinite(torch.as_tensor(norm, device=run.accelerator.device))
        self.where[step] = (epoch, batch_index)
        poll = self.poller.poll(step, nonfinite, check=last or step % run.cfg.log.every_n_steps == 0)
        if poll.bad_step is not None:
            self._skip_nonfinite(poll.bad_step)
        if poll.bad_step != step:
            run.optimizer.step()
            if run.averaging is not None:
                run.averaging.update(run.model)
        run.scheduler.step()
        run.optimizer.zero_grad(set_to_none=True)
        if poll.bad_step is not None or poll.stop or poll.save_due or last:
            self.where.clear()
        return poll

    def _skip_nonfinite(self, step: int) -> None:
        """Skip the non-finite update ``step`` (this one) if allowed; otherwise the run fails. Without
        ``train.skip_nonfinite_steps``, ``step`` may have been applied already: nothing of it is ever saved."""
        state, allowed = self.run.state, self.run.cfg.train.skip_nonfinite_steps
        epoch, batch_index = self.where[step]
        where = f"epoch {epoch + 1}, step {step} (batch {batch_index + 1})"
        if state.skipped_steps >= allowed:
            raise TrainingDiverged(
                f"non-finite loss or gradients at {where}"
                + (f" after skipping {allowed} such update(s)" if allowed else "")
                + f"; nothing of it was saved, the last checkpoint ({self._latest_name()}) is intact: lower optim.lr, "
                "set train.clip_grad_norm, or allow train.skip_nonfinite_steps"
            )
        state.skipped_steps += 1
        logger.warning(f"skipping the update at {where}: non-finite loss or gradients "
                       f"({state.skipped_steps}/{allowed} allowed)")

    def _log_step(self, meter: EpochMeter, bar) -> None:
        loss = meter.window_loss()
        self.run.reporter.scalars({"train/loss": loss, "train/lr": self.run.scheduler.get_last_lr()[0]},
                                  self.run.state.global_step)
        bar.set_postfix(loss=f"{loss:.4f}")

    # ------------------------------------------------------------------------------------------------
    # Checkpoints

    def _save(self, meter: EpochMeter | None = None) -> None:
        """Checkpoint now; inside an epoch (``meter``), with the epoch's sums so far. Every process calls it."""
        if meter is not None:
            self.run.state.epoch_sums = meter.totals()
        save_checkpoint(self.run.accelerator, self.run.rundir, self.run.state, self.run.cfg.checkpoint.keep_last)
        self.poller.saved()

    def _save_and_stop(self, meter: EpochMeter, seconds: float) -> None:
        """A stop was requested: checkpoint in the middle of the epoch, then end the session."""
        state = self.run.state
        state.train_seconds += seconds
        logger.warning(f"stop requested ({self.stop.name or 'by another process'}): saving a checkpoint, "
                       f"{state.where()}")
        self._save(meter)
        if self.stop.signum is None:  # another process got the signal; exit the same way
            self.stop.signum = signal.SIGTERM
        raise self.stop.interrupted()

    def _latest_name(self) -> str:
        return latest_name(self.run.rundir) or "none yet"

    # ------------------------------------------------------------------------------------------------
    # The end of an epoch, and the end of the run

    def _end_epoch(self, epoch: int, trained: TrainedEpoch, val: dict[str, Predictions], val_seconds: float) -> None:
        run, state, monitor = self.run, self.run.state, self.run.cfg.checkpoint.monitor
        record = epoch_record(epoch, trained, val["raw"], val_seconds, run.scheduler.get_last_lr()[0], val.get("ema"))
        improved = beats(record, state.best_record(), monitor)
        if not math.isfinite(record["val_loss"]):
            raise TrainingDiverged(f"non-finite validation loss after epoch {epoch + 1}; nothing of it was saved, the "
                                   f"last checkpoint ({self._latest_name()}) is intact: lower optim.lr or set "
                                   "train.clip_grad_norm")
        state.history.append(record)
        state.epoch, state.batch_in_epoch, state.epoch_sums = epoch + 1, 0, []
        if improved:
            state.best_metric, state.best_epoch = scores(record, monitor)[monitor], epoch + 1
            state.best_checkpoint = checkpoint_name(state.global_step)
        self._decide_early_stop()  # before the save: the checkpoint records it
        self._save()
        with weights_of(run, record):
            write_weights(run.accelerator, run.model, run.rundir, "last", weights_meta(run, record))
        if improved and run.accelerator.is_main_process:
            copy_weights(run.rundir, "last", "best")
        self._report_epoch(record, improved)

    def _report_epoch(self, record: dict, improved: bool) -> None:
        run = self.run
        # Every scalar is on the optimizer-update axis, so a resume can purge what followed its checkpoint.
        run.reporter.scalars({f"epoch/{key}": value for key, value in record.items()}, run.state.global_step)
        run.reporter.write_history(run.state.history)
        run.summary.write(last=record)
        run.reporter.flush()
        logger.info(
            f"epoch {record['epoch']}/{run.cfg.train.epochs}  train loss {record['train_loss']:.4f} "
            f"acc {record['train_acc']:.4f}  val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}  "
            f"lr {record['lr']:.3g}  {record['train_images_per_second']:.0f} img/s (val "
            f"{record['val_images_per_second']:.0f}, data wait {record['data_wait']:.0%}){'  *best*' if improved else ''}"
        )

    def test(self) -> dict[str, float]:
        """The best weights on every split, with the run's reports (``harness.final.test``)."""
        return test(self.run, self.inputs, self.last_val)
