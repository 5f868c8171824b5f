"""Several runs' models as one classifier: the mean of their softmax probabilities, each member calibrated by its
own temperature (fitted on its own validation split) before the average.

ENSEMBLE_DIR/ensemble.json      members (absolute run folders, in order), their shared classes, and each member's
                                preprocessing (a list in members' order: members may differ)
ENSEMBLE_DIR/predictions.jsonl  the held-out images every member held out, with the ensemble's probabilities
ENSEMBLE_DIR/results.json       the ensemble and each member scored on exactly those images (`evaluate`)

Each member preprocesses an image its own way (backbone, size, resize, normalisation), so the ensemble's answer is
exactly the mean of what each member says on its own. A cross-validation folder (cv.json with fold-1 ... fold-K
run folders) stands for its fold models.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import torch

from core import runs
from core.runs import CV_FILE
from core.config import RunConfig
from core.data.images import Source
from core.evaluate.heldout import SPLITS, scores
from core.evaluate import temperature
from core.evaluate.predict import Predictor, temperature_of
from core.models import backbones

SPEC = "ensemble.json"


class EnsembleError(ValueError):
    """Members that cannot form an ensemble; the message is a sentence for a person."""


def members_of(paths: Iterable[Path | str]) -> list[Path]:
    """Run folders, absolute, in the order given; a cross-validation folder gives its folds by fold number.
    A run named twice (also through its CV folder) counts once: a mean must not weigh one model double."""
    out: list[Path] = []
    for path in map(Path, paths):
        for run in _runs_in(path):
            if run.resolve() not in out:
                out.append(run.resolve())
    return out


def create(members: Iterable[Path | str], out_dir: Path) -> dict[str, Any]:
    """Write out_dir/ensemble.json for run and CV folders (see members_of) and return it. Refuses fewer than two
    models and models whose classes differ (names or order: the probabilities would mean different things). A reused
    folder loses the earlier ensemble's results and exports."""
    out_dir = Path(out_dir)
    if (out_dir / "config.json").is_file() or (out_dir / CV_FILE).is_file():
        raise EnsembleError(f"{out_dir} is a run or cross-validation folder; write the ensemble to a new folder.")
    found = members_of(members)
    if len(found) < 2:
        raise EnsembleError(f"An ensemble needs at least two models; {_names(found) or 'none'} given. Add runs or a "
                            "cross-validation folder.")
    spec = {"members": [str(r) for r in found],
            "classes": _shared_classes({r: runs.read_json(r / "classes.json", []) for r in found}),
            "preprocessing": [_preprocessing(r) for r in found]}
    out_dir.mkdir(parents=True, exist_ok=True)
    for stale in ("results.json", "predictions.jsonl"):  # another ensemble's, when the folder is reused
        (out_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(out_dir / "exports", ignore_errors=True)
    runs.write_json(out_dir / SPEC, spec)
    return spec


@dataclass
class EnsemblePredictor:
    """Predictor's surface (classes, tensor, probabilities, classify) for several models averaged."""
    members: list[Predictor]
    classes: list[str]
    ensemble_dir: Path | None = None

    @classmethod
    def load(cls, ensemble_dir: Path) -> "EnsemblePredictor":
        """Raises FileNotFoundError without ensemble.json, ValueError when a member is gone or changed."""
        ensemble_dir = Path(ensemble_dir)
        spec = runs.read_json(ensemble_dir / SPEC)
        if spec is None:
            raise FileNotFoundError(f"{ensemble_dir.name} is not an ensemble: it has no {SPEC}.")
        ensemble = cls.from_runs(spec["members"], ensemble_dir)
        if ensemble.classes != spec["classes"]:
            raise EnsembleError(f"The members of {ensemble_dir.name} now have the classes "
                                f"{', '.join(ensemble.classes)}, not {', '.join(spec['classes'])} as when it was "
                                "made: make the ensemble again.")
        return ensemble

    @classmethod
    def from_runs(cls, paths: Iterable[Path | str], ensemble_dir: Path | None = None) -> "EnsemblePredictor":
        """Run and CV folders (see members_of) averaged as they are, without an ensemble folder."""
        members = [Predictor.load(run) for run in members_of(paths)]
        if not members:
            raise EnsembleError("An ensemble needs at least one model.")
        return cls(members, _shared_classes({m.run_dir: m.classes for m in members}), ensemble_dir)

    def tensor(self, source: Source) -> tuple[torch.Tensor, ...]:
        """One image as each member sees it, in members' order; decoded and transformed once per distinct
        preprocessing (the K folds of a CV share one). Raises ImageError for what is not an image."""
        seen: dict[tuple, torch.Tensor] = {}
        for member in self.members:
            if (view := _view(member)) not in seen:
                seen[view] = member.tensor(source)
        return tuple(seen[_view(m)] for m in self.members)

    @torch.no_grad()
    def probabilities(self, images: Sequence[tuple[torch.Tensor, ...]], batch_size: int = 32) -> torch.Tensor:
        """(N, classes): the mean over members of their softmax probabilities, for images from `tensor`."""
        if not images:
            return torch.empty(0, len(self.classes))
        return torch.stack([member.probabilities([image[i] for image in images], batch_size)
                            for i, member in enumerate(self.members)]).mean(0)

    classify = Predictor.classify  # the same chunked loop: it only calls tensor and probabilities


def evaluate(ensemble_dir: Path) -> dict[str, Any]:
    """Score the ensemble and each member on the held-out images all members share, from the members'
    predictions.jsonl (no model runs): the test split for the folds of a CV, val and test for runs trained on one
    split. Writes results.json and predictions.jsonl into ensemble_dir; without a shared image, results.json says
    why in "note" and predictions.jsonl is empty."""
    ensemble_dir = Path(ensemble_dir)
    spec = runs.read_json(ensemble_dir / SPEC)
    if spec is None:
        raise FileNotFoundError(f"{ensemble_dir.name} is not an ensemble: it has no {SPEC}.")
    members = [Path(p) for p in spec["members"]]
    held = [_calibrated_rows(m) for m in members]
    shared = [key for key in held[0] if all(key in h for h in held[1:])]
    data_dirs = {(runs.read_json(m / "results.json") or {}).get("data_dir") for m in members}
    results: dict[str, Any] = {"classes": spec["classes"], "members": spec["members"],
                               "data_dir": data_dirs.pop() if len(data_dirs) == 1 else None,
                               "shared_images": len(shared)}
    rows = []
    for split in SPLITS:
        keys = [k for k in shared if k[0] == split]
        if not keys:
            continue
        labels = torch.tensor([k[2] for k in keys], dtype=torch.long)
        each = torch.tensor([[h[k] for k in keys] for h in held], dtype=torch.float32)  # (members, N, classes)
        mean = each.mean(0)
        results[split] = scores(mean, labels, len(spec["classes"])) | {"members": [
            {"run": str(m), "name": _name(m)} | _brief(scores(p, labels, len(spec["classes"])))
            for m, p in zip(members, each)]}
        rows += [{"split": split, "path": k[1], "label": k[2], "probs": [round(x, 6) for x in p]}
                 for k, p in zip(keys, mean.tolist())]
    if not rows:
        missing = [m for m, h in zip(members, held) if not h]
        results["note"] = ("No held-out image is shared by all members, so the ensemble cannot be scored: " + (
            f"{_names(missing)} {'has' if len(missing) == 1 else 'have'} no held-out predictions (predictions.jsonl)"
            if missing else "their validation and test images differ (trained on different splits or datasets)")
            + ". Predicting new images works all the same.")
    runs.rewrite_jsonl(ensemble_dir / "predictions.jsonl", rows)
    runs.write_json(ensemble_dir / "results.json", results)
    return results


def _calibrated_rows(run: Path) -> dict[tuple, list[float]]:
    """A member's held-out probabilities with its own temperature applied, as its Predictor gives them: the
    ensemble averages calibrated members."""
    rows = runs.read_jsonl(run / "predictions.jsonl")
    t = temperature_of(run)
    if not rows:
        return {}
    probs = temperature.scale(torch.tensor([r["probs"] for r in rows], dtype=torch.float64), t)
    return {(r["split"], r["path"], r["label"]): p for r, p in zip(rows, probs.tolist())}


def list_ensembles(root: Path) -> list[dict[str, Any]]:
    """Ensemble folders under root (those with ensemble.json), by name, with their held-out accuracy when
    evaluated: test when the members share test images, else val."""
    out = []
    for folder in sorted(p for p in Path(root).glob("*") if (p / SPEC).is_file()):
        spec = runs.read_json(folder / SPEC) or {}
        results = runs.read_json(folder / "results.json") or {}
        split = next((s for s in reversed(SPLITS) if s in results), None)
        out.append({"id": folder.name, "ensemble_dir": folder, "members": spec.get("members", []),
                    "classes": spec.get("classes", []), "split": split,
                    "acc": results[split]["acc"] if split else None})
    return out


def stamp(ensemble_dir: Path) -> float:
    """The latest change to the ensemble or any member's weights: a cache key for a loaded EnsemblePredictor."""
    ensemble_dir = Path(ensemble_dir)
    spec = runs.read_json(ensemble_dir / SPEC) or {}
    files = [ensemble_dir / SPEC] + [Path(m) / "model.safetensors" for m in spec.get("members", [])]
    return max((f.stat().st_mtime for f in files if f.is_file()), default=0.0)


def _runs_in(path: Path) -> list[Path]:
    if (path / CV_FILE).is_file():
        folds = sorted((p for p in path.glob("fold-*") if p.is_dir() and p.name[5:].isdigit()),
                       key=lambda p: int(p.name[5:]))
        if not folds:
            raise EnsembleError(f"{path} is a cross-validation folder without fold-1 ... fold-K run folders yet: "
                                "wait until its folds have trained.")
        for fold in folds:
            _check_run(fold)
            status = (runs.read_json(fold / "status.json") or {}).get("status", "unknown")
            if status != "finished":  # a stopped or running fold holds the weights of some epoch, not its result
                raise EnsembleError(f"{path.name}/{fold.name} has not finished (it is {status}): resume the "
                                    "cross-validation first, or pick the finished runs yourself.")
        return folds
    _check_run(path)
    return [path]


def _check_run(path: Path) -> None:
    if not path.is_dir():
        raise EnsembleError(f"{path} does not exist or is not a folder.")
    if not (path / "config.json").is_file():
        raise EnsembleError(f"{path} is neither a run folder (config.json) nor a cross-validation folder (cv.json).")
    if not (path / "model.safetensors").is_file():
        raise EnsembleError(f"{_name(path)} has no weights yet (model.safetensors is written when an epoch ends): "
                            "wait for it, or leave it out.")


def _shared_classes(classes: dict[Path, list[str]]) -> list[str]:
    groups: dict[tuple[str, ...], list[Path]] = {}
    for run, names in classes.items():
        groups.setdefault(tuple(names), []).append(run)
    if len(groups) > 1:
        raise EnsembleError("These models do not have the same classes in the same order, so their probabilities "
                            "cannot be averaged: " + "; ".join(f"{_names(found)}: {', '.join(names) or 'none'}"
                                                              for names, found in groups.items())
                            + ". Pick runs trained on the same classes.")
    return list(next(iter(groups)))


def _preprocessing(run_dir: Path) -> dict[str, Any]:
    """What the member's Predictor does to an image, from its config (the source preprocessing.json is made from)."""
    config = RunConfig.from_json((run_dir / "config.json").read_text())
    aug, backbone = config.augment, backbones.get(config.model.backbone)
    return {"image_size": aug.image_size, "resize": aug.resize, "crop_pct": aug.crop_pct,
            "resize_side": aug.resize_side(), "mean": list(backbone.mean), "std": list(backbone.std),
            "backbone": backbone.name}


def _view(member: Predictor) -> tuple:
    """What decides a member's input tensor: equal views give equal tensors."""
    aug = member.config.augment
    return aug.image_size, aug.resize, aug.resize_side(), tuple(member.backbone.mean), tuple(member.backbone.std)


def _brief(s: dict[str, Any]) -> dict[str, Any]:
    return {k: s[k] for k in ("images", "acc", "macro_f1", "ece")}


def _name(run: Path) -> str:
    """fold-2 of a CV reads as cv-name/fold-2: the folds of two CVs would otherwise look alike."""
    return f"{run.parent.name}/{run.name}" if (run.parent / CV_FILE).is_file() else run.name


def _names(found: Sequence[Path]) -> str:
    return ", ".join(_name(r) for r in found)
