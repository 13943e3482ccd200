"""Sweep files (python -m harness.sweep): grids and lists of runs, their mistakes, one array task's overrides."""

import subprocess
import sys

import pytest

from harness.config.loading import load_config
from harness.config.naming import run_name_for
from harness.errors import ConfigError
from harness.sweep import main as sweep_main
from harness.tuning.sweeps import load_sweep
from tests.helpers import DIGITS, REPO


def write(tmp_path, text: str):
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def test_a_grid_gives_every_combination_in_order_and_values_read_back_as_written(tmp_path):
    path = write(tmp_path, "grid:\n  optim.lr: [1.0e-4, 0.1]\n  data.mean: [[0.5, 0.5, 0.5]]\n"
                           "  optim.name: [adamw, sgd]\n")
    runs = load_sweep(path)
    assert runs[0] == ["optim.lr=0.0001", "data.mean=[0.5, 0.5, 0.5]", "optim.name=adamw"]
    assert [r[0].split("=")[1] + r[2].split("=")[1] for r in runs] == ["0.0001adamw", "0.0001sgd", "0.1adamw", "0.1sgd"]
    cfg = load_config(DIGITS, runs[3])
    assert (cfg.optim.lr, cfg.optim.name, cfg.data.mean) == (0.1, "sgd", [0.5, 0.5, 0.5])
    assert load_config(DIGITS, runs[0]).optim.lr == 1e-4


def test_the_shipped_kfold_sweep_runs_every_fold_each_in_a_run_of_its_own():
    runs = load_sweep(REPO / "sweeps" / "kfold5.yaml")
    folds = [load_config(DIGITS, overrides).data for overrides in runs]
    assert [(data.folds, data.fold) for data in folds] == [(5, fold) for fold in range(5)]
    names = [run_name_for(load_config(DIGITS, overrides), overrides) for overrides in runs]
    assert names == [f"digits_fold{fold}_folds5" for fold in range(5)]


def test_runs_are_listed_one_by_one(tmp_path):
    path = write(tmp_path, "runs:\n  - {optim.lr: 0.1, train.epochs: 20}\n  - {data.folds: 5, data.fold: 4}\n")
    assert load_sweep(path) == [["optim.lr=0.1", "train.epochs=20"], ["data.folds=5", "data.fold=4"]]


@pytest.mark.parametrize("text, message", [
    ("grid: {optim.lr: 0.1}\n", "each key needs a non-empty list"),
    ("grid: {optim.lr: []}\n", "each key needs a non-empty list"),
    ("runs: [0.1]\n", "runs: a list of mappings"),
    ("grid: {optim.lr: [0.1]}\nruns: [{optim.lr: 1}]\n", "either 'grid:'"),
    ("lr: [0.1]\n", "either 'grid:'"),
    ("grid: [\n", "not valid YAML"),
])
def test_sweep_file_mistakes_are_one_line_errors(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        load_sweep(write(tmp_path, text))


def test_the_command_prints_one_task_checks_keys_and_refuses_tasks_outside_the_sweep(tmp_path, capsys):
    good = write(tmp_path, "grid:\n  optim.lr: [0.1, 0.01]\n")
    assert sweep_main([str(good), "--config", str(DIGITS), "--task", "1"]) == 0
    assert capsys.readouterr().out == "optim.lr=0.01\n"
    assert sweep_main([str(good), "--task", "2"]) == 2
    assert "array task 2 is out of range: the sweep has 2 runs (--array=0-1)" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("grid:\n  optim.lrr: [0.1]\n")
    assert sweep_main([str(bad), "--config", str(DIGITS)]) == 2
    assert "optim.lrr: unknown key (did you mean 'optim.lr'?)" in capsys.readouterr().err
    listed = subprocess.run([sys.executable, "-m", "harness.sweep", "sweeps/lr.yaml"], cwd=REPO,
                            capture_output=True, text=True, check=True).stdout
    assert "4 runs: sbatch --array=0-3 slurm/sweep.sh CONFIG sweeps/lr.yaml" in listed
