"""Checks that need CUDA (run by scripts/gpu_check.sh on a GPU machine; skipped elsewhere)."""

import json
import sys

import pytest
import torch

from tests.helpers import DIGITS, FAST, REPO, run_infer, run_train, summary, weights

pytestmark = [pytest.mark.gpu, pytest.mark.slow,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


SETTINGS = [*FAST, "train.epochs=2", "data.num_workers=2"]


def launch(config: str, processes: int = 1) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "launch_configs" / config), "--num_processes", str(processes)]


def check_run(run, env, tmp_path, precision, images_apart: int = 0):
    """A completed run on the GPU whose weights inference (one process, no engine) scores as its summary says;
    ``images_apart``: how many test images may be predicted otherwise (FSDP's bf16 computes with bf16 weights,
    inference autocasts float32 weights)."""
    s = summary(run)
    assert s["status"] == "completed" and s["mixed_precision"] == precision and s["device"].startswith("cuda")
    assert s["last"]["train_loss"] < 10
    tensors = weights(run / "weights" / "best.safetensors")
    assert all(torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point())
    run_infer(["--run", run, "--out", tmp_path / "inference"], env)
    metrics = json.loads((tmp_path / "inference" / "metrics.json").read_text())
    assert abs(metrics["accuracy"] - s["test_acc"]) * metrics["images"] <= images_apart + 1e-6, (metrics, s["test_acc"])


@pytest.mark.parametrize("precision, config", [("no", "single_gpu.yaml"), ("fp16", "fp16.yaml"), ("bf16", "bf16.yaml")])
def test_one_gpu_in_each_precision(env, tmp_path, precision, config):
    """fp32; fp16 through accelerate's GradScaler (loss scaling); bf16 through autocast."""
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", precision, *SETTINGS], env,
          launcher=launch(config, 1))
    check_run(tmp_path / precision, env, tmp_path, precision)


def test_deepspeed_zero2_on_gpu(env, tmp_path):
    pytest.importorskip("deepspeed")
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "zero2", *SETTINGS], env,
          launcher=launch("deepspeed_zero2.yaml", 1))
    check_run(tmp_path / "zero2", env, tmp_path, "bf16")


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL DDP needs 2 GPUs")
def test_nccl_ddp_two_gpus(env, tmp_path):
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "ddp", *SETTINGS], env,
          launcher=launch("multi_gpu.yaml", 2))
    assert summary(tmp_path / "ddp")["distributed_type"] == "MULTI_GPU"
    check_run(tmp_path / "ddp", env, tmp_path, "no")


@pytest.mark.parametrize("processes", [1, 2])
def test_fsdp2_bf16_on_gpus(env, tmp_path, processes):
    """launch_configs/fsdp.yaml as shipped (bf16), on one GPU or two: sharded checkpoints, a resume, consolidated
    weights; the weight average and activation checkpointing on."""
    if torch.cuda.device_count() < processes:
        pytest.skip(f"needs {processes} GPUs")
    command = ["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "fsdp", *SETTINGS, "train.ema.decay=0.9",
               "model.activation_checkpointing=true"]
    run_train([*command, "--stop-after-epochs", "1"], env, launcher=launch("fsdp.yaml", processes))
    run_train(command, env, launcher=launch("fsdp.yaml", processes))
    s = summary(tmp_path / "fsdp")
    assert s["distributed_type"] == "FSDP" and s["num_processes"] == processes and s["resumed_from"]
    check_run(tmp_path / "fsdp", env, tmp_path, "bf16", images_apart=3)
