"""FSDP2 with two CPU processes over gloo (launch_configs/fsdp.yaml), through the unchanged entry points: the same
run as DDP (weight average included), sharded checkpoints inside the harness's atomic folders, exact resume after a kill -9 in the middle of a
sharded save, a resume with one process, consolidated weights that inference reads without FSDP, activation
checkpointing without a change of result, and one-line refusals."""

import os
import re
import shutil
import signal
import subprocess
import time

import pytest
import torch

from harness.checkpointing.folders import read_pointer, verify
from tests.helpers import (ACCELERATE, DDP, DIGITS, FAST, REPO, assert_same_weights, history_metrics,
                           make_image_folder, marker, plant, pointer, rows, run_infer, run_train, summary, tree, weights)

pytestmark = pytest.mark.slow

# The GPU launch config, told two processes and full precision, as docs/launch.md shows for a machine without a GPU.
FSDP = [*ACCELERATE, "-q", "--config_file", "launch_configs/fsdp.yaml", "--mixed_precision", "no", "--num_processes", "2"]
# 10 updates per epoch on two processes, a step checkpoint every 4: mid-epoch checkpoints in both epochs. A weight
# average, which under FSDP each process keeps of its own shards.
SETTINGS = [*FAST, "train.epochs=2", "checkpoint.every_n_steps=4", "train.ema.decay=0.8"]
# With clipping, the gradient norm is summed over the shards (FSDP) instead of over whole tensors (DDP): the same
# terms in another order, a rounding difference of ~1e-7 in the clipping factor that the test's epoch of updates
# carries to 5e-6 in the weights (measured; two epochs: 1e-3). A wrong shard, a missing reduction or a double step
# moves them by 1e-2 or more.
CLIPPED = dict(rtol=1e-3, atol=1e-4)


@pytest.fixture(scope="module")
def runs(env, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    common = ["--config", DIGITS, "--output-dir", out, *SETTINGS]
    for name, launcher, extra in (("ddp", DDP, []), ("fsdp", FSDP, []),
                                  ("checkpointed", FSDP, ["model.activation_checkpointing=true"])):
        result = run_train([*common, "--run-name", name, *extra], env, launcher=launcher)
        (out / f"{name}.out").write_text(result.stdout + result.stderr)
    return out


def averaged(run):
    return [(r["ema_val_loss"], r["ema_val_acc"]) for r in rows(run / "history.csv")]


def test_fsdp_trains_as_ddp_bit_for_bit_and_says_so(runs):
    """Without clipping, FSDP and DDP compute the same numbers: each process's gradients are averaged over two
    processes ((a + b) / 2 either way), the optimizer's update and the weight average are element-wise, shard or
    whole tensor."""
    fsdp = runs / "fsdp"
    s = summary(fsdp)
    assert s["status"] == "completed" and s["distributed_type"] == "FSDP" and s["num_processes"] == 2
    assert "2 process(es) (FSDP2, sharding the whole model as one)" in (fsdp / "train.log").read_text()
    console = (runs / "fsdp.out").read_text().splitlines()  # the harness's lines only, no library's warning
    assert console and [line for line in console if not re.match(r"\d\d:\d\d:\d\d INFO (?!\[)", line)] == []
    assert s["fsdp_units"] == "the whole model as one"  # compact_cnn's blocks are plain Sequentials
    assert history_metrics(fsdp) == history_metrics(runs / "ddp") and averaged(fsdp) == averaged(runs / "ddp")
    # The average's shards are gathered into the checkpoint whole, as DDP's process holds it.
    ddp_average, fsdp_average = (torch.load(pointer(run) / "custom_checkpoint_0.pkl", weights_only=True)
                                 for run in (runs / "ddp", fsdp))
    assert ddp_average["updates"] == fsdp_average["updates"] == 20
    assert all(torch.equal(ddp_average["averages"][k], fsdp_average["averages"][k]) for k in ddp_average["averages"])
    assert_same_weights(runs / "ddp" / "weights" / "last.safetensors", fsdp / "weights" / "last.safetensors")
    assert_same_weights(runs / "ddp" / "weights" / "best.safetensors", fsdp / "weights" / "best.safetensors")
    # Sharded checkpoints (one file per process, torch.distributed.checkpoint) in the harness's verified folders.
    last = pointer(fsdp)
    assert verify(last, content=True) is None and marker(last)["distributed_type"] == "FSDP"
    files = marker(last)["files"]
    for part in ("pytorch_model_fsdp_0", "optimizer_0"):
        assert {f"{part}/__0_0.distcp", f"{part}/__1_0.distcp", f"{part}/.metadata"} <= set(files)
    assert {t.dtype for t in weights(fsdp / "weights" / "best.safetensors").values()} <= {torch.float32, torch.int64}


def test_with_clipping_fsdp_stays_within_float_noise_of_ddp(env, tmp_path):
    common = ["--config", DIGITS, "--output-dir", tmp_path, *FAST, "train.epochs=1", "train.clip_grad_norm=0.5"]
    run_train([*common, "--run-name", "ddp"], env, launcher=DDP)
    run_train([*common, "--run-name", "fsdp"], env, launcher=FSDP)
    a, b = weights(tmp_path / "ddp" / "weights" / "last.safetensors"), weights(tmp_path / "fsdp" / "weights" / "last.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.allclose(a[key].float(), b[key].float(), **CLIPPED), (key, (a[key] - b[key]).abs().max())
    (ddp,), (fsdp,) = rows(tmp_path / "ddp" / "history.csv"), rows(tmp_path / "fsdp" / "history.csv")
    for key in ("train_loss", "val_loss"):
        assert float(ddp[key]) == pytest.approx(float(fsdp[key]), rel=1e-3)
    assert abs(float(ddp["val_acc"]) - float(fsdp["val_acc"])) <= 2 / 269  # at most two of 269 images differ


def test_activation_checkpointing_changes_nothing_but_memory(runs):
    assert history_metrics(runs / "checkpointed") == history_metrics(runs / "fsdp")
    assert averaged(runs / "checkpointed") == averaged(runs / "fsdp")
    assert_same_weights(runs / "fsdp" / "weights" / "last.safetensors", runs / "checkpointed" / "weights" / "last.safetensors")


def test_a_kill_9_during_a_sharded_save_leaves_the_last_checkpoint_and_the_run_resumes_exactly(runs, env, tmp_path):
    command = [*FSDP, str(REPO / "harness" / "train.py"), "--config", str(DIGITS), "--output-dir", str(tmp_path),
               "--run-name", "killed", *SETTINGS]
    run = tmp_path / "killed"
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    while process.poll() is None:  # busy: a save lasts a few tens of milliseconds
        entries = os.listdir(run / "checkpoints") if (run / "checkpoints").is_dir() else []
        if "latest" in entries and any(name.startswith(".tmp-step-") for name in entries):
            kill_all(process.pid)
            break
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run finished before a second save began"
    assert any(name.startswith(".tmp-step-") for name in os.listdir(run / "checkpoints"))
    named = read_pointer(run / "checkpoints" / "latest")
    assert verify(run / "checkpoints" / named, content=True) is None
    # The same command again: it continues from that checkpoint (inside an epoch) and ends where the
    # uninterrupted run did, bit for bit.
    again = run_train(command[len(FSDP) + 1:], env, launcher=FSDP)
    assert "left by a save that did not finish" in again.stdout and f"resumed from {run / 'checkpoints' / named}" in again.stdout
    assert history_metrics(run) == history_metrics(runs / "fsdp") and averaged(run) == averaged(runs / "fsdp")
    assert_same_weights(runs / "fsdp" / "weights" / "last.safetensors", run / "weights" / "last.safetensors")


def kill_all(launcher: int) -> None:
    """SIGKILL the launcher and its workers at once, as a node failure or SLURM's cgroup kill does (torchrun starts
    each worker in a session of its own)."""
    workers = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and _parent(pid) == launcher]
    for pid in [launcher, *workers]:
        os.kill(pid, signal.SIGKILL)


def _parent(pid: str) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None


def stop_at_final_evaluation(command: list, env: dict) -> str:
    """Train to the end, stop both processes with SIGTERM when they reach the final evaluation; their output."""
    process = subprocess.Popen(command, env={**env, "HARNESS_PAUSE_AT": "final"}, cwd=REPO, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines = []
    for line in process.stdout:
        lines.append(line)
        if sum(text.strip() == "paused at final" for text in lines) == 2:
            time.sleep(0.2)
            os.killpg(process.pid, signal.SIGTERM)
            break
    lines.append(process.communicate(timeout=300)[0])
    return "".join(lines)


def test_one_process_resumes_two_processes_shards_and_inference_needs_no_fsdp(runs, env, tmp_path):
    """The run stops before its final evaluation; one process resumes it, loads the two processes' shards of the
    best checkpoint and scores the test split exactly as the uninterrupted run did; infer.py, one plain process
    without FSDP, scores that run exactly as its summary says."""
    shutil.copytree(runs / "fsdp", tmp_path / "fsdp")
    output = stop_at_final_evaluation([*FSDP, str(REPO / "harness" / "train.py"), "--config", str(DIGITS), "--output-dir",
                                       str(tmp_path), "--run-name", "two", *SETTINGS], env)
    two = tmp_path / "two"
    assert summary(two)["status"] == "interrupted", output[-3000:]
    resumed = run_train(["--resume", two], env, launcher=[*FSDP[:-1], "1"])
    assert "resuming a checkpoint of 2 process(es) with 1" in resumed.stdout
    s, straight = summary(two), summary(runs / "fsdp")
    assert s["status"] == "completed" and s["num_processes"] == 1 and s["distributed_type"] == "FSDP"
    assert s["test_acc"] == straight["test_acc"] and s["test_loss"] == pytest.approx(straight["test_loss"], rel=1e-6)

    out = tmp_path / "inference"
    run_infer(["--run", runs / "fsdp", "--out", out], env)
    assert f'"accuracy": {straight["test_acc"]}' in (out / "metrics.json").read_text()


def test_a_sharded_checkpoint_is_refused_by_another_launch_and_cannot_run_code(runs, env, tmp_path):
    shutil.copytree(runs / "fsdp", tmp_path / "fsdp")
    run = tmp_path / "fsdp"
    before = tree(tmp_path)
    refused = run_train(["--resume", run, "train.epochs=3"], env, launcher=DDP, check=False)
    assert refused.returncode != 0 and (
        f"error: {pointer(run)}: saved as FSDP's sharded files (FSDP), which this launch (MULTI_CPU) cannot read: "
        "continue the run with the launch config it trained with (launch_configs/fsdp.yaml)\n") in refused.stderr
    assert tree(tmp_path) == before
    # torch.distributed.checkpoint unpickles .metadata whole: a planted one is refused before torch reads it.
    plant(pointer(run), "pytorch_model_fsdp_0/.metadata", tmp_path / "pwned")
    refused = run_train(["--resume", run, "train.epochs=3"], env, launcher=FSDP, check=False)
    assert not (tmp_path / "pwned").exists()
    assert f"error: {pointer(run)}: cannot load it (UnpicklingError: posix.system is not allowed" in refused.stderr


def test_the_vit_recipe_trains_each_encoder_block_as_a_unit_with_its_activations_recomputed(env, tmp_path):
    """configs/imagefolder_vit_fsdp.yaml as shipped, only the ViT made small (the same class and code path)."""
    make_image_folder(tmp_path / "images", classes=2, per_class=12, size=32)
    small = ["data.image_size=32", "model.kwargs={image_size: 32, patch_size: 8, num_layers: 2, num_heads: 2, "
             "hidden_dim: 16, mlp_dim: 32}", "train.epochs=1", "train.batch_size=4", "data.num_workers=0"]
    result = run_train(["--config", REPO / "configs" / "imagefolder_vit_fsdp.yaml", "--output-dir", tmp_path,
                        "--run-name", "vit", f"data.root={tmp_path / 'images'}", *small], env, launcher=FSDP)
    assert "2 process(es) (FSDP2, sharding each EncoderBlock, then the rest)" in result.stdout
    s = summary(tmp_path / "vit")
    assert s["status"] == "completed" and s["fsdp_units"] == "each EncoderBlock, then the rest"
    assert "activation_checkpointing: true" in (tmp_path / "vit" / "config.yaml").read_text()
