"""Features around the loop, each on its own: the weight average's formula and swap, mixup's seeding, early
stopping's rule."""

import torch

from harness.config.schema import EarlyStoppingConfig, EmaConfig, MixupConfig
from harness.evaluation.selection import stopped_early_at
from harness.training.features.ema import WeightAverage
from harness.training.features.mixup import Mixup


def test_early_stopping_counts_epochs_without_an_improvement_beyond_min_delta():
    def history(values, key="val_acc", other=0.0):
        return [{"epoch": i + 1, key: v, ("val_loss" if key == "val_acc" else "val_acc"): other}
                for i, v in enumerate(values)]

    patient = EarlyStoppingConfig(patience=2, min_delta=0.0)
    assert stopped_early_at(history([0.5, 0.6, 0.6, 0.55, 0.7]), "val_acc", patient) == 4
    assert stopped_early_at(history([0.5, 0.6, 0.6, 0.7, 0.7]), "val_acc", patient) is None  # reset by 0.7
    assert stopped_early_at(history([0.5, 0.6, 0.6, 0.7, 0.7]), "val_acc", None) is None  # off
    # improvements of at most min_delta do not count, measured from the last that did
    strict = EarlyStoppingConfig(patience=2, min_delta=0.05)
    assert stopped_early_at(history([0.5, 0.54, 0.53, 0.7]), "val_acc", strict) == 3
    assert stopped_early_at(history([0.5, 0.54, 0.58, 0.6]), "val_acc", strict) is None  # 0.58: +0.08 on 0.5
    # val_loss improves downwards
    assert stopped_early_at(history([1.0, 0.8, 0.9, 0.85], "val_loss"), "val_loss", patient) == 4
    assert stopped_early_at(history([1.0, 0.8, 0.9, 0.7], "val_loss"), "val_loss", patient) is None


def test_the_average_follows_its_formula_and_swaps_in_and_out_exactly():
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    ema = WeightAverage(EmaConfig(decay=0.5, warmup_steps=2), model)
    start = model[0].weight.detach().clone()
    assert ema.decay_now() == 0.0  # the warmup: the first update copies the weights
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.after_update(model)
    assert torch.equal(ema.averages[0], start + 1.0) and ema.decay_now() == 0.25
    with torch.no_grad():
        model[0].weight.add_(1.0)
    ema.after_update(model)
    assert torch.allclose(ema.averages[0], start + 1.0 + 0.75)  # decay 0.25: 3/4 of the way to the weights
    assert ema.decay_now() == 0.5  # the warmup is over
    own = model[0].weight.detach().clone()
    with ema.swapped_in(model):
        assert torch.equal(model[0].weight, ema.averages[0])
    assert torch.equal(model[0].weight, own)
    assert "1.running_mean" in ema.names and "1.num_batches_tracked" not in ema.names  # floats only
    copy = WeightAverage(EmaConfig(decay=0.5), model)
    copy.load_state_dict(ema.state_dict())
    assert copy.updates == 2 and all(torch.equal(a, b) for a, b in zip(copy.averages, ema.averages))


def test_a_batch_is_mixed_by_its_own_seed_into_soft_targets():
    images, labels = torch.randn(6, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 2])
    mixup = Mixup(MixupConfig(alpha=0.4, cutmix_alpha=0.0), 3, seed=1, process=0)
    torch.manual_seed(5)
    before = torch.get_rng_state()
    mixed, targets = mixup.mix(images, labels, epoch=2, batch=7)
    assert torch.equal(torch.get_rng_state(), before)  # seeded apart: the training RNG is left alone
    again = mixup.mix(images, labels, epoch=2, batch=7)
    assert torch.equal(again[0], mixed) and torch.equal(again[1], targets)  # the same batch: the same mix
    lam = targets[0, 0].item()  # sample 0 (class 0) is blended with the last one (class 2), rolled in
    assert 0 < lam < 1 and torch.allclose(targets.sum(1), torch.ones(6))
    assert torch.allclose(mixed, lam * images + (1 - lam) * images.roll(1, 0), atol=1e-6)
    assert not torch.equal(mixup.mix(images, labels, epoch=2, batch=8)[1], targets)  # another batch: another mix
    assert not torch.equal(mixup.mix(images, labels, epoch=3, batch=7)[1], targets)  # the same batch next epoch too
    assert not torch.equal(Mixup(MixupConfig(alpha=0.4, cutmix_alpha=0.0), 3, seed=1, process=1).mix(
        images, labels, epoch=2, batch=7)[1], targets)  # another process's batch too
    # CutMix: every pixel is the image's own or its neighbour's, the targets weighted by the areas
    cut, cut_targets = Mixup(MixupConfig(alpha=0.0, cutmix_alpha=1.0), 3, 1, 0).mix(images, labels, 0, 0)
    own = (cut == images).all(1)  # samples x height x width: where the image kept its own pixels
    assert ((cut == images) | (cut == images.roll(1, 0))).all()
    assert torch.allclose(cut_targets[0, 0], own[0].float().mean())
    # prob 0: nothing is mixed, the targets are the labels
    plain, one_hot = Mixup(MixupConfig(prob=0.0), 3, 1, 0).mix(images, labels, 0, 0)
    assert plain is images and torch.equal(one_hot.argmax(1), labels) and torch.equal(one_hot.sum(1), torch.ones(6))
