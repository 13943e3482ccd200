"""Loading a checkpoint back, trusting nothing in its folder.

Sizes and SHA-256 hashes are checked against the manifest first (``latest_checkpoint`` skips a damaged
checkpoint for the previous one), the harness's own state is JSON, and every pickle-based file (optimizer,
scheduler, RNG states, DeepSpeed's, FSDP's shards) is read with ``torch.load(weights_only=True)``, forced for the
whole load whatever accelerate, DeepSpeed or torch.distributed.checkpoint ask for, and the ``.metadata`` of
FSDP's sharded checkpoints, which torch unpickles whole, is first read with only the classes it holds: so no file
can run code. A part that fails to load is an error
naming the checkpoint, never skipped.
"""

from __future__ import annotations

import json
import os
import pickle
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, TypeVar

import torch
from accelerate import Accelerator
from accelerate.utils import load

from harness.checkpointing.folders import STATE, read_marker, verify
from harness.checkpointing.state import TrainState
from harness.config.typed import build_typed
from harness.errors import CheckpointError
from harness.runtime.accelerator import distributed_type
from harness.runtime.collective import first_failure
from harness.storage.rundir import RunDir

T = TypeVar("T")


def load_checkpoint(accelerator: Accelerator, path: Path, state: TrainState) -> None:
    """Load every part of checkpoint ``path`` (model, optimizer, scheduler, RNG states, train state) into
    the prepared objects and ``state``. Every process calls it; a failure on any process is the same
    CheckpointError on all of them."""
    problem = verify(path, content=True)
    if problem:
        raise CheckpointError(f"{path}: not a usable checkpoint: {problem}")
    _check_format(accelerator, path)
    with weights_only():
        _together(accelerator, path, lambda: _check_sharded_metadata(path))
        _together(accelerator, path, lambda: _check_rng_states(path, accelerator.process_index))
        _together(accelerator, path, lambda: accelerator.load_state(str(path)))
    saved = _together(accelerator, path, lambda: build_typed(TrainState, json.loads((path / STATE).read_text()), "", STATE))
    state.load_state_dict(saved.state_dict())


# How accelerate's save_state writes the model and optimizer under each distributed type: FSDP as
# torch.distributed.checkpoint shards, DeepSpeed as its engine's files, every other type as whole files.
FORMATS = {"FSDP": "FSDP's sharded files", "DEEPSPEED": "DeepSpeed's files"}
WHOLE = "whole files (one process, DDP)"
LAUNCH_CONFIGS = {"FSDP": "launch_configs/fsdp.yaml", "DEEPSPEED": "a launch_configs/deepspeed_zero*.yaml"}


def _check_format(accelerator: Accelerator, path: Path) -> None:
    """A checkpoint loads only under a launch that reads its format: one line naming both, before anything is
    read (a checkpoint of an older harness does not say; accelerate then fails on it, as before)."""
    saved = read_marker(path).get("distributed_type")
    now = distributed_type(accelerator)
    if saved is None or FORMATS.get(saved, WHOLE) == FORMATS.get(now, WHOLE):
        return
    launch = LAUNCH_CONFIGS.get(saved, "launch_configs/cpu.yaml, cpu_ddp.yaml or multi_gpu.yaml")
    raise CheckpointError(f"{path}: saved as {FORMATS.get(saved, WHOLE)} ({saved}), which this launch ({now}) "
                          f"cannot read: continue the run with the launch config it trained with ({launch})")


def _together(accelerator: Accelerator, path: Path, action: Callable[[], T]) -> T:
    """``action()`` on every process; if it fails anywhere, every process raises the first failure."""
    result, failure = first_failure(accelerator, action)
    if failure:
        raise CheckpointError(f"{path}: cannot load it ({failure})")
    return result


@contextmanager
def weights_only() -> Iterator[None]:
    """Every ``torch.load`` inside, whatever its caller asks (accelerate and DeepSpeed ask for full pickle
    loads), admits only tensors and plain data: no file can make it run code."""
    saved = {key: os.environ.pop(key, None) for key in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")}
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    try:
        with torch.serialization.safe_globals(_deepspeed_data_classes()):
            yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None)
            if value is not None:
                os.environ[key] = value


def _deepspeed_data_classes() -> list[type]:
    """The classes DeepSpeed pickles in its optimizer states, each only numbers once loaded: the loss
    scaler's settings, ZeRO's stage and the addresses of parameter fragments."""
    if "deepspeed" not in sys.modules:  # imported by accelerate when the run uses DeepSpeed
        return []
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


# What torch.distributed.checkpoint's ``.metadata`` (FSDP's sharded checkpoints) holds: where each tensor's chunks
# lie in which file, shapes, dtypes, paths.
METADATA_CLASSES = {
    "torch.distributed.checkpoint.metadata": {
        "Metadata", "MetadataIndex", "StorageMeta", "TensorProperties", "TensorStorageMetadata",
        "BytesStorageMetadata", "ChunkStorageMetadata", "_MEM_FORMAT_ENCODING"},
    "torch.distributed.checkpoint.filesystem": {"_StorageInfo"},
    "torch.serialization": {"_get_layout"},
    "torch": {"Size"},
    "pathlib": {"PosixPath", "PurePosixPath"},
}


class _MetadataUnpickler(pickle.Unpickler):
    """A ``.metadata`` read as torch reads it, with only the classes it holds (and torch's dtypes)."""

    def find_class(self, module: str, name: str):
        if name in METADATA_CLASSES.get(module, ()) or (module == "torch" and isinstance(getattr(torch, name, None),
                                                                                          torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a checkpoint's .metadata")


def _check_sharded_metadata(path: Path) -> None:
    """torch.distributed.checkpoint unpickles its ``.metadata`` files whole (no weights-only mode): each is read
    first with only the classes such a file holds, so that none can run code when torch reads it."""
    for metadata in sorted(path.rglob(".metadata")):
        with open(metadata, "rb") as f:
            _MetadataUnpickler(f).load()


def _check_rng_states(path: Path, process_index: int) -> None:
    """accelerate ignores an RNG-state file it cannot load; a resume that is not exact must say so instead.
    A process the checkpoint's run did not have has no file: it keeps its fresh RNG (see the README)."""
    if process_index >= read_marker(path)["num_processes"]:
        return
    states = load(path / f"random_states_{process_index}.pkl")
    missing = {"random_state", "numpy_random_seed", "torch_manual_seed"} - set(states)
    if missing:
        raise ValueError(f"random_states_{process_index}.pkl lacks {sorted(missing)}")


def restore_best(accelerator: Accelerator, rundir: RunDir, state: TrainState) -> None:
    """Give the model the weights of the best checkpoint (unless the last epoch was the best) and keep the
    progress in ``state``: loading would otherwise roll it back to that checkpoint's. Every process calls it."""
    if state.best_epoch == state.epoch:
        return
    progress = state.state_dict()
    load_checkpoint(accelerator, rundir.checkpoint(state.best_checkpoint), state)
    state.load_state_dict(progress)
