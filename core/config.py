"""Run configuration: nested dataclasses that round-trip to JSON.

One `RunConfig` describes a whole run, so the CLI, the pages and a run folder's `config.json`
all speak the same language. Unknown keys are refused (a typo must not silently fall back to a default).
"""
from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

ROOT = Path(__file__).resolve().parents[1]


def workspace_root() -> Path:
    """Where the app keeps copied datasets, runs and caches (FTLAB_HOME overrides)."""
    return Path(os.environ.get("FTLAB_HOME", ROOT / "workspace")).resolve()


@dataclass
class DataConfig:
    source: str = ""  # a folder, a pre-split folder (train/ val/ test/), or a zip
    val_ratio: float = 0.2  # used when the data is not already split
    test_ratio: float = 0.0
    split_seed: int = 0  # same seed, same split
    # Images of one patient or specimen never straddle two splits or folds; at most one of these three is set.
    groups: str = ""  # a CSV file with columns path,group (path relative to the dataset)
    group_pattern: str = ""  # a regular expression with a group named "group", searched in each image's path
    group_level: int = 0  # a folder level: 1 = the first folder below the class folder (class/P017/img.png)
    folds: int = 0  # k-fold cross-validation when > 1: the images outside the test split go into k folds ...
    fold: int = 0  # ... and fold number `fold` (0..k-1) is this run's validation split


@dataclass
class AugmentConfig:
    image_size: int = 224
    resize: str = "crop"  # crop (shorter side, centre crop) | squash (ignore aspect) | pad (letterbox)
    crop_pct: float = 0.875  # crop: the centre crop keeps this share of the shorter side (ImageNet's convention)
    crop_scale_min: float = 1.0  # random resized crop keeps this fraction of the area at least; 1 = off
    hflip: float = 0.0  # probabilities (off by default: the default linear probe then runs on cached features)
    vflip: float = 0.0
    rotation: float = 0.0  # degrees, +-
    color_jitter: float = 0.0  # brightness/contrast/saturation strength, 0..1
    hue: float = 0.0  # 0..0.5
    grayscale: float = 0.0
    blur: float = 0.0
    erasing: float = 0.0

    def resize_side(self) -> int:
        """The shorter side images are resized to before the centre crop (and at least decoded at): timm's
        floor(size / crop_pct), so a timm eval pipeline and preprocessing.json's "resize_side" agree."""
        return int(self.image_size / self.crop_pct) if self.resize == "crop" else self.image_size  # int: floor, > 0

    def is_random(self) -> bool:
        """True when the training pipeline differs from the evaluation one."""
        return any(
            (self.crop_scale_min < 1, self.hflip, self.vflip, self.rotation, self.color_jitter, self.hue,
             self.grayscale, self.blur, self.erasing)
        )


@dataclass
class ModelConfig:
    backbone: str = "efficientnet_lite0"  # ImageNet weights that install with the app (see README)
    weights: str = "pretrained"  # pretrained (cache, package, download, else random) | random | a file or run folder
    dropout: float = 0.0  # before the new head
    strategy: str = "auto"  # auto (linear-probe on pretrained weights, full on random) | full | linear-probe | partial | layerwise | gradual
    freeze_groups: int = 2  # partial: the first k layer groups stay frozen
    lr_decay: float = 0.5  # layerwise: a group's rate is the head's times lr_decay ** depth
    unfreeze_every: int = 1  # gradual: one more group from the top every N epochs
    train_frozen_bn: bool = False  # batch norm in frozen groups updates its running statistics


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # sgd | adam | adamw
    lr: float = 1e-3  # the head's rate
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 1e-4  # L2, never on norm layers and biases
    epochs: int = 10
    batch_size: int = 32
    schedule: str = "cosine"  # constant | step | cosine | onecycle | plateau
    warmup_epochs: float = 0.0  # cosine: linear warm-up
    step_size: int = 3  # step: epochs between decays
    gamma: float = 0.1  # step and plateau: the decay factor
    clip_grad: float = 0.0  # max gradient norm; 0 = off
    # auto: on cached features (the default linear probe) the head is solved to convergence (L-BFGS, its L2 chosen
    # by cross-validation on the training split; optimizer, lr, epochs and weight decay then do not apply);
    # loop: always the epoch loop with the settings above
    solver: str = "auto"


@dataclass
class RegularizeConfig:
    l1: float = 0.0  # L1 penalty on trainable weights
    label_smoothing: float = 0.0
    mixup: float = 0.0  # Beta(alpha, alpha); 0 = off
    cutmix: float = 0.0  # Beta(alpha, alpha); 0 = off
    class_weighting: str = "none"  # none | loss (weighted cross-entropy) | sampler (balanced batches)


@dataclass
class EarlyStopConfig:
    monitor: str = "val_acc"  # val_acc | val_balanced_acc | val_macro_f1 | val_loss; also picks the best epoch
    patience: int = 0  # epochs without improvement before stopping; 0 = never stop early
    min_delta: float = 0.0


@dataclass
class DistributedConfig:
    """How many processes train one run (torchrun). The batch size stays the global one: each of the N processes
    takes batch_size / N images per step, so a run means the same on one process or several."""
    nproc: int = 1  # processes on each machine (one per GPU, or a share of the CPU cores each)
    nnodes: int = 1  # machines
    max_restarts: int = 0  # torchrun restarts the whole group this often after a failure, resuming from the checkpoint
    sync_bn: bool = False  # batch norm statistics over the global batch (SyncBatchNorm; GPUs only)

    @property
    def processes(self) -> int:
        return self.nproc * self.nnodes


# What runs a frozen network (models/inference.py), in the order `auto` tries them; here, not there, so the CLI's
# choices need no torch.
ENGINES = ("auto", "onnxruntime", "channels_last", "eager")


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)
    early_stop: EarlyStopConfig = field(default_factory=EarlyStopConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads on each machine, shared by the run's processes there; 0 = all cores
    num_workers: int = -1  # DataLoader worker processes; -1: sized to the cores on a GPU, none on a CPU
    engine: str = "auto"  # what runs a frozen network (features, Predict): one of ENGINES
    precision: str = "auto"  # autocast in loops through the backbone: auto | fp32 | bf16 | fp16 (train/precision.py)
    channels_last: bool = True  # memory layout in loops through the backbone: faster convolutions, same arithmetic
    feature_cache: bool = True  # linear probe without random augmentation trains the head on cached features
    distributed: DistributedConfig = field(default_factory=DistributedConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RunConfig":
        return from_dict(cls, data)

    @classmethod
    def from_json(cls, text: str) -> "RunConfig":
        data = json.loads(text)
        data.pop("provenance", None)  # a run's config.json also records what was resolved
        return cls.from_dict(data)


def settings(cls: type = RunConfig, prefix: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], type, Any]]:
    """Every leaf setting as (path, type, default): one list from which the CLI builds its flags."""
    out = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            out += settings(hint, prefix + (f.name,))
        else:
            out.append((prefix + (f.name,), hint, f.default))
    return out


def set_setting(config: RunConfig, path: tuple[str, ...], value: Any) -> None:
    target = config
    for part in path[:-1]:
        target = getattr(target, part)
    setattr(target, path[-1], _coerce(typing.get_type_hints(type(target))[path[-1]], value, ".".join(path)))


class ConfigError(ValueError):
    """A config file or value a person wrote is wrong; the message says which key."""


def from_dict(cls: type[T], data: dict[str, Any], where: str = "") -> T:
    """Build a (nested) dataclass from plain JSON data, refusing unknown keys."""
    if not isinstance(data, dict):
        raise ConfigError(f"'{where or 'config'}' must be an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"unknown setting {where}{unknown[0]!r}; known: {', '.join(sorted(names))}")
    kwargs = {}
    for key, value in data.items():
        kwargs[key] = _coerce(hints[key], value, f"{where}{key}")
    return cls(**kwargs)


def _coerce(hint: Any, value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(hint):
        return from_dict(hint, value, where + ".")
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(hint):
            return None
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    if hint is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if hint in (int, float, str, bool) and not (type(value) is hint):
        raise ConfigError(f"'{where}' must be {hint.__name__}, got {value!r}")
    return value
