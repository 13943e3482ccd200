"""Run configuration: the typed schema, YAML loading, dotted CLI overrides and the run name.

A config is a YAML file with the sections below; every key has a default, so a file only names what it
changes. Overrides on the command line use the dotted form ``section.key=value`` (the value is parsed as
YAML: ``optim.lr=0.01``, ``train.deterministic=true``, ``data.mean=[0.5,0.5,0.5]``, ``train.clip_grad_norm=null``).
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import yaml

from harness.errors import ConfigError

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class DataConfig:
    builtin: Optional[Literal["digits"]] = None  # a data set that ships with a dependency
    root: Optional[str] = None  # an ImageFolder tree: root/{train,val,test}/<class>/*, or root/<class>/*
    cache_dir: Optional[str] = None  # where built-in data is materialised; default ~/.cache/harness
    val_fraction: float = 0.1  # share of the train pool held out for validation when root/val is absent
    test_fraction: float = 0.1  # same for the test split when root/test is absent
    split_seed: int = 0  # the stratified split depends on this only, not on train.seed
    image_size: int = 224
    mean: List[float] = field(default_factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = field(default_factory=lambda: list(IMAGENET_STD))
    augmentations: List[Any] = field(default_factory=lambda: ["hflip"])  # names or {name: ..., <kwargs>}
    num_workers: int = 2


@dataclass
class ModelConfig:
    name: str = "resnet18"
    pretrained: bool = False  # torchvision weights, only from the local torch hub cache
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to the model's constructor


@dataclass
class OptimConfig:
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8


@dataclass
class SchedulerConfig:
    name: Literal["none", "step", "cosine", "onecycle"] = "cosine"
    warmup_epochs: float = 0.0  # linear warmup, counted in optimizer updates (fractions allowed)
    warmup_start_factor: float = 0.1
    step_size: float = 30.0  # step: epochs between decays
    gamma: float = 0.1  # step: decay factor
    min_lr: float = 0.0  # cosine: the floor
    pct_start: float = 0.3  # onecycle: share of the run spent increasing the lr


@dataclass
class LossConfig:
    label_smoothing: float = 0.0
    class_weights: Any = None  # null, "balanced", or one weight per class (in class-name order)


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 32  # per process
    eval_batch_size: Optional[int] = None  # per process; default: batch_size
    grad_accum_steps: int = 1
    clip_grad_norm: Optional[float] = None
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = None  # null: as the launch config says
    seed: int = 42
    deterministic: bool = False
    skip_nonfinite_steps: int = 0  # updates with a NaN/inf loss to skip before the run stops as failed


@dataclass
class CheckpointConfig:
    monitor: Literal["val_acc", "val_loss"] = "val_acc"  # what "best" means
    every_n_steps: Optional[int] = None  # also checkpoint every n optimizer updates inside an epoch
    every_n_minutes: Optional[float] = None  # also checkpoint when this much time passed since the last one
    keep_last: int = 2  # complete checkpoints kept (plus the best one)


@dataclass
class LogConfig:
    every_n_steps: int = 10  # train/loss to TensorBoard every n optimizer updates
    progress: bool = True  # tqdm bar on the main process, only when stderr is a terminal
    tensorboard: bool = True


@dataclass
class Config:
    name: Optional[str] = None  # default: the config file's stem
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        path.write_text(yaml.safe_dump(self.to_dict(), sort_keys=False))


# ----------------------------------------------------------------------------------------------------
# Loading


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    """Read a YAML config, apply ``key=value`` overrides, and return the validated Config."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    apply_overrides(raw, overrides)
    raw.setdefault("name", path.stem)
    return config_from_dict(raw, source=str(path))


def config_from_dict(raw: dict, source: str = "config") -> Config:
    cfg = _build(Config, raw, prefix="", source=source)
    _check_values(cfg, source)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*", key):
        raise ConfigError(f"override {text!r}: expected the form section.key=value, e.g. optim.lr=0.01")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError:
        parsed = value
    return key, parsed


def apply_overrides(raw: dict, overrides: list[str]) -> None:
    for text in overrides:
        key, value = parse_override(text)
        node = raw
        parts = key.split(".")
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"override {text!r}: {'.'.join(parts[: i + 1])} is a value, not a section")
            node = child
        node[parts[-1]] = value


def run_name_for(cfg: Config, overrides: list[str]) -> str:
    """``<config name>_<key><value>...`` with one part per override, sorted by key, e.g. digits_batch_size32_lr0.01."""
    parts = []
    for text in overrides:
        key, value = parse_override(text)
        shown = "null" if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        parts.append((key.split(".")[-1], shown))
    name = "_".join([cfg.name or "run"] + [k + v for k, v in sorted(parts)])
    return re.sub(r"[^A-Za-z0-9._+-]+", "", name.replace(" ", ""))[:200]


# ----------------------------------------------------------------------------------------------------
# Typed construction: unknown keys and wrong types become one-line errors naming the key


def _build(cls, raw: Any, prefix: str, source: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: {prefix.rstrip('.') or 'top level'}: expected a mapping, got {_show(raw)}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{source}: {prefix}{key}: unknown key{_suggest(str(key), names, prefix)}")
    values = {}
    for name in names:
        if name in raw:
            values[name] = _coerce(raw[name], hints[name], prefix + name, source)
    return cls(**values)


def _coerce(value: Any, tp: Any, key: str, source: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return _build(tp, {} if value is None else value, key + ".", source)
    if tp is Any:
        return value
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner, key, source)
    if origin is Literal:
        if value not in args:
            choices = ", ".join(str(a) for a in args)
            hint = _suggest(str(value), [str(a) for a in args], "", quote=False)
            raise ConfigError(f"{source}: {key}: {_show(value)} is not one of {choices}{hint}")
        return value
    if origin in (list, List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{source}: {key}: expected a list, got {_show(value)}")
        return [_coerce(v, args[0], f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: {key}: expected a mapping, got {_show(value)}")
        return dict(value)
    if tp is float and isinstance(value, str) and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+", value):
        return float(value)  # YAML 1.1 reads 1e-4 (no dot) as a string
    if tp in _SCALARS:
        accepted, expected = _SCALARS[tp]
        if not isinstance(value, accepted) or (isinstance(value, bool) and tp is not bool):
            raise ConfigError(f"{source}: {key}: expected {expected}, got {_show(value)}")
        return float(value) if tp is float else value
    raise TypeError(f"unsupported config type {tp!r} for {key}")  # a bug in the schema, not a user error


_SCALARS = {  # type -> (accepted Python types, what the error says); YAML's true/false are never numbers
    bool: (bool, "true or false"),
    int: (int, "an integer"),
    float: ((int, float), "a number"),
    str: (str, "a string"),
}


def _show(value: Any) -> str:
    return "null" if value is None else f"{type(value).__name__} {value!r}"


def _suggest(word: str, choices: list[str], prefix: str, quote: bool = True) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    if not close:
        return f" (valid keys: {', '.join(choices)})" if quote else ""
    return f" (did you mean '{prefix}{close[0]}'?)" if quote else f" (did you mean '{close[0]}'?)"


# ----------------------------------------------------------------------------------------------------
# Value checks that types alone cannot express


def _check_values(cfg: Config, source: str) -> None:
    def fail(key: str, message: str) -> None:
        raise ConfigError(f"{source}: {key}: {message}")

    d, t = cfg.data, cfg.train
    if (d.builtin is None) == (d.root is None):
        fail("data", "set exactly one of data.builtin (e.g. digits) or data.root (an image folder)")
    for key in ("val_fraction", "test_fraction"):
        if not 0.0 <= getattr(d, key) < 1.0:
            fail(f"data.{key}", f"must be in [0, 1), got {getattr(d, key)}")
    if d.val_fraction + d.test_fraction >= 1.0:
        fail("data.val_fraction", "data.val_fraction + data.test_fraction must be below 1")
    if d.image_size < 1:
        fail("data.image_size", f"must be positive, got {d.image_size}")
    for key in ("mean", "std"):
        if len(getattr(d, key)) != 3:
            fail(f"data.{key}", f"needs 3 values (R, G, B), got {len(getattr(d, key))}")
    if any(s <= 0 for s in d.std):
        fail("data.std", "every value must be positive")
    if d.num_workers < 0:
        fail("data.num_workers", "must be 0 or more")
    for key in ("epochs", "batch_size", "grad_accum_steps"):
        if getattr(t, key) < 1:
            fail(f"train.{key}", f"must be at least 1, got {getattr(t, key)}")
    if t.eval_batch_size is not None and t.eval_batch_size < 1:
        fail("train.eval_batch_size", f"must be at least 1, got {t.eval_batch_size}")
    if t.clip_grad_norm is not None and t.clip_grad_norm <= 0:
        fail("train.clip_grad_norm", "must be positive, or null to turn clipping off")
    if cfg.optim.lr <= 0:
        fail("optim.lr", f"must be positive, got {cfg.optim.lr}")
    if len(cfg.optim.betas) != 2:
        fail("optim.betas", "needs 2 values")
    if not 0.0 <= cfg.loss.label_smoothing < 1.0:
        fail("loss.label_smoothing", f"must be in [0, 1), got {cfg.loss.label_smoothing}")
    w = cfg.loss.class_weights
    if not (w is None or w == "balanced" or _is_number_list(w)):
        fail("loss.class_weights", f"must be null, 'balanced' or a list of numbers, got {_show(w)}")
    s = cfg.scheduler
    if s.warmup_epochs < 0:
        fail("scheduler.warmup_epochs", "must be 0 or more")
    if s.name == "onecycle" and s.warmup_epochs > 0:
        fail("scheduler.warmup_epochs", "onecycle has its own warmup: set scheduler.pct_start instead")
    if not 0.0 < s.warmup_start_factor <= 1.0:
        fail("scheduler.warmup_start_factor", "must be in (0, 1]")
    if s.step_size <= 0:
        fail("scheduler.step_size", "must be positive")
    if not 0.0 < s.pct_start < 1.0:
        fail("scheduler.pct_start", "must be in (0, 1)")
    c = cfg.checkpoint
    if c.every_n_steps is not None and c.every_n_steps < 1:
        fail("checkpoint.every_n_steps", "must be at least 1, or null")
    if c.every_n_minutes is not None and c.every_n_minutes <= 0:
        fail("checkpoint.every_n_minutes", "must be positive, or null")
    if c.keep_last < 1:
        fail("checkpoint.keep_last", "must be at least 1 (the newest checkpoint is always kept)")
    if t.skip_nonfinite_steps < 0:
        fail("train.skip_nonfinite_steps", "must be 0 or more")
    if cfg.log.every_n_steps < 1:
        fail("log.every_n_steps", "must be at least 1")


def _is_number_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
