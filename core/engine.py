"""The training loop: plain functions in the shape of torchvision's reference train.py.

`fit(config, run_dir, callbacks, stop_event)` needs nothing but a config and a run folder, so the CLI, a
page's background thread and (later) torchrun workers all call the same thing. The engine knows nothing
of jobs or pages: it reports through callbacks and stops when its event is set or a callback raises.
"""
from __future__ import annotations

import os
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from . import backbones, metrics, runs
from .augment import eval_transform, train_transform
from .callbacks import Callback, Callbacks, State, StopTraining
from .config import RunConfig, workspace_root
from .loaders import ImageDataset, make_loader
from .sources import DataError
from .validation import Dataset, load_dataset
from .weights import WeightsInfo, resolve


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class FitResult:
    run_dir: Path
    status: str  # finished | stopped
    best_epoch: int
    best: dict[str, Any]  # the metrics row of the best epoch
    history: list[dict[str, Any]]
    weights: WeightsInfo
    model: nn.Module = field(repr=False)  # holds the best weights


def train_one_epoch(model: nn.Module, criterion: nn.Module, optimizer: torch.optim.Optimizer,
                    loader: Sequence, device: torch.device, state: State, callbacks: Callback,
                    stop_event: threading.Event) -> dict[str, float]:
    model.train()
    total_loss, correct, seen = 0.0, 0, 0
    state.phase, state.batches = "train", len(loader)
    for state.batch, (images, targets) in enumerate(loader, 1):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)
        loss = criterion(logits, targets)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"The loss became {loss.item()} in epoch {state.epoch}, batch {state.batch}: training diverged. "
                "Try a lower learning rate (for example a tenth of the current one)."
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        n = targets.size(0)
        state.batch_loss = loss.item()
        total_loss += state.batch_loss * n
        correct += int((logits.argmax(1) == targets).sum())
        seen += n
        callbacks.on_batch_end(state)
        if stop_event.is_set():
            raise StopTraining("stopped on request")
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: Sequence, device: torch.device,
             num_classes: int) -> tuple[float, torch.Tensor]:
    """Mean loss and the confusion matrix (rows = true class)."""
    model.eval()
    total_loss, seen = 0.0, 0
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        logits = model(images)
        total_loss += criterion(logits, targets).item() * targets.size(0)
        seen += targets.size(0)
        cm += metrics.confusion_matrix(logits.argmax(1).cpu(), targets.cpu(), num_classes)
    return total_loss / max(seen, 1), cm


def fit(config: RunConfig, run_dir: Path, callbacks: Sequence[Callback] = (),
        stop_event: threading.Event | None = None, dataset: Dataset | None = None) -> FitResult:
    """Train as the config says, writing the run folder as it goes; returns with the best weights loaded."""
    cb = Callbacks(list(callbacks))
    stop_event = stop_event or threading.Event()
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _seed_everything(config.seed)
    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    device = _device(config.device)

    if dataset is None:
        dataset = load_dataset(config.data.source, workspace_root(), config.data)
    if not dataset.report.trainable:
        raise DataError(dataset.report.errors[0])
    backbone = backbones.get(config.model.backbone)
    state_dict, weights = resolve(backbone, config.model.weights)
    if not weights.pretrained:
        cb.on_message(weights.note, "warning")
    model = backbones.build_model(backbone, len(dataset.classes), config.model.dropout, state_dict).to(device)
    loaders = _loaders(config, dataset, backbone, device)
    optimizer = _optimizer(config, model)
    criterion = nn.CrossEntropyLoss()

    _write_run_header(config, run_dir, dataset, backbone, weights, device)
    state = State(epochs=config.optim.epochs)
    cb.on_fit_start(state, {"classes": dataset.classes, "weights": weights.to_dict(),
                            "train_images": len(loaders["train"].dataset),
                            "val_images": len(loaders["val"].dataset) if "val" in loaders else 0})
    best_state = None
    status = "finished"
    try:
        for state.epoch in range(1, config.optim.epochs + 1):
            cb.on_epoch_start(state)
            started = time.perf_counter()
            loaders["train"].generator.manual_seed(config.seed * 100_003 + state.epoch)
            torch.manual_seed(config.seed * 100_019 + state.epoch)  # augmentation draws: epoch-reproducible
            train = train_one_epoch(model, criterion, optimizer, loaders["train"], device, state, cb, stop_event)
            row: dict[str, Any] = {"epoch": state.epoch, "train_loss": train["loss"], "train_acc": train["acc"]}
            cm = None
            if "val" in loaders:
                state.phase = "val"
                val_loss, cm = evaluate(model, criterion, loaders["val"], device, len(dataset.classes))
                row |= {"val_loss": val_loss} | {f"val_{k}": v for k, v in metrics.summary(cm).items()}
            row |= {"lr": optimizer.param_groups[0]["lr"], "seconds": time.perf_counter() - started}
            state.history.append(row)
            runs.append_jsonl(run_dir / "metrics.jsonl", row)
            score = row.get("val_acc", -row["train_loss"])  # no validation split: the last epoch wins ties
            if best_state is None or score > state.best_score:
                state.best_epoch, state.best_score = state.epoch, score
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
                runs.save_weights(run_dir / "model.safetensors", best_state)
                if cm is not None:
                    runs.write_json(run_dir / "confusion_matrix.json",
                                    {"epoch": state.epoch, "classes": dataset.classes, "matrix": cm.tolist()})
            cb.on_epoch_end(state, row, cm.tolist() if cm is not None else None)
            if stop_event.is_set():
                raise StopTraining("stopped on request")
    except StopTraining as stop:
        status = "stopped"
        cb.on_message(f"Training stopped in epoch {state.epoch}: {stop}. The best weights so far are kept.")
    except BaseException as exc:
        runs.write_status(run_dir, "failed", str(exc), best_epoch=state.best_epoch)
        cb.on_fit_end(state, "failed")
        raise
    if best_state is not None:
        model.load_state_dict(best_state)
    best = state.history[state.best_epoch - 1] if state.best_epoch else {}
    runs.write_status(run_dir, status, best_epoch=state.best_epoch)
    cb.on_fit_end(state, status)
    return FitResult(run_dir, status, state.best_epoch, best, state.history, weights, model)


def _loaders(config: RunConfig, dataset: Dataset, backbone: backbones.Backbone, device: torch.device) -> dict:
    aug = config.augment
    min_side = aug.image_size
    pin = device.type == "cuda"
    train_ds = ImageDataset(dataset.data_dir, dataset.split("train"), train_transform(aug, backbone.mean, backbone.std),
                            min_side)
    result = {"train": make_loader(train_ds, config.optim.batch_size, True, config.num_workers,
                                   torch.Generator(), pin)}
    eval_tf = eval_transform(aug, backbone.mean, backbone.std)
    for split in ("val", "test"):
        samples = dataset.split(split)
        if samples:
            result[split] = make_loader(ImageDataset(dataset.data_dir, samples, eval_tf, min_side),
                                        config.optim.batch_size, False, config.num_workers, None, pin)
    return result


def _optimizer(config: RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    """Weight decay on weights only: decaying norm layers and biases only hurts."""
    o = config.optim
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    groups = [{"params": decay, "weight_decay": o.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum)
    if o.optimizer == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr)
    raise ValueError(f"optimizer must be sgd, adam or adamw, got {o.optimizer!r}")


def _write_run_header(config, run_dir, dataset, backbone, weights, device) -> None:
    provenance = {"weights": weights.to_dict(), "dataset": {"key": dataset.key, "layout": dataset.report.layout,
                  "splits": dataset.report.splits}, "device": str(device), "torch": torch.__version__}
    runs.write_json(run_dir / "config.json", config.to_dict() | {"provenance": provenance})
    runs.write_json(run_dir / "classes.json", dataset.classes)
    runs.write_json(run_dir / "preprocessing.json", {
        "image_size": config.augment.image_size, "resize": config.augment.resize,
        "mean": list(backbone.mean), "std": list(backbone.std), "backbone": backbone.name})
    for stale in ("metrics.jsonl", "confusion_matrix.json", "model.safetensors"):
        (run_dir / stale).unlink(missing_ok=True)  # a fresh run into a used folder starts clean
    runs.write_status(run_dir, "running")


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
