"""The speed options through the real entry point: the image cache trains on the same images (same weights, bit
for bit), torch.compile and channels_last survive a stop and a resume and export weights inference can read."""

import json
import re
from pathlib import Path

import pytest

from tests.helpers import DIGITS, FAST, assert_same_weights, run_infer, run_train, summary

SETTINGS = ["--config", DIGITS, *FAST, "train.epochs=2", "data.num_workers=2"]


@pytest.mark.slow
def test_the_image_cache_trains_on_the_same_images_bit_for_bit(env, tmp_path):
    runs = {}
    for cache in ("none", "memory", "disk", "disk"):
        name = f"{cache}{len(runs)}"
        result = run_train([*SETTINGS, f"data.cache={cache}", "--output-dir", tmp_path, "--run-name", name], env)
        runs[name] = (tmp_path / name, result.stdout)
    (plain, _), (memory, memory_log), (disk, disk_log), (again, again_log) = runs.values()
    for run in (memory, disk, again):
        assert_same_weights(plain / "weights" / "last.safetensors", run / "weights" / "last.safetensors")
        assert summary(run)["test_acc"] == summary(plain)["test_acc"]
    # train, val, test: nothing decoded before training; the run before filled every image of the disk cache
    assert [cached for _, cached in filled(memory_log)] == [0] * 3 == [cached for _, cached in filled(disk_log)]
    assert [images for images, _ in filled(again_log)] == [cached for _, cached in filled(again_log)] != []
    assert len(list(Path(env["HARNESS_CACHE_DIR"]).glob("images/*.cache"))) == 3


def filled(log: str) -> list[tuple[int, int]]:
    """(images, already cached) of each image cache a training's log announces."""
    return [(int(images), int(cached)) for images, cached in
            re.findall(r"image cache \S+: (\d+) images at \d+px, (\d+) cached already", log)]


@pytest.mark.slow
def test_compile_and_channels_last_resume_exactly_and_export_weights_inference_reads(env, tmp_path):
    options = [*SETTINGS, "train.compile=true", "model.channels_last=true", "--output-dir", tmp_path]
    straight = run_train([*options, "--run-name", "straight"], env)
    assert "done: best" in straight.stdout
    stopped = run_train([*options, "--run-name", "resumed", "--stop-after-epochs", "1"], env)
    assert "stopped after 1 epoch(s)" in stopped.stdout + stopped.stderr
    run_train([*options, "--run-name", "resumed"], env)
    assert_same_weights(tmp_path / "straight" / "weights" / "last.safetensors",
                        tmp_path / "resumed" / "weights" / "last.safetensors")
    # The weights are a plain model's: inference (not compiled, contiguous) gives the run's own test accuracy.
    run_infer(["--run", tmp_path / "straight"], env)
    metrics = json.loads((tmp_path / "straight" / "inference" / "test_best" / "metrics.json").read_text())
    assert metrics["accuracy"] == summary(tmp_path / "straight")["test_acc"]
