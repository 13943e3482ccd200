"""Loader workers: they leave stop signals to the process that owns them, and there are never more than the CPUs."""

import logging
import os
import signal
import time
import warnings

from harness.config.schema import DataConfig
from harness.data.loaders import ImageListDataset, build_loader, eval_loader
from harness.data.splits import discover_splits
from harness.data.transforms import build_transform
from harness.data.workers import batches_of, init_worker, loader_workers
from tests.helpers import make_image_folder


def _signalled_at_start(worker_id: int) -> None:
    """Stop signals while the workers start: to the training process, and to this worker after torch gave it
    its own SIGTERM handler (which would end it), before init_worker."""
    os.kill(os.getppid(), signal.SIGUSR1)
    os.kill(os.getpid(), signal.SIGTERM)
    init_worker(worker_id)


def test_a_stop_signal_while_workers_start_kills_none_and_reaches_the_training_process(tmp_path):
    root = make_image_folder(tmp_path / "data", classes=2, per_class=8)
    samples = discover_splits(DataConfig(root=str(root), val_fraction=0.25, test_fraction=0.0), root).splits["train"]
    dataset = ImageListDataset(root, samples, build_transform(DataConfig(root=str(root), image_size=16), train=False))
    loader = build_loader(dataset, batch_size=2, num_workers=2, seed=0)
    loader.worker_init_fn = _signalled_at_start
    got = []
    previous = signal.signal(signal.SIGUSR1, lambda signum, frame: got.append(signum))
    try:
        assert len(list(batches_of(loader))) == 6  # every batch: no worker died
        time.sleep(0.1)
        assert got and set(got) == {signal.SIGUSR1}  # held while the workers started, then delivered
    finally:
        signal.signal(signal.SIGUSR1, previous)


def test_loader_workers_leave_stop_signals_to_the_process_that_owns_them(tmp_path):
    """A scheduler signals every process of a job: the workers must not die of it in the middle of an epoch."""
    root = make_image_folder(tmp_path / "data", classes=2, per_class=8)
    samples = discover_splits(DataConfig(root=str(root), val_fraction=0.25, test_fraction=0.0), root).splits["train"]
    dataset = ImageListDataset(root, samples, build_transform(DataConfig(root=str(root), image_size=16), train=False))
    batches = iter(build_loader(dataset, batch_size=2, shuffle=False, num_workers=2, seed=0))
    first = [next(batches), next(batches)]  # one from each worker: both have set themselves up
    for worker in batches._workers:
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            os.kill(worker.pid, signum)
    time.sleep(0.5)
    assert len([*first, *batches]) == 6  # every batch still comes


def test_more_workers_than_cpus_are_clamped_and_said_once(tmp_path, caplog):
    """Torch would warn at every loader that the workers exceed the CPUs; the harness uses as many as there are
    and says so once."""
    root = make_image_folder(tmp_path / "images", classes=2, per_class=4, size=8)
    cpus = len(os.sched_getaffinity(0))
    cfg = DataConfig(root=str(root), image_size=8, num_workers=cpus + 7)
    with caplog.at_level(logging.WARNING, logger="harness.data.workers"):
        assert loader_workers(cfg) == loader_workers(cfg) == cpus
    assert [record.getMessage() for record in caplog.records] == [
        f"data.num_workers: {cpus + 7} asked for, but this process may run on {cpus} CPU(s): using {cpus} loader workers"]
    samples = discover_splits(DataConfig(root=str(root), val_fraction=0.25, test_fraction=0.25), root).splits["train"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        images, labels, _ = next(iter(eval_loader(cfg, root, samples, batch_size=2, seed=0)))
    assert images.shape == (2, 3, 8, 8)
