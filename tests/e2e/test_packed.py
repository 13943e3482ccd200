"""Packed data through the entry points: the digits packed as the docs show, trained with two processes (every
test image evaluated once) and read back by inference and the Python API."""

import pytest

from harness.data.builtin import builtin_root
from tests.helpers import DDP, DIGITS, FAST, launch, rows, run_infer, run_train, summary


@pytest.mark.slow
def test_ddp_on_packed_data_evaluates_every_image_once_and_inference_reads_it(env, tmp_path):
    packed, source = tmp_path / "digits-packed", builtin_root("digits", env["HARNESS_CACHE_DIR"])
    launch("pack.py", [source, packed], env)
    run_train(["--config", DIGITS, "--output-dir", tmp_path, "--run-name", "ddp", *FAST, "train.epochs=1",
               "data.builtin=null", f"data.root={packed}", "data.cache=memory", "data.num_workers=1"], env,
              launcher=DDP)
    run = tmp_path / "ddp"
    s = summary(run)
    assert s["status"] == "completed" and s["num_processes"] == 2
    predicted = [row["path"] for row in rows(run / "predictions" / "test.csv")]
    assert sorted(predicted) == sorted(row["path"] for row in rows(run / "splits" / "test.csv"))
    assert len(set(predicted)) == len(predicted) == s["images"]["test"]  # every image once, none padded in
    result = run_infer(["--run", run, "--show", "0"], env)
    assert f"accuracy {s['test_acc']:.4f}" in result.stdout + result.stderr
    from harness import load_run  # the Python API on the run: the source's images, the run's predictions

    written = rows(run / "predictions" / "test.csv")
    loaded = load_run(run).predict([source / row["path"] for row in written])
    assert loaded.predictions == [row["prediction"] for row in written]
