"""One code path, proven with real processes on the CPU (DDP over gloo): 2 processes equal 1, accumulation
equals a bigger batch, the learning rate follows optimizer updates, evaluation counts every sample once,
only the main process writes, and checkpoints move between world sizes."""

import math
import subprocess
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from harness.data.loaders import EpochSampler
from tests.helpers import (ACCELERATE, CPU_LAUNCH, DDP, DIGITS, REPO, assert_same_weights, make_image_folder, marker,
                           pointer, predictions_close, rows, run_infer, run_train, summary, weights)

# DDP averages gradients across processes where one process averages over the batch, and accumulation sums
# micro-batch gradients: the same numbers, added in another order. Float32 rounding over 6 updates stays
# far below this; a wrong batch split, a double step or a missing one moves weights by 1e-2 or more.
TOLERANCE = dict(rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def setup(env, tmp_path_factory):
    """128 training images (2 global batches of 64), 28 val and 36 test images (not multiples of 2 x 32)."""
    root = tmp_path_factory.mktemp("images")
    make_image_folder(root / "train", classes=4, per_class=32, size=16)
    make_image_folder(root / "val", classes=4, per_class=7, size=16)
    make_image_folder(root / "test", classes=4, per_class=9, size=16)
    config = root / "equal.yaml"
    config.write_text(yaml.safe_dump({
        "data": {"root": str(root), "image_size": 16, "num_workers": 0,
                 "augmentations": ["hflip", {"name": "random_crop", "padding": 2}]},
        # GroupNorm normalises per sample, so splitting a batch cannot change the result (BatchNorm would).
        "model": {"name": "compact_cnn", "kwargs": {"width": 8, "norm": "group"}},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9},
        "scheduler": {"name": "cosine", "warmup_epochs": 1},
        "train": {"epochs": 3, "batch_size": 64, "deterministic": True},
        "log": {"every_n_steps": 1, "progress": False},
    }))
    out = tmp_path_factory.mktemp("runs")
    runs = {
        "one": run_train(["--config", config, "--output-dir", out, "--run-name", "one"], env),
        "two": run_train(["--config", config, "--output-dir", out, "--run-name", "two", "train.batch_size=32"], env,
                     launcher=DDP),
        "accum": run_train(["--config", config, "--output-dir", out, "--run-name", "accum", "train.batch_size=32",
                        "train.grad_accum_steps=2"], env),
    }
    return out, config, runs


def lr_sequence(run):
    (events,) = list((run / "tensorboard").glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(events), size_guidance={"scalars": 0})
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/lr")]


def assert_close_weights(a, b):
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for key in wa:
        assert torch.allclose(wa[key], wb[key], **TOLERANCE), (key, (wa[key] - wb[key]).abs().max())


@pytest.mark.slow
def test_two_processes_equal_one_with_the_global_batch(setup):
    out, _, _ = setup
    assert summary(out / "two")["num_processes"] == 2 and summary(out / "two")["distributed_type"] == "MULTI_CPU"
    assert summary(out / "one")["global_step"] == summary(out / "two")["global_step"] == 6
    assert_close_weights(out / "one" / "weights" / "last.safetensors", out / "two" / "weights" / "last.safetensors")


@pytest.mark.slow
def test_accumulating_two_micro_batches_equals_one_batch_of_both(setup):
    out, _, _ = setup
    assert summary(out / "accum")["global_step"] == 6
    assert_close_weights(out / "one" / "weights" / "last.safetensors", out / "accum" / "weights" / "last.safetensors")


@pytest.mark.slow
def test_learning_rate_follows_optimizer_updates_only(setup):
    out, _, _ = setup
    one = lr_sequence(out / "one")
    assert [step for step, _ in one] == list(range(1, 7))
    assert one == lr_sequence(out / "two") == lr_sequence(out / "accum")
    assert one[1][1] == pytest.approx(0.05) and one[-1][1] == pytest.approx(0.0, abs=1e-12)  # warmup, then cosine


@pytest.mark.slow
def test_distributed_evaluation_counts_every_sample_once(setup, env, tmp_path):
    out, _, _ = setup
    for split, count in (("val", 28), ("test", 36), ("train", 128)):
        predictions = rows(out / "two" / "predictions" / f"{split}.csv")
        assert len(predictions) == count and len({p["path"] for p in predictions}) == count
    # The same weights evaluated by 1 and by 2 processes: identical rows, accuracy and confusion matrix.
    run_infer(["--run", out / "one", "--out", tmp_path / "one"], env)
    result = run_infer(["--run", out / "one", "--out", tmp_path / "two", "--batch-size", "5"], env, launcher=DDP)
    assert rows(tmp_path / "one" / "predictions.csv") == rows(tmp_path / "two" / "predictions.csv")
    for name in ("classification_report.txt", "metrics.json"):
        one = (tmp_path / "one" / name).read_text().replace('"num_processes": 1', '"num_processes": 2')
        assert one == (tmp_path / "two" / name).read_text()
    assert result.stdout.count("test: accuracy") == 1
    assert rows(tmp_path / "one" / "predictions.csv") == rows(out / "one" / "predictions" / "test.csv")
    # An ensemble with test-time augmentation too: the same predictions from 1 and 2 processes, their calibrated
    # confidences to the CSV's last digit (a temperature below 1 magnifies the float noise of other batch sizes).
    both = ["--ensemble", out / "one", out / "two", "--tta", "five_crop"]
    run_infer([*both, "--out", tmp_path / "both1"], env)
    run_infer([*both, "--out", tmp_path / "both2", "--batch-size", "5"], env, launcher=DDP)
    assert predictions_close(rows(tmp_path / "both1" / "predictions.csv"), rows(tmp_path / "both2" / "predictions.csv"))


@pytest.mark.slow
def test_only_the_main_process_writes(setup):
    out, _, runs = setup
    two = out / "two"
    assert len(list((two / "tensorboard").iterdir())) == 1
    assert sorted(p.name for p in two.iterdir()) == sorted(p.name for p in (out / "one").iterdir())
    assert sorted(p.name for p in (two / "reports").iterdir()) == sorted(p.name for p in (out / "one" / "reports").iterdir())
    log = runs["two"].stdout
    assert log.count("epoch 1/3") == 1 and log.count("done:") == 1
    assert (two / "train.log").read_text().count("epoch 1/3") == 1


@pytest.mark.slow
@pytest.mark.parametrize("first, then", [("two", "one"), ("one", "two")])
def test_resume_across_world_sizes_keeps_model_optimizer_and_schedule(setup, env, tmp_path, first, then):
    """One epoch with one world size, two with the other, the global batch kept at 64 (the per-process batch
    may change at an epoch boundary): the weights are those of the run that never moved."""
    out, config, _ = setup
    how = {"one": (CPU_LAUNCH, "train.batch_size=64", 1), "two": (DDP, "train.batch_size=32", 2)}
    launcher, batch, _ = how[first]
    run_train(["--config", config, "--output-dir", tmp_path, "--run-name", "moved", batch, "--stop-after-epochs", "1"],
              env, launcher=launcher)
    launcher, batch, processes = how[then]
    result = run_train(["--resume", tmp_path / "moved", batch], env, launcher=launcher)
    assert (f"resuming a checkpoint of {how[first][2]} process(es) with {processes}: the epoch continues "
            "after 0 of its 0 trained batches") in result.stdout
    s = summary(tmp_path / "moved")
    assert s["status"] == "completed" and s["epoch"] == 3 and s["num_processes"] == processes
    assert s["global_step"] == summary(out / then)["global_step"] == 6
    assert_close_weights(out / then / "weights" / "last.safetensors", tmp_path / "moved" / "weights" / "last.safetensors")


@pytest.mark.slow
def test_a_mid_epoch_checkpoint_of_two_processes_continues_with_one_at_the_next_sample(setup, env, tmp_path):
    """Two processes stop after the first update of epoch 2 (a NaN at the second stops the run, the step
    checkpoint before it stays); one process continues: the epoch's 128 images are each trained once."""
    _, config, _ = setup
    command = ["--config", config, "--output-dir", tmp_path, "--run-name", "moved", "train.batch_size=32",
               "checkpoint.every_n_steps=1"]
    failed = run_train(command, {**env, "HARNESS_TRACE_BATCHES": str(tmp_path / "two"),
                             "HARNESS_FAULT_NAN_AT_STEP": "4"}, launcher=DDP, check=False)
    assert failed.returncode != 0 and summary(tmp_path / "moved")["status"] == "failed"
    saved = marker(pointer(tmp_path / "moved"))
    assert (saved["global_step"], saved["epoch"], saved["batch_in_epoch"], saved["num_processes"]) == (3, 1, 1, 2)
    result = run_train(command, {**env, "HARNESS_TRACE_BATCHES": str(tmp_path / "one")})
    before = [line for rank in (0, 1) for line in traced(tmp_path / f"two.rank{rank}") if line[:2] == ["1", "0"]]
    after = [line for line in traced(tmp_path / "one.rank0") if line[0] == "1"]
    trained = [index for line in before + after for index in line[2:]]
    assert sorted(map(int, trained)) == list(range(128))
    assert "the epoch continues after 2 of its 2 trained batches" in result.stdout
    # Counted from 1, as a person reads them: the checkpoint came after batch 1 of epoch 2 (per process of two).
    assert "(step 3): in epoch 2, after batch 1\n" in result.stdout
    assert "resuming epoch 2 at batch 3/4" in result.stdout


def traced(path):
    return [line.split() for line in open(path)]


@pytest.mark.slow
def test_bf16_on_cpu_trains_and_exports_fp32(env, tmp_path):
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "bf16", "train.epochs=1",
           "model.kwargs.width=8", "train.mixed_precision=bf16", "scheduler.warmup_epochs=0", "optim.lr=0.01"], env)
    s = summary(tmp_path / "bf16")
    assert s["mixed_precision"] == "bf16" and s["status"] == "completed"
    predictions = rows(tmp_path / "bf16" / "predictions" / "test.csv")
    correct = sum(p["label"] == p["prediction"] for p in predictions)
    assert len(predictions) == 269 and s["test_acc"] == correct / 269
    # It learned: the loss fell below a uniform guess's, ln(10), and the accuracy is above chance, 0.1.
    assert s["last"]["train_loss"] < math.log(10) - 0.1 and s["test_acc"] > 0.15
    tensors = weights(tmp_path / "bf16" / "weights" / "best.safetensors")
    assert {t.dtype for t in tensors.values()} == {torch.float32, torch.int64}
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())


@pytest.mark.slow
def test_two_ddp_jobs_at_once_on_one_machine_each_train_as_one(setup, env, tmp_path):
    """Two 2-process jobs started together (the README's command, its default port): each forms its own group
    and trains the model a lone 1-process run trains."""
    out, config, _ = setup
    jobs = [subprocess.Popen([*DDP, str(REPO / "harness" / "train.py"), "--config", str(config), "--output-dir",
                              str(tmp_path), "--run-name", name, "train.batch_size=32"], env=env, cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for name in ("a", "b")]
    for job in jobs:
        output = job.communicate(timeout=600)[0]
        assert job.returncode == 0, output[-3000:]
    for name in ("a", "b"):
        s = summary(tmp_path / name)
        assert (s["status"], s["distributed_type"], s["num_processes"], s["images"]["test"]) == ("completed", "MULTI_CPU", 2, 36)
        assert_close_weights(out / "one" / "weights" / "last.safetensors", tmp_path / name / "weights" / "last.safetensors")
        assert_same_weights(out / "two" / "weights" / "last.safetensors", tmp_path / name / "weights" / "last.safetensors")


@pytest.mark.slow
def test_the_multi_gpu_launch_config_on_a_machine_without_gpus_runs_ddp_on_the_cpu(setup, env, tmp_path):
    """As the README says: the same DDP over gloo, the same model as the CPU DDP config gives (bit for bit)."""
    out, config, _ = setup
    gpu_config = [*ACCELERATE, "--config_file", "launch_configs/multi_gpu.yaml", "--num_processes", "2"]
    run_train(["--config", config, "--output-dir", tmp_path, "--run-name", "gpu_yaml", "train.batch_size=32"], env,
              launcher=gpu_config)
    s = summary(tmp_path / "gpu_yaml")
    assert (s["distributed_type"], s["num_processes"], s["images"]["test"]) == ("MULTI_CPU", 2, 36)
    assert_same_weights(out / "two" / "weights" / "last.safetensors", tmp_path / "gpu_yaml" / "weights" / "last.safetensors")


def uneven_config(tmp_path, setup) -> Path:
    """The setup's config on 120 training images: 2 processes of 32 meet 8 copies in the last global batch."""
    _, config, _ = setup
    root = make_image_folder(tmp_path / "uneven" / "train", classes=4, per_class=30, size=16).parent
    make_image_folder(root / "val", classes=4, per_class=3, size=16)
    make_image_folder(root / "test", classes=4, per_class=3, size=16)
    uneven = yaml.safe_load(config.read_text())
    uneven["data"]["root"] = str(root)
    path = tmp_path / "uneven.yaml"
    path.write_text(yaml.safe_dump(uneven))
    return path


@pytest.mark.slow
def test_the_train_metrics_count_every_image_once_when_the_processes_batches_do_not_divide_it(setup, env, tmp_path):
    """With no learning (a learning rate of 1e-30), the training pass's loss and accuracy are those of the same
    images under any process count: the copies that complete the last global batch count nowhere."""
    config = uneven_config(tmp_path, setup)
    still = ["train.epochs=1", "optim.lr=1e-30", "--output-dir", tmp_path / "runs"]
    run_train(["--config", config, *still, "--run-name", "one"], env)
    run_train(["--config", config, *still, "--run-name", "two", "train.batch_size=32"], env, launcher=DDP)
    one, two = (rows(tmp_path / "runs" / name / "history.csv")[0] for name in ("one", "two"))
    assert float(two["train_acc"]) == float(one["train_acc"])
    assert math.isclose(float(two["train_loss"]), float(one["train_loss"]), rel_tol=1e-5)


@pytest.mark.slow
def test_an_error_one_process_meets_is_said_by_it_with_its_rank_and_the_others_end_too(setup, env, tmp_path):
    """A file that broke after the data was checked, read by process 1 only, in the middle of an epoch: it says so
    (with its rank), and process 0, waiting for it in a collective, ends at once instead of hanging, the run marked
    failed."""
    config = uneven_config(tmp_path, setup)
    command = ["--config", config, "train.epochs=2", "train.batch_size=16", "--output-dir", tmp_path / "runs",
               "--run-name", "broken"]
    run_train([*command, "--stop-after-epochs", "1"], env, launcher=DDP)
    run = tmp_path / "runs" / "broken"
    train = rows(run / "splits" / "train.csv")
    order = EpochSampler(len(train), seed=42)
    # The second epoch's batches of 16 go to process 0, 1, 0, 1, ...: the sixth is process 1's third, which its
    # loader (reading one batch ahead) reads only after the first update, done together: process 0 is in the loop
    # then, and meets the loss in a collective rather than the launcher's stop before it has started.
    order.set_epoch(1)
    (epoch, first_of_process_1), *_ = list(order)[80:]
    root, relative = Path(yaml.safe_load(config.read_text())["data"]["root"]), train[first_of_process_1]["path"]
    broken = root / relative
    broken.write_bytes(broken.read_bytes()[:20])
    resumed = run_train(command, env, launcher=DDP, check=False, timeout=300)
    assert resumed.returncode != 0
    assert f"error (process 1): {root}: 1 image(s) cannot be used: {relative} (" in resumed.stderr, \
        resumed.stderr[-3000:]
    # Process 0 meets the loss in a collective and says so (the run failed; the launcher's stop, arriving while it
    # fails, changes nothing then), or, when that stop reaches it first, stops as a signal stops it (the run
    # interrupted). Never failed without saying why: a stop that replaced the failure once hid its line.
    said = "error: another process of the run ended (its error is above)" in resumed.stderr
    assert summary(run)["status"] == ("failed" if said else "interrupted") and summary(run)["epoch"] == 1
