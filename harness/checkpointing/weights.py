"""Consolidated weights for inference: ``weights/<name>.safetensors`` (fp32, metadata inside) and ``meta.json``.

The metadata says what inference needs to rebuild the model and its preprocessing without the training
code or a checkpoint: model name and arguments, classes, image size, mean and std, and the epoch.
Nothing here unpickles: safetensors holds tensors and a JSON string only.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from harness.config.schema import Config
from harness.errors import CheckpointError, StorageError, one_line
from harness.runtime.accelerator import bare
from harness.storage.atomic import atomic_path, write_atomic
from harness.storage.rundir import RunDir


def weights_metadata(cfg: Config, classes: list[str], run_name: str, mixed_precision: str) -> dict:
    """What every weights file of a run carries, before the epoch's own figures are added."""
    return {
        "run": run_name, "model": cfg.model.name, "model_kwargs": cfg.model.kwargs, "classes": classes,
        "image_size": cfg.data.image_size, "mean": cfg.data.mean, "std": cfg.data.std,
        "mixed_precision": mixed_precision,
    }


def write_weights(accelerator: Accelerator, model, rundir: RunDir, name: str, meta: dict) -> None:
    """Write weights/<name>.safetensors and weights/meta.json. Every process must call it."""
    if accelerator.distributed_type in (DistributedType.DEEPSPEED, DistributedType.FSDP):
        state_dict = accelerator.get_state_dict(model)  # gathers ZeRO-3 partitions or FSDP shards; a collective
    else:
        state_dict = bare(model).state_dict()
    if not accelerator.is_main_process:
        return
    tensors = {
        key: (t.detach().float() if t.is_floating_point() else t.detach()).cpu().contiguous()
        for key, t in state_dict.items()
    }
    rundir.weights.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(rundir.weights_file(name)) as tmp:
            save_file(tensors, str(tmp), metadata={"harness": json.dumps(meta)})
    except Exception as error:  # safetensors reports a full disk as its own error type
        raise StorageError(f"{rundir.weights_file(name)} could not be written ({one_line(error)})") from None
    write_atomic(rundir.weights_meta, json.dumps(meta, indent=2))


def copy_weights(rundir: RunDir, source: str, target: str) -> None:
    with atomic_path(rundir.weights_file(target)) as tmp:
        shutil.copyfile(rundir.weights_file(source), tmp)


def read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The state dict and the metadata (classes, image settings, model) of a weights file."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file not found (was the run trained to the end of an epoch?)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("harness", "{}"))
        return load_file(str(path)), meta
    except Exception as e:  # safetensors raises its own error types for damaged files
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
