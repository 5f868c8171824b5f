"""The training loop: plain functions in the shape of torchvision's reference train.py.

`fit(config, run_dir, callbacks, stop_event)` needs nothing but a config and a run folder, so the CLI, a
page's job worker and torchrun's processes all call the same thing (distributed.py: under torchrun the model is
wrapped in DistributedDataParallel, rank 0 alone writes and reports, and stops are agreed by every process).
The engine knows nothing of jobs or pages: it reports through callbacks and stops when its event is set or a
callback raises.
Each epoch is seeded from (seed, epoch), so a run resumed from its last checkpoint repeats exactly.
"""
from __future__ import annotations

import contextlib
import copy
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from safetensors.torch import load_file
from torch import nn
from torchvision.transforms import v2

from core import settings
from core.models import backbones
from core.evaluate import heldout
from core.train import distributed, features, head_solver, precision
from core.train.precision import Precision, layout
from core.evaluate import metrics
from core import runs
from core.models import strategies
from core.data.augment import eval_transform, train_transform
from core.train.callbacks import Callback, Callbacks, State, StopTraining
from core.config import ENGINES, RunConfig, workspace_root
from core.data import samplers
from core.data.loaders import DecodingLoader, ImageDataset, make_loader
from core.train.schedules import make_scheduler
from core.data.sources import DataError
from core.data.validation import Dataset, load_dataset
from core.models.weights import WeightsInfo, resolve

MONITORS = ("val_acc", "val_balanced_acc", "val_macro_f1", "val_loss")
FEATURE_BATCH = 32  # images per forward while features are computed: a stop waits for one such batch at most


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
    message: str = ""


@dataclass
class Step:
    """What one optimisation step needs besides the model and the batch."""
    criterion: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any = None  # stepped per batch when given
    mix: Any = None  # MixUp/CutMix on a batch
    l1: float = 0.0
    clip_grad: float = 0.0
    precision: Precision = field(default_factory=lambda: Precision("fp32", "cpu"))
    channels_last: bool = False


def solves_head(p: "Prepared") -> bool:
    """The head is solved (head_solver.py) rather than looped over: on cached features, unless the config asks
    for the loop or for what the solver's objective has no place for (L1, balanced sampling)."""
    c = p.config
    return (p.net is not p.model and c.optim.solver == "auto" and not c.regularize.l1
            and c.regularize.class_weighting != "sampler")


def solve_head(p: "Prepared", criterion: nn.Module, state: State, cb: Callback,
               stop_event: threading.Event) -> dict[str, float]:
    """One full-batch solve of the head on the training split's cached features; progress is the L2 search."""
    x, y = p.loaders["train"].dataset.tensors
    state.phase = "solve"

    def progress(done: int, total: int) -> None:
        state.batch, state.batches = done, total
        cb.on_batch_end(state)
        if distributed.any_(stop_event.is_set()):
            raise StopTraining("stopped on request")

    solution = head_solver.fit_head(x, y, len(p.dataset.classes), criterion.weight,
                                    p.config.regularize.label_smoothing, p.config.seed, progress)
    linear = p.net if isinstance(p.net, nn.Linear) else p.net[-1]  # after the dropout, which a solve has no use for
    with torch.no_grad():
        linear.weight.copy_(solution.weight)
        linear.bias.copy_(solution.bias)
        distributed.broadcast(linear.parameters())  # every process solved the same problem; rank 0's answer is the one
        p.net.eval()
        logits = p.net(x.to(p.device))
    state.phase, state.batch_loss = "train", float(criterion(logits, y.to(p.device)))
    chosen = (f"chosen by {solution.folds}-fold cross-validation on the training split" if solution.folds else
              "the default: a class has a single training image, too few to cross-validate")
    cb.on_message(f"Head solved to convergence by L-BFGS ({solution.iterations} iterations); L2 strength "
                  f"{solution.l2:g}, {chosen} (scikit-learn's C = {head_solver.sklearn_c(solution.l2, len(y)):.3g}). "
                  "Optimizer, learning rate, epochs and weight decay do not apply to a solved head.")
    return {"loss": state.batch_loss, "acc": float((logits.argmax(1).cpu() == y).double().mean()),
            "l2": solution.l2}


def train_one_epoch(model: nn.Module, step: Step, loader: Sequence, device: torch.device, state: State,
                    callbacks: Callback, stop_event: threading.Event) -> dict[str, float]:
    total_loss, correct, seen = 0.0, 0, 0
    state.phase, state.batches = "train", len(loader)
    l1_params = [p for p in model.parameters() if p.requires_grad and p.ndim > 1] if step.l1 else []
    for state.batch, (images, targets) in enumerate(loader, 1):
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        hard = targets
        if step.mix is not None:
            images, targets = step.mix(images, targets)
            hard = targets.argmax(1)
        with step.precision.autocast():
            logits = model(layout(images, step.channels_last))
            loss = step.criterion(logits, targets)
        if l1_params:
            loss = loss + step.l1 * sum(p.abs().sum() for p in l1_params)
        if distributed.any_(not torch.isfinite(loss)):
            raise TrainingDiverged(
                f"The loss became NaN or infinite in epoch {state.epoch}, batch {state.batch}: training diverged. "
                "Try a lower learning rate (for example a tenth of the current one)."
            )
        step.optimizer.zero_grad(set_to_none=True)
        scaler = step.precision.scaler
        (scaler.scale(loss) if scaler else loss).backward()
        if step.clip_grad:
            if scaler:
                scaler.unscale_(step.optimizer)
            nn.utils.clip_grad_norm_([p for p in model.parameters() if p.grad is not None], step.clip_grad)
        stepped = True
        if scaler:
            scale = scaler.get_scale()
            scaler.step(step.optimizer)  # skipped when the scaled gradients overflowed; the scale then shrinks
            scaler.update()
            stepped = scaler.get_scale() >= scale
        else:
            step.optimizer.step()
        if step.scheduler is not None and stepped:
            step.scheduler.step()
        n = hard.size(0)
        state.batch_loss = loss.item()
        total_loss += state.batch_loss * n
        correct += int((logits.argmax(1) == hard).sum())
        seen += n
        callbacks.on_batch_end(state)
        if distributed.any_(stop_event.is_set()):
            raise StopTraining("stopped on request")
    total_loss, correct, seen = distributed.sum_(total_loss, correct, seen)
    return {"loss": total_loss / max(seen, 1), "acc": correct / max(seen, 1)}


@torch.no_grad()
def evaluate(model: nn.Module, criterion: nn.Module, loader: Sequence, device: torch.device, num_classes: int,
             step: Step | None = None) -> dict[str, Any]:
    """Mean loss, the confusion matrix (rows = true class) and top-k accuracy for each k < classes; under torchrun
    each process passes its share of the split (distributed.shard_loader) and gets the whole split's figures."""
    model.eval()
    ks = [k for k in (2, 3, 5) if k < num_classes]
    total_loss, seen = 0.0, 0
    top = dict.fromkeys(ks, 0)
    cm = torch.zeros(num_classes, num_classes, dtype=torch.long)
    for images, targets in loader:
        images, targets = images.to(device, non_blocking=True), targets.to(device, non_blocking=True)
        with step.precision.autocast() if step else contextlib.nullcontext():
            logits = model(layout(images, step.channels_last) if step else images).float()
        total_loss += criterion(logits, targets).item() * targets.size(0)
        seen += targets.size(0)
        cm += metrics.confusion_matrix(logits.argmax(1).cpu(), targets.cpu(), num_classes)
        if ks:
            ranked = logits.topk(max(ks), dim=1).indices
            for k in ks:
                top[k] += int((ranked[:, :k] == targets[:, None]).any(1).sum())
    total_loss, seen, *hits = distributed.sum_(total_loss, seen, *top.values())
    top = dict(zip(top, hits))
    return {"loss": total_loss / max(seen, 1), "cm": distributed.sum_tensor(cm),
            "top": {k: v / max(seen, 1) for k, v in top.items()}}


def epoch_row(epoch: int, train: dict[str, float], val: dict[str, Any] | None) -> dict[str, Any]:
    """One line of metrics.jsonl."""
    row: dict[str, Any] = {"epoch": epoch, "train_loss": train["loss"], "train_acc": train["acc"]}
    if val is not None:
        row["val_loss"] = val["loss"]
        row |= {f"val_{k}": v for k, v in metrics.summary(val["cm"]).items()}
        row |= {f"val_top{k}": v for k, v in val["top"].items()}
        row["val_per_class"] = metrics.per_class(val["cm"])
    return row


def fit(config: RunConfig, run_dir: Path, callbacks: Sequence[Callback] = (),
        stop_event: threading.Event | None = None, dataset: Dataset | None = None,
        resume: bool = False, save_model: bool = True) -> FitResult:
    """Train as the config says, writing the run folder as it goes; returns with the best weights loaded.

    `resume` continues from run_dir/checkpoint.pt (written after every epoch). Whatever happens after the run
    folder exists ends in status.json: finished, stopped (a stop request, also while features are computed,
    or Ctrl-C) or failed; never "running" for a run that ended. `save_model=False` is a search trial: metrics
    only, no checkpoint, weights or held-out predictions (writing a whole backbone every epoch would cost more
    than a trial on cached features); a chosen trial is trained again as a run, which the seeds make identical.
    Under torchrun every process calls this; rank 0 alone reports and writes, the others read run_dir only to
    resume (several machines share it, as clusters share a filesystem).
    """
    main = distributed.is_main()  # torchrun's RANK, before prepare joins the group
    cb = Callbacks(list(callbacks) if main else [])
    stop_event = stop_event or threading.Event()
    run_dir = Path(run_dir)
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
    p = prepare(config, dataset, cb)
    config, dataset, backbone, weights, model, device = p.config, p.dataset, p.backbone, p.weights, p.model, p.device
    if main:
        _write_run_header(config, run_dir, p, fresh=not resume)
    state = State(epochs=config.optim.epochs)
    status, message = "finished", ""
    try:
        use_cached_features(p, cb, stop_event)
        if p.engine and main:
            _record(run_dir, "features", {"engine": p.engine})
        net, loaders = p.net, p.loaders
        num_classes = len(dataset.classes)
        solving = solves_head(p)
        state.epochs = 1 if solving else config.optim.epochs  # a solved head is one pass, to convergence
        optimizer = _optimizer(config, model, backbone)
        monitor, maximize = _monitor(config, "val" in loaders)
        scheduler, when = make_scheduler(optimizer, config.optim, len(loaders["train"]), maximize)
        through_backbone = net is model
        if through_backbone and config.channels_last:
            model.to(memory_format=torch.channels_last)
        step = Step(_criterion(config, dataset, device), optimizer, scheduler if when == "batch" else None,
                    _mixer(config, num_classes), config.regularize.l1, config.optim.clip_grad,
                    p.precision, through_backbone and config.channels_last)
        eval_criterion = nn.CrossEntropyLoss()
        val_share = distributed.shard_loader(loaders["val"]) if "val" in loaders else None
        bad_epochs, best_state, start = 0, None, 1
        checkpoint = run_dir / "checkpoint.pt"
        if resume:
            ckpt = torch.load(checkpoint, map_location=device, weights_only=True)
            model.load_state_dict(ckpt["model"])
            optimizer.load_state_dict(ckpt["optimizer"])
            scheduler.load_state_dict(ckpt["scheduler"])
            start, bad_epochs = ckpt["epoch"] + 1, ckpt["bad_epochs"]
            state.best_epoch, state.best_score = ckpt["best_epoch"], ckpt["best_score"]
            state.history = runs.read_jsonl(run_dir / "metrics.jsonl")[: ckpt["epoch"]]
            if main:
                runs.rewrite_jsonl(run_dir / "metrics.jsonl", state.history)
            best_state = load_file(run_dir / "model.safetensors") if state.best_epoch else None
            cb.on_message(f"Resumed after epoch {ckpt['epoch']}.")
        groups = strategies.describe(model, backbone, config.model, config.optim.lr, max(start, 1))
        cb.on_fit_start(state, {"classes": dataset.classes, "weights": weights.to_dict(), "groups": groups,
                                "train_images": len(loaders["train"].dataset),
                                "val_images": len(loaders["val"].dataset) if "val" in loaders else 0,
                                "processes": distributed.world()})
        trainable: list[bool] = []
        trained = net  # what the training forward runs: net, or DistributedDataParallel around it
        for state.epoch in range(start, state.epochs + 1):
            now = strategies.trainable_groups(config.model, len(backbone.groups), state.epoch)
            if now != trainable and trainable:
                names = [backbone.groups[i][0] for i, t in enumerate(now) if t and not trainable[i]]
                cb.on_message(f"Epoch {state.epoch}: unfroze {', '.join(names)}.")
            if net is model:
                strategies.apply_freeze(model, backbone, now)
                strategies.set_train_mode(model, backbone, now, config.model.train_frozen_bn)
            else:  # the head alone, on cached features: walking the whole backbone every epoch is wasted time
                net.train()
            if now != trainable and not solving:
                trained = distributed.wrap(net, device)  # DDP over the groups trainable from now on
            trainable = now
            cb.on_epoch_start(state)
            started = time.perf_counter()
            loaders["train"].sampler.set_epoch(state.epoch)  # the order: one permutation per epoch, shared
            seed = config.seed * 100_019 + state.epoch + 1_000_003 * distributed.rank()
            loaders["train"].generator.manual_seed(seed)  # loader workers' seeds
            torch.manual_seed(seed)  # augmentation and dropout: epoch-reproducible, and different on each process
            lr = None if solving else optimizer.param_groups[-1]["lr"]  # the head's rate, as the epoch starts
            if solving:
                train = solve_head(p, step.criterion, state, cb, stop_event)
            else:
                train = train_one_epoch(trained, step, loaders["train"], device, state, cb, stop_event)
                distributed.broadcast(net.buffers())  # rank 0's batch-norm statistics: those it saves, everywhere
            val = None
            if val_share is not None:
                state.phase = "val"
                val = evaluate(net, eval_criterion, val_share, device, num_classes, step)
            row = epoch_row(state.epoch, train, val) | {"lr": lr, "seconds": time.perf_counter() - started}
            if "l2" in train:
                row["l2"] = train["l2"]
            state.history.append(row)
            if main:
                runs.append_jsonl(run_dir / "metrics.jsonl", row)
            score = row[monitor] if maximize else -row[monitor]
            if not state.best_epoch or score > state.best_score + config.early_stop.min_delta:
                state.best_epoch, state.best_score, bad_epochs = state.epoch, score, 0
                if save_model:
                    best_state = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
                    if main:
                        runs.save_weights(run_dir / "model.safetensors", best_state)
                if val is not None and main:
                    runs.write_json(run_dir / "confusion_matrix.json",
                                    {"epoch": state.epoch, "classes": dataset.classes, "matrix": val["cm"].tolist()})
            else:
                bad_epochs += 1
            if when == "epoch":
                scheduler.step()
            elif when == "metric":
                scheduler.step(row[monitor])
            if save_model and main:
                _save_checkpoint(checkpoint, state, model, optimizer, scheduler, bad_epochs)
            cb.on_epoch_end(state, row, val["cm"].tolist() if val is not None else None)
            if config.early_stop.patience and bad_epochs >= config.early_stop.patience:
                message = (f"Early stopping: {monitor} did not improve for {bad_epochs} epochs; "
                           f"the best epoch was {state.best_epoch}.")
                cb.on_message(message)
                break
            if distributed.any_(stop_event.is_set()):
                raise StopTraining("stopped on request")
    except (StopTraining, KeyboardInterrupt) as stop:
        status = "stopped"
        message = (f"Training stopped in epoch {state.epoch}: {stop or 'interrupted'}. The best weights so far are kept."
                   if state.epoch else f"Stopped before training began: {stop or 'interrupted'}.")
        cb.on_message(message)
        if isinstance(stop, KeyboardInterrupt):  # a second Ctrl-C: leave at once, resumable
            if main:
                runs.write_status(run_dir, status, message, best_epoch=state.best_epoch)
            raise
    except BaseException as exc:
        if main:
            runs.write_status(run_dir, "failed", str(exc), best_epoch=state.best_epoch)
        cb.on_fit_end(state, "failed")
        raise
    try:
        if state.best_epoch and save_model:
            model.load_state_dict(best_state)
        if state.best_epoch and save_model and main:
            heldout.after_fit(run_dir, p.net, {k: v for k, v in p.loaders.items() if k != "train"}, dataset, device)
        distributed.barrier()  # the others wait for rank 0's evaluation, so no process leaves the group early
    except BaseException as exc:  # the epochs are done and kept; the run still ended, as failed
        if main:
            runs.write_status(run_dir, "failed", f"Evaluating the best weights failed: {exc}",
                              best_epoch=state.best_epoch)
        cb.on_fit_end(state, "failed")
        raise
    best = state.history[state.best_epoch - 1] if state.best_epoch else {}
    if main:
        runs.write_status(run_dir, status, message, best_epoch=state.best_epoch)
    cb.on_fit_end(state, status)
    return FitResult(run_dir, status, state.best_epoch, best, state.history, weights, model, message)


@dataclass
class Prepared:
    """Everything a loop over the data needs, built once from a config."""
    config: RunConfig  # with the strategy resolved
    dataset: Dataset
    backbone: backbones.Backbone
    weights: WeightsInfo
    model: nn.Module
    net: nn.Module  # what the loop runs: the whole model, or only its head on cached features
    loaders: dict
    device: torch.device
    precision: Precision  # config.precision resolved for the device
    strategy_note: str = ""  # why the strategy differs from the one asked for, when it does
    engine: str = ""  # what computed the frozen features, once they are (config.engine resolved)


def prepare(config: RunConfig, dataset: Dataset | None, cb: Callback) -> Prepared:
    """Seeds, threads, data, weights, strategy, model and image loaders: shared by fit and the LR finder."""
    config = copy.deepcopy(config)
    _seed_everything(config.seed)
    torch.set_num_threads(max(1, (config.threads or settings.cpus()) // distributed.local_processes()))
    device = distributed.setup(_device(config.device))
    torch.backends.cudnn.benchmark = device.type == "cuda"  # fixed input sizes: let cuDNN time its kernels once
    check_config(config)
    _check_processes(config, device)
    if dataset is None:
        dataset = load_dataset(config.data.source, workspace_root(), config.data)
    if not dataset.report.trainable:
        raise DataError(dataset.report.errors[0])
    backbone = backbones.get(config.model.backbone)
    state_dict, weights = resolve(backbone, config.model.weights)
    if not weights.pretrained:
        cb.on_message(weights.note, "warning")
    config.model.strategy, note = strategies.resolve_strategy(config.model, len(backbone.groups), weights.pretrained)
    if note:
        cb.on_message(note, "info" if weights.pretrained else "warning")
    torch.manual_seed(config.seed)  # the new head's initialisation, whatever drew random numbers before in this process
    model = backbones.build_model(backbone, len(dataset.classes), config.model.dropout, state_dict).to(device)
    if config.distributed.sync_bn and distributed.world() > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # in place: the same parameters, the same names
    loaders = _loaders(config, dataset, backbone, device)
    return Prepared(config, dataset, backbone, weights, model, model, loaders, device,
                    precision.resolve(config.precision, device), note)


def use_cached_features(p: Prepared, cb: Callback, stop_event: threading.Event) -> None:
    """The frozen fast path: swap the image loaders for cached features and the model for its head."""
    reason = features.why_not(p.config)
    if p.config.model.strategy == "linear-probe" and reason:
        cb.on_message(f"Frozen-feature fast path off: {reason}.")
    elif reason is None:
        p.loaders = _feature_loaders(p, cb, stop_event)
        p.net = features.head_module(p.model, p.backbone)


def lr_find(config: RunConfig, dataset: Dataset | None = None, num_steps: int = 100,
            stop_event: threading.Event | None = None, on_step=None, callbacks: Sequence[Callback] = ()):
    """The learning-rate range test on exactly what fit would train (strategy, groups, data, loss)."""
    from core.train.lr_finder import find_lr

    stop_event = stop_event or threading.Event()
    cb = Callbacks(list(callbacks))
    p = prepare(config, dataset, cb)
    use_cached_features(p, cb, stop_event)
    trainable = strategies.trainable_groups(p.config.model, len(p.backbone.groups), 1)
    strategies.apply_freeze(p.model, p.backbone, trainable)
    strategies.set_train_mode(p.model, p.backbone, trainable, p.config.model.train_frozen_bn)
    return find_lr(p.net, _criterion(p.config, p.dataset, p.device), _optimizer(p.config, p.model, p.backbone),
                   p.loaders["train"], p.device, num_steps=num_steps, stop_event=stop_event, on_step=on_step)


def dataset_features(config: RunConfig, dataset: Dataset | None = None, callbacks: Sequence[Callback] = (),
                     stop_event: threading.Event | None = None) -> tuple[Dataset, torch.Tensor]:
    """The frozen backbone's features of every sample (dataset.samples' order), from the cache that training on
    the same data, backbone and preprocessing fills and reuses: what near-duplicate checks compare."""
    cb = Callbacks(list(callbacks))
    config = copy.deepcopy(config)
    config.model.strategy, config.feature_cache = "linear-probe", True
    p = prepare(config, dataset, cb)
    index, feats = _cached_features(p, cb, stop_event or threading.Event())
    return p.dataset, feats[torch.tensor([index[s.path] for s in p.dataset.samples], dtype=torch.long)]


def check_config(config: RunConfig) -> None:
    """Refuse combinations that would fail later, with the setting to change."""
    b = backbones.get(config.model.backbone)
    if b.fixed_size and config.augment.image_size != b.input_size:
        raise ValueError(f"{b.name} only accepts {b.input_size} px images; set image_size to {b.input_size}.")
    if config.model.strategy not in strategies.STRATEGIES:
        raise ValueError(f"strategy must be one of {', '.join(strategies.STRATEGIES)}")
    if config.early_stop.monitor not in MONITORS:
        raise ValueError(f"early_stop.monitor must be one of {', '.join(MONITORS)}")
    if config.engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}")
    if config.precision not in precision.PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(precision.PRECISIONS)}")
    if config.regularize.class_weighting not in ("none", "loss", "sampler"):
        raise ValueError("class_weighting must be none, loss or sampler")


def _check_processes(config: RunConfig, device: torch.device) -> None:
    """Refuse what several processes cannot do, before any of them has started work."""
    n = distributed.world()
    if config.optim.batch_size % n:
        raise ValueError(f"The batch size ({config.optim.batch_size}) is the global one and must split evenly over "
                         f"the {n} processes; use a multiple of {n}.")
    if config.distributed.sync_bn and device.type != "cuda":
        raise ValueError("sync_bn synchronises batch norm across GPUs (PyTorch supports it on CUDA only); turn it "
                         "off when training on CPUs.")


def _monitor(config: RunConfig, has_val: bool) -> tuple[str, bool]:
    """The metric that picks the best epoch and drives early stopping; train loss without validation."""
    if not has_val:
        return "train_loss", False
    return config.early_stop.monitor, config.early_stop.monitor != "val_loss"


def _sampler(config: RunConfig, samples, num_classes: int):
    """The training order (samplers.py): balanced batches for class weighting "sampler", else a permutation; this
    process's share of it, reseeded by set_epoch."""
    seed, rank, world = config.seed * 100_003, distributed.rank(), distributed.world()
    if config.regularize.class_weighting == "sampler":
        return samplers.Balanced([s.label for s in samples], num_classes, seed, rank, world)
    return samplers.shuffled(samples, seed, rank, world)


def _loaders(config: RunConfig, dataset: Dataset, backbone: backbones.Backbone, device: torch.device) -> dict:
    aug = config.augment
    pin = device.type == "cuda"  # page-locked batches copy to the GPU asynchronously (non_blocking=True)
    workers = precision.loader_workers(config.num_workers, device)
    train_samples = dataset.split("train")
    train_ds = ImageDataset(dataset.data_dir, train_samples, train_transform(aug, backbone.mean, backbone.std),
                            aug.resize_side())
    result = {"train": make_loader(train_ds, _batch(config), True, workers, torch.Generator(), pin,
                                   _sampler(config, train_samples, len(dataset.classes)))}
    eval_tf = eval_transform(aug, backbone.mean, backbone.std)
    for split in ("val", "test"):
        samples = dataset.split(split)
        if samples:
            result[split] = make_loader(ImageDataset(dataset.data_dir, samples, eval_tf, aug.resize_side()),
                                        config.optim.batch_size, False, workers, None, pin)
    return result


def _cached_features(p: Prepared, cb: Callback, stop_event: threading.Event) -> tuple[dict[str, int], torch.Tensor]:
    """(path -> row, features) of every sample: read from the cache, or computed (with progress) and stored. Under
    torchrun each process computes a share (distributed.shard_indices) and all gather the whole, unless every
    process finds the cache (a machine of a cluster may not have it)."""
    config, dataset, backbone = p.config, p.dataset, p.backbone
    path = workspace_root() / "features" / f"{features.cache_key(config, dataset, backbone, p.weights)}.pt"
    paths = [s.path for s in dataset.samples]
    cached = features.read_cache(path, paths)
    if not distributed.any_(cached is None):
        p.engine = "cached"
        cb.on_message("Frozen backbone: cached features (computed by an earlier run).")
        return cached
    state = State(phase="features")

    def progress(done: int, total: int) -> None:
        state.batch, state.batches = done, total
        cb.on_batch_end(state)
        if distributed.any_(stop_event.is_set()):
            raise StopTraining("stopped on request")

    share = [dataset.samples[i] for i in distributed.shard_indices(len(paths))]
    images = ImageDataset(dataset.data_dir, share, eval_transform(config.augment, backbone.mean, backbone.std),
                          config.augment.resize_side())
    workers = precision.loader_workers(config.num_workers, p.device)
    loader = (make_loader(images, FEATURE_BATCH, False, workers, pin_memory=p.device.type == "cuda") if workers
              else DecodingLoader(images, FEATURE_BATCH, torch.get_num_threads()))
    local, used = features.extract(p.model, backbone, loader, p.device, config.engine, progress)
    feats = distributed.gather_shards(local, len(paths))
    if distributed.local_main():
        features.write_cache(path, paths, feats)
    p.engine = used
    cb.on_message(f"Frozen backbone: features computed once ({used}), and cached."
                  + (f" {distributed.world()} processes computed a share each." if distributed.world() > 1 else ""))
    return {q: i for i, q in enumerate(paths)}, feats


def _feature_loaders(p: Prepared, cb: Callback, stop_event: threading.Event) -> dict:
    """Loaders over cached features in place of images; the first run computes and stores them."""
    config, dataset = p.config, p.dataset
    index, feats = _cached_features(p, cb, stop_event)
    train = dataset.split("train")
    result = {"train": features.feature_loader(index, feats, train, _batch(config), True, torch.Generator(),
                                               _sampler(config, train, len(dataset.classes)))}
    for split in ("val", "test"):
        if dataset.split(split):
            result[split] = features.feature_loader(index, feats, dataset.split(split), config.optim.batch_size,
                                                    False, None)
    return result


def _batch(config: RunConfig) -> int:
    """This process's share of the (global) training batch."""
    return config.optim.batch_size // distributed.world()


def _optimizer(config: RunConfig, model: nn.Module, backbone: backbones.Backbone) -> torch.optim.Optimizer:
    o = config.optim
    groups = strategies.param_groups(model, backbone, config.model, o.lr, o.weight_decay)
    if o.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov and o.momentum > 0)
    if o.optimizer == "adam":
        return torch.optim.Adam(groups, lr=o.lr)
    if o.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=o.lr)
    raise ValueError(f"optimizer must be sgd, adam or adamw, got {o.optimizer!r}")


def _criterion(config: RunConfig, dataset: Dataset, device: torch.device) -> nn.Module:
    weight = None
    if config.regularize.class_weighting == "loss":
        counts = torch.bincount(torch.tensor([s.label for s in dataset.split("train")]),
                                minlength=len(dataset.classes)).double()
        weight = (counts.sum() / (len(counts) * counts.clamp(min=1))).float().to(device)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=config.regularize.label_smoothing)


def _mixer(config: RunConfig, num_classes: int):
    r = config.regularize
    mixers = ([v2.MixUp(alpha=r.mixup, num_classes=num_classes)] if r.mixup else []) + (
        [v2.CutMix(alpha=r.cutmix, num_classes=num_classes)] if r.cutmix else [])
    if not mixers:
        return None
    return mixers[0] if len(mixers) == 1 else v2.RandomChoice(mixers)


def _save_checkpoint(path: Path, state: State, model, optimizer, scheduler, bad_epochs: int) -> None:
    """Everything resume needs but the best weights (model.safetensors has them); tensors and plain data only."""
    with runs.replace_atomically(path) as tmp:
        torch.save({"epoch": state.epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "bad_epochs": bad_epochs, "best_epoch": state.best_epoch,
                    "best_score": state.best_score}, tmp)


def _write_run_header(config: RunConfig, run_dir: Path, p: Prepared, fresh: bool) -> None:
    """config.json (also on resume: changed flags are what the rest of the run uses), classes, preprocessing."""
    report = p.dataset.report
    provenance = {"weights": p.weights.to_dict(), "dataset": {
        "key": p.dataset.key, "layout": report.layout, "splits": report.splits, "groups": report.groups,
        "folds": report.folds, "labels_version": p.dataset.labels_version, "labels_digest": p.dataset.labels_digest},
        "device": str(p.device), "torch": torch.__version__,
        "precision": p.precision.name, "processes": distributed.world()}
    if p.strategy_note:
        provenance["strategy"] = p.strategy_note
    if fresh:
        for stale in ("metrics.jsonl", "confusion_matrix.json", "model.safetensors", "checkpoint.pt", "results.json",
                      "predictions.jsonl", "calibration.json"):
            (run_dir / stale).unlink(missing_ok=True)  # a fresh run into a used folder starts clean
    runs.write_json(run_dir / "config.json", config.to_dict() | {"provenance": provenance})
    runs.write_json(run_dir / "classes.json", p.dataset.classes)
    aug = config.augment
    runs.write_json(run_dir / "preprocessing.json", {
        "image_size": aug.image_size, "resize": aug.resize, "crop_pct": aug.crop_pct,
        "resize_side": aug.resize_side(), "mean": list(p.backbone.mean), "std": list(p.backbone.std),
        "backbone": p.backbone.name})
    runs.write_status(run_dir, "running")


def _record(run_dir: Path, key: str, value: Any) -> None:
    """Add what was resolved during the run (the engine that computed the features) to config.json's provenance."""
    written = runs.read_json(run_dir / "config.json")
    written["provenance"][key] = value
    runs.write_json(run_dir / "config.json", written)


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
