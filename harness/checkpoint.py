"""Checkpoints (``accelerator.save_state`` folders), the train state they carry, and weight export.

A checkpoint folder is written under a temporary name by every process, marked complete by the main
process, then renamed into place, so ``checkpoints/<name>`` is complete or absent. Consolidated weights
(``weights/<name>.safetensors``) are written from ``accelerator.get_state_dict``: plain fp32 tensors that
load without accelerate, DeepSpeed or unpickling.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.errors import CheckpointError
from harness.rundir import RunDir

MARKER = "harness_checkpoint.json"  # written last: a folder without it is not a checkpoint


@dataclass
class TrainState:
    """Everything about the run's progress that the model, optimizer and scheduler do not hold."""

    epoch: int = 0  # epochs completed
    batch_in_epoch: int = 0  # batches of the current epoch already trained (a mid-epoch checkpoint)
    global_step: int = 0  # optimizer updates
    best_metric: float | None = None
    best_epoch: int | None = None  # 1-based epoch that gave best_metric
    history: list[dict] = field(default_factory=list)  # one record per completed epoch
    epoch_sums: list[float] = field(default_factory=list)  # partial [loss*n, correct, n] of the current epoch
    train_seconds: float = 0.0  # time spent training, over all sessions of the run
    config: dict = field(default_factory=dict)  # the resolved config this state was trained with
    started_at: str = ""  # when the run's first session started

    def state_dict(self) -> dict[str, Any]:
        return asdict(self)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def save_checkpoint(accelerator: Accelerator, run: RunDir, name: str, state: TrainState) -> Path:
    """``accelerator.save_state`` into checkpoints/<name>, atomically. Every process must call it."""
    final = run.checkpoint(name)
    tmp = final.with_name(f".{name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        marker = {"epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch, "global_step": state.global_step,
                  "num_processes": accelerator.num_processes, "saved_at": time.time()}
        _write_atomic(tmp / MARKER, json.dumps(marker, indent=2).encode())
        _swap_into_place(tmp, final)
    accelerator.wait_for_everyone()
    return final


def copy_checkpoint(accelerator: Accelerator, run: RunDir, source: str, target: str) -> None:
    """Make checkpoints/<target> a copy of checkpoints/<source> (e.g. last -> best), atomically."""
    if accelerator.is_main_process:
        tmp = run.checkpoint(f".{target}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(run.checkpoint(source), tmp)
        _swap_into_place(tmp, run.checkpoint(target))
    accelerator.wait_for_everyone()


def is_checkpoint(path: Path) -> bool:
    return (path / MARKER).is_file()


def resolve_resume(path: str | Path) -> tuple[RunDir, Path]:
    """A run directory (resume from its last checkpoint) or a checkpoint folder -> (run, checkpoint)."""
    path = Path(path)
    if is_checkpoint(path):
        return RunDir(path.parent.parent), path
    run = RunDir(path)
    if run.config.is_file():
        last = run.checkpoint("last")
        if not is_checkpoint(last):
            raise CheckpointError(f"--resume {path}: no complete checkpoint in {run.checkpoints}")
        return run, last
    raise CheckpointError(f"--resume {path}: neither a run directory (with config.yaml) nor a checkpoint folder")


# ----------------------------------------------------------------------------------------------------
# Consolidated weights


def export_weights(accelerator: Accelerator, model, run: RunDir, name: str, meta: dict) -> None:
    """Write weights/<name>.safetensors (fp32, metadata inside) and weights/meta.json. Every process must call it."""
    state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 partitions; a collective
    if not accelerator.is_main_process:
        return
    tensors = {
        key: (t.detach().float() if t.is_floating_point() else t.detach()).cpu().contiguous()
        for key, t in state_dict.items()
    }
    run.weights.mkdir(parents=True, exist_ok=True)
    tmp = run.weights_file(name).with_suffix(".tmp")
    save_file(tensors, str(tmp), metadata={"harness": json.dumps(meta)})
    os.replace(tmp, run.weights_file(name))
    _write_atomic(run.weights_meta, json.dumps(meta, indent=2).encode())


def copy_weights(run: RunDir, source: str, target: str) -> None:
    tmp = run.weights_file(target).with_suffix(".tmp")
    shutil.copyfile(run.weights_file(source), tmp)
    os.replace(tmp, run.weights_file(target))


def load_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict and the metadata (classes, image settings, model) of an exported weights file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found (was the run trained to the end of an epoch?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("harness", "{}"))
        return load_file(str(path)), meta
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


# ----------------------------------------------------------------------------------------------------
# Filesystem helpers


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _swap_into_place(tmp: Path, final: Path) -> None:
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
