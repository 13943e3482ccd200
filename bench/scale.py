"""Start-up and memory at the data sizes users train on: a folder of many small PNGs (10 classes, split by the
harness), made once in parallel under ``--data-dir``, and side by side in one run:

- time from process start to the first trained batch: the plain loader (torchvision ``ImageFolder`` +
  ``DataLoader``, shuffled), then the harness on a new cache folder (``first``), again under a new run name
  (``second``: what a later run, a k-fold sibling or a sweep task pays), and resuming a run stopped after its first
  batch (``resume``: what a requeue pays); each started as ``python`` and as ``accelerate launch`` (whose own start,
  paid by any script it launches, is compared like for like: the plain loader is launched by it too);
- the peak memory (PSS) of the process tree until then, with 1 and with ``--processes`` processes;
- the same starts on the folder packed with ``harness/pack.py`` (made once beside it);
- two-epoch runs of a small CNN (one each): train images/s of each epoch from the folder with ``data.cache: none``
  and ``memory``, each with 1 and ``--processes`` processes, and from the packed folder; the peak memory of the
  process tree (what the memory cache adds to the machine: the same with 1 and ``--processes`` processes when it is
  held once) and how many times a data file was opened (under ``strace``, if installed).

    python bench/scale.py [--images 100000] [--cache memory] [--repeats 3]   # about 10 minutes on 2 cores

Each figure is the median of ``--repeats``; the ways are interleaved. Every process is stopped by SIGTERM once its
first batch is trained (the harness checkpoints and exits cleanly, which the resume then reads).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.speed import _tree_pss, timed  # noqa: E402
from harness.config.schema import DataConfig  # noqa: E402
from harness.data.splits import discover_splits  # noqa: E402

CLASSES = 10
PLAIN = """
import sys, time
import torch, torchvision
from torchvision import transforms as T
root, size, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
data = torchvision.datasets.ImageFolder(root, T.Compose([T.Resize((size, size)), T.ToTensor()]))
loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True, num_workers=workers)
model = torchvision.models.resnet18(num_classes=len(data.classes))
optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
images, labels = next(iter(loader))
torch.nn.functional.cross_entropy(model(images), labels).backward()
optimizer.step()
print("first batch", flush=True)
time.sleep(3600)
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--cache", choices=["none", "memory", "disk"], default="memory")
    parser.add_argument("--workers", type=int, default=0, help="loader workers per process (both loaders)")
    parser.add_argument("--processes", type=int, default=2, help="the second process count measured")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--starts-only", action="store_true", help="leave out the two-epoch runs (for 1M images)")
    parser.add_argument("--data-dir", type=Path, default=Path.home() / ".cache" / "harness" / "bench")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = make_folder(args.data_dir, args.images, args.image_size)
    packed, pack_seconds = make_pack(root)
    starts: dict[tuple[str, str], list[tuple[float, int]]] = {}
    with tempfile.TemporaryDirectory(prefix="scale-", dir=args.data_dir) as work:
        plain = Path(work) / "plain.py"
        plain.write_text(PLAIN)
        for repeat in range(args.repeats):
            for python in (True, False):
                starts.setdefault((launched_by(python, 1), "plain ImageFolder"), []).append(first_batch(
                    [*launcher(1, python), str(plain), str(root), str(args.image_size), str(args.workers)], work))
            for data, processes, python in [(root, 1, True), (root, 1, False), (root, args.processes, False),
                                            (packed, 1, True)]:
                where = "packed" if data == packed else "folder"
                folder = Path(work) / f"r{repeat}{where}{processes}{python}"
                for way, seconds in harness_starts(args, data, folder, processes, python):
                    key = (launched_by(python, processes), f"harness, {where}, {way}")
                    starts.setdefault(key, []).append(seconds)
        shared = Path(work) / "cache"  # the epochs' runs: the folder's index made first, outside them
        if not args.starts_only:
            discover_splits(DataConfig(root=str(root), cache_dir=str(shared)), root)
        epochs = {} if args.starts_only else {f"{where}, data.cache: {cache}, {processes} process(es)": two_epochs(
                      args, data, cache, shared, Path(work) / f"e{where}{cache}{processes}", processes)
                  for where, data, cache, processes in [("folder", root, "none", 1), ("folder", root, "none", args.processes),
                                                        ("folder", root, "memory", 1),
                                                        ("folder", root, "memory", args.processes),
                                                        ("packed", packed, "none", 1)]}
    report(args, starts, epochs, pack_seconds)


def report(args: argparse.Namespace, starts: dict, epochs: dict, pack_seconds: float) -> None:
    print(f"{args.images} images of {args.image_size} px, data.cache: {args.cache} (starts), {args.workers} "
          f"worker(s); packed in {pack_seconds:.0f} s; time to the first trained batch, medians of {args.repeats}")
    plain = {launch.split(",")[0]: statistics.median(seconds for seconds, _ in runs)
             for (launch, way), runs in starts.items() if way == "plain ImageFolder"}
    print("\n| launched by | way | to first batch s | x plain, launched alike | peak PSS GiB |\n"
          "| --- | --- | ---: | ---: | ---: |")
    for (launch, way), runs in sorted(starts.items(), key=lambda item: item[0][0].split(",")[0]):
        seconds, peak = statistics.median(s for s, _ in runs), statistics.median(p for _, p in runs)
        print(f"| {launch} | {way} | {seconds:.2f} | {seconds / plain[launch.split(',')[0]]:.2f} | "
              f"{peak / 2**30:.2f} |")
    if not epochs:
        return
    print("\n| two epochs of compact_cnn, one run each | epoch 1 img/s | epoch 2 img/s | wall s | peak PSS GiB | "
          "data files opened |\n| --- | ---: | ---: | ---: | ---: | ---: |")
    for way, (rates, wall, peak, opens) in epochs.items():
        print(f"| {way} | {rates[0]:.0f} | {rates[1]:.0f} | {wall:.1f} | {peak / 2**30:.2f} | {opens} |")


def make_pack(root: Path) -> tuple[Path, float]:
    """``root`` packed beside it (once), and the seconds the pack command took (0 when it was there already)."""
    packed = root.with_name(f"{root.name}-packed")
    if (packed / "pack.json").exists():
        return packed, 0.0
    started = time.perf_counter()
    subprocess.run([sys.executable, str(REPO / "harness" / "pack.py"), str(root), str(packed)], check=True)
    return packed, time.perf_counter() - started


def two_epochs(args: argparse.Namespace, root: Path, cache: str, cache_dir: Path, work: Path, processes: int
               ) -> tuple[list[float], float, int, int | str]:
    """A two-epoch run of a small CNN (validation only at the end; the image index already made): train images/s
    of each epoch, wall time, peak PSS, and how many times a file of the data was opened (under strace, when it is
    there: each image file, or each shard)."""
    work.mkdir(parents=True)
    config = work / "epochs.yaml"
    config.write_text(json.dumps({
        "data": {"root": str(root), "image_size": args.image_size, "cache": cache, "num_workers": args.workers,
                 "cache_dir": str(cache_dir)},
        "model": {"name": "compact_cnn", "kwargs": {"width": 8}},
        "train": {"epochs": 2, "batch_size": 256, "final_eval_splits": ["val"]}, "log": {"progress": False},
    }))
    trace = work / "opens"
    strace = ["strace", "-f", "--seccomp-bpf", "-e", "trace=open,openat", "-o", str(trace)] \
        if shutil.which("strace") else []
    wall, peak = timed([*strace, *launcher(processes), str(REPO / "harness" / "train.py"), "--config", str(config),
                        "--output-dir", str(work / "runs")], work / "log")
    with open(work / "runs" / "epochs" / "history.csv") as f:
        rates = [float(row["train_images_per_second"]) for row in csv.DictReader(f)]
    opens = sum(f'"{root}/' in line for line in trace.read_text().splitlines()) if strace else "no strace"
    return rates, wall, peak, opens


def launcher(processes: int, python: bool = False) -> list[str]:
    """The documented command that starts a script as ``processes`` processes on this machine's CPU: ``python`` (one
    process) or ``accelerate launch``; the script's path follows."""
    if python:
        return [sys.executable]
    launch = [str(Path(sys.executable).parent / "accelerate"), "launch", "-q", "--config_file",
              str(REPO / "launch_configs" / ("cpu.yaml" if processes == 1 else "cpu_ddp.yaml"))]
    return [*launch, "--num_processes", str(processes)] if processes > 1 else launch


def launched_by(python: bool, processes: int) -> str:
    return "python" if python else f"accelerate launch, {processes} process(es)"


def harness_starts(args: argparse.Namespace, root: Path, work: Path, processes: int, python: bool):
    """(way, (seconds, peak PSS)) of a first run on a new cache folder, a second run, and a resume of the first."""
    work.mkdir(parents=True)
    config = work / "scale.yaml"
    config.write_text(json.dumps({
        "data": {"root": str(root), "image_size": args.image_size, "cache": args.cache, "num_workers": args.workers,
                 "cache_dir": str(work / "cache")},
        "model": {"name": "resnet18"}, "train": {"epochs": 1, "batch_size": 64}, "log": {"progress": False},
    }))
    train = [*launcher(processes, python), str(REPO / "harness" / "train.py")]
    new = ["--config", str(config), "--output-dir", str(work / "runs")]
    yield "first", first_batch([*train, *new, "--run-name", "first"], work)
    yield "second", first_batch([*train, *new, "--run-name", "second"], work)
    yield "resume", first_batch([*train, "--resume", str(work / "runs" / "first")], work)


def first_batch(command: list[str], work: str | Path) -> tuple[float, int]:
    """Seconds from the start of ``command`` to its first trained batch (the harness's batch trace, or the plain
    loop's line), and the peak PSS of its process tree until then; then it is stopped with SIGTERM."""
    trace = Path(tempfile.mktemp(prefix="trace-", dir=work))
    env = {**os.environ, "HARNESS_TRACE_BATCHES": str(trace), "PYTHONUNBUFFERED": "1"}
    log = trace.with_suffix(".log")
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
        peak, done = [0], threading.Event()
        sampler = threading.Thread(target=_sample, args=(process.pid, peak, done), daemon=True)
        sampler.start()
        while not (_traced(trace) or "first batch" in log.read_text()):
            if process.poll() is not None:
                shutil.copytree(work, Path(work).parent / "failed", dirs_exist_ok=True)
                sys.exit(f"ended before its first batch (exit {process.returncode}): {' '.join(command)}\n"
                         f"{log.read_text()[-3000:]}")
            time.sleep(0.02)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=300)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return seconds, peak[0]


def _traced(trace: Path) -> bool:
    return any(path.stat().st_size for path in trace.parent.glob(f"{trace.name}.rank*"))


def _sample(pid: int, peak: list[int], done: threading.Event) -> None:
    while not done.is_set():
        peak[0] = max(peak[0], _tree_pss(pid))
        time.sleep(0.05)


def make_folder(data_dir: Path, images: int, size: int) -> Path:
    """``images`` PNGs of ``size`` px in 10 class folders (split by the harness), made once, in parallel."""
    target = data_dir / f"png-{images}-{size}"
    if (target / ".complete").exists():
        return target
    data_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=data_dir))
    try:
        for label in range(CLASSES):
            (tmp / f"class{label}").mkdir()
        chunks = [(tmp, start, min(start + 1000, images), size) for start in range(0, images, 1000)]
        with ProcessPoolExecutor(os.cpu_count()) as pool:
            list(pool.map(_pngs, chunks))
        (tmp / ".complete").write_text("ok\n")
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _pngs(chunk: tuple[Path, int, int, int]) -> None:
    out, start, end, size = chunk
    rng = np.random.default_rng(start)
    for index in range(start, end):
        label = index % CLASSES
        pixels = rng.integers(0, 64, (size, size, 3), dtype=np.uint8)
        pixels[..., label % 3] += 25 * label
        Image.fromarray(pixels).save(out / f"class{label}" / f"{index:07d}.png")


if __name__ == "__main__":
    main()
