"""Frozen-backbone fast path: compute each image's features once, then train only the head on them.

On a CPU a forward pass costs a fraction of forward + backward, and with a frozen body and no random
augmentation every epoch would recompute the same features. They are cached on disk, keyed by the data,
backbone, weights and preprocessing, so a second run (another learning rate, more epochs) starts at once.
The cache is derived data: past its budget (FTLAB_FEATURE_CACHE_MB) or when the disk runs low, the files used
least recently are deleted (a later run computes them again).
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Iterable

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from core import runs
from core.models import inference
from core.models.backbones import Backbone, set_submodule
from core.config import RunConfig
from core.data import eviction
from core.data.validation import Dataset
from core.models.weights import WeightsInfo

Progress = Callable[[int, int], None]


def cache_budget() -> int:
    return int(float(os.environ.get("FTLAB_FEATURE_CACHE_MB", "4096")) * 1024**2)


def why_not(config: RunConfig) -> str | None:
    """None when the fast path applies, else the reason in a sentence."""
    if not config.feature_cache:
        return "the feature cache is turned off"
    if config.model.strategy != "linear-probe":
        return f"the {config.model.strategy} strategy trains the backbone"
    if config.augment.is_random():
        return ("random augmentation changes the features every epoch, so the linear probe runs the full loop; "
                "turn augmentation off for a run about ten times faster")
    if config.model.train_frozen_bn:
        return "batch norm statistics that keep updating change the features every batch"
    if config.regularize.mixup or config.regularize.cutmix:
        return "mixup/cutmix mix images, not features"
    return None


def head_module(model: nn.Module, backbone: Backbone) -> nn.Module:
    """The head group as one module: what trains on the features."""
    (prefix,) = backbone.groups[-1][1]
    return model.get_submodule(prefix)


def cache_key(config: RunConfig, dataset: Dataset, backbone: Backbone, weights: WeightsInfo) -> str:
    aug = config.augment
    ident = {"data": dataset.key, "backbone": backbone.name, "weights": weights.sha256 or weights.source,
             "seed": config.seed if not weights.pretrained else None, "size": aug.image_size, "resize": aug.resize,
             "crop_pct": aug.crop_pct,
             "mean": backbone.mean, "std": backbone.std, "v": 2}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:24]


@torch.no_grad()
def extract(model: nn.Module, backbone: Backbone, loader: Iterable, device: torch.device, engine: str = "auto",
            progress: Progress | None = None) -> tuple[torch.Tensor, str]:
    """(the head group's input for every image the loader yields, in order; the engine that computed them and,
    when it is not the one asked for, why). The engine is built and checked on the first batch."""
    (prefix,) = backbone.groups[-1][1]
    head = head_module(model, backbone)
    set_submodule(model, prefix, nn.Identity())
    try:
        model.eval()
        out, run = [], None
        for i, (images, _) in enumerate(loader, 1):
            run = run or inference.runner(model, engine, device, images[:2], len(loader.dataset))
            out.append(run(images))
            if progress:
                progress(i, len(loader))
        return torch.cat(out), str(run or "")
    finally:
        set_submodule(model, prefix, head)


def read_cache(path: Path, paths: list[str]) -> tuple[dict[str, int], torch.Tensor] | None:
    """(path -> row, features) from the cache file when it covers every one of `paths`, else None."""
    if not path.exists():
        return None
    blob = torch.load(path, weights_only=True)
    index = {p: i for i, p in enumerate(blob["paths"])}
    if not all(p in index for p in paths):
        return None
    os.utime(path)  # used now: eviction goes by the modification time
    return index, blob["features"]


def write_cache(path: Path, paths: list[str], features: torch.Tensor) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with runs.replace_atomically(path) as tmp:
        torch.save({"paths": paths, "features": features}, tmp)
    evict_least_recent(path.parent, keep=path)


def evict_least_recent(folder: Path, keep: Path) -> list[Path]:
    """Delete the least recently used cache files until the cache fits its budget and the disk keeps its reserve;
    `keep` (just written) stays. Returns what was deleted."""
    files = sorted(folder.glob("*.pt"), key=lambda f: f.stat().st_mtime)
    total = sum(f.stat().st_size for f in files)
    limit = min(cache_budget(), total + shutil.disk_usage(folder).free - eviction.disk_reserve())
    deleted = []
    for f in files:
        if total <= limit:
            break
        if f != keep:
            total -= f.stat().st_size
            f.unlink(missing_ok=True)
            deleted.append(f)
    return deleted


def feature_loader(index: dict[str, int], features: torch.Tensor, samples, batch_size: int, train: bool,
                   generator: torch.Generator | None, sampler=None) -> DataLoader:
    rows = torch.tensor([index[s.path] for s in samples], dtype=torch.long)
    labels = torch.tensor([s.label for s in samples], dtype=torch.long)
    return DataLoader(TensorDataset(features[rows], labels), batch_size=batch_size,
                      shuffle=train and sampler is None, sampler=sampler, generator=generator,
                      drop_last=train and len(sampler if sampler is not None else samples) > batch_size)
