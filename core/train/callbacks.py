"""Training events, Lightning-style: subclasses override only the hooks they need.

A stop is an exception (as fastai's CancelFitException): any hook may raise `StopTraining`, and `fit`
catches it, keeps the best weights so far, and records the run as stopped.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


class StopTraining(Exception):
    """Raise from a hook (or set fit's stop event) to end the run cleanly after the current batch."""


@dataclass
class State:
    """What the loop exposes to callbacks; plain values, safe to copy."""
    epoch: int = 0  # 1-based while running
    epochs: int = 0
    batch: int = 0  # 1-based within the epoch
    batches: int = 0
    phase: str = "train"  # train | val
    batch_loss: float = float("nan")
    history: list[dict[str, Any]] = field(default_factory=list)  # one row per finished epoch
    best_epoch: int = 0
    best_score: float = float("-inf")


class Callback:
    def on_fit_start(self, state: State, info: dict[str, Any]) -> None: ...
    def on_epoch_start(self, state: State) -> None: ...
    def on_batch_end(self, state: State) -> None: ...
    def on_epoch_end(self, state: State, row: dict[str, Any], confusion: list[list[int]] | None) -> None: ...
    def on_fit_end(self, state: State, status: str) -> None: ...
    def on_message(self, text: str, level: str = "info") -> None: ...
    def on_stage(self, index: int, total: int, label: str) -> None: ...  # a job made of fits: fold 2 of 5


class Callbacks(Callback):
    """Fans every event out to a list of callbacks."""

    def __init__(self, callbacks: list[Callback]):
        self.callbacks = list(callbacks)

    def __getattribute__(self, name: str):
        if name.startswith("on_"):
            def fan_out(*args, **kwargs):
                for cb in object.__getattribute__(self, "callbacks"):
                    getattr(cb, name)(*args, **kwargs)
            return fan_out
        return object.__getattribute__(self, name)
