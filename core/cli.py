"""The headless CLI: the same config and engine as the app.

    python -m core inspect DATA [--json]
    python -m core train DATA --out RUN_DIR [--config run.json] [--backbone NAME] [--epochs N] ...
    python -m core predict RUN_DIR IMAGES... [--csv out.csv] [--top-k 3]
    python -m core export RUN_DIR --format safetensors|package|torchscript|onnx|card [--out FILE]
    python -m core evaluate RUN_DIR

Exit codes: 0 done, 2 the data or config cannot be used (one line on stderr says why), 130 interrupted.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from core.train.callbacks import Callback, State
from core.config import ConfigError, RunConfig, set_setting, settings, workspace_root
from core.data.images import ImageError
from core.data.sources import DataError
from core.data.validation import load_dataset
from core.models.weights import WeightsError


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (DataError, ConfigError, WeightsError, ImageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m core", description="Fine-Tune Lab, headless.")
    sub = p.add_subparsers(required=True, metavar="COMMAND")

    i = sub.add_parser("inspect", help="validate a dataset and print the report")
    i.add_argument("data", help="folder (class subfolders, or train/ val/ test/) or zip")
    i.add_argument("--json", action="store_true", help="print the report as JSON")
    _split_args(i)
    i.set_defaults(run=cmd_inspect)

    w = sub.add_parser("import-weights", help="check a weights file against a backbone, optionally install it")
    w.add_argument("file", type=Path, help=".safetensors or .pth state dict (read with weights_only)")
    w.add_argument("--backbone", required=True)
    w.add_argument("--install", action="store_true", help="copy into the library cache: later runs find it")
    w.set_defaults(run=cmd_import_weights)

    t = sub.add_parser("train", help="fine-tune a backbone and write a run folder",
                       description="Every setting of the run config has a flag; --config gives them all at once.")
    t.add_argument("--out", type=Path, help="run folder to write")
    t.add_argument("--resume", type=Path, metavar="RUN_DIR", help="continue a killed or stopped run")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    _config_flags(t)
    t.set_defaults(run=cmd_train)

    f = sub.add_parser("lr-find", help="sweep the learning rate and suggest one for this config")
    f.add_argument("--steps", type=int, default=100)
    f.add_argument("--json", action="store_true", help="print the curve as JSON")
    _config_flags(f)
    f.set_defaults(run=cmd_lr_find)

    r = sub.add_parser("predict", help="classify images with a run's model (the same numbers as the Predict page)")
    r.add_argument("run_dir", type=Path)
    r.add_argument("images", type=Path, nargs="+", help="image files or folders (searched recursively)")
    r.add_argument("--csv", type=Path, help="write file, top-1, confidence and every class probability")
    r.add_argument("--top-k", type=int, default=3)
    r.set_defaults(run=cmd_predict)

    e = sub.add_parser("export", help="write a run's model in a deployable format")
    e.add_argument("run_dir", type=Path)
    e.add_argument("--format", required=True, choices=sorted(EXPORTS))
    e.add_argument("--out", type=Path, help="file to write (default: RUN_ID with the format's extension, here)")
    e.set_defaults(run=cmd_export)

    k = sub.add_parser("worker", help="run one job of the app in this process (the app's registry starts these)")
    k.add_argument("job_dir", type=Path, help="a job folder holding job.json")
    k.set_defaults(run=cmd_worker)

    v = sub.add_parser("evaluate", help="recompute a run's held-out predictions and scores from its weights")
    v.add_argument("run_dir", type=Path)
    v.set_defaults(run=cmd_evaluate)
    return p


def _config_flags(t: argparse.ArgumentParser) -> None:
    """DATA, --config, and one flag per setting of the run config."""
    t.add_argument("data", nargs="?", help="folder (class subfolders, or train/ val/ test/) or zip")
    t.add_argument("--config", type=Path, help="a run config JSON (a run's config.json works)")
    for path, hint, default in settings():
        if path == ("data", "source"):
            continue
        flag = "--" + path[-1].replace("_", "-")
        if hint is bool:
            t.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=f"(default {default})")
        else:
            t.add_argument(flag, type=hint, default=None, metavar=hint.__name__.upper(),
                           help=f"{'.'.join(path)} (default {default})")


def _split_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--val-ratio", type=float, help="validation share when the data is not pre-split")
    p.add_argument("--test-ratio", type=float)
    p.add_argument("--split-seed", type=int)


def _config(args: argparse.Namespace) -> RunConfig:
    config = RunConfig.from_json(args.config.read_text()) if getattr(args, "config", None) else RunConfig()
    if args.data:
        config.data.source = str(Path(args.data).expanduser().resolve())
    for path, _, _ in settings():
        value = getattr(args, path[-1], None)
        if value is not None and path != ("data", "source"):
            set_setting(config, path, value)
    return config


def cmd_inspect(args: argparse.Namespace) -> int:
    config = _config(args)
    dataset = load_dataset(config.data.source, workspace_root(), config.data, progress=_Bar("checking").update)
    report = dataset.report
    print(report.to_json() if args.json else report.text())
    if not report.trainable:
        print(f"error: {report.errors[0]}", file=sys.stderr)
        return 2
    return 0


def cmd_import_weights(args: argparse.Namespace) -> int:
    from core.models import backbones
    from core.models import weights

    backbone = backbones.get(args.backbone)
    state = weights.match_state(backbone, weights.read_state_file(args.file))
    print(f"{args.file.name} fits {backbone.name}: {len(state)} tensors, sha256 {weights.sha256_file(args.file)}")
    if args.install:
        print(f"installed as {weights.install(backbone, args.file)}")
    return 0


def cmd_lr_find(args: argparse.Namespace) -> int:
    from core.train.engine import lr_find

    config = _config(args)
    if not config.data.source:
        raise DataError("lr-find needs DATA: a folder or zip of images")
    result = lr_find(config, num_steps=args.steps, on_step=_Bar("lr sweep").update)
    print(json.dumps(result.to_dict()) if args.json else result.reason)
    if result.suggestion is not None and not args.json:
        print(f"suggested --lr {result.suggestion:.2e}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from core.jobs.worker import stop_on_signals
    from core.train.engine import fit  # torch and the models load only when training

    if args.resume:
        args.out = args.resume
        args.config = args.config or args.resume / "config.json"
        if not (args.resume / "checkpoint.pt").is_file():
            raise DataError(f"{args.resume} has no checkpoint.pt to resume from (no epoch finished yet?)")
    if args.out is None:
        raise DataError("train needs --out RUN_DIR (or --resume RUN_DIR)")
    config = _config(args)
    if not config.data.source:
        raise DataError("train needs DATA: a folder or zip of images")
    dataset = load_dataset(config.data.source, workspace_root(), config.data, progress=_Bar("checking").update)
    if not dataset.report.trainable:
        print(f"error: {dataset.report.errors[0]}", file=sys.stderr)
        return 2
    for warning in dataset.report.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    stop = threading.Event()
    stop_on_signals(stop)  # Ctrl-C stops within one batch and the run stays resumable; a second one at once
    result = fit(config, args.out, [] if args.quiet else [TerminalProgress()], stop, dataset=dataset,
                 resume=bool(args.resume))
    best = result.best
    if result.message:
        print(result.message)
    print(f"\n{result.status}: best epoch {result.best_epoch} of {len(result.history)}")
    for key in ("val_acc", "val_balanced_acc", "val_macro_f1", "val_loss", "train_acc", "train_loss"):
        if best.get(key) is not None:
            print(f"  {key:<17} {best[key]:.4f}")
    source = result.weights.source
    print(f"  weights           {source}{' (random initialisation: not pretrained)' if source == 'random' else ''}")
    print(f"  seconds           {sum(r['seconds'] for r in result.history):.1f}")
    print(f"  run folder        {result.run_dir}")
    if result.status == "stopped":
        print(f"resume with: python -m core train --resume {result.run_dir}", file=sys.stderr)
        return 130
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from core.jobs.worker import run

    return run(args.job_dir)


EXPORTS = {"safetensors": ".safetensors", "package": ".zip", "torchscript": ".torchscript.pt", "onnx": ".onnx",
           "card": ".md"}


def cmd_predict(args: argparse.Namespace) -> int:
    from core.evaluate.predict import Predictor, image_files, predictions_csv, top_k

    predictor = Predictor.load(_run_dir(args.run_dir))
    names, skipped, probs = predictor.classify((str(p), p) for p in image_files(args.images))
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    if not names:
        raise ImageError("no image could be read from what was given")
    for name, ranked in zip(names, top_k(probs, predictor.classes, args.top_k)):
        print(f"{name}\t" + "\t".join(f"{c} {p:.4f}" for c, p in ranked))
    if args.csv:
        args.csv.write_text(predictions_csv(names, probs, predictor.classes))
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.deploy import export
    from core.deploy import model_card

    run_dir = _run_dir(args.run_dir)
    make = {"safetensors": export.weights_bytes, "package": export.package, "torchscript": export.torchscript,
            "onnx": export.onnx, "card": lambda d: model_card.card(d).encode()}[args.format]
    out = args.out or Path(run_dir.name + EXPORTS[args.format])
    out.write_bytes(make(run_dir))
    print(f"wrote {out}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from core.evaluate.heldout import evaluate_run

    results = evaluate_run(_run_dir(args.run_dir))
    for split in ("val", "test"):
        if r := results.get(split):
            print(f"{split}: {r['images']} images, acc {r['acc']:.4f}, macro F1 {r['macro_f1']:.4f}, ECE {r['ece']:.4f}")
    return 0


def _run_dir(path: Path) -> Path:
    if not (path / "config.json").is_file() or not (path / "model.safetensors").is_file():
        raise DataError(f"{path} is not a finished run folder (it needs config.json and model.safetensors)")
    return path


class _Bar:
    """A one-line progress bar on stderr, redrawn in place."""

    def __init__(self, label: str, width: int = 28):
        self.label, self.width, self.started = label, width, time.perf_counter()

    def update(self, done: int, total: int, suffix: str = "") -> None:
        if not sys.stderr.isatty() and done not in (total,):
            return
        frac = done / max(total, 1)
        filled = int(self.width * frac)
        elapsed = time.perf_counter() - self.started
        eta = elapsed / frac - elapsed if frac > 0 else 0
        bar = "#" * filled + "." * (self.width - filled)
        end = "\n" if done >= total else ""
        sys.stderr.write(f"\r{self.label} [{bar}] {done}/{total} eta {eta:4.0f}s {suffix}{end}")
        sys.stderr.flush()


class TerminalProgress(Callback):
    def __init__(self):
        self.bars: dict[Any, _Bar] = {}

    def on_fit_start(self, state: State, info: dict[str, Any]) -> None:
        print("layer group      parameters  trainable  lr", file=sys.stderr)
        for g in info["groups"]:
            print(f"  {g['group']:<14} {g['params']:>10,}  {'yes' if g['trainable'] else 'no':>9}  {g['lr']:.2e}",
                  file=sys.stderr)
        print(f"training on {info['train_images']} images, validating on {info['val_images']}; "
              f"weights: {info['weights']['source']}", file=sys.stderr)

    def on_batch_end(self, state: State) -> None:
        if state.phase == "features":
            self.bars.setdefault("features", _Bar("features")).update(state.batch, state.batches)
            return
        bar = self.bars.setdefault(state.epoch, _Bar(f"epoch {state.epoch}/{state.epochs}"))
        bar.update(state.batch, state.batches, f"loss {state.batch_loss:.3f}")

    def on_epoch_end(self, state: State, row: dict[str, Any], confusion) -> None:
        val = f"  val_loss {row['val_loss']:.4f}  val_acc {row['val_acc']:.4f}" if "val_loss" in row else ""
        print(f"  train_loss {row['train_loss']:.4f}  train_acc {row['train_acc']:.4f}{val}  "
              f"({row['seconds']:.1f}s)", file=sys.stderr)

    def on_message(self, text: str, level: str = "info") -> None:
        print(f"{level}: {text}", file=sys.stderr)
