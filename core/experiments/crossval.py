"""k-fold cross-validation: k normal runs, fold i validating on fold i, then their held-out predictions pooled.

CV_DIR/fold-1 .. fold-K      run folders (config.json says data.folds = K, data.fold = i - 1: each one is a
                             plain run the Results page, exports and `evaluate` understand)
CV_DIR/oof_predictions.jsonl every image outside the test split exactly once: path, fold, label, probs
CV_DIR/cv.json               per-fold metrics, mean and standard deviation, the pooled out-of-fold confusion
                             matrix and calibration (before and after the temperature), and where the groups
                             came from
CV_DIR/calibration.json      the temperature fitted on every out-of-fold prediction: the folds' models use it
                             (Predict, exports, ensembles) in place of the one their own validation fold gave

Folds are assigned in core/data (group-aware when the config names groups), so a fold's run folder alone says
which images it held out. A resumed cross-validation skips finished folds and resumes a stopped one.
"""
from __future__ import annotations

import copy
import statistics
import threading
from pathlib import Path
from typing import Any, Sequence

import torch

from core import runs
from core.runs import CV_FILE, OOF_FILE
from core.config import RunConfig, workspace_root
from core.data.sources import DataError
from core.data.validation import Dataset, load_dataset
from core.evaluate import calibration, heldout, metrics, temperature
from core.train.callbacks import Callback, Callbacks
from core.train.engine import fit

METRICS = ("val_acc", "val_balanced_acc", "val_macro_f1", "val_loss", "val_ece")


def fold_config(config: RunConfig, k: int, fold: int) -> RunConfig:
    config = copy.deepcopy(config)
    config.data.folds, config.data.fold = k, fold
    return config


def fold_dir(out_dir: Path, fold: int) -> Path:
    return Path(out_dir) / f"fold-{fold + 1}"


def cross_validate(config: RunConfig, out_dir: Path, callbacks: Sequence[Callback] = (),
                   stop_event: threading.Event | None = None, resume: bool = False) -> dict[str, Any]:
    """Train the k folds of config.data.folds in turn; returns cv.json's content ("status" says how it ended)."""
    k = config.data.folds
    if k < 2:
        raise DataError("Cross-validation needs at least 2 folds (data.folds).")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stop_event = stop_event or threading.Event()
    cb = Callbacks(list(callbacks))
    status = "finished"
    dataset = load_dataset(config.data.source, workspace_root(), fold_config(config, k, 0).data)
    if resume:
        _warn_if_relabelled(out_dir, k, dataset, cb)
    try:
        for fold in range(k):
            run_dir = fold_dir(out_dir, fold)
            if resume and runs.read_json(run_dir / "status.json", {}).get("status") == "finished":
                continue
            cb.on_stage(fold + 1, k, f"fold {fold + 1} of {k}")
            dataset = load_dataset(config.data.source, workspace_root(), fold_config(config, k, fold).data)
            if not dataset.report.trainable:
                raise DataError(dataset.report.errors[0])
            summarize(out_dir, config, dataset, "running")  # cv.json names the config from the start: resumable
            result = fit(fold_config(config, k, fold), run_dir, list(callbacks), stop_event, dataset=dataset,
                         resume=resume and (run_dir / "checkpoint.pt").is_file())
            if result.status != "finished":
                status = result.status
                break
    except BaseException:
        summarize(out_dir, config, dataset, "failed")  # never left "running": the page offers Resume
        raise
    return summarize(out_dir, config, dataset, status)


def _warn_if_relabelled(out_dir: Path, k: int, dataset: Dataset, cb: Callback) -> None:
    """Folds trained before a label review used other labels than the ones resumed now: say so."""
    for fold in range(k):
        config = runs.read_json(fold_dir(out_dir, fold) / "config.json", {})
        version = config.get("provenance", {}).get("dataset", {}).get("labels_version")
        if version is not None and version != dataset.labels_version:
            cb.on_message(f"Fold {fold + 1} was trained on labels version {version}, the data now has version "
                          f"{dataset.labels_version} (label review): start a new cross-validation for scores on one "
                          "version.", "warning")
            return


def summarize(out_dir: Path, config: RunConfig, dataset: Dataset, status: str) -> dict[str, Any]:
    """cv.json and oof_predictions.jsonl from the fold folders written so far."""
    k = config.data.folds
    folds, oof = [], []
    for fold in range(k):
        run_dir = fold_dir(out_dir, fold)
        record = runs.read_json(run_dir / "results.json")
        if runs.read_json(run_dir / "status.json", {}).get("status") != "finished" or not record:
            continue
        val = record.get("val", {})
        best = runs.load_run(run_dir).best
        row = {"fold": fold, "run": run_dir.name, "images": val.get("images"), "val_acc": val.get("acc"),
               "val_balanced_acc": val.get("balanced_acc"), "val_macro_f1": val.get("macro_f1"),
               "val_loss": best.get("val_loss"), "val_ece": val.get("ece"), "confusion": val.get("confusion"),
               "best_epoch": runs.read_json(run_dir / "status.json", {}).get("best_epoch")}
        if "test" in record:
            row["test"] = {m: record["test"].get(m) for m in ("images", "acc", "macro_f1", "ece")}
        folds.append(row)
        oof += [{"path": r["path"], "fold": fold, "label": r["label"], "probs": r["probs"]}
                for r in runs.read_jsonl(run_dir / "predictions.jsonl") if r["split"] == "val"]
    oof.sort(key=lambda r: r["path"])
    runs.rewrite_jsonl(out_dir / OOF_FILE, oof)
    classes = dataset.classes
    summary: dict[str, Any] = {
        "status": status, "k": k, "classes": classes, "folds": folds,
        "mean": {m: _stat(folds, m, statistics.fmean) for m in METRICS},
        "std": {m: _stat(folds, m, statistics.stdev) for m in METRICS},
        "groups": dataset.report.groups,
        "config": config.to_dict(),
    }
    if oof:
        probs = torch.tensor([r["probs"] for r in oof])
        labels = torch.tensor([r["label"] for r in oof])
        cm = metrics.confusion_matrix(probs.argmax(1), labels, len(classes))
        summary["oof"] = {"images": len(oof), **metrics.summary(cm), "confusion": cm.tolist(),
                          **oof_calibration(out_dir, probs.double(), labels, torch.tensor([r["fold"] for r in oof]))}
    runs.write_json(out_dir / CV_FILE, summary)
    return summary


def oof_calibration(out_dir: Path, probs: torch.Tensor, labels: torch.Tensor, folds: torch.Tensor
                    ) -> dict[str, Any]:
    """Fits the temperature on all out-of-fold predictions (calibration.json) and scores them before and after it.
    The "after" figures scale each fold by the temperature the other folds give, so no image calibrates itself:
    they are honest where the validation split's are optimistic."""
    t = heldout.write_calibration(out_dir, probs, labels, "out-of-fold")
    honest = temperature.cross_fitted(probs, labels, folds)
    return {"ece": calibration.expected_calibration_error(probs, labels),
            "reliability": calibration.reliability(probs, labels), "temperature": t,
            "calibrated": {"ece": calibration.expected_calibration_error(honest, labels),
                           "reliability": calibration.reliability(honest, labels), "cross_fitted": True}}


def _stat(folds: list[dict[str, Any]], metric: str, fn) -> float | None:
    values = [f[metric] for f in folds if f.get(metric) is not None]
    return fn(values) if len(values) >= (2 if fn is statistics.stdev else 1) else None


def read(out_dir: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(cv.json, out-of-fold rows so far); (None, []) for a folder that is not a cross-validation."""
    return runs.read_json(Path(out_dir) / CV_FILE), runs.read_jsonl(Path(out_dir) / OOF_FILE)
