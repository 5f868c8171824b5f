"""The best weights on held-out images, image by image: what the Results page, the model card and the CLI read.

RUN_DIR/predictions.jsonl  one row per validation and test image: split, path, true label, probabilities (as the
                           network gives them, before temperature scaling)
RUN_DIR/results.json       per split: accuracy, macro F1, per-class scores, confusion matrix, calibration before
                           and after the temperature ("calibrated"), and which split that temperature was fitted on
RUN_DIR/calibration.json   the temperature (fitted on the validation split) and the default confidence below which
                           Predict calls a prediction uncertain

Written when training ends (from the loop's own loaders, so cached features are reused); `evaluate_run`
recomputes both from the run folder alone, for runs that ended before this existed or were cut off.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from core.evaluate import calibration, metrics, temperature
from core.evaluate.predict import CALIBRATION
from core import runs
from core.data.validation import Dataset

SPLITS = ("val", "test")


def scores(probs: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    cm = metrics.confusion_matrix(probs.argmax(1), labels, num_classes)
    return {"images": len(labels), **metrics.summary(cm), "per_class": metrics.per_class(cm),
            "confusion": cm.tolist(), "ece": calibration.expected_calibration_error(probs, labels),
            "reliability": calibration.reliability(probs, labels)}


@torch.no_grad()
def loader_probabilities(net: nn.Module, loader, device: torch.device) -> torch.Tensor:
    """Softmax outputs in the loader's order (held-out loaders never shuffle, so it is the samples' order)."""
    net.eval()
    return torch.cat([net(x.to(device)).softmax(1).cpu() for x, _ in loader])


def write(run_dir: Path, dataset: Dataset, probs: dict[str, torch.Tensor]) -> dict[str, Any]:
    """probs: split -> (N, classes) uncalibrated, for dataset.split(split) in that order. Fits the temperature on
    the validation split; every split is scored before and after it. Calibration measured on the split the
    temperature was fitted on is optimistic, so results say which split each figure comes from."""
    results: dict[str, Any] = {"data_dir": str(dataset.data_dir), "classes": dataset.classes}
    labels = {split: torch.tensor([s.label for s in dataset.split(split)], dtype=torch.long) for split in probs}
    fitted_on = "val" if "val" in probs and len(labels["val"]) else None
    t = write_calibration(run_dir, probs.get("val"), labels.get("val"), fitted_on)
    rows = []
    for split, p in probs.items():
        calibrated = temperature.scale(p, t)
        results[split] = scores(p, labels[split], len(dataset.classes)) | {"calibrated": {
            "ece": calibration.expected_calibration_error(calibrated, labels[split]),
            "reliability": calibration.reliability(calibrated, labels[split]),
            "nll": temperature.nll(temperature.logits_of(calibrated), labels[split]),
            "nll_before": temperature.nll(temperature.logits_of(p), labels[split])}}
        rows += [{"split": split, "path": s.path, "label": s.label, "probs": [round(x, 6) for x in row]}
                 for s, row in zip(dataset.split(split), p.tolist())]
    reported = "test" if "test" in probs else fitted_on
    results["calibration"] = {"temperature": t, "fitted_on": fitted_on, "reported_on": reported,
                              "optimistic": reported is not None and reported == fitted_on}
    runs.rewrite_jsonl(run_dir / "predictions.jsonl", rows)
    runs.write_json(run_dir / "results.json", results)
    return results


def write_calibration(out_dir: Path, probs: torch.Tensor | None, labels: torch.Tensor | None,
                      fitted_on: str | None) -> float:
    """Fits the temperature on held-out predictions (fitted_on None: there are none, T = 1) and writes it to
    calibration.json with the confidence below which Predict calls a prediction uncertain, from the same
    predictions once calibrated. Returns the temperature."""
    t, below = 1.0, None
    if fitted_on:
        t = temperature.fit(temperature.logits_of(probs), labels)
        below = temperature.uncertain_below(temperature.scale(probs, t), labels)
    runs.write_json(out_dir / CALIBRATION, {"temperature": t, "fitted_on": fitted_on,
                                            "images": len(labels) if fitted_on else 0, "uncertain_below": below})
    return t


def after_fit(run_dir: Path, net: nn.Module, loaders: dict, dataset: Dataset, device: torch.device) -> None:
    probs = {split: loader_probabilities(net, loaders[split], device) for split in SPLITS if split in loaders}
    if probs:
        write(run_dir, dataset, probs)


def evaluate_run(run_dir: Path, dataset: Dataset | None = None) -> dict[str, Any]:
    """Recompute predictions.jsonl and results.json from the run's weights and its dataset copy."""
    from core.accounts.projects import home_of
    from core.evaluate.predict import Predictor
    from core.data.validation import load_dataset

    predictor = Predictor.load(run_dir)
    if dataset is None:
        dataset = load_dataset(predictor.config.data.source, home_of(run_dir), predictor.config.data)
    probs = {}
    for split in SPLITS:
        samples = dataset.split(split)
        if samples:
            probs[split] = predictor.probabilities([predictor.tensor(dataset.data_dir / s.path) for s in samples],
                                                   calibrated=False)  # the temperature is fitted again below
    return write(run_dir, dataset, probs)


def read(run_dir: Path) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
    """(results, predictions); (None, []) when the run has not been evaluated."""
    return runs.read_json(Path(run_dir) / "results.json"), runs.read_jsonl(Path(run_dir) / "predictions.jsonl")


def mistakes(predictions: Sequence[dict[str, Any]], split: str = "val") -> list[dict[str, Any]]:
    """Wrong predictions with the predicted class and its confidence, most confident mistakes first."""
    rows = [_predicted(r) for r in predictions if r["split"] == split]
    return sorted((r for r in rows if r["pred"] != r["label"]), key=lambda r: -r["confidence"])


def cell(predictions: Sequence[dict[str, Any]], true: int, pred: int, split: str = "val") -> list[dict[str, Any]]:
    """The images behind one confusion-matrix cell (true class, predicted class), most confident first."""
    rows = [_predicted(r) for r in predictions if r["split"] == split and r["label"] == true]
    return sorted((r for r in rows if r["pred"] == pred), key=lambda r: -r["confidence"])


def _predicted(row: dict[str, Any]) -> dict[str, Any]:
    pred = max(range(len(row["probs"])), key=row["probs"].__getitem__)
    return row | {"pred": pred, "confidence": row["probs"][pred]}
