"""The headless CLI: the same config and engine as the app.

    python -m core inspect DATA [--json]
    python -m core train DATA --out RUN_DIR [--config run.json] [--backbone NAME] [--epochs N] ...
    python -m core train DATA --out RUN_DIR --nproc N [--nnodes M --node-rank R --master HOST:PORT] [--max-restarts K]
    python -m core train DATA --out RUN_DIR --nnodes M --print commands|sbatch|kubernetes
    python -m core predict RUN_DIR IMAGES... [--csv out.csv] [--top-k 3]
    python -m core export RUN_DIR --format safetensors|package|torchscript|onnx|card [--out FILE]
    python -m core evaluate RUN_DIR
    python -m core search DATA --out DIR [--space space.json] [--sampler tpe|random|grid] [--pruner median|hyperband|none]
                               [--trials N] [--minutes M] [--workers K] [--storage URL --study NAME] [train flags]
    python -m core cv DATA --out DIR --folds K [--groups FILE.csv | --group-pattern REGEX] [train flags]
    python -m core review CV_DIR [--top N]
    python -m core ensemble RUN_OR_CV_DIR... --out DIR

Exit codes: 0 done, 2 the data or config cannot be used (one line on stderr says why), 130 interrupted.
"""
from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

from core.processes import in_torchrun_group, torchrun_rank
from core.settings import cpus
from core.train.callbacks import Callback, State
from core.accounts import users
from core.config import ENGINES, ConfigError, DistributedConfig, RunConfig, set_setting, settings, workspace_root
from core.data.images import ImageError
from core.data.sources import DataError
from core.data.validation import load_dataset


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        return args.run(args)
    except (ValueError, OSError) as exc:  # every error of ours (data, config, weights, image) is a ValueError
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
    t.add_argument("--node-rank", type=int, default=0, help="this machine's number, 0..nnodes-1; machine 0 hosts the "
                   "rendezvous at --master")
    t.add_argument("--master", default="", metavar="HOST:PORT", help="where the machines of a --nnodes run meet")
    t.add_argument("--print", choices=("commands", "sbatch", "kubernetes"), dest="print_launch",
                   help="print how to run this on a cluster (one command per machine, a Slurm script, a Kubeflow "
                        "PyTorchJob) instead of training")
    _config_flags(t)
    t.set_defaults(run=cmd_train)

    f = sub.add_parser("lr-find", help="sweep the learning rate and suggest one for this config")
    f.add_argument("--steps", type=int, default=100)
    f.add_argument("--json", action="store_true", help="print the curve as JSON")
    _config_flags(f)
    f.set_defaults(run=cmd_lr_find)

    r = sub.add_parser("predict", help="classify images with a run's model, an ensemble or a cross-validation's "
                                       "fold models (the same numbers as the Predict page)")
    r.add_argument("run_dir", type=Path, help="a run, ensemble or cross-validation folder")
    r.add_argument("images", type=Path, nargs="+", help="image files or folders (searched recursively)")
    r.add_argument("--csv", type=Path, help="write file, top-1, confidence and every class probability")
    r.add_argument("--top-k", type=int, default=3)
    r.add_argument("--uncertain-below", type=float, metavar="P",
                   help="flag predictions whose top probability is below P (default: from the run's validation data)")
    r.add_argument("--engine", choices=ENGINES, help="what runs the network (default: the run's config, auto: the "
                   "fastest one here that agrees with PyTorch)")
    r.set_defaults(run=cmd_predict)

    e = sub.add_parser("export", help="write a run's model (or an ensemble's graph) in a deployable format")
    e.add_argument("run_dir", type=Path, help="a run folder, or an ensemble folder (torchscript and onnx)")
    e.add_argument("--format", required=True, choices=sorted(EXPORTS))
    e.add_argument("--out", type=Path, help="file to write (default: RUN_ID with the format's extension, here)")
    e.set_defaults(run=cmd_export)

    k = sub.add_parser("worker", help="run one job of the app in this process (the app's registry starts these)")
    k.add_argument("job_dir", type=Path, help="a job folder holding job.json")
    k.set_defaults(run=cmd_worker)

    s = sub.add_parser("search", help="search hyperparameters with Optuna; the train flags set the starting config",
                       description="Resumes when DIR already holds the search (run the same command again).")
    s.add_argument("--out", type=Path, help="search folder to write (search.json, trials.json, the best run)")
    s.add_argument("--space", type=Path, help="JSON: {setting: {low, high[, log]} | {choices: [...]}}")
    s.add_argument("--metric", choices=("val_acc", "val_balanced_acc", "val_macro_f1", "val_loss"), default="val_acc")
    s.add_argument("--sampler", choices=("tpe", "random", "grid"), default="tpe")
    s.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median")
    s.add_argument("--trials", type=int, help="finished trials in the study, all workers together (default 100; "
                                              "given again on a resume, it extends the search)")
    s.add_argument("--minutes", type=float, help="wall-clock budget (default 0: none)")
    s.add_argument("--workers", type=int, default=1, help="processes on this machine, one study")
    s.add_argument("--grid-points", type=int, default=4, help="grid: values per numeric range")
    s.add_argument("--storage", default="", help="an Optuna storage URL shared by machines (default: a journal "
                                                 "file in DIR)")
    s.add_argument("--study", default="", help="the study's name in the storage (default: DIR's name)")
    s.add_argument("--join", type=Path, metavar="DIR", help=argparse.SUPPRESS)  # an extra worker of --workers
    s.add_argument("--worker", type=int, default=1, help=argparse.SUPPRESS)  # its number: its own sampler seed
    s.add_argument("--quiet", action="store_true")
    _config_flags(s)
    s.set_defaults(run=cmd_search)

    c = sub.add_parser("cv", help="k-fold cross-validation (group-aware with --groups, --group-pattern or "
                                  "--group-level); one run folder per fold, out-of-fold predictions, cv.json")
    c.add_argument("--out", type=Path, help="folder to write")
    c.add_argument("--resume", type=Path, metavar="CV_DIR", help="continue a stopped cross-validation")
    c.add_argument("--quiet", action="store_true")
    _config_flags(c)
    c.set_defaults(run=cmd_cv)

    rv = sub.add_parser("review", help="rank the images whose label is most likely wrong, from a cross-validation's "
                                       "out-of-fold predictions; writes CV_DIR/label_issues.csv")
    rv.add_argument("cv_dir", type=Path)
    rv.add_argument("--top", type=int, default=20, help="suspects to print (the CSV has them all)")
    rv.set_defaults(run=cmd_review)

    en = sub.add_parser("ensemble", help="average the probabilities of runs (or of a cross-validation's folds)")
    en.add_argument("members", type=Path, nargs="+", help="run folders and/or cross-validation folders")
    en.add_argument("--out", type=Path, required=True, help="ensemble folder to write")
    en.add_argument("--export", action="store_true", help="also build and check the TorchScript and ONNX graphs")
    en.set_defaults(run=cmd_ensemble)

    v = sub.add_parser("evaluate", help="recompute a run's held-out predictions and scores from its weights")
    v.add_argument("run_dir", type=Path)
    v.set_defaults(run=cmd_evaluate)
    u = sub.add_parser("users", help="accounts of a shared server (FTLAB_HOME/users.toml): add or change one "
                                     "(asks for a password), remove one, or list them")
    u.add_argument("action", choices=["add", "remove", "list"])
    u.add_argument("name", nargs="?")
    u.add_argument("--admin", action=argparse.BooleanOptionalAction, default=None, help="sees every project")
    u.add_argument("--disk-gb", type=float, help="disk quota for the projects this user owns")
    u.add_argument("--jobs", type=int, help="jobs running or queued at once")
    u.add_argument("--no-password", action="store_true",
                   help="no password (the identity comes from an identity provider or a proxy): admin and quotas only")
    u.add_argument("--password-stdin", action="store_true", help="read the password from standard input (scripts)")
    u.set_defaults(run=cmd_users)
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
    if args.run is not cmd_train:  # only a training run spreads over processes (a search has --workers)
        if (getattr(args, "nproc", None) or 1) > 1 or (getattr(args, "nnodes", None) or 1) > 1:
            raise ConfigError("--nproc and --nnodes apply to train only: a search runs its trials with --workers, "
                              "a cross-validation its folds one after another.")
        config.distributed = DistributedConfig()  # a distributed run's config.json given as --config
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
    from core.jobs import launch

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
    if args.print_launch:
        print(_launch_text(args.print_launch, config, args.out, args.master))
        return 0
    inside = in_torchrun_group()
    quiet = args.quiet or torchrun_rank() != 0  # in a torchrun group, rank 0 alone prints
    dataset = load_dataset(config.data.source, workspace_root(), config.data,
                           progress=None if quiet else _Bar("checking").update)
    if not dataset.report.trainable:
        print(f"error: {dataset.report.errors[0]}", file=sys.stderr)
        return 2
    for warning in dataset.report.warnings if not quiet else ():
        print(f"warning: {warning}", file=sys.stderr)
    if launch.needs_torchrun(config.distributed) and not inside:
        d = config.distributed
        args.out.mkdir(parents=True, exist_ok=True)
        resolved = args.out / launch.CONFIG_FILE  # the whole config, so no flag of ours meets torchrun's parser
        resolved.write_text(config.to_json())
        command = launch.torchrun(d, args.out.name, args.node_rank, args.master) + [
            "-m", "core", "train", "--out", str(args.out), "--config", str(resolved),
            *(["--resume", str(args.resume)] if args.resume else []), *(["--quiet"] if args.quiet else [])]
        os.execve(sys.executable, command, launch.environment(config))  # torchrun starts this command N times
    from core.jobs.worker import stop_on_signals  # torch loads only here, in the process that trains
    from core.train import distributed
    from core.train.engine import fit

    stop = threading.Event()
    stop_on_signals(stop)  # Ctrl-C stops within one batch and the run stays resumable; a second one at once
    resume = bool(args.resume) or distributed.resumes(args.out)
    result = fit(config, args.out, [] if quiet else [TerminalProgress()], stop, dataset=dataset, resume=resume)
    if quiet and inside:
        return 0
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
        return 0 if inside else 130  # torchrun would take a non-zero exit for a failure, and restart the group
    return 0


def _launch_text(kind: str, config: RunConfig, out: Path, master: str) -> str:
    from core.jobs import launch

    if kind == "sbatch":
        return launch.sbatch(config, str(out))
    if kind == "kubernetes":
        return launch.kubernetes(config, str(out))
    config_file = f"{out}.config.json"
    return "\n".join([f"# Save the run's config as {config_file} (on a filesystem every machine shares), then run",
                      "# on each machine its line; machine 0 must be reachable at --master.", "",
                      *launch.commands(config, str(out), master or f"HOST0:{launch.PORT}", config_file),
                      "", f"# {config_file}:", launch.cluster_config(config).to_json()])


def cmd_search(args: argparse.Namespace) -> int:
    from core.experiments import search
    from core.jobs.worker import stop_on_signals
    from core.train.engine import fit

    stop = threading.Event()
    stop_on_signals(stop)
    progress = [] if args.quiet else [StageProgress()]
    if args.join:  # one more worker of a search another process started
        search.run(args.join, progress, stop, worker=args.worker)
        return 0
    if args.out is None:
        raise DataError("search needs --out DIR")
    if (args.out / search.SEARCH_FILE).is_file():
        print(f"resuming the search in {args.out}", file=sys.stderr)
        search.extend(args.out, trials=args.trials, minutes=args.minutes)
    else:
        config = _config(args)
        if not config.data.source:
            raise DataError("search needs DATA: a folder or zip of images")
        space = json.loads(args.space.read_text()) if args.space else search.spaces.default_space()
        options = search.SearchConfig(space=space, metric=args.metric, sampler=args.sampler, pruner=args.pruner,
                                      trials=args.trials or 100, minutes=args.minutes or 0.0, workers=args.workers,
                                      seed=config.seed, grid_points=args.grid_points, storage=args.storage,
                                      study=args.study)
        if not config.threads:
            config.threads = max(1, cpus() // args.workers)
        search.create(config, options, args.out)
    summary = search.run_workers(args.out, progress, stop)
    print(f"\n{summary['status']}: {summary['trials']} trials ({summary['pruned']} pruned, {summary['failed']} failed)"
          f" in {summary['elapsed']:.0f} s")
    if summary["best_params"] is None:
        if summary["status"] == "stopped":
            return 130
        raise DataError(summary["error"] or "no trial completed: see the errors in trials.json")
    print(f"best {summary['search']['metric']} {summary['best_value']:.4f} (trial {summary['best_trial']}):")
    for name, value in summary["best_params"].items():
        print(f"  {name:<28} {value}")
    if summary["status"] == "stopped":
        print(f"resume with: python -m core search --out {args.out}", file=sys.stderr)
        return 130
    best_dir = args.out / "best"
    print(f"training the best trial as a run in {best_dir}", file=sys.stderr)
    result = fit(search.best_config(args.out), best_dir, progress, stop)
    search.record_best_run(args.out, best_dir)
    print(f"  run folder        {result.run_dir}")
    return 0 if result.status == "finished" else 130


def cmd_cv(args: argparse.Namespace) -> int:
    from core import runs
    from core.experiments import crossval
    from core.jobs.worker import stop_on_signals

    if args.resume:
        args.out = args.resume
        doc = runs.read_json(args.resume / crossval.CV_FILE)
        if not doc:
            raise DataError(f"{args.resume} is not a cross-validation folder (it has no {crossval.CV_FILE})")
        config = RunConfig.from_dict(doc["config"])
    else:
        if args.out is None:
            raise DataError("cv needs --out DIR (or --resume CV_DIR)")
        config = _config(args)
        if not config.data.source:
            raise DataError("cv needs DATA: a folder or zip of images")
        if config.data.folds == 0:
            config.data.folds = 5
    stop = threading.Event()
    stop_on_signals(stop)
    summary = crossval.cross_validate(config, args.out, [] if args.quiet else [StageProgress(), TerminalProgress()],
                                      stop, resume=bool(args.resume))
    print(f"\n{summary['status']}: {len(summary['folds'])} of {summary['k']} folds"
          + (f"; groups: {summary['groups']['source']}" if summary.get("groups") else ""))
    for row in summary["folds"]:
        print(f"  fold {row['fold'] + 1}: {row['images']} images  val_acc {row['val_acc']:.4f}  "
              f"val_macro_f1 {row['val_macro_f1']:.4f}")
    for metric in ("val_acc", "val_macro_f1", "val_ece"):
        mean, std = summary["mean"][metric], summary["std"][metric]
        if mean is not None:
            print(f"  {metric:<13} {mean:.4f} ± {std if std is not None else float('nan'):.4f}")
    print(f"  folder            {args.out}")
    if summary["status"] != "finished":
        print(f"resume with: python -m core cv --resume {args.out}", file=sys.stderr)
        return 130
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from core.jobs.worker import run

    return run(args.job_dir)


EXPORTS = {"safetensors": ".safetensors", "package": ".zip", "torchscript": ".torchscript.pt", "onnx": ".onnx",
           "card": ".md"}


def cmd_predict(args: argparse.Namespace) -> int:
    from core.evaluate.predict import image_files, load_any, predictions_csv, top_k, uncertain_below

    if not any((args.run_dir / name).is_file() for name in ("ensemble.json", "cv.json")):
        _run_dir(args.run_dir)
    predictor = load_any(args.run_dir, args.engine)
    names, skipped, probs = predictor.classify((str(p), p) for p in image_files(args.images))
    for name, reason in skipped:
        print(f"skipped {name}: {reason}", file=sys.stderr)
    print(f"engine: {', '.join(sorted({m.engine_used for m in getattr(predictor, 'members', [predictor])}))}",
          file=sys.stderr)
    if not names:
        raise ImageError("no image could be read from what was given")
    threshold = uncertain_below(predictor) if args.uncertain_below is None else args.uncertain_below
    for name, ranked in zip(names, top_k(probs, predictor.classes, args.top_k)):
        flag = "\tuncertain" if ranked[0][1] < threshold else ""
        print(f"{name}\t" + "\t".join(f"{c} {p:.4f}" for c, p in ranked) + flag)
    if args.csv:
        args.csv.write_text(predictions_csv(names, probs, predictor.classes, threshold))
        print(f"wrote {args.csv}", file=sys.stderr)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from core.deploy import export
    from core.deploy import model_card

    if (args.run_dir / "ensemble.json").is_file():
        from core.deploy import ensemble_export

        if args.format not in ensemble_export.EXPORT_FILES:
            raise DataError(f"an ensemble exports as {' or '.join(ensemble_export.EXPORT_FILES)}, not {args.format}")
        for path in ensemble_export.build(args.run_dir, args.format):
            print(f"wrote {path}")
        return 0
    run_dir = _run_dir(args.run_dir)
    make = {"safetensors": export.weights_bytes, "package": export.package, "torchscript": export.torchscript,
            "onnx": export.onnx, "card": lambda d: model_card.card(d).encode()}[args.format]
    out = args.out or Path(run_dir.name + EXPORTS[args.format])
    out.write_bytes(make(run_dir))
    print(f"wrote {out}")
    return 0


def cmd_review(args: argparse.Namespace) -> int:
    from core.evaluate import label_review

    found = label_review.review(args.cv_dir)
    print(f"{len(found)} images whose label is likely wrong, most suspect first (all in "
          f"{args.cv_dir / label_review.CSV_FILE}):")
    for row in found[: args.top]:
        print(f"  {row['score']:.4f}  {row['path']}  given {row['given']}, suggested {row['suggested']}")
    return 0


def cmd_ensemble(args: argparse.Namespace) -> int:
    from core.evaluate import ensemble

    spec = ensemble.create(args.members, args.out)
    results = ensemble.evaluate(args.out)
    print(f"ensemble of {len(spec['members'])} models in {args.out}")
    if results.get("note"):
        print(results["note"])
    for split in ("val", "test"):
        if r := results.get(split):
            print(f"{split} ({r['images']} images shared by every member):")
            print(f"  {'model':<28} {'acc':>7} {'macro F1':>9} {'ECE':>7}")
            for m in r["members"]:
                print(f"  {m['name']:<28} {m['acc']:7.4f} {m['macro_f1']:9.4f} {m['ece']:7.4f}")
            print(f"  {'ensemble':<28} {r['acc']:7.4f} {r['macro_f1']:9.4f} {r['ece']:7.4f}")
    if args.export:
        from core.deploy import ensemble_export

        for fmt in ensemble_export.EXPORT_FILES:
            for path in ensemble_export.build(args.out, fmt):
                print(f"wrote {path}")
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


class StageProgress(Callback):
    """One line per fit of a search or cross-validation."""

    def on_stage(self, index: int, total: int, label: str) -> None:
        print(f"[{index}/{total}] {label}", file=sys.stderr)


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


def cmd_users(args: argparse.Namespace) -> int:
    home = workspace_root()
    if args.action == "list":
        found, defaults = users.load(home)
        print(f"defaults: disk {defaults.disk_gb:g} GB, {defaults.jobs} jobs")
        for user in found.values():
            print(f"{user.name}: {'admin, ' if user.admin else ''}disk {user.disk_gb:g} GB, {user.jobs} jobs"
                  f"{'' if user.password else ', no password'}")
        return 0
    if not args.name:
        print(f"error: users {args.action} needs a user name", file=sys.stderr)
        return 2
    if args.action == "remove":
        users.remove(home, args.name)
        print(f"removed {args.name} (their projects stay under {home / 'projects' / args.name})")
        return 0
    password = None
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    elif not args.no_password:
        password = getpass.getpass(f"Password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            print("error: the two passwords differ; nothing changed", file=sys.stderr)
            return 2
    user = users.put(home, args.name, password, admin=args.admin, disk_gb=args.disk_gb, jobs=args.jobs)
    print(f"{user.name}: {'admin, ' if user.admin else ''}disk {user.disk_gb:g} GB, {user.jobs} jobs, written to "
          f"{users.users_file(home)}")
    return 0
