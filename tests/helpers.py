"""What the tests share besides fixtures (those are in conftest.py): run the real entry points in subprocesses, make
small image folders, read a run's files, compare weights, plant hostile files."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load_file

from harness.checkpointing.folders import MARKER, manifest
from harness.config.loading import load_config
from harness.evaluation.predictions import Predictions

REPO = Path(__file__).resolve().parents[1]
DIGITS = REPO / "configs" / "digits.yaml"
# The README's commands, word for word (run from the repository root), with the venv's accelerate.
ACCELERATE = [str(Path(sys.executable).parent / "accelerate"), "launch"]
CPU_LAUNCH = [*ACCELERATE, "-q", "--config_file", "launch_configs/cpu.yaml"]
# One CPU process without a launcher, as docs/launch.md gives it beside CPU_LAUNCH: the same run bit for bit
# (tests/e2e/test_train.py), without the 4.5 s accelerate's launcher takes to start. Tests of anything but the
# launcher use it; the README's quickstart and inference commands run as written.
PYTHON = [sys.executable]
# Small and deterministic: enough to exercise every part of the loop in seconds.
FAST = ["model.kwargs.width=8", "train.deterministic=true"]


def launch(script: str, args: list[str], env: dict, launcher: list[str] = PYTHON, check: bool = True,
           timeout: float = 600, **popen) -> subprocess.CompletedProcess:
    cmd = [*launcher, str(REPO / "harness" / script), *map(str, args)]
    result = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout, **popen)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {result.returncode}\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


def without_threads(env: dict) -> dict:
    """The tests' ``env`` as a user's shell has it: no thread count set (the harness's default, or the SLURM
    scripts', decides)."""
    return {k: v for k, v in env.items() if k != "HARNESS_CPU_THREADS"}


def one_line_error(result) -> str:
    """The single stderr line of a refused command, without its 'error: ' prefix."""
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), result.stderr[-3000:]
    return lines[0][len("error: "):]


def run_train(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return launch("train.py", args, env, **kw)


def run_infer(args: list[str], env: dict, **kw) -> subprocess.CompletedProcess:
    return launch("infer.py", args, env, **kw)


DDP = [*ACCELERATE, "-q", "--config_file", "launch_configs/cpu_ddp.yaml"]  # two CPU processes over gloo


def rows(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def history_metrics(run: Path) -> list[dict]:
    """history.csv without its timings: what must be equal between two runs that trained the same."""
    keys = ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr")
    return [{k: r[k] for k in keys} for r in rows(run / "history.csv")]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


def pointer(run: Path, name: str = "latest") -> Path:
    """The checkpoint folder that checkpoints/latest (or best) names."""
    return run / "checkpoints" / (run / "checkpoints" / name).read_text().strip()


def marker(checkpoint: Path) -> dict:
    return json.loads((checkpoint / "harness_checkpoint.json").read_text())


def fake_checkpoint(run, step: int, complete: bool = True) -> str:
    """A checkpoint folder of ``run`` (a RunDir) with one file and, if ``complete``, its manifest."""
    name = f"step-{step:08d}"
    folder = run.checkpoint(name)
    folder.mkdir(parents=True)
    (folder / "model.safetensors").write_bytes(b"x" * step)
    (folder / "train_state.json").write_text("{}")
    if complete:
        (folder / "harness_checkpoint.json").write_text(json.dumps({"epoch": 0, "files": manifest(folder)}))
    return name


def weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{len(different)} tensors differ, e.g. {different[:3]}"


def make_image_folder(root: Path, classes: int = 3, per_class: int = 12, size: int = 16) -> Path:
    """Class folders of small images in every common mode (L, RGB, RGBA, P); class c is mostly colour c."""
    rng = np.random.default_rng(0)
    modes = ["RGB", "L", "RGBA", "P"]
    for c in range(classes):
        folder = root / f"class_{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
            pixels[..., c % 3] += 180
            image = Image.fromarray(pixels)
            mode = modes[i % len(modes)]
            image = image.convert(mode) if mode != "P" else image.quantize(16)
            image.save(folder / f"{i:03d}.png")
    return root


class Payload:
    """A pickle that runs a shell command when it is unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(checkpoint: Path, name: str, pwned: Path) -> None:
    """Replace one file of ``checkpoint`` with a pickle that runs code, keeping the real content beside it for
    torch files (so a loader that ran it could carry on), and update the manifest as an attacker would."""
    target = checkpoint / name
    if name.endswith((".bin", ".pkl", ".pt")):
        real = torch.load(target, weights_only=False)
        torch.save({"payload": Payload(pwned), **(real if isinstance(real, dict) else {"state": real})}, target)
    else:
        target.write_bytes(pickle.dumps(Payload(pwned)))
    if name != MARKER:
        stamp = marker(checkpoint)
        stamp["files"] = manifest(checkpoint)
        (checkpoint / MARKER).write_text(json.dumps(stamp))


def fake_run(root: Path, name: str, lr: float, status: str, best: float, test_acc: float | None) -> Path:
    """A run directory with only a config (digits at learning rate ``lr``) and a summary, for the comparison."""
    run = root / name
    run.mkdir()
    config = load_config(DIGITS, [f"optim.lr={lr}"])
    config.save(run / "config.yaml")
    fields = {"status": status, "epoch": 3, "epochs": 12, "best_val_loss": best, "best_epoch": 2,
              "best_checkpoint": "step-00000060"}
    if test_acc is not None:
        fields["test_acc"] = test_acc
    (run / "summary.json").write_text(json.dumps(fields))
    return run


def predictions_close(a: list[dict], b: list[dict]) -> bool:
    """The same predictions, their confidences equal to the CSV's 6 decimals (give or take its last digit)."""
    return [(r["path"], r["prediction"]) for r in a] == [(r["path"], r["prediction"]) for r in b] and all(
        abs(float(x["confidence"]) - float(y["confidence"])) <= 2e-6 for x, y in zip(a, b))


def predictions_of(losses: list[float], right: list[bool]) -> Predictions:
    """Validation predictions of class 0 images with these losses, right where ``right`` says (else class 1)."""
    n = len(losses)
    return Predictions(np.arange(n), np.zeros(n, dtype=np.int64), log_probs_predicting(np.where(right, 0, 1), 2),
                       np.array(losses))


def log_probs_predicting(predicted: np.ndarray, classes: int) -> np.ndarray:
    """Log-probabilities (samples x classes) under which each sample's most likely class is ``predicted``'s."""
    probs = np.full((len(predicted), classes), 0.1 / classes, dtype=np.float32)
    probs[np.arange(len(predicted)), predicted] += 0.9
    return np.log(probs)


def tree(folder: Path) -> dict[str, str]:
    """Every entry under ``folder`` (relative path -> the SHA-256 of a file's content, or "folder"): what must not
    change when a command is refused or fails before it starts."""
    found = {}
    for path in sorted(Path(folder).rglob("*")):
        key = str(path.relative_to(folder))
        found[key] = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found
