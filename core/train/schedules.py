"""Learning-rate schedules. Per-step ones keep each param group's own rate (layer-wise rates survive)."""
from __future__ import annotations

import math

import torch
from torch.optim import lr_scheduler

from core.config import OptimConfig

SCHEDULES = ("constant", "step", "cosine", "onecycle", "plateau")


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: OptimConfig, steps_per_epoch: int,
                   maximize: bool = True) -> tuple[lr_scheduler.LRScheduler | lr_scheduler.ReduceLROnPlateau, str]:
    """The scheduler and when to step it: "batch", "epoch", or "metric" (plateau, fed the monitored value)."""
    total = max(cfg.epochs * steps_per_epoch, 1)
    if cfg.schedule == "constant":
        return lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), "batch"
    if cfg.schedule == "step":
        return lr_scheduler.StepLR(optimizer, step_size=max(cfg.step_size, 1), gamma=cfg.gamma), "epoch"
    if cfg.schedule == "cosine":
        warmup = int(cfg.warmup_epochs * steps_per_epoch)
        return lr_scheduler.LambdaLR(optimizer, _WarmupCosine(warmup, total)), "batch"
    if cfg.schedule == "onecycle":
        return lr_scheduler.OneCycleLR(optimizer, max_lr=[g["lr"] for g in optimizer.param_groups],
                                       total_steps=total), "batch"
    if cfg.schedule == "plateau":
        return lr_scheduler.ReduceLROnPlateau(optimizer, mode="max" if maximize else "min", factor=cfg.gamma,
                                              patience=1), "metric"
    raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")


class _WarmupCosine:
    """Linear warm-up, then cosine to zero. A class, not a lambda, so its state is plain data."""

    def __init__(self, warmup: int, total: int):
        self.warmup, self.total = warmup, total

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(self.total - self.warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
