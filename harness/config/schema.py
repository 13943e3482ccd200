"""The run configuration's schema: its sections, every key with its default, each section checking itself.

A config is a YAML file with the sections below; every key has a default, so a file only names what it
changes (``harness.config.loading`` reads it). Each section checks itself (``harness.config.rules``). Types and
unknown keys are checked while the YAML is turned into these classes (``harness.config.typed``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Literal, Optional

import yaml

from harness.config.rules import (FRACTION, OPEN_FRACTION, POSITIVE, PROBABILITY, SHARE, InvalidValue, Rule, Section,
                                  at_least, count, rule)
from harness.errors import ConfigError
from harness.storage.atomic import write_atomic

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]
DEFAULT_SPLIT_FRACTION = 0.1  # of the train pool, for a val or test split that is carved out of it


CLASS_WEIGHTS = Rule(
    lambda value: value == "balanced" or (isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 0 for v in value) and any(value)),
    "be null, 'balanced' or a list of numbers of at least 0, not all 0 (one per class)",
)
BETAS = Rule(lambda values: len(values) == 2 and all(0 <= value < 1 for value in values), "hold 2 values in [0, 1)")
SEED = Rule(lambda value: 0 <= value < 2**32, "be in [0, 2**32)")


@dataclass
class MixupConfig(Section):
    alpha: float = rule(0.8, at_least(0))  # mixup: images blended by Beta(alpha, alpha); 0: no mixup
    cutmix_alpha: float = rule(1.0, at_least(0))  # CutMix: a box pasted, its area from Beta(a, a); 0: no CutMix
    prob: float = rule(1.0, PROBABILITY)  # the share of batches mixed at all
    switch_prob: float = rule(0.5, PROBABILITY)  # with both: the share of mixed batches that use CutMix

    def check_together(self) -> None:
        if self.alpha == 0 and self.cutmix_alpha == 0:
            raise InvalidValue("", "set data.mixup.alpha or data.mixup.cutmix_alpha above 0 (or data.mixup: null)")


@dataclass
class DataConfig(Section):
    builtin: Optional[Literal["digits"]] = None  # a data set that ships with a dependency
    root: Optional[str] = None  # an ImageFolder tree: root/{train,val,test}/<class>/*, or root/<class>/*
    cache_dir: Optional[str] = None  # built-in data, the image index and data.cache: disk live here; default ~/.cache/harness
    # Shares of the train pool held out where root/val, root/test are absent (null: 0.1); see ``settle``.
    val_fraction: Optional[float] = rule(None, FRACTION)
    test_fraction: Optional[float] = rule(None, FRACTION)
    split_seed: int = rule(0, SEED)  # the stratified split depends on this only, not on train.seed
    folds: Optional[int] = rule(None, at_least(2))  # k-fold: the non-test images in k stratified folds
    fold: int = rule(0, at_least(0))  # with folds: the fold that is the validation split (0 .. folds-1)
    image_size: int = rule(224, at_least(1))
    mean: List[float] = rule(check=count(3, " (R, G, B)"), factory=lambda: list(IMAGENET_MEAN))
    std: List[float] = rule(check=count(3, " (R, G, B)"), factory=lambda: list(IMAGENET_STD))
    augmentations: List[Any] = field(default_factory=lambda: ["hflip"])  # names or {name: ..., <kwargs>}
    mixup: Optional[MixupConfig] = None  # mixup and CutMix of training batches, with soft targets
    num_workers: Optional[int] = rule(None, at_least(0))  # per process; null: from the CPUs (harness.data.workers.default_workers)
    cache: Literal["none", "memory", "disk"] = "none"  # decoded, resized images kept: in the process, or on disk
    on_bad_image: Literal["error", "skip"] = "error"  # an unreadable image: stop naming them all, or leave them out
    max_image_pixels: Optional[int] = rule(89_478_485, at_least(1))  # larger images are bad (decompression bombs)

    def check_together(self) -> None:
        if (self.builtin is None) == (self.root is None):
            raise InvalidValue("", "set exactly one of data.builtin (e.g. digits) or data.root (an image folder)")
        if self.fraction("val") + self.fraction("test") >= 1.0:
            raise InvalidValue("val_fraction", "data.val_fraction + data.test_fraction must be below 1")
        if self.folds is None and self.fold:
            raise InvalidValue("fold", "data.fold needs data.folds (the number of folds)")
        if self.folds is not None and self.fold >= self.folds:
            raise InvalidValue("fold", f"must be below data.folds ({self.folds}): folds are numbered from 0")
        if any(value <= 0 for value in self.std):
            raise InvalidValue("std", "every value must be positive")

    def fraction(self, split: str) -> float:
        value = getattr(self, f"{split}_fraction")
        return DEFAULT_SPLIT_FRACTION if value is None else value

    def settle(self) -> None:
        """Make the config describe the run, as its saved copy must: the data folders named absolutely (runs
        resume from any directory); ``val_fraction``/``test_fraction`` the share of a split carved out of the
        train pool, null for a split that is not (a root/<split> folder, the validation folds of k-fold, the
        fixed splits of built-in data)."""
        for key in ("root", "cache_dir"):
            if getattr(self, key):
                setattr(self, key, str(Path(getattr(self, key)).expanduser().resolve()))
        for split in ("val", "test"):
            if self.builtin and getattr(self, f"{split}_fraction") is not None:
                raise ConfigError(f"data.{split}_fraction: data.builtin: {self.builtin} has fixed splits "
                                  "(70/15/15): remove it")
            carved = not (self.builtin or Path(self.root, split).is_dir() or (split == "val" and self.folds))
            setattr(self, f"{split}_fraction", self.fraction(split) if carved else None)


@dataclass
class ModelConfig(Section):
    name: str = "resnet18"
    pretrained: bool = False  # torchvision weights, only from the local torch hub cache
    kwargs: Dict[str, Any] = field(default_factory=dict)  # passed to the model's constructor
    channels_last: bool = False  # NHWC weights and inputs: faster convolutions on GPUs with tensor cores
    # recompute each block's activations in the backward pass instead of keeping them: less memory, about a third
    # more compute, the same weights (harness.models.blocks)
    activation_checkpointing: bool = False
    freeze_backbone_epochs: int = rule(0, at_least(0))  # only the classifier (last layer) learns in these first epochs


@dataclass
class OptimConfig(Section):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = rule(0.01, POSITIVE)
    momentum: float = rule(0.9, at_least(0))
    nesterov: bool = False
    weight_decay: float = rule(0.0, at_least(0))
    betas: List[float] = rule(check=BETAS, factory=lambda: [0.9, 0.999])
    eps: float = rule(1e-8, at_least(0))
    decay_norm_and_bias: bool = False  # weight_decay on biases and normalisation weights too (timm: no)
    head_lr_multiplier: float = rule(1.0, POSITIVE)  # the classifier (last layer) learns at optim.lr times this


@dataclass
class SchedulerConfig(Section):
    name: Literal["none", "step", "cosine", "onecycle"] = "cosine"
    warmup_epochs: float = rule(0.0, at_least(0))  # linear warmup, counted in optimizer updates (fractions allowed)
    warmup_start_factor: float = rule(0.1, SHARE)  # the warmup starts at lr * this
    step_size: float = rule(30.0, POSITIVE)  # step: epochs between decays
    gamma: float = rule(0.1, POSITIVE)  # step: decay factor
    min_lr: float = rule(0.0, at_least(0))  # cosine: the floor
    pct_start: float = rule(0.3, OPEN_FRACTION)  # onecycle: share of the run spent increasing the lr

    def check_together(self) -> None:
        if self.name == "onecycle" and self.warmup_epochs > 0:
            raise InvalidValue("warmup_epochs", "onecycle has its own warmup: set scheduler.pct_start instead")


@dataclass
class LossConfig(Section):
    label_smoothing: float = rule(0.0, FRACTION)
    class_weights: Any = rule(None, CLASS_WEIGHTS)  # null, "balanced", or one weight per class (in class-name order)


@dataclass
class EmaConfig(Section):
    decay: float = rule(0.9998, FRACTION)  # the share of the average each update keeps
    warmup_steps: int = rule(0, at_least(0))  # the decay rises linearly from 0 over this many updates


@dataclass
class EarlyStoppingConfig(Section):
    patience: int = rule(5, at_least(1))  # epochs without an improvement of checkpoint.monitor before the run stops
    min_delta: float = rule(0.0, at_least(0))  # an improvement is a change by more than this


@dataclass
class TrainConfig(Section):
    epochs: int = rule(10, at_least(1))
    batch_size: int = rule(32, at_least(1))  # per process
    eval_batch_size: Optional[int] = rule(None, at_least(1))  # per process; default: batch_size
    grad_accum_steps: int = rule(1, at_least(1))
    clip_grad_norm: Optional[float] = rule(None, POSITIVE)
    mixed_precision: Optional[Literal["no", "fp16", "bf16"]] = None  # null: as the launch config says
    seed: int = rule(42, SEED)
    deterministic: bool = False
    compile: bool = False  # torch.compile the model (the first steps compile it; checkpoints and weights unchanged)
    skip_nonfinite_steps: int = rule(0, at_least(0))  # updates with a NaN/inf loss to skip before the run fails
    ema: Optional[EmaConfig] = None  # an exponential moving average of the weights, evaluated beside them
    early_stopping: Optional[EarlyStoppingConfig] = None  # end the run when checkpoint.monitor stops improving
    # how long a process waits for the others in a collective (an all-reduce, a save's barrier, the data the main
    # process finds) before the run fails: a hung process or a lost node ends the run in this time, not never
    collective_timeout_minutes: float = rule(30.0, POSITIVE)
    # the splits the best weights are evaluated on at the end; null: val and test, and train while it holds at most
    # 100,000 images (a full pass over a large train split costs a third of an epoch, for a figure seldom read)
    final_eval_splits: Optional[List[Literal["train", "val", "test"]]] = rule(None, Rule(
        lambda splits: 0 < len(splits) == len(set(splits)), "name each split once, and at least one"))

    def check_engine(self, zero_stage: int | None) -> None:
        """What the launch adds to the rules (``zero_stage``: DeepSpeed's, None without it). DeepSpeed's engine
        applies the update inside backward; ZeRO-3 leaves each process a shard of every parameter (FSDP too, but
        there the weight average follows each process's shards)."""
        if zero_stage is not None and self.skip_nonfinite_steps:
            raise ConfigError("train.skip_nonfinite_steps: not possible under DeepSpeed, whose engine applies the "
                              "update inside backward; set it to 0 (a non-finite loss then stops the run)")
        if zero_stage == 3 and self.ema is not None:
            raise ConfigError("train.ema: not possible under DeepSpeed ZeRO-3, where no process holds whole "
                              "parameters to average; use ZeRO-2 or DDP, or set train.ema: null")


@dataclass
class CheckpointConfig(Section):
    monitor: Literal["val_acc", "val_loss"] = "val_acc"  # what "best" means
    every_n_steps: Optional[int] = rule(None, at_least(1))  # also checkpoint every n optimizer updates inside an epoch
    every_n_minutes: Optional[float] = rule(None, POSITIVE)  # also checkpoint when this much time passed since the last
    keep_last: int = rule(2, at_least(1))  # complete checkpoints kept (plus the best one); the newest always is


@dataclass
class LogConfig(Section):
    every_n_steps: int = rule(10, at_least(1))  # train/loss to TensorBoard every n optimizer updates
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

    def check(self, source: str) -> None:
        """Every section's rules; the first broken one is a ConfigError naming ``source`` and the key."""
        for spec in dataclasses.fields(self):
            section = getattr(self, spec.name)
            if isinstance(section, Section):
                try:
                    section.check()
                except InvalidValue as error:
                    key = f"{spec.name}.{error.key}" if error.key else spec.name
                    raise ConfigError(f"{source}: {key}: {error}") from None

    def notes(self) -> list[str]:
        """What the config allows but is probably not meant: the log and the summary warn about it."""
        notes = []
        if self.scheduler.name != "onecycle" and self.scheduler.warmup_epochs >= self.train.epochs:
            notes.append(f"scheduler.warmup_epochs ({self.scheduler.warmup_epochs:g}) is not shorter than "
                         f"train.epochs ({self.train.epochs}): the learning rate never reaches optim.lr")
        return notes

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: Path) -> None:
        write_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False))
