"""The train command from start to end: plan -> build the parts -> ``Trainer.fit`` -> ``Trainer.finish``.

This is the one place that sets a run's status in summary.json: ``running`` while it trains, then
``completed``, ``interrupted`` (a stop signal or ``--stop-after-epochs``, after a checkpoint) or ``failed``.
"""

from __future__ import annotations

import argparse
import logging

from harness.errors import describe
from harness.reporting.summary import record_failure
from harness.runtime.accelerator import build_accelerator
from harness.runtime.collective import leave_together
from harness.runtime.deepspeed import zero_stage
from harness.runtime.logs import setup_logging
from harness.runtime.signals import TrainingInterrupted
from harness.training.lock import RunLock
from harness.training.parts import Parts, build_parts
from harness.training.plan import resolve_run
from harness.training.trainer import Trainer

logger = logging.getLogger(__name__)


def train(args: argparse.Namespace) -> int:
    """Run the training command; returns the process exit code."""
    setup_logging()
    first = resolve_run(args)
    cfg = first.cfg
    accelerator = build_accelerator(cfg.train.mixed_precision, cfg.train.grad_accum_steps, cfg.train.clip_grad_norm,
                                    cfg.train.batch_size)
    setup_logging(accelerator)
    cfg.train.check_engine(zero_stage(accelerator))
    lock = RunLock(first.rundir)
    lock.acquire(accelerator)
    try:
        plan = resolve_run(args)  # decided again under the lock: another training may have changed the run
        finished = plan.finished()
        if finished:
            logger.info(f"{plan.rundir.root} already {finished}")
            return 0
        try:
            parts = build_parts(plan, accelerator)
        except BaseException as error:  # e.g. a checkpoint that does not load: the summary must not say completed
            if accelerator.is_main_process:
                record_failure(plan.rundir, describe(error))
            raise
        return execute(parts, args.stop_after_epochs)
    finally:
        lock.release()


def execute(parts: Parts, stop_after_epochs: int | None = None) -> int:
    """Train a built run and evaluate its best weights, keeping its status; returns the exit code."""
    trainer = Trainer(parts)
    parts.summary.write(status="running")
    try:
        trainer.fit(stop_after_epochs)
        results = trainer.finish()
    except TrainingInterrupted as stop:
        parts.summary.write(status="interrupted", reason=str(stop))
        logger.warning(f"{stop}; continue with --resume {parts.rundir.root}")
        leave_together(parts.accelerator)
        return stop.exit_code
    except KeyboardInterrupt:  # during the final evaluation, after the last checkpoint: resuming redoes it
        parts.summary.write(status="interrupted", reason="KeyboardInterrupt")
        raise
    except BaseException as error:
        parts.summary.write_if_possible(status="failed", error=describe(error))
        raise
    finally:
        parts.reporter.close()
    parts.summary.write(status="completed", **results)
    logger.info(f"done: best {parts.cfg.checkpoint.monitor} {parts.state.best_metric:.4f} (epoch {parts.state.best_epoch}), "
                + ", ".join(f"{k} {v:.4f}" for k, v in results.items() if k.endswith("_acc"))
                + f"; outputs in {parts.rundir.root}")
    leave_together(parts.accelerator)
    return 0
