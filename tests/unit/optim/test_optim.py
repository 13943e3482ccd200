"""The optimizer, the schedule in optimizer updates (warmup, cosine, step, onecycle, a frozen backbone) and the loss."""

import math

import pytest
import torch

from harness.config.schema import LossConfig, ModelConfig, OptimConfig, SchedulerConfig
from harness.errors import ConfigError
from harness.models.registry import build_model
from harness.optim.losses import build_criterion
from harness.optim.optimizers import build_optimizer
from harness.optim.schedules import build_scheduler


def lrs(cfg: SchedulerConfig, epochs=4, updates=10, lr=0.1):
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = build_scheduler(cfg, optimizer, epochs, updates)
    out = []
    for _ in range(epochs * updates):
        out.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return out


def test_cosine_with_warmup_is_defined_in_updates():
    seq = lrs(SchedulerConfig(name="cosine", warmup_epochs=1, warmup_start_factor=0.1, min_lr=0.001))
    assert seq[0] == pytest.approx(0.01)
    assert seq[5] == pytest.approx(0.01 + 0.09 * 0.5)
    assert seq[10] == pytest.approx(0.1)  # warmup ends after one epoch of updates
    assert seq[10 + 15] == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(seq[10:], seq[11:]))
    assert seq[-1] == pytest.approx(0.001 + 0.099 * 0.5 * (1 + math.cos(math.pi * 29 / 30)))


def test_step_none_and_onecycle():
    step = lrs(SchedulerConfig(name="step", step_size=1, gamma=0.5))
    assert step[9] == pytest.approx(0.1) and step[10] == pytest.approx(0.05) and step[39] == pytest.approx(0.0125)
    assert set(lrs(SchedulerConfig(name="none"))) == {0.1}
    one = lrs(SchedulerConfig(name="onecycle", pct_start=0.25))
    assert max(one) == pytest.approx(0.1) and one.index(max(one)) in (9, 10) and one[-1] < 0.001


def test_optimizers():
    sgd = build_optimizer(OptimConfig(name="sgd", lr=0.1, momentum=0.8, nesterov=True, weight_decay=1e-4),
                          torch.nn.Linear(2, 2))
    assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["nesterov"] and sgd.defaults["momentum"] == 0.8
    adamw = build_optimizer(OptimConfig(name="adamw", weight_decay=0.05), torch.nn.Linear(2, 2))
    assert isinstance(adamw, torch.optim.AdamW) and adamw.defaults["weight_decay"] == 0.05
    with pytest.raises(ConfigError, match="optim.nesterov: only applies to sgd"):
        build_optimizer(OptimConfig(name="adam", nesterov=True), torch.nn.Linear(2, 2))


def groups(optimizer) -> list[tuple]:
    return [(g["role"], len(g["params"]), g["lr"], g["weight_decay"]) for g in optimizer.param_groups]


def test_no_weight_decay_on_biases_and_norms_and_the_head_learns_at_its_own_rate():
    model = build_model(ModelConfig(name="compact_cnn", kwargs={"width": 4}), 3)  # 5 convs + BN, one Linear
    cfg = OptimConfig(name="adamw", lr=0.1, weight_decay=0.05, head_lr_multiplier=10.0)
    assert groups(build_optimizer(cfg, model)) == [
        ("backbone", 5, 0.1, 0.05),  # conv weights
        ("backbone", 10, 0.1, 0.0),  # BatchNorm weights and biases
        ("head", 1, 1.0, 0.05),  # the Linear's weight
        ("head", 1, 1.0, 0.0),  # its bias
    ]
    everything = OptimConfig(name="sgd", lr=0.1, weight_decay=0.05, decay_norm_and_bias=True)
    assert groups(build_optimizer(everything, model)) == [("backbone", 15, 0.1, 0.05), ("head", 2, 0.1, 0.05)]
    frozen = torch.nn.Linear(2, 2)
    frozen.bias.requires_grad_(False)
    assert groups(build_optimizer(cfg, frozen)) == [("head", 1, 1.0, 0.05)]  # only what trains


def test_a_frozen_backbone_has_no_learning_rate_for_its_epochs_then_the_schedule():
    optimizer = build_optimizer(OptimConfig(lr=0.1, head_lr_multiplier=2.0), build_model(
        ModelConfig(name="compact_cnn", kwargs={"width": 4}), 3))
    scheduler = build_scheduler(SchedulerConfig(name="step", step_size=2, gamma=0.5), optimizer, 4, 3, freeze_epochs=1)
    rates = []
    for _ in range(12):
        rates.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    assert [r[0] for r in rates] == [0.0] * 3 + [0.1] * 3 + [0.05] * 6  # the backbone, frozen for 1 epoch of 3
    assert [r[-1] for r in rates] == [0.2] * 6 + [0.1] * 6  # the head: the schedule throughout
    with pytest.raises(ConfigError, match="model.freeze_backbone_epochs: not with scheduler.name: onecycle"):
        build_scheduler(SchedulerConfig(name="onecycle"), optimizer, 4, 3, freeze_epochs=1)


def test_loss_label_smoothing_and_class_weights():
    balanced = build_criterion(LossConfig(class_weights="balanced", label_smoothing=0.1), [30, 10])
    assert balanced.weight.tolist() == pytest.approx([40 / 60, 40 / 20])
    assert balanced.label_smoothing == 0.1
    explicit = build_criterion(LossConfig(class_weights=[1, 3]), [5, 5])
    assert explicit.weight.tolist() == [1.0, 3.0]
    with pytest.raises(ConfigError, match="has 3 values but the data has 2 classes"):
        build_criterion(LossConfig(class_weights=[1, 2, 3]), [5, 5])
