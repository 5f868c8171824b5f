"""What a search varies: settings of the run config by their dotted names, each a range or a list of choices.

A space is plain JSON (`--space space.json`, the Search page writes the same), e.g.
    {"optim.lr": {"low": 1e-4, "high": 0.1, "log": true}, "model.strategy": {"choices": ["linear-probe", "full"]}}
The kind of each parameter comes from the config's own type (float, int, or a choice), so a space cannot ask
for a learning rate of "fast". `augment.strength` is the one setting that is not a config field: 0 is no
augmentation, 1 a strong preset (flips, crops, rotation, colour).
"""
from __future__ import annotations

import copy
import math
from typing import Any

import optuna

from core.config import AugmentConfig, ConfigError, RunConfig, set_setting, settings

STRENGTH = "augment.strength"

# The settings the Search page offers, with a sensible range each (the list, in the page's order).
OFFERED: dict[str, dict[str, Any]] = {
    "optim.lr": {"low": 1e-4, "high": 1e-1, "log": True},
    "optim.weight_decay": {"low": 1e-6, "high": 1e-1, "log": True},
    "model.dropout": {"low": 0.0, "high": 0.5},
    "optim.epochs": {"low": 5, "high": 40},
    "optim.batch_size": {"choices": [16, 32, 64]},
    "regularize.label_smoothing": {"low": 0.0, "high": 0.2},
    "model.strategy": {"choices": ["linear-probe", "partial", "layerwise", "full"]},
    "model.freeze_groups": {"low": 0, "high": 4},
    "model.lr_decay": {"low": 0.3, "high": 1.0},
    STRENGTH: {"low": 0.0, "high": 1.0},
    "model.backbone": {"choices": ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]},
    "augment.image_size": {"choices": [160, 224, 260]},
}
# On cached frozen features (the default path) a trial takes a fraction of a second: these four matter there.
DEFAULT_SPACE = ("optim.lr", "optim.weight_decay", "model.dropout", "optim.epochs")
# Settings only the epoch loop uses: a solved head (optim.solver "auto" on cached features) ignores them.
LOOP_ONLY = {"optim.lr", "optim.weight_decay", "optim.epochs", "optim.batch_size", "optim.optimizer",
             "optim.schedule", "model.dropout"}


def default_space() -> dict[str, dict[str, Any]]:
    return {name: dict(OFFERED[name]) for name in DEFAULT_SPACE}


def _kinds() -> dict[str, type]:
    return {".".join(path): hint for path, hint, _ in settings()} | {STRENGTH: float}


def check(space: dict[str, dict[str, Any]]) -> None:
    """Refuse unknown settings and malformed ranges with a sentence naming the parameter."""
    if not space:
        raise ConfigError("The search space is empty: pick at least one setting to vary.")
    kinds = _kinds()
    for name, spec in space.items():
        if name not in kinds:
            raise ConfigError(f"'{name}' is not a setting a search can vary; known: {', '.join(sorted(OFFERED))}")
        if not isinstance(spec, dict):
            raise ConfigError(f"'{name}' needs {{\"low\": .., \"high\": ..}} or {{\"choices\": [..]}}")
        if "choices" in spec:
            if not isinstance(spec["choices"], list) or not spec["choices"]:
                raise ConfigError(f"'{name}': choices must be a non-empty list")
            continue
        if kinds[name] not in (int, float):
            raise ConfigError(f"'{name}' is not a number: give it choices instead of a range")
        low, high = spec.get("low"), spec.get("high")
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high)) or low > high:
            raise ConfigError(f"'{name}': low and high must be numbers with low <= high")
        if spec.get("log") and low <= 0:
            raise ConfigError(f"'{name}': a log range needs low > 0")


def suggest(trial: optuna.Trial, space: dict[str, dict[str, Any]]) -> dict[str, Any]:
    kinds = _kinds()
    params = {}
    for name, spec in space.items():
        if "choices" in spec:
            params[name] = trial.suggest_categorical(name, spec["choices"])
        elif kinds[name] is int:
            params[name] = trial.suggest_int(name, int(spec["low"]), int(spec["high"]), log=bool(spec.get("log")))
        else:
            params[name] = trial.suggest_float(name, spec["low"], spec["high"], log=bool(spec.get("log")))
    return params


def grid(space: dict[str, dict[str, Any]], points: int) -> dict[str, list[Any]]:
    """The grid sampler's values: choices as given, each range as `points` values (log-spaced on a log range)."""
    kinds = _kinds()
    out: dict[str, list[Any]] = {}
    for name, spec in space.items():
        if "choices" in spec:
            out[name] = list(spec["choices"])
            continue
        low, high, n = spec["low"], spec["high"], max(points, 1)
        if spec.get("log"):
            values = [math.exp(math.log(low) + (math.log(high) - math.log(low)) * i / max(n - 1, 1)) for i in range(n)]
        else:
            values = [low + (high - low) * i / max(n - 1, 1) for i in range(n)]
        values = sorted({int(round(v)) for v in values}) if kinds[name] is int else [float(f"{v:.4g}") for v in values]
        out[name] = values if low != high else [low]
    return out


def grid_size(space: dict[str, dict[str, Any]], points: int) -> int:
    return math.prod(len(v) for v in grid(space, points).values())


def apply(config: RunConfig, params: dict[str, Any]) -> RunConfig:
    """A copy of the config with the trial's values set."""
    config = copy.deepcopy(config)
    for name, value in params.items():
        if name == STRENGTH:
            config.augment = with_strength(config.augment, float(value))
        else:
            set_setting(config, tuple(name.split(".")), value)
    return config


def with_strength(aug: AugmentConfig, strength: float) -> AugmentConfig:
    """One knob for augmentation: random crops, a horizontal flip, small rotations and colour changes, scaled."""
    aug = copy.deepcopy(aug)
    s = min(max(strength, 0.0), 1.0)
    aug.crop_scale_min = round(1 - 0.7 * s, 3)
    aug.hflip = 0.5 if s > 0 else 0.0
    aug.rotation = round(20 * s, 2)
    aug.color_jitter = round(0.4 * s, 3)
    return aug
