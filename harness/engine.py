"""The training loop and evaluation, around one Accelerator.

Nothing here branches on device, precision or distribution: ``accelerator.prepare``/``accumulate``/
``autocast``/``backward``/``clip_grad_norm_``/``gather_for_metrics`` carry those differences.
"""

from __future__ import annotations

import logging
import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import broadcast
from tqdm.auto import tqdm

from harness.checkpoint import (TrainState, checkpoint_name, copy_weights, export_weights, latest_name, save_checkpoint,
                               verify)
from harness.config import Config
from harness.errors import CheckpointError, TrainingDiverged
from harness.metrics import Predictions
from harness.reporting import Reporter, plot_curves, write_split_outputs
from harness.rundir import RunDir
from harness.signals import StopRequest, TrainingInterrupted

logger = logging.getLogger(__name__)
TOP_K = 5


def input_dtype(model) -> torch.dtype:
    """The dtype the model's parameters hold: float32, except under DeepSpeed bf16/fp16, which casts the model
    itself and wants its inputs cast alike."""
    return next(model.parameters()).dtype


def match_buffers_to_params(model) -> None:
    """DeepSpeed bf16/fp16 casts the parameters but not the buffers, and BatchNorm then refuses its mixed
    inputs; give floating buffers the parameters' dtype (nothing changes in float32)."""
    dtype = input_dtype(model)
    for buffer in model.buffers():
        if buffer.is_floating_point():
            buffer.data = buffer.data.to(dtype)


def sync_buffers(accelerator: Accelerator, model) -> None:
    """Give every process the main process's buffers (BatchNorm statistics). DDP does so at each forward;
    DeepSpeed does not, and its checkpoints hold the main process's buffers only, so without this each
    process would evaluate with other statistics, and differently after a resume."""
    if accelerator.num_processes > 1:
        for buffer in model.buffers():
            broadcast(buffer, from_process=0)


def evaluate(accelerator: Accelerator, model, loader) -> Predictions:
    """Predictions for every sample of ``loader`` exactly once, whatever the number of processes."""
    sync_buffers(accelerator, model)
    model.eval()
    batches = []
    dtype = input_dtype(model)
    with torch.inference_mode():
        for images, labels, indices in loader:
            with accelerator.autocast():
                logits = model(images.to(dtype))
            logits = logits.float()
            probs = logits.softmax(dim=1)
            top = probs.topk(min(TOP_K, probs.shape[1]), dim=1)
            labeled = labels >= 0
            losses = torch.full_like(probs[:, 0], float("nan"))
            if labeled.any():
                losses[labeled] = F.cross_entropy(logits[labeled], labels[labeled], reduction="none")
            batches.append(accelerator.gather_for_metrics((indices, labels, top.indices, top.values, losses)))
    return Predictions.from_batches(batches)


@dataclass
class EpochStats:
    loss: float
    acc: float
    images: int  # trained in this session (a resumed epoch counts only its rest)
    seconds: float


class Trainer:
    def __init__(self, accelerator: Accelerator, cfg: Config, run: RunDir, model, optimizer, scheduler, criterion,
                 train_loader, val_loader, state: TrainState, reporter: Reporter, weights_meta: dict) -> None:
        self.accelerator = accelerator
        self.cfg = cfg
        self.run = run
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.criterion = criterion
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.state = state
        self.reporter = reporter
        self.weights_meta = weights_meta
        self.input_dtype = input_dtype(model)
        self.stop = StopRequest()
        self.session_started = self.last_save = time.perf_counter()
        # Testing aids. HARNESS_TRACE_BATCHES=<file> appends "epoch batch sample-indices..." per trained batch
        # (one file per process), to check the data order across stops and resumes;
        # HARNESS_FAULT_NAN_AT_STEP=<n> makes the loss of optimizer update n NaN, to check divergence handling.
        trace = os.environ.get("HARNESS_TRACE_BATCHES")
        self.trace = open(f"{trace}.rank{accelerator.process_index}", "a") if trace else None
        self.nan_at_step = int(os.environ.get("HARNESS_FAULT_NAN_AT_STEP", 0))

    # ------------------------------------------------------------------------------------------------

    def fit(self, stop_after_epochs: int | None = None) -> None:
        """Train to ``train.epochs``, or only ``stop_after_epochs`` more (then stop as interrupted, exit 0)."""
        epochs = self.cfg.train.epochs
        end = epochs if stop_after_epochs is None else min(epochs, self.state.epoch + stop_after_epochs)
        self.stop.install()
        try:
            for epoch in range(self.state.epoch, end):
                train = self._train_epoch(epoch)
                val = evaluate(self.accelerator, self.model, self.val_loader)
                self._end_epoch(epoch, train, val)
                if self.stop.signum is not None:  # arrived during validation or the save: already checkpointed
                    raise self.stop.interrupted()
        finally:
            self.stop.uninstall()
        if end < epochs:
            raise TrainingInterrupted(f"stopped after {stop_after_epochs} epoch(s) (--stop-after-epochs)", 0)

    def _train_epoch(self, epoch: int) -> EpochStats:
        acc, cfg, state = self.accelerator, self.cfg, self.state
        self.model.train()
        self.train_loader.set_epoch(epoch)  # the sampler's shuffle
        # ...and the augmentations: accelerate does not pass the epoch on to the dataset when it shards batches
        # over several processes (its DataLoaderShard.set_epoch reaches the dataset only in an `elif`).
        self.train_loader.dataset.set_epoch(epoch)
        skip, batches = state.batch_in_epoch, len(self.train_loader)
        loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        if skip:
            logger.info(f"resuming epoch {epoch + 1} at batch {skip + 1}/{batches}")
        # loss*n, correct, n: summed on device, reduced across processes once per epoch. A mid-epoch checkpoint
        # holds the sums of all processes so far; the main process carries them on.
        carried = state.epoch_sums if state.epoch_sums and acc.is_main_process else [0.0, 0.0, 0.0]
        carried_images = state.epoch_sums[2] if state.epoch_sums else 0  # trained before this session
        sums = torch.tensor(carried, device=acc.device, dtype=torch.float64)
        window = torch.zeros(2, device=acc.device, dtype=torch.float64)  # loss sum, batches since last log
        nonfinite = torch.zeros((), device=acc.device, dtype=torch.bool)  # in the current accumulation window
        bar = tqdm(total=batches, initial=skip, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not (acc.is_main_process and cfg.log.progress and sys.stderr.isatty()), leave=False)
        started = time.perf_counter()
        for batch_index, (images, labels, indices) in enumerate(loader, start=skip):
            if self.trace:
                print(epoch, batch_index, *indices.tolist(), file=self.trace, flush=True)
            with acc.accumulate(self.model):
                with acc.autocast():
                    logits = self.model(images.to(self.input_dtype))
                    loss = self.criterion(logits.float(), labels)
                if state.global_step + 1 == self.nan_at_step:
                    loss = loss * float("nan")
                acc.backward(loss)
                loss = loss.detach()
                finite = torch.isfinite(loss)
                nonfinite |= ~finite
                if acc.sync_gradients:
                    stop, save_due = self._update(nonfinite, epoch, batch_index)
                    nonfinite.zero_()
            # loss*n, correct, n and loss, 1; a skipped (non-finite) batch counts nowhere
            n, one = float(len(labels)), torch.ones((), device=acc.device, dtype=torch.float64)
            correct = (logits.argmax(1) == labels).sum().double()
            sums += torch.where(finite, torch.stack([loss.double() * n, correct, one * n]), 0.0)
            window += torch.where(finite, torch.stack([loss.double(), one]), 0.0)
            bar.update(1)
            if not acc.sync_gradients:
                continue
            state.global_step += 1
            state.batch_in_epoch = batch_index + 1
            if state.global_step % cfg.log.every_n_steps == 0:
                total = acc.reduce(window, reduction="sum")
                mean_loss = (total[0] / total[1]).item()
                self.reporter.scalars({"train/loss": mean_loss, "train/lr": self.scheduler.get_last_lr()[0]},
                                      state.global_step)
                bar.set_postfix(loss=f"{mean_loss:.4f}")
                window.zero_()
            if stop or (save_due and batch_index + 1 < batches):  # the epoch's end saves anyway
                state.epoch_sums = acc.reduce(sums, reduction="sum").tolist()
                if stop:
                    state.train_seconds += time.perf_counter() - started
                    bar.close()
                    self._interrupt()
                self._save()
        bar.close()
        seconds = time.perf_counter() - started
        state.train_seconds += seconds
        loss_sum, correct, count = acc.reduce(sums, reduction="sum").tolist()
        return EpochStats(loss_sum / count, correct / count, int(count - carried_images), seconds)

    def _update(self, nonfinite: torch.Tensor, epoch: int, batch_index: int) -> tuple[bool, bool]:
        """The optimizer update at the end of an accumulation window (clip, poll, step or skip, schedule).
        Returns (stop requested, checkpoint due), the same on every process."""
        acc, clip = self.accelerator, self.cfg.train.clip_grad_norm
        if clip is not None:
            norm = acc.clip_grad_norm_(self.model.parameters(), clip)
            if acc.scaler is None and norm is not None:  # fp16's scaler skips overflowing steps itself
                nonfinite = nonfinite | ~torch.isfinite(torch.as_tensor(norm, device=acc.device))
        stop, save_due, bad = self._poll(nonfinite)
        if bad:
            self._skip_nonfinite(epoch, batch_index)
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return stop, save_due

    def _poll(self, nonfinite: torch.Tensor) -> tuple[bool, bool, bool]:
        """Once per optimizer update, on every process alike: (stop requested anywhere, checkpoint due,
        non-finite loss or gradients anywhere). One small collective, so no process is left behind."""
        c = self.cfg.checkpoint
        minutes_due = c.every_n_minutes is not None and time.perf_counter() - self.last_save >= 60 * c.every_n_minutes
        flags = torch.stack([
            torch.tensor(float(self.stop.signum is not None), device=self.accelerator.device),
            torch.tensor(float(minutes_due and self.accelerator.is_main_process), device=self.accelerator.device),
            nonfinite.float(),
        ])
        stop, minutes, bad = (self.accelerator.reduce(flags, reduction="sum") > 0).tolist()
        steps_due = c.every_n_steps is not None and (self.state.global_step + 1) % c.every_n_steps == 0
        return stop, steps_due or minutes, bad

    def _skip_nonfinite(self, epoch: int, batch_index: int) -> None:
        state, allowed = self.state, self.cfg.train.skip_nonfinite_steps
        where = f"epoch {epoch + 1}, step {state.global_step + 1} (batch {batch_index + 1})"
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

    def _latest_name(self) -> str:
        return latest_name(self.run) or "none yet"

    def _save(self) -> None:
        save_checkpoint(self.accelerator, self.run, self.state, self.cfg.checkpoint.keep_last)
        self.last_save = time.perf_counter()

    def _interrupt(self) -> None:
        state = self.state
        logger.warning(f"stop requested ({self.stop.name or 'by another process'}): saving a checkpoint at epoch "
                       f"{state.epoch + 1}, batch {state.batch_in_epoch}")
        self._save()
        if self.stop.signum is None:  # another process got the signal; exit the same way
            self.stop.signum = signal.SIGTERM
        raise self.stop.interrupted()

    def _end_epoch(self, epoch: int, train: EpochStats, val: Predictions) -> None:
        state, monitor = self.state, self.cfg.checkpoint.monitor
        record = {
            "epoch": epoch + 1,
            "train_loss": train.loss,
            "train_acc": train.acc,
            "val_loss": val.loss(),
            "val_acc": val.accuracy(),
            "lr": self.scheduler.get_last_lr()[0],
            "epoch_seconds": train.seconds,
            "images_per_second": train.images / max(train.seconds, 1e-9),
        }
        if not math.isfinite(record["val_loss"]):
            raise TrainingDiverged(f"non-finite validation loss after epoch {epoch + 1}; nothing of it was saved, the "
                                   f"last checkpoint ({self._latest_name()}) is intact: lower optim.lr or set "
                                   "train.clip_grad_norm")
        value = record[monitor]
        improved = state.best_metric is None or (value > state.best_metric if monitor == "val_acc" else value < state.best_metric)
        state.history.append(record)
        state.epoch, state.batch_in_epoch, state.epoch_sums = epoch + 1, 0, []
        if improved:
            state.best_metric, state.best_epoch = value, epoch + 1
            state.best_checkpoint = checkpoint_name(state.global_step)
        self._save()
        export_weights(self.accelerator, self.model, self.run, "last", self._weights_meta(record))
        if improved and self.accelerator.is_main_process:
            copy_weights(self.run, "last", "best")
        # Every scalar is on the optimizer-update axis, so a resume can purge what followed its checkpoint.
        self.reporter.scalars({f"epoch/{k}": record[k] for k in record}, state.global_step)
        self.reporter.write_history(state.history)
        self.reporter.update_summary(**self.progress_fields(), last=record)
        self.reporter.flush()
        logger.info(
            f"epoch {epoch + 1}/{self.cfg.train.epochs}  train loss {train.loss:.4f} acc {train.acc:.4f}  "
            f"val loss {record['val_loss']:.4f} acc {record['val_acc']:.4f}  lr {record['lr']:.3g}  "
            f"{record['images_per_second']:.0f} img/s{'  *best*' if improved else ''}"
        )

    def _weights_meta(self, record: dict) -> dict:
        return {**self.weights_meta, "epoch": record["epoch"], "val_acc": record["val_acc"],
                "val_loss": record["val_loss"]}

    def progress_fields(self) -> dict:
        s = self.state
        return {
            "epoch": s.epoch,
            "epochs": self.cfg.train.epochs,
            "global_step": s.global_step,
            f"best_{self.cfg.checkpoint.monitor}": s.best_metric,
            "best_epoch": s.best_epoch,
            "best_checkpoint": s.best_checkpoint,
            "skipped_steps": s.skipped_steps,
            "train_seconds": round(s.train_seconds, 3),
            "session_seconds": round(time.perf_counter() - self.session_started, 3),
            "images_per_second": s.history[-1]["images_per_second"] if s.history else None,
        }

    # ------------------------------------------------------------------------------------------------

    def test(self, loaders: dict, split_paths: dict[str, list[str]], classes: list[str]) -> dict[str, float]:
        """Load the best checkpoint; evaluate each split; write reports, predictions, curves and figures."""
        acc, state, run = self.accelerator, self.state, self.run
        if state.best_epoch != state.epoch:
            best = run.checkpoint(state.best_checkpoint)
            problem = verify(best)
            if problem:
                raise CheckpointError(f"{best}: the best checkpoint is not usable: {problem}")
            progress = state.state_dict()  # load_state replaces the registered train state too
            acc.load_state(str(best))
            state.load_state_dict(progress)
        # Written again from the loaded model, so it matches the best checkpoint whatever stopped in between.
        export_weights(acc, self.model, run, "best", self._weights_meta(state.history[state.best_epoch - 1]))
        logger.info(f"evaluating the best weights (epoch {state.best_epoch}, {state.best_checkpoint})")
        results = {}
        for split, loader in loaders.items():
            preds = evaluate(acc, self.model, loader)
            results[f"{split}_acc"], results[f"{split}_loss"] = preds.accuracy(), preds.loss()
            logger.info(f"{split}: accuracy {preds.accuracy():.4f} loss {preds.loss():.4f} ({len(preds)} images)")
            if acc.is_main_process:
                figure = write_split_outputs(
                    preds, classes, split_paths[split],
                    report=run.reports / f"classification_report_{split}.txt",
                    matrix_png=run.reports / f"confusion_matrix_{split}.png",
                    csv_path=run.predictions / f"{split}.csv",
                    title=f"{run.name} - {split} (best, epoch {state.best_epoch})",
                )
                self.reporter.figure(f"confusion_matrix/{split}", figure, state.global_step)
        if acc.is_main_process:
            plot_curves(state.history, run.reports / "curves.png")
        return results
