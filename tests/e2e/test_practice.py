"""What practitioners expect of a trainer, through the entry points: the weight average (``train.ema``), mixup,
early stopping, a frozen backbone, timm models, the model list and the LR finder."""

import json
import re
import subprocess

import numpy as np
import pytest
import torch
import yaml
from accelerate.utils import set_seed
from safetensors import safe_open
from safetensors.torch import save_file

from harness.checkpointing.loading import weights_only
from harness.config.loading import load_config
from harness.models.registry import build_model, classifier
from harness.tuning.lr_finder import suggestion
from tests.helpers import (DDP, DIGITS, FAST, PYTHON, REPO, assert_same_weights, history_metrics, launch,
                           make_image_folder, pointer, rows, run_train, summary, weights)

# The weight average with batches mixed (mixup or CutMix, half each) and RandAugment: every source of
# randomness the recipes add. After one epoch the average (of about the last ten updates) validates with a
# lower loss than the weights.
EMA = [*FAST, "train.epochs=3", "train.ema.decay=0.9", "train.ema.warmup_steps=5", "checkpoint.monitor=val_loss",
       "data.mixup.alpha=0.2", "data.augmentations=[{name: random_crop, padding: 2}, rand_augment]"]


def average(checkpoint) -> dict[str, torch.Tensor]:
    """The weight average a checkpoint holds (save_state's custom object), loaded as resuming loads it."""
    with weights_only():
        return torch.load(checkpoint / "custom_checkpoint_0.pkl")


def weights_kind(path) -> str:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["harness"])["weights"]


@pytest.mark.slow
def test_the_average_mixup_and_randaugment_resume_bit_for_bit_and_the_average_is_evaluated(env, tmp_path):
    straight = tmp_path / "straight"
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "straight", *EMA], env)
    first = run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "split", "--stop-after-epochs", "1",
                       *EMA], env)
    assert "stopped after 1 epoch(s)" in first.stdout
    split = tmp_path / "split"
    assert_exports_the_chosen_weights(split, epoch=1)
    assert summary(split)["best_weights"] == "ema"
    run_train(["--resume", split], env)

    final = average(pointer(straight))
    assert final["updates"] == summary(straight)["global_step"]
    resumed = average(pointer(split))
    assert final["updates"] == resumed["updates"]
    assert all(torch.equal(final["averages"][k], resumed["averages"][k]) for k in final["averages"])
    for name in ("last", "best"):
        assert_same_weights(straight / "weights" / f"{name}.safetensors", split / "weights" / f"{name}.safetensors")
    history = rows(straight / "history.csv")
    assert [(r["ema_val_loss"], r["ema_val_acc"]) for r in history] == [
        (r["ema_val_loss"], r["ema_val_acc"]) for r in rows(split / "history.csv")]
    assert history_metrics(straight) == history_metrics(split)
    assert all(r["ema_val_loss"] != r["val_loss"] for r in history)  # the average is not the weights
    assert_exports_the_chosen_weights(straight, epoch=3)


def assert_exports_the_chosen_weights(run, epoch: int) -> None:
    """weights/last is the chosen weights of ``epoch`` (the run's last): the average's when it validated
    with the lower loss, and "best" is chosen by the same figures."""
    record = rows(run / "history.csv")[epoch - 1]
    kind = "ema" if float(record["ema_val_loss"]) < float(record["val_loss"]) else "raw"
    assert weights_kind(run / "weights" / "last.safetensors") == kind
    exported, checkpoint = weights(run / "weights" / "last.safetensors"), pointer(run)
    source = average(checkpoint)["averages"] if kind == "ema" else weights(checkpoint / "model.safetensors")
    assert all(torch.equal(exported[k], source[k].float()) for k in source)
    s = summary(run)
    best = rows(run / "history.csv")[s["best_epoch"] - 1]
    assert s["best_val_loss"] == min(float(best["val_loss"]), float(best["ema_val_loss"]))


@pytest.mark.slow
def test_an_average_of_decay_0_is_the_weights_themselves_under_ddp(env, tmp_path):
    """Two processes: the average, swapped in for validation on both, gives exactly the weights' figures."""
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "ddp", *FAST, "train.epochs=2",
               "train.ema.decay=0"], env, launcher=DDP)
    history = rows(tmp_path / "ddp" / "history.csv")
    assert [(r["val_loss"], r["val_acc"]) for r in history] == [(r["ema_val_loss"], r["ema_val_acc"]) for r in history]
    assert summary(tmp_path / "ddp")["best_weights"] == "raw"  # a tie keeps the weights themselves


@pytest.mark.slow
def test_early_stopping_ends_the_run_and_a_resume_does_not_train_on(env, tmp_path):
    # No improvement can exceed min_delta 1.0 (accuracy): the first epoch sets the mark, the next is the patience.
    stop = [*FAST, "train.epochs=6", "train.early_stopping.patience=1", "train.early_stopping.min_delta=1.0"]
    args = ["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "stops", *stop]
    result = run_train(args, env)
    run = tmp_path / "stops"
    assert "early stopping after epoch 2 of 6: val_acc has not improved by more than 1 in the last 1 epoch(s)" in result.stdout
    s = summary(run)
    assert (s["status"], s["stopped_early_at"], s["epoch"], len(rows(run / "history.csv"))) == ("completed", 2, 2, 2)
    assert (run / "reports" / "classification_report_test.txt").is_file()  # the final evaluation ran
    before = (run / "weights" / "best.safetensors").stat().st_mtime_ns

    again = run_train(args, env)
    assert "already stopped early after epoch 2 (train.early_stopping): nothing to do" in again.stdout
    assert (run / "weights" / "best.safetensors").stat().st_mtime_ns == before

    longer = run_train(["--resume", run, "train.early_stopping.patience=3"], env)  # more patience trains on
    assert "early stopping after epoch 4 of 6" in longer.stdout
    s = summary(run)
    assert (s["stopped_early_at"], s["epoch"], len(rows(run / "history.csv"))) == (4, 4, 4)


@pytest.mark.slow
def test_a_frozen_backbone_keeps_its_first_weights_while_the_head_learns(env, tmp_path):
    """One epoch of two frozen: the convolutions are the initial ones, bit for bit; the classifier learned at
    its own rate; biases and BatchNorm weights are not decayed (the optimizer's groups, as checkpointed)."""
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "frozen", *FAST, "train.epochs=2",
               "--stop-after-epochs", "1", "model.freeze_backbone_epochs=1", "optim.head_lr_multiplier=3"], env)
    cfg = load_config(DIGITS, FAST)
    set_seed(cfg.train.seed)  # as the run did before building its model
    initial = build_model(cfg.model, 10).state_dict()
    trained = weights(tmp_path / "frozen" / "weights" / "last.safetensors")
    convolutions = [k for k in initial if initial[k].ndim == 4]
    assert convolutions and all(torch.equal(trained[k], initial[k]) for k in convolutions)
    head = [k for k in initial if k.startswith(classifier(build_model(cfg.model, 10))[0] + ".")]
    assert head and not any(torch.equal(trained[k], initial[k]) for k in head)
    with weights_only():
        groups = torch.load(pointer(tmp_path / "frozen") / "optimizer.bin")["param_groups"]
    assert [(g["role"], len(g["params"]), g["weight_decay"]) for g in groups] == [
        ("backbone", 5, 0.01), ("backbone", 10, 0.0), ("head", 1, 0.01), ("head", 1, 0.0)]
    # saved for the second epoch: the backbone thaws, the head keeps 3 times its learning rate
    assert groups[0]["lr"] > 0 and groups[2]["initial_lr"] == 3 * groups[0]["initial_lr"]
    assert groups[2]["lr"] == pytest.approx(3 * groups[0]["lr"])


@pytest.mark.slow
def test_a_timm_model_fine_tunes_from_weights_in_the_local_cache_only(env, tmp_path):
    """timm/test_convnext, its "pretrained" weights planted in a Hugging Face cache of this test's own (nothing
    can be downloaded): the frozen epoch keeps them, bit for bit, and only the new classifier learns."""
    import timm
    from timm.models import get_pretrained_cfg

    hub = get_pretrained_cfg("test_convnext").hf_hub_id
    snapshot = tmp_path / "hf" / f"models--{hub.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    torch.manual_seed(3)
    planted = {k: v.contiguous() for k, v in timm.create_model("test_convnext").state_dict().items()}
    save_file(planted, str(snapshot / "model.safetensors"))
    settings = ["--config", DIGITS, "--output-dir", tmp_path, "model.name=timm/test_convnext", "model.kwargs={}",
                "model.pretrained=true", "model.freeze_backbone_epochs=1", "train.epochs=1", "train.deterministic=true"]
    run_train([*settings, "--run-name", "timm"], {**env, "HF_HUB_CACHE": str(tmp_path / "hf")})
    assert summary(tmp_path / "timm")["status"] == "completed"
    trained = weights(tmp_path / "timm" / "weights" / "last.safetensors")
    head = classifier(timm.create_model("test_convnext", num_classes=10))[0]
    frozen = [k for k in trained if not k.startswith(head + ".") and "running_" not in k and "num_batches" not in k]
    assert frozen and all(torch.equal(trained[k], planted[k]) for k in frozen)
    assert trained[f"{head}.weight"].shape == (10, planted[f"{head}.weight"].shape[1])  # a new head, for 10 classes
    # without the planted cache, one line says where the weights must be
    refused = run_train([*settings, "--run-name", "none"], {**env, "HF_HUB_CACHE": str(tmp_path / "empty")}, check=False)
    assert refused.returncode != 0 and "model.pretrained: weights for timm/test_convnext are not in the local " \
        "Hugging Face cache (timm/test_convnext.r160_in1k)" in refused.stderr


def test_list_models_names_torchvision_custom_and_timm_models():
    listed = subprocess.run([*PYTHON, "harness/train.py", "--list-models", "*conv*t_n*"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout.split()
    assert listed == ["timm/convnext_nano", "timm/convnext_nano_ols"]
    everything = subprocess.run([*PYTHON, "harness/train.py", "--list-models"], cwd=REPO, capture_output=True,
                                text=True, check=True).stdout.split()
    assert {"compact_cnn", "resnet18", "timm/test_convnext"} <= set(everything)


@pytest.mark.slow
def test_the_lr_finder_suggests_the_same_rate_with_one_or_two_processes_and_touches_no_run(env, tmp_path):
    """The same global batch (1 process of 32, 2 of 16) sweeps the same data: the same losses (up to float
    rounding, which a sweep into unstable rates amplifies into other curves) and the same suggestion. GroupNorm,
    whose statistics are per sample, keeps the two forward passes the same. Images whose class a model learns in
    a few dozen updates, so that the loss falls clearly: on a curve that stays flat (the digits in 150 updates)
    the steepest fall is float noise, and one thread or two moved it from 0.018 to 0.070."""
    config = tmp_path / "colours.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(make_image_folder(tmp_path / "images", classes=4, per_class=40, size=16)),
                 "image_size": 16, "num_workers": 0},
        "model": {"name": "compact_cnn", "kwargs": {"width": 8, "norm": "group"}},
        "train": {"deterministic": True}}))
    common = ["--config", config, "--steps", "100", "--start-lr", "1e-4", "--end-lr", "3"]
    out = tmp_path / "out"
    one = launch("lr_find.py", [*common, "train.batch_size=32", "--out", out / "one"], env)
    two = launch("lr_find.py", [*common, "train.batch_size=16", "--out", out / "two"], env, launcher=DDP)
    first, second = rows(out / "one" / "lr_find.csv"), rows(out / "two" / "lr_find.csv")
    assert len(first) == len(second) >= 10 and [r["lr"] for r in first] == [r["lr"] for r in second]
    said = [float(re.search(r"suggested optim.lr (\S+) ", result.stdout).group(1)) for result in (one, two)]
    rates = np.array([float(r["lr"]) for r in first])
    smoothed = np.array([float(r["smoothed_loss"]) for r in first])
    assert said[0] == said[1] == pytest.approx(suggestion(rates, smoothed), rel=1e-3) and 1e-3 < said[0] < 3
    assert smoothed[np.searchsorted(rates, said[0])] < smoothed[0] - 0.1  # on a real fall of the loss
    # the same losses, up to the order of float sums (which training amplifies step by step)
    upto = int(np.searchsorted(rates, said[0])) + 1
    assert np.allclose([float(r["loss"]) for r in first[:upto]], [float(r["loss"]) for r in second[:upto]], rtol=1e-2)
    # nothing but its own two files: no run directory, no checkpoint
    assert sorted(p.name for p in out.rglob("*")) == ["lr_find.csv", "lr_find.csv", "lr_find.png", "lr_find.png",
                                                      "one", "two"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [f"class_{c}" for c in range(4)]
