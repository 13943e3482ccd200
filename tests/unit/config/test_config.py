"""The run config: typed loading, every mistake as one line naming the file and key, overrides, the saved
config, the shipped configs."""

import pytest
import yaml

from harness.config.loading import load_config
from harness.config.schema import Config
from harness.errors import ConfigError
from tests.helpers import DIGITS


def write(tmp_path, text: str):
    path = tmp_path / "x.yaml"
    path.write_text(text)
    return path


def test_digits_config_loads_typed():
    cfg = load_config(DIGITS)
    assert isinstance(cfg, Config)
    assert cfg.name == "digits"
    assert cfg.data.builtin == "digits" and cfg.data.image_size == 32
    assert cfg.model.name == "compact_cnn" and cfg.model.kwargs == {"width": 16}
    assert isinstance(cfg.optim.lr, float)


def test_name_defaults_to_file_stem(tmp_path):
    assert load_config(write(tmp_path, "data: {builtin: digits}\n")).name == "x"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("data: {builtin: digits}\noptim: {lrr: 0.1}\n", "optim.lrr: unknown key (did you mean 'optim.lr'?)"),
        ("data: {builtin: digits}\ntrian: {epochs: 3}\n", "trian: unknown key (did you mean 'train'?)"),
        ("data: {builtin: digits, imag_size: 3}\n", "data.imag_size: unknown key (did you mean 'data.image_size'?)"),
        ("data: {builtin: digits}\ntrain: {epochs: ten}\n", "train.epochs: expected an integer, got str 'ten'"),
        ("data: {builtin: digits}\ntrain: {deterministic: 1}\n", "train.deterministic: expected true or false"),
        ("data: {builtin: digits}\noptim: {name: sgdd}\n", "optim.name: str 'sgdd' is not one of sgd, adam, adamw (did you mean 'sgd'?)"),
        ("data: {builtin: digits, mean: 0.5}\n", "data.mean: expected a list"),
        ("data: {builtin: digits}\ntrain: 3\n", "train: expected a mapping"),
        ("data: {builtin: digits, root: /x}\n", "set exactly one of data.builtin"),
        ("data: {root: /x, val_fraction: 0.5, test_fraction: 0.5}\n", "must be below 1"),
        ("data: {builtin: digits}\ntrain: {batch_size: 0}\n", "train.batch_size: must be at least 1"),
        ("data: {builtin: digits}\nloss: {class_weights: heavy}\n", "loss.class_weights: must be null, 'balanced'"),
        ("data: {builtin: digits}\nscheduler: {name: onecycle, warmup_epochs: 1}\n", "set scheduler.pct_start"),
        ("data: {builtin: digits}\ntrain: {ema: {decay: 1.5}}\n", "train.ema.decay: must be in [0, 1), got 1.5"),
        ("data: {builtin: digits}\ntrain: {ema: {dacay: 0.9}}\n", "train.ema.dacay: unknown key (did you mean 'train.ema.decay'?)"),
        ("data: {builtin: digits}\ntrain: {early_stopping: {patience: 0}}\n", "train.early_stopping.patience: must be at least 1"),
        ("data: {builtin: digits}\ntrain: {early_stopping: 5}\n", "train.early_stopping: expected a mapping, got int 5"),
        ("[1, 2]\n", "the top level must be a mapping"),
        ("data: {builtin: digits\n", "not valid YAML (line"),
    ],
)
def test_mistakes_are_one_line_errors_naming_file_and_key(tmp_path, text, expected):
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    message = str(info.value)
    assert expected in message
    assert message.startswith(str(path))
    assert "\n" not in message


def test_missing_file():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("nope.yaml")


def test_overrides_are_parsed_as_yaml_and_checked():
    cfg = load_config(DIGITS, ["optim.lr=0.01", "train.deterministic=true", "data.mean=[0.1,0.2,0.3]",
                               "train.clip_grad_norm=null", "model.kwargs.dropout=0.2", "optim.lr=1"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)  # the last override wins; ints widen
    assert load_config(DIGITS, ["optim.lr=1e-4"]).optim.lr == 1e-4  # YAML 1.1 reads this as a string
    assert load_config(DIGITS, ["train.mixed_precision=no"]).train.mixed_precision == "no"  # and this as false
    with pytest.raises(ConfigError, match="train.mixed_precision: bool True is not one of no, fp16, bf16"):
        load_config(DIGITS, ["train.mixed_precision=yes"])
    assert cfg.train.deterministic is True
    assert cfg.data.mean == [0.1, 0.2, 0.3]
    assert cfg.train.clip_grad_norm is None
    assert cfg.model.kwargs == {"width": 16, "dropout": 0.2}
    with pytest.raises(ConfigError, match=r"optim.lrr: unknown key \(did you mean 'optim.lr'\?\)"):
        load_config(DIGITS, ["optim.lrr=0.1"])
    with pytest.raises(ConfigError, match="expected the form section.key=value"):
        load_config(DIGITS, ["optim.lr"])
    with pytest.raises(ConfigError, match="optim.lr is a value, not a section"):
        load_config(DIGITS, ["optim.lr.x=1"])


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(DIGITS, ["optim.lr=0.02"])
    cfg.save(tmp_path / "config.yaml")
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["optim"]["lr"] == 0.02
    assert load_config(tmp_path / "config.yaml") == cfg


@pytest.mark.parametrize("path", sorted(DIGITS.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    assert load_config(path).name == path.stem
