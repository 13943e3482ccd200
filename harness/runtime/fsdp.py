"""FSDP2 (PyTorch's ``fully_shard``) through accelerate's own code path: selected on processes without an
accelerator too, and told which of the model's layers to shard on their own.

accelerate (1.x) selects FSDP only when the processes meet on an accelerator (its ``AcceleratorState`` turns
MULTI_GPU, MULTI_XPU, ... into FSDP, never MULTI_CPU), although ``fully_shard`` and
``torch.distributed.checkpoint`` work over gloo. On a machine without one (CI, a laptop), the processes meet over
gloo as with ``cpu_ddp.yaml`` and ``select_fsdp`` then does what accelerate does on a GPU: it gives the state the
plugin built from the launch config and the FSDP type. From there everything is accelerate's: ``prepare``
shards, ``save_state``/``load_state`` write and read sharded checkpoints, ``get_state_dict`` consolidates.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.state import PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from harness.errors import LaunchError


def fsdp_requested() -> bool:
    """The launch config asks for FSDP (accelerate launch passes it on as ACCELERATE_USE_FSDP)."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"


def fsdp_plugin(accelerator: Accelerator) -> FullyShardedDataParallelPlugin | None:
    """The run's FSDP plugin; None without FSDP."""
    return accelerator.state.fsdp_plugin if accelerator.distributed_type == DistributedType.FSDP else None


def select_fsdp(accelerator: Accelerator, plugin: FullyShardedDataParallelPlugin) -> None:
    """Make FSDP the distributed type of processes that met over gloo (MULTI_CPU), as accelerate's
    ``AcceleratorState`` does for processes on accelerators: the plugin (built, as accelerate builds it, from the
    launch config), with the run's mixed precision."""
    state = accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU:
        return
    if state.mixed_precision != "no":
        plugin.set_mixed_precision(state.mixed_precision)
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def check_fsdp(accelerator: Accelerator) -> None:
    """What the harness refuses of an FSDP launch config: FSDP1, and accelerate's own activation checkpointing,
    which would wrap the blocks a second time (the run config's ``model.activation_checkpointing`` says it, for
    every launch)."""
    plugin = fsdp_plugin(accelerator)
    if plugin is None:
        return
    if plugin.fsdp_version != 2:
        raise LaunchError(f"the launch config asks for FSDP version {plugin.fsdp_version}: the harness runs FSDP2; "
                          "set fsdp_version: 2 under fsdp_config (launch_configs/fsdp.yaml)")
    if plugin.activation_checkpointing:
        raise LaunchError("the launch config sets fsdp_activation_checkpointing: true; set it to false and "
                          "model.activation_checkpointing: true in the run config instead (the same for every launch)")


def shard_blocks(accelerator: Accelerator, classes: list[str]) -> None:
    """Before the model is prepared: under FSDP with its transformer-based auto-wrap, every module of these
    classes (the model's blocks) becomes its own FSDP unit, gathered only while it computes; classes the launch
    config names (fsdp_transformer_layer_cls_to_wrap) are kept. Nothing otherwise."""
    from torch.distributed.fsdp.wrap import transformer_auto_wrap_policy

    plugin = fsdp_plugin(accelerator)
    if plugin is None:
        return
    if plugin.auto_wrap_policy is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap is None:
        plugin.transformer_cls_names_to_wrap = classes


def fsdp_compute_dtype(accelerator: Accelerator) -> torch.dtype | None:
    """The dtype FSDP's mixed precision gathers the parameters in to compute (None without it)."""
    plugin = fsdp_plugin(accelerator)
    if plugin is None or plugin.mixed_precision_policy is None:
        return None
    return plugin.mixed_precision_policy.param_dtype


def local_shard(tensor: torch.Tensor) -> torch.Tensor:
    """This process's part of a tensor FSDP shards (a DTensor), the storage itself; any other tensor whole."""
    from torch.distributed.tensor import DTensor

    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def gathered(shard: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """The whole tensor of which ``shard`` is this process's part, laid out as ``like`` (a DTensor FSDP shards);
    ``shard`` itself when ``like`` is whole. Every process must call it for a DTensor (it gathers)."""
    from torch.distributed.tensor import DTensor

    if not isinstance(like, DTensor):
        return shard
    return DTensor.from_local(shard, like.device_mesh, like.placements, shape=like.shape,
                              stride=like.stride()).full_tensor()


def shard_of(whole: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """This process's part of ``whole``, as ``like`` (a DTensor FSDP shards) lays it out; ``whole`` itself when
    ``like`` is whole. No communication: every process holds ``whole``."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if not isinstance(like, DTensor):
        return whole
    return distribute_tensor(whole.to(like.device), like.device_mesh, like.placements, src_data_rank=None).to_local()


def fsdp_units(accelerator: Accelerator) -> str | None:
    """What FSDP shards on its own, for the log and the summary (once the model is prepared); None without FSDP."""
    from torch.distributed.fsdp.wrap import size_based_auto_wrap_policy, transformer_auto_wrap_policy

    plugin = fsdp_plugin(accelerator)
    if plugin is None:
        return None
    policy = getattr(plugin.auto_wrap_policy, "func", plugin.auto_wrap_policy)
    if policy is transformer_auto_wrap_policy and plugin.transformer_cls_names_to_wrap:
        return "each " + ", each ".join(plugin.transformer_cls_names_to_wrap) + ", then the rest"
    if policy is size_based_auto_wrap_policy:
        return f"each module of over {plugin.min_num_params} parameters, then the rest"
    return "the whole model as one"
