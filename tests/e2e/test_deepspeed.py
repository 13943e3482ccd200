"""DeepSpeed ZeRO 1, 2 and 3 with two CPU processes, through the unchanged entry points: train, checkpoint,
resume exactly, export fp32 safetensors that inference loads without DeepSpeed."""

import shutil
import sys

import pytest
import torch

from tests.helpers import (DIGITS, FAST, REPO, history_metrics, plant, rows, run_infer, run_train, summary,
                           weights)

pytestmark = [pytest.mark.slow, pytest.mark.deepspeed]


SETTINGS = [*FAST, "train.epochs=2", "checkpoint.every_n_steps=4", "train.clip_grad_norm=0.5"]


def launcher(stage: int, precision: str) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
            str(REPO / "launch_configs" / f"deepspeed_zero{stage}.yaml"), "--num_processes", "2",
            "--mixed_precision", precision, "--num_cpu_threads_per_process", "1"]


# ZeRO-2 also keeps a weight average (train.ema): each process holds whole parameters there.
@pytest.mark.parametrize("stage, precision, extra", [(1, "no", []), (2, "no", ["train.ema.decay=0.8"]), (3, "bf16", [])])
def test_zero_stage_trains_resumes_exactly_and_exports(env, tmp_path, stage, precision, extra):
    ds = launcher(stage, precision)
    common = ["--config", DIGITS, "--output-dir", tmp_path, *SETTINGS, *extra]
    run_train([*common, "--run-name", "straight"], env, launcher=ds)
    run_train([*common, "--run-name", "resumed", "--stop-after-epochs", "1"], env, launcher=ds)
    result = run_train([*common, "--run-name", "resumed"], env, launcher=ds)  # the same command continues it
    assert "resumed from" in result.stdout and "step-00000010" in result.stdout
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    s = summary(resumed)
    assert s["distributed_type"] == "DEEPSPEED" and s["num_processes"] == 2 and s["mixed_precision"] == precision
    assert s["status"] == "completed" and s["global_step"] == 20
    # After the resume, every loss and accuracy is the one the uninterrupted run had.
    assert history_metrics(resumed) == history_metrics(straight)
    averaged = [(r.get("ema_val_loss"), r.get("ema_val_acc")) for r in rows(straight / "history.csv")]
    assert averaged == [(r.get("ema_val_loss"), r.get("ema_val_acc")) for r in rows(resumed / "history.csv")]
    assert all(None not in pair for pair in averaged) == bool(extra)
    assert [h["lr"] for h in history_metrics(straight)][-1] == "0.0"  # the engine stepped the harness's schedule
    # Consolidated fp32 weights that plain PyTorch loads; inference (one process, no DeepSpeed) agrees exactly.
    tensors = weights(resumed / "weights" / "best.safetensors")
    assert {t.dtype for t in tensors.values()} <= {torch.float32, torch.int64}
    out = tmp_path / "inference"
    run_infer(["--run", resumed, "--out", out], env)
    metrics = (out / "metrics.json").read_text()
    assert f'"accuracy": {s["test_acc"]}' in metrics
    if stage == 2:  # DeepSpeed's own checkpoint files cannot run code either
        newest = resumed / "checkpoints" / "step-00000020"
        shutil.copytree(newest, tmp_path / "original")
        for name in ("pytorch_model/mp_rank_00_model_states.pt", "pytorch_model/zero_pp_rank_1_mp_rank_00_optim_states.pt"):
            plant(newest, name, tmp_path / "pwned")
            refused = run_train(["--resume", resumed, "train.epochs=3"], env, launcher=ds, check=False)
            assert not (tmp_path / "pwned").exists() and refused.returncode != 0
            assert f"error: {newest}: cannot load it (UnpicklingError: Weights only load failed" in refused.stderr
            shutil.rmtree(newest)
            shutil.copytree(tmp_path / "original", newest)


def test_zero3_refuses_a_weight_average(env, tmp_path):
    result = run_train(["--config", DIGITS, "--output-dir", tmp_path, *SETTINGS, "train.ema.decay=0.9"], env,
                       launcher=launcher(3, "no"), check=False)
    assert result.returncode != 0 and "train.ema: not possible under DeepSpeed ZeRO-3" in result.stderr


def test_deepspeed_refuses_skipping_nonfinite_steps(env, tmp_path):
    result = run_train(["--config", DIGITS, "--output-dir", tmp_path, *SETTINGS, "train.skip_nonfinite_steps=2"], env,
                   launcher=launcher(2, "no"), check=False)
    assert result.returncode != 0 and "train.skip_nonfinite_steps: not possible under DeepSpeed" in result.stderr
