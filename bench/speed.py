"""Training speed of the harness beside a plain PyTorch loop and the model-bound ceiling, in one run.

    python bench/speed.py                                   # CPU: resnet18 on the digits at 32 px
    python bench/speed.py --data jpeg --image-size 96       # CPU: synthetic JPEGs
    python bench/speed.py --device cuda --data jpeg --images 9000 --image-size 128 --model resnet50 \\
        --batch-size 256 --precision bf16 --workers 8 --channels-last --cache memory

The three ways train the same model on the same files with the same batch size, optimizer, augmentation and
workers, interleaved (ceiling, plain, harness, ceiling, ...) ``--repeats`` times; each is a process of its
own, timed from its start to its exit, with the peak memory (PSS) of its process tree. The figures are
medians over the repeats; train images/s of one repeat counts the epochs after the first (warm-up).
The harness goes through its real entry point, ``harness/train.py``, and its figures come from the run's
``history.csv``. A figure, never a test: see bench/README.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path.insert(0, str(REPO))

from bench.datasets import make_data  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--data", choices=["digits", "jpeg"], default="digits",
                        help="digits: the built-in digits as PNGs (upscaled above 32 px); jpeg: a synthetic JPEG set")
    parser.add_argument("--images", type=int, default=1500, help="jpeg: images in all (80/10/10 train/val/test)")
    parser.add_argument("--data-dir", default=str(Path.home() / ".cache" / "harness" / "bench"),
                        help="where the generated data sets are kept between runs")
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--precision", choices=["no", "fp16", "bf16"], default="no")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--channels-last", action="store_true", help="all three ways (model.channels_last)")
    parser.add_argument("--cache", choices=["none", "memory", "disk"], default="none", help="the harness's data.cache")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--ways", default="ceiling,plain,harness", help="a comma-separated subset")
    parser.add_argument("--harness-args", default="", help="more overrides for the harness, e.g. 'train.compile=true'")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    root = make_data(args.data, Path(args.data_dir), args.image_size, args.images)
    ways = args.ways.split(",")
    results: dict[str, list[dict]] = {way: [] for way in ways}
    print(f"data {root}; {args.model} {args.image_size}px batch {args.batch_size}, {args.workers} workers, "
          f"{args.epochs} epochs, precision {args.precision}, {args.device}"
          f"{', channels_last' if args.channels_last else ''}, harness cache {args.cache}", flush=True)
    with tempfile.TemporaryDirectory(prefix="harness-bench-") as tmp:
        for repeat in range(args.repeats):
            for way in ways:
                outcome = run_way(way, args, root, Path(tmp) / f"{way}-{repeat}")
                results[way].append(outcome)
                print(f"  repeat {repeat + 1} {way:8s} {outcome['images_per_second']:8.0f} img/s  "
                      f"wall {outcome['wall_seconds']:6.1f} s  peak {outcome['peak_gib']:.2f} GiB"
                      + (f"  data wait {outcome['data_wait']:.1%}" if "data_wait" in outcome else ""), flush=True)
    report(results)


def run_way(way: str, args: argparse.Namespace, root: Path, work: Path) -> dict:
    work.mkdir(parents=True)
    if way == "harness":
        command = harness_command(args, root, work)
    else:
        command = [sys.executable, str(BENCH / "loops.py"), way, "--data", str(root), "--out", str(work / "out.json"),
                   "--model", args.model, "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
                   "--workers", str(args.workers), "--epochs", str(args.epochs), "--precision", args.precision,
                   "--device", args.device] + (["--channels-last"] if args.channels_last else [])
    wall, peak = timed(command, work / "log.txt")
    epochs = harness_epochs(work) if way == "harness" else json.loads((work / "out.json").read_text())["epochs"]
    steady = epochs[1:] or epochs
    outcome = {"images_per_second": sum(e["images"] for e in steady) / sum(e["seconds"] for e in steady),
               "wall_seconds": wall, "peak_gib": peak / 2**30}
    if way == "harness":
        outcome["data_wait"] = statistics.median(e["data_wait"] for e in steady)
    return outcome


def harness_command(args: argparse.Namespace, root: Path, work: Path) -> list[str]:
    size = args.image_size
    config = {
        "name": "bench",
        "data": {"root": str(root), "image_size": size, "num_workers": args.workers, "cache": args.cache,
                 "cache_dir": str(work / "cache"),
                 "augmentations": [{"name": "random_crop", "padding": size // 8}, "hflip"]},
        "model": {"name": args.model, "channels_last": args.channels_last},
        "optim": {"name": "sgd", "lr": 0.01, "momentum": 0.9},
        "scheduler": {"name": "cosine"},
        "train": {"epochs": args.epochs, "batch_size": args.batch_size, "mixed_precision": args.precision},
    }
    (work / "config.yaml").write_text(yaml.safe_dump(config))
    return [sys.executable, str(REPO / "harness" / "train.py"), "--config", str(work / "config.yaml"),
            "--output-dir", str(work / "runs"), "--run-name", "bench", *args.harness_args.split()]


def harness_epochs(work: Path) -> list[dict]:
    with open(work / "runs" / "bench" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    return [{"seconds": float(row["epoch_seconds"]), "images": float(row["train_images_per_second"]) * float(
        row["epoch_seconds"]), "data_wait": float(row["data_wait"])} for row in rows]


def timed(command: list[str], log: Path) -> tuple[float, int]:
    """Run ``command`` to its end: its wall time and the peak PSS of its process tree, in bytes."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        peak = [0]
        sampler = threading.Thread(target=_sample_memory, args=(process, peak), daemon=True)
        sampler.start()
        code = process.wait()
    wall = time.perf_counter() - started
    sampler.join()
    if code != 0:
        sys.exit(f"failed (exit {code}): {' '.join(command)}\n{log.read_text()[-3000:]}")
    return wall, peak[0]


def _sample_memory(process: subprocess.Popen, peak: list[int]) -> None:
    while process.poll() is None:
        peak[0] = max(peak[0], _tree_pss(process.pid))
        time.sleep(0.1)


def _tree_pss(pid: int) -> int:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry))
    total, todo = 0, [pid]
    while todo:
        current = todo.pop()
        todo += children.get(current, [])
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


def report(results: dict[str, list[dict]]) -> None:
    medians = {way: {key: statistics.median(run[key] for run in runs) for key in runs[0]}
               for way, runs in results.items()}
    print("\nmedians:")
    print(f"  {'way':8s} {'img/s':>8s} {'wall s':>7s} {'peak GiB':>9s}")
    for way, m in medians.items():
        print(f"  {way:8s} {m['images_per_second']:8.0f} {m['wall_seconds']:7.1f} {m['peak_gib']:9.2f}"
              + (f"   data wait {m['data_wait']:.1%}" if "data_wait" in m else ""))
    harness = medians.get("harness")
    for peer in ("plain", "ceiling"):
        if harness and peer in medians:
            print(f"  harness / {peer}: {harness['images_per_second'] / medians[peer]['images_per_second']:.2f} "
                  f"img/s, wall {harness['wall_seconds'] - medians[peer]['wall_seconds']:+.1f} s, "
                  f"peak memory {harness['peak_gib'] / medians[peer]['peak_gib']:.2f}x")


if __name__ == "__main__":
    main()
