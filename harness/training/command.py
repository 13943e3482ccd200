"""The train command from start to end: plan -> build the parts -> ``Trainer.fit`` -> ``Trainer.finish``.

This is the one place that sets a run's status in summary.json: ``running`` while it trains, then
``completed``, ``interrupted`` (a stop signal or ``--stop-after-epochs``) or ``failed``. A refusal or a failure
before the run starts training changes nothing on disk (``build_parts`` writes only once everything is checked),
and the status of a run the command did not start training stays what it was.
"""

from __future__ import annotations

import argparse
import logging

from harness.data import background
from harness.data.check import refuse_bad_images
from harness.errors import DataError, LaunchError, UnreadableImage, describe, one_line
from harness.runtime.accelerator import build_accelerator
from harness.runtime.collective import leave_together, lost_peer, timed_out
from harness.runtime.deepspeed import zero_stage
from harness.runtime.logs import setup_logging
from harness.runtime.signals import StopRequest, TrainingInterrupted
from harness.training.lock import RunLock
from harness.training.parts import Parts, build_parts
from harness.training.plan import resolve_run
from harness.training.probes import pause_at
from harness.training.trainer import Trainer

logger = logging.getLogger(__name__)


def train(args: argparse.Namespace) -> int:
    """Run the training command; returns the process exit code. Stop signals are the command's from its start
    (``harness.runtime.signals``)."""
    setup_logging()
    stop = StopRequest()
    try:
        stop.install()  # a signal that came while the launcher held it back arrives here, and stops at once
        return _train(args, stop)
    except TrainingInterrupted as interrupted:  # before the run started training
        logger.warning(f"{interrupted} before training started: the run is as it was; the same command starts it")
        return interrupted.exit_code
    finally:
        background.cancel()  # the splits found at the start, if they were not taken
        stop.uninstall()


def _train(args: argparse.Namespace, stop: StopRequest) -> int:
    first = resolve_run(args)
    cfg = first.cfg
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.train.grad_accum_steps, cfg.train.clip_grad_norm,
                                    cfg.train.batch_size, cfg.train.collective_timeout_minutes)
    setup_logging(accelerator)
    cfg.train.check_engine(zero_stage(accelerator))
    lock = RunLock(first.rundir)
    lock.acquire(accelerator)
    try:
        pause_at("start")
        plan = resolve_run(args)  # decided again under the lock: another training may have changed the run
        finished = plan.finished()
        if finished:
            logger.info(f"{plan.rundir.root} already {finished}")
            return 0
        return execute(build_parts(plan, accelerator), stop, args.stop_after_epochs)
    finally:
        lock.release()


def _as_stopped(error: BaseException, parts: Parts) -> BaseException:
    """What ends the session, as the user should read it: a data error in the loop is this process's own (its
    loader read the file: it says so, with its rank), and an image that could not be read (``data.on_bad_image:
    error``, which checked only the headers before training) is said with every other file of the run that cannot
    be used; a collective that failed because another process ended says that, in one line, instead of gloo's
    message (or a collective that waited its timeout, the key to change)."""
    if isinstance(error, UnreadableImage) and parts.cfg.data.on_bad_image == "error":
        try:
            paths = [path for samples in parts.splits.splits.values() for path, _ in samples]
            error = refuse_bad_images(parts.cfg.data, parts.splits.root, paths) or error
        except Exception:  # the check failing too: the file met first is said alone
            logger.exception("the check of every image, after one could not be read, failed")
    if isinstance(error, DataError):
        error.own = True
    if lost_peer(error):
        return LaunchError(f"another process of the run ended (its error is above): {one_line(error)}")
    if timed_out(error):
        return LaunchError(f"no answer from another process of the run within {parts.cfg.train.collective_timeout_minutes:g} "
                           "minutes (train.collective_timeout_minutes): it hangs, or its node is gone (its error, if "
                           f"any, is above); raise the key if the run waits longer on purpose: {one_line(error)}")
    return error


def execute(parts: Parts, stop: StopRequest | None = None, stop_after_epochs: int | None = None) -> int:
    """Train a built run and evaluate its best weights, keeping its status; returns the exit code."""
    trainer = Trainer(parts, stop)
    parts.summary.write(status="running")
    try:
        trainer.fit(stop_after_epochs)
        results = trainer.finish()
        trainer.stop.finished()
        parts.summary.write(status="completed", **results)
    except TrainingInterrupted as interrupted:
        parts.summary.write_if_possible(status="interrupted", reason=str(interrupted))
        logger.warning(f"{interrupted}; continue with --resume {parts.rundir.root}")
        if interrupted.together:  # every process stopped at the same update: they leave together
            leave_together(parts.accelerator)
        return interrupted.exit_code
    except BaseException as error:
        trainer.stop.finished()
        stopped = _as_stopped(error, parts)
        parts.summary.write_if_possible(status="failed", error=describe(stopped))
        if stopped is error:
            raise
        raise stopped from None
    finally:
        parts.reporter.close()
    logger.info(f"done: best {parts.cfg.checkpoint.monitor} {parts.state.best_metric:.4f} "
                f"(epoch {parts.state.best_epoch}), "
                + ", ".join(f"{k} {v:.4f}" for k, v in results.items() if k.endswith("_acc"))
                + f"; outputs in {parts.rundir.root}")
    leave_together(parts.accelerator)
    return 0
