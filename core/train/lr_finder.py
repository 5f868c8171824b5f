"""Learning-rate range test (Leslie Smith / fastai style): a short exponential lr sweep that suggests an lr,
so a person need not guess one, and leaves the model and optimizer exactly as it found them.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

BETA = 0.98  # loss smoothing: raw per-batch losses are too noisy to read a slope from
DIVERGE_FACTOR = 4.0  # stop once the smoothed loss exceeds this multiple of the best one
MIN_POINTS = 10  # fewer points than this cannot show a trend worth trusting
SKIP_FRACTION = 0.1  # the first steps mostly show the smoothing warming up, not the lr


@dataclass
class LRFindResult:
    lrs: list[float]
    losses: list[float]  # smoothed, bias-corrected; finite
    suggestion: float | None
    reason: str  # one sentence for a person: why this lr, or why none

    def to_dict(self) -> dict[str, Any]:
        """Plain floats only, so it goes straight into JSON (no NaN: non-finite losses are never recorded)."""
        return {"lrs": [float(x) for x in self.lrs], "losses": [float(x) for x in self.losses],
                "suggestion": None if self.suggestion is None else float(self.suggestion), "reason": self.reason}


def find_lr(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer, loader: Iterable,
            device: torch.device, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 200,
            stop_event: threading.Event | None = None,
            on_step: Callable[[int, int], None] | None = None) -> LRFindResult:
    """Train briefly with an exponentially rising lr, then put everything back.

    Every module stays in the train/eval mode the caller set (strategies.set_train_mode, as fit trains: a frozen
    group's batch norm keeps its statistics), so the sweep measures the training it is for. Each param group
    keeps its ratio to the largest group's lr, so layer-wise learning rates sweep together and the suggestion is
    the lr for the largest group. The loader is re-iterated (re-shuffled) when it has fewer batches than num_steps.
    """
    if not (start_lr > 0 and end_lr > start_lr and math.isfinite(end_lr)):
        raise ValueError(f"need 0 < start_lr < end_lr, both finite; got start_lr={start_lr}, end_lr={end_lr}")
    if num_steps < 1:
        raise ValueError(f"num_steps must be at least 1, got {num_steps}")

    # Snapshot to CPU: exact on reload, and costs no accelerator memory during the sweep.
    model_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    grads = [None if p.grad is None else p.grad.detach().clone() for p in model.parameters()]
    optimizer_state = _clone(optimizer.state_dict())
    initial_lrs = [_lr_of(g) for g in optimizer.param_groups]
    modes = [m.training for m in model.modules()]
    top = max(initial_lrs, default=0.0)
    ratios = [lr / top if top > 0 else 1.0 for lr in initial_lrs]

    lrs: list[float] = []
    losses: list[float] = []
    stopped = ""
    try:
        batches = _cycle(loader)
        avg, best = 0.0, math.inf
        for i in range(num_steps):
            if stop_event is not None and stop_event.is_set():
                stopped = f"was stopped on request after {i} of {num_steps} steps"
                break
            lr = _sweep_lr(i, num_steps, start_lr, end_lr)
            for group, ratio in zip(optimizer.param_groups, ratios):
                _set_lr(group, ratio * lr)
            images, targets = next(batches)
            images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
            loss = criterion(model(images), targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            avg = BETA * avg + (1 - BETA) * loss.item()
            smoothed = avg / (1 - BETA ** (i + 1))
            if not math.isfinite(smoothed):
                stopped = f"stopped when the loss became non-finite at lr {lr:.1e}"
            else:
                lrs.append(lr)
                losses.append(smoothed)
            if on_step is not None:
                on_step(i + 1, num_steps)
            if stopped:
                break
            if best > 0 and smoothed > DIVERGE_FACTOR * best:
                stopped = f"stopped when the loss diverged at lr {lr:.1e}"
                break
            best = min(best, smoothed)
    finally:
        model.load_state_dict(model_state)
        for p, g in zip(model.parameters(), grads):
            p.grad = g
        optimizer.load_state_dict(optimizer_state)  # momentum buffers, step counts and every group's lr
        for m, mode in zip(model.modules(), modes):
            m.training = mode

    suggestion, reason = _suggest(lrs, losses, num_steps)
    if suggestion is not None:
        suggestion = min(max(suggestion, start_lr), end_lr)
    if stopped:
        reason = f"{reason} The sweep {stopped}."
    return LRFindResult(lrs, losses, suggestion, reason)


def _suggest(lrs: list[float], losses: list[float], num_steps: int) -> tuple[float | None, str]:
    """Steepest descent, not the minimum: at the minimum the lr is already about to be too high."""
    n = len(losses)
    if n < MIN_POINTS:
        return None, (f"Only {n} of {num_steps} steps gave a usable loss, too few to read a trend; "
                      f"run at least {MIN_POINTS} steps.")
    loss = np.asarray(losses, dtype=np.float64)
    slope = np.gradient(loss, np.log10(np.asarray(lrs, dtype=np.float64)))
    skip = max(1, int(n * SKIP_FRACTION))
    lowest = int(np.argmin(loss))
    if lowest <= skip:
        return None, ("The loss never decreased during the sweep, so there is no lr to suggest; "
                      "try a lower start_lr or check that the model can learn this data.")
    window = slope[skip:lowest + 1]
    j = int(np.argmin(window))
    if not (window[j] < 0 and np.isfinite(window[j])):
        return None, "The loss never decreased during the sweep, so there is no lr to suggest."
    lr = lrs[skip + j]
    return lr, f"Steepest descent of the loss at {lr:.1e}."


def _sweep_lr(i: int, num_steps: int, start_lr: float, end_lr: float) -> float:
    if num_steps == 1 or i == 0:
        return start_lr
    if i == num_steps - 1:
        return end_lr  # exact, so float error never takes the last lr past end_lr
    return start_lr * (end_lr / start_lr) ** (i / (num_steps - 1))


def _cycle(loader: Iterable) -> Iterator:
    """Re-iterate rather than itertools.cycle: no cached batches, and each pass re-shuffles and re-augments."""
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the loader yields no batches")


def _lr_of(group: dict) -> float:
    lr = group["lr"]
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


def _set_lr(group: dict, lr: float) -> None:
    """In place when lr is a tensor (capturable/fused optimizers hold it so); a float would break them."""
    if isinstance(group["lr"], torch.Tensor):
        group["lr"].fill_(lr)
    else:
        group["lr"] = lr


def _clone(obj: Any) -> Any:
    """Deep copy of a state_dict: state_dict() hands out live tensors that optimizer.step() updates in place."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: _clone(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clone(v) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_clone(v) for v in obj)
    return obj
