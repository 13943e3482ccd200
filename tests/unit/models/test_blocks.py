"""A model's blocks, as FSDP shards them and activation checkpointing recomputes them; checkpointed blocks give the
model's own gradients and statistics, bit for bit."""

import pytest
import torch
import torchvision
from torch import nn

from harness.errors import ConfigError
from harness.models.blocks import block_classes, blocks, checkpoint_activations
from harness.models.custom import compact_cnn


def small_vit(dropout: float = 0.0) -> nn.Module:
    model = torchvision.models.VisionTransformer(image_size=16, patch_size=8, num_layers=3, num_heads=2, hidden_dim=16,
                                                 mlp_dim=32, num_classes=4, dropout=dropout, attention_dropout=dropout)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts it at zero: no gradient would reach the blocks
    return model


@pytest.mark.parametrize("model, kind, count", [
    (lambda: torchvision.models.resnet18(), "BasicBlock", 8),  # inside the stages' Sequentials
    (small_vit, "EncoderBlock", 3),  # encoder.layers
    (lambda: torchvision.models.regnet_y_400mf(), "ResBottleneckBlock", 16),  # inside Sequential subclasses
])
def test_the_blocks_are_the_outermost_repeated_layers(model, kind, count):
    found = blocks(model())
    assert [type(block).__name__ for block in found] == [kind] * count
    assert block_classes(model()) == [kind]


def test_plain_sequential_blocks_are_found_but_not_named_for_sharding():
    model = compact_cnn(num_classes=4, width=4)
    assert len(blocks(model)) == 5 and all(type(block) is nn.Sequential for block in blocks(model))
    assert block_classes(model) == []  # "Sequential" would make every container, the model too, a unit


def trained_step(model: nn.Module, seed: int = 0) -> tuple[torch.Tensor, dict, dict]:
    """The loss, gradients and buffers after one training forward and backward."""
    torch.manual_seed(seed)
    model.train()
    loss = nn.functional.cross_entropy(model(torch.randn(6, 3, 16, 16)), torch.tensor([0, 1, 2, 3, 0, 1]))
    loss.backward()
    return (loss.detach(), {name: p.grad.clone() for name, p in model.named_parameters()},
            {name: b.clone() for name, b in model.named_buffers()})


@pytest.mark.parametrize("build", [
    lambda: compact_cnn(num_classes=4, width=4, dropout=0.5),  # BatchNorm statistics and dropout
    lambda: small_vit(dropout=0.3),
])
def test_checkpointed_blocks_give_the_same_gradients_and_statistics(build):
    torch.manual_seed(1)
    plain = build()
    checkpointed = build()
    checkpointed.load_state_dict(plain.state_dict())
    checkpoint_activations(checkpointed, "test")
    (loss, grads, buffers), (loss_c, grads_c, buffers_c) = trained_step(plain), trained_step(checkpointed)
    assert torch.equal(loss, loss_c)
    assert grads.keys() == grads_c.keys() and all(torch.equal(grads[k], grads_c[k]) for k in grads)
    assert buffers.keys() == buffers_c.keys() and all(torch.equal(buffers[k], buffers_c[k]) for k in buffers)
    assert checkpointed.state_dict().keys() == plain.state_dict().keys()  # checkpoints and weights files unchanged


def test_checkpointing_a_model_without_blocks_is_a_config_error():
    with pytest.raises(ConfigError, match="model.activation_checkpointing: head has no blocks"):
        checkpoint_activations(nn.Linear(3, 4), "head")
