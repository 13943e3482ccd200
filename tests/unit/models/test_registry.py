"""Models by name: torchvision's and the custom ones, their heads and keyword arguments, pretrained weights from
the local cache only."""

import os

import pytest
import torch
import torchvision

from harness.config.schema import ModelConfig
from harness.errors import ConfigError
from harness.models.registry import CUSTOM_MODELS, build_model, register_model


@pytest.mark.parametrize("name", ["compact_cnn", "resnet18", "mobilenet_v3_small", "efficientnet_b0"])
def test_models_by_name_have_the_right_head(name):
    model = build_model(ModelConfig(name=name), num_classes=7).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_model_kwargs_reach_the_constructor():
    vit = build_model(ModelConfig(name="vit_b_16", kwargs={"image_size": 32, "dropout": 0.1}), num_classes=4)
    assert vit(torch.randn(1, 3, 32, 32)).shape == (1, 4)
    with pytest.raises(ConfigError, match="model.kwargs: compact_cnn cannot be built"):
        build_model(ModelConfig(name="compact_cnn", kwargs={"depth": 3}), num_classes=2)


def test_adding_a_model_is_one_function():
    @register_model("tiny_linear_test")
    def tiny(num_classes: int) -> torch.nn.Module:
        return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(num_classes))

    try:
        assert build_model(ModelConfig(name="tiny_linear_test"), 3)(torch.randn(2, 3, 4, 4)).shape == (2, 3)
    finally:
        CUSTOM_MODELS.pop("tiny_linear_test")


def test_unknown_model_suggests():
    with pytest.raises(ConfigError, match=r"unknown model 'resnet19' \(did you mean 'resnet18'\?\)"):
        build_model(ModelConfig(name="resnet19"), 2)


def test_pretrained_uses_only_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(ConfigError, match="not in the local torch cache .*set model.pretrained: false"):
        build_model(ModelConfig(name="resnet18", pretrained=True), 5)
    # A weights file in the cache is used: backbone as saved, head resized.
    reference = torchvision.models.resnet18()
    url = torchvision.models.ResNet18_Weights.DEFAULT.url
    (tmp_path / "checkpoints").mkdir()
    torch.save(reference.state_dict(), tmp_path / "checkpoints" / os.path.basename(url))
    model = build_model(ModelConfig(name="resnet18", pretrained=True), 5)
    assert model.fc.out_features == 5
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    with pytest.raises(ConfigError, match="compact_cnn has no pretrained weights"):
        build_model(ModelConfig(name="compact_cnn", pretrained=True), 5)
