"""The training loop and evaluation, around one Accelerator.

Nothing here branches on device, precision or distribution: ``accelerator.prepare``/``accumulate``/
``autocast``/``backward``/``clip_grad_norm_``/``gather_for_metrics`` carry those differences.
"""

from __future__ import annotations

import math
import os
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.logging import get_logger
from tqdm.auto import tqdm

from harness.checkpoint import TrainState, copy_checkpoint, copy_weights, export_weights, save_checkpoint
from harness.config import Config
from harness.metrics import Predictions
from harness.reporting import Reporter, plot_curves, write_split_outputs
from harness.rundir import RunDir
from harness.signals import StopRequest, TrainingInterrupted

logger = get_logger(__name__)
TOP_K = 5


def evaluate(accelerator: Accelerator, model, loader, desc: str = "eval") -> Predictions:
    """Predictions for every sample of ``loader`` exactly once, whatever the number of processes."""
    model.eval()
    batches = []
    with torch.inference_mode():
        for images, labels, indices in loader:
            with accelerator.autocast():
                logits = model(images)
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
    images: int
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
        self.stop = StopRequest()
        self.session_started = time.perf_counter()
        # Debugging aid: HARNESS_TRACE_BATCHES=<file> appends "epoch batch sample-indices..." per trained batch
        # (one file per process), to check the data order across stops and resumes.
        trace = os.environ.get("HARNESS_TRACE_BATCHES")
        self.trace = open(f"{trace}.rank{accelerator.process_index}", "a") if trace else None

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
                    raise TrainingInterrupted(f"stopped by {self.stop.name}", self.stop.exit_code)
        finally:
            self.stop.uninstall()
        if end < epochs:
            raise TrainingInterrupted(f"stopped after {stop_after_epochs} epoch(s) (--stop-after-epochs)", 0)

    def _train_epoch(self, epoch: int) -> EpochStats:
        acc, cfg, state = self.accelerator, self.cfg, self.state
        self.model.train()
        self.train_loader.set_epoch(epoch)
        skip = state.batch_in_epoch
        loader = acc.skip_first_batches(self.train_loader, skip) if skip else self.train_loader
        if skip:
            logger.info(f"resuming epoch {epoch + 1} at batch {skip + 1}/{len(self.train_loader)}")
        # loss*n, correct, n: summed on device, reduced across processes once per epoch. A mid-epoch checkpoint
        # holds the sums of all processes so far; the main process carries them on.
        carried = state.epoch_sums if state.epoch_sums and acc.is_main_process else [0.0, 0.0, 0.0]
        sums = torch.tensor(carried, device=acc.device, dtype=torch.float64)
        window = torch.zeros(2, device=acc.device, dtype=torch.float64)  # loss sum, batches since last log
        bar = tqdm(total=len(self.train_loader), initial=skip, desc=f"epoch {epoch + 1}/{cfg.train.epochs}",
                   disable=not (acc.is_main_process and cfg.log.progress and sys.stderr.isatty()), leave=False)
        started = time.perf_counter()
        for batch_index, (images, labels, indices) in enumerate(loader, start=skip):
            if self.trace:
                print(epoch, batch_index, *indices.tolist(), file=self.trace, flush=True)
            with acc.accumulate(self.model):
                with acc.autocast():
                    logits = self.model(images)
                    loss = self.criterion(logits, labels)
                acc.backward(loss)
                if acc.sync_gradients and cfg.train.clip_grad_norm is not None:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.train.clip_grad_norm)
                self.optimizer.step()
                if acc.sync_gradients:
                    self.scheduler.step()
                self.optimizer.zero_grad(set_to_none=True)
            loss = loss.detach().double()
            sums += torch.stack([loss * len(labels), (logits.argmax(1) == labels).sum().double(),
                                 torch.tensor(float(len(labels)), device=acc.device, dtype=torch.float64)])
            window += torch.stack([loss, torch.ones_like(loss)])
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
            if self._stop_requested():
                state.epoch_sums = acc.reduce(sums, reduction="sum").tolist()
                state.train_seconds += time.perf_counter() - started
                bar.close()
                self._interrupt()
        bar.close()
        seconds = time.perf_counter() - started
        state.train_seconds += seconds
        loss_sum, correct, count = acc.reduce(sums, reduction="sum").tolist()
        return EpochStats(loss_sum / count, correct / count, int(count), seconds)

    def _stop_requested(self) -> bool:
        """True on every process when any process got a stop signal (so no rank is left in a collective)."""
        local = self.stop.signum is not None
        if self.accelerator.num_processes == 1:
            return local
        flag = torch.tensor([int(local)], device=self.accelerator.device)
        return bool(self.accelerator.reduce(flag, reduction="sum").item())

    def _interrupt(self) -> None:
        state = self.state
        logger.warning(f"stop requested ({self.stop.name or 'by another process'}): saving a checkpoint at epoch "
                       f"{state.epoch + 1}, batch {state.batch_in_epoch}")
        save_checkpoint(self.accelerator, self.run, "last", state)
        if self.stop.signum is None:  # another process got the signal; exit the same way
            self.stop.signum = signal.SIGTERM
        raise TrainingInterrupted(f"stopped by {self.stop.name}", self.stop.exit_code)

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
        if not all(math.isfinite(record[k]) for k in ("train_loss", "val_loss")):
            raise FloatingPointError(f"non-finite loss in epoch {epoch + 1}: train {train.loss}, val {record['val_loss']}")
        value = record[monitor]
        improved = state.best_metric is None or (value > state.best_metric if monitor == "val_acc" else value < state.best_metric)
        state.history.append(record)
        state.epoch, state.batch_in_epoch, state.epoch_sums = epoch + 1, 0, []
        if improved:
            state.best_metric, state.best_epoch = value, epoch + 1
        meta = {**self.weights_meta, "epoch": epoch + 1, "val_acc": record["val_acc"], "val_loss": record["val_loss"]}
        save_checkpoint(self.accelerator, self.run, "last", state)
        export_weights(self.accelerator, self.model, self.run, "last", meta)
        if improved:
            copy_checkpoint(self.accelerator, self.run, "last", "best")
            if self.accelerator.is_main_process:
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

    def progress_fields(self) -> dict:
        s = self.state
        return {
            "epoch": s.epoch,
            "epochs": self.cfg.train.epochs,
            "global_step": s.global_step,
            f"best_{self.cfg.checkpoint.monitor}": s.best_metric,
            "best_epoch": s.best_epoch,
            "train_seconds": round(s.train_seconds, 3),
            "session_seconds": round(time.perf_counter() - self.session_started, 3),
            "images_per_second": s.history[-1]["images_per_second"] if s.history else None,
        }

    # ------------------------------------------------------------------------------------------------

    def test(self, loaders: dict, split_paths: dict[str, list[str]], classes: list[str]) -> dict[str, float]:
        """Load the best checkpoint; evaluate each split; write reports, predictions, curves and figures."""
        acc, state, run = self.accelerator, self.state, self.run
        if state.best_epoch != state.epoch:
            progress = state.state_dict()  # load_state replaces the registered train state too
            acc.load_state(str(run.checkpoint("best")))
            state.load_state_dict(progress)
        logger.info(f"evaluating the best weights (epoch {state.best_epoch})")
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
