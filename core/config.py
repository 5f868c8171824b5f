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


@dataclass
class AugmentConfig:
    image_size: int = 224
    resize: str = "crop"  # crop (shorter side, centre crop) | squash (ignore aspect) | pad (letterbox)
    crop_scale_min: float = 0.6  # random resized crop keeps this fraction of the area at least; 1 = off
    hflip: float = 0.5  # probabilities
    vflip: float = 0.0
    rotation: float = 0.0  # degrees, +-
    color_jitter: float = 0.0  # brightness/contrast/saturation strength, 0..1
    hue: float = 0.0  # 0..0.5
    grayscale: float = 0.0
    blur: float = 0.0
    erasing: float = 0.0

    def is_random(self) -> bool:
        """True when the training pipeline differs from the evaluation one."""
        return any(
            (self.crop_scale_min < 1, self.hflip, self.vflip, self.rotation, self.color_jitter, self.hue,
             self.grayscale, self.blur, self.erasing)
        )


@dataclass
class ModelConfig:
    backbone: str = "resnet18"
    weights: str = "pretrained"  # pretrained (cache, else random) | random | path to a weights file
    dropout: float = 0.0  # before the new head


@dataclass
class OptimConfig:
    optimizer: str = "adamw"  # sgd | adam | adamw
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 1e-4
    epochs: int = 5
    batch_size: int = 32


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 = all cores
    num_workers: int = 0  # DataLoader worker processes

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
    if hint in (int, str, bool) and not (type(value) is hint):
        raise ConfigError(f"'{where}' must be {hint.__name__}, got {value!r}")
    return value
