"""What the harness adds to accelerate's FSDP2: the block classes named to its auto-wrap (a launch config's own
names kept), what it refuses of a launch config, and what the log says is sharded."""

from types import SimpleNamespace

import pytest
import torch
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

from harness.errors import LaunchError
from harness.runtime.fsdp import check_fsdp, fsdp_units, gathered, local_shard, shard_blocks, shard_of


def under_fsdp(**plugin) -> SimpleNamespace:
    return SimpleNamespace(distributed_type=DistributedType.FSDP,
                           state=SimpleNamespace(fsdp_plugin=FullyShardedDataParallelPlugin(fsdp_version=2, **plugin)))


def test_the_blocks_are_named_to_the_transformer_based_auto_wrap_unless_the_launch_config_names_some():
    accelerator = under_fsdp(auto_wrap_policy="transformer_based_wrap")
    assert fsdp_units(accelerator) == "the whole model as one"
    shard_blocks(accelerator, ["EncoderBlock"])
    assert accelerator.state.fsdp_plugin.transformer_cls_names_to_wrap == ["EncoderBlock"]
    assert fsdp_units(accelerator) == "each EncoderBlock, then the rest"
    named = under_fsdp(auto_wrap_policy="transformer_based_wrap", transformer_cls_names_to_wrap=["Block"])
    shard_blocks(named, ["EncoderBlock"])
    assert named.state.fsdp_plugin.transformer_cls_names_to_wrap == ["Block"]
    unwrapped = under_fsdp(auto_wrap_policy="no_wrap")
    shard_blocks(unwrapped, ["EncoderBlock"])
    assert unwrapped.state.fsdp_plugin.transformer_cls_names_to_wrap is None
    assert fsdp_units(under_fsdp(auto_wrap_policy="size_based_wrap", min_num_params=1000)) == \
        "each module of over 1000 parameters, then the rest"


@pytest.mark.parametrize("plugin, message", [
    (dict(fsdp_version=1), "the launch config asks for FSDP version 1: the harness runs FSDP2"),
    (dict(activation_checkpointing=True), "the launch config sets fsdp_activation_checkpointing: true; set it to "
                                          "false and model.activation_checkpointing: true in the run config instead"),
])
def test_fsdp1_and_accelerates_own_activation_checkpointing_are_refused(plugin, message):
    accelerator = SimpleNamespace(distributed_type=DistributedType.FSDP, state=SimpleNamespace(
        fsdp_plugin=FullyShardedDataParallelPlugin(**{"fsdp_version": 2, **plugin})))
    with pytest.raises(LaunchError, match=message):
        check_fsdp(accelerator)
    check_fsdp(under_fsdp())  # the shipped launch config's settings


def test_a_whole_tensor_is_its_own_shard():
    tensor = torch.arange(6.0)
    assert local_shard(tensor) is tensor and gathered(tensor, tensor) is tensor and shard_of(tensor, tensor) is tensor
