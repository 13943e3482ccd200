"""Run names: from the config's name and the overrides, readable and bounded; the fold of a k-fold run."""


import pytest

from harness.config.loading import load_config, parse_override
from harness.config.naming import run_name_for
from harness.errors import ConfigError
from tests.helpers import DIGITS


def test_run_name_from_config_name_and_sorted_overrides():
    overrides = ["optim.lr=0.01", "train.batch_size=32"]
    assert run_name_for(load_config(DIGITS, overrides), overrides) == "digits_batch_size32_lr0.01"
    assert run_name_for(load_config(DIGITS), []) == "digits"
    assert parse_override("data.mean=[0.5, 0.5, 0.5]") == ("data.mean", [0.5, 0.5, 0.5])


@pytest.mark.parametrize("override, part", [
    ("data.builtin=null", "builtinnull"),  # (any override: the name only shows it)
    ("data.cache_dir=~/data/shapes", "cache_dirshapes"),  # a path: its folder's name
    ("data.cache_dir=/scratch/me/shapes/", "cache_dirshapes"),
    ("data.mean=[0.5, 0.5, 0.5]", "mean0.5-0.5-0.5"),
    ("optim.lr=-1.0e-05", "lr-1e-05"),
    ("train.deterministic=true", "deterministictrue"),
    ("name=my data", "namemy-data"),
])
def test_run_names_stay_readable(override, part):
    assert run_name_for(load_config(DIGITS), [override]) == f"digits_{part}"


def test_long_values_are_shortened_with_a_hash_that_keeps_them_apart():
    names = {run_name_for(load_config(DIGITS), [f"data.cache_dir={'x' * 40}{end}"]) for end in "ab"}
    assert len(names) == 2 and all(len(name) == len("digits_cache_dir") + 24 for name in names), names


def test_fold_settings_are_checked_and_the_fold_named_in_the_run():
    with pytest.raises(ConfigError, match=r"digits.yaml: data.fold: must be below data.folds \(5\)"):
        load_config(DIGITS, ["data.folds=5", "data.fold=5"])
    with pytest.raises(ConfigError, match="digits.yaml: data.fold: data.fold needs data.folds"):
        load_config(DIGITS, ["data.fold=1"])
    assert run_name_for(load_config(DIGITS, ["data.folds=5", "data.fold=2"]), ["data.folds=5", "data.fold=2"]) == \
        "digits_fold2_folds5"
    assert run_name_for(load_config(DIGITS, ["data.folds=5"]), ["data.folds=5"]) == "digits_fold0_folds5"
