"""Which given labels are probably wrong, from a cross-validation's out-of-fold predictions (cleanlab).

cleanlab needs out-of-sample probabilities, and out-of-fold ones are exactly that: each image was predicted by the
fold model that never trained on it, so a wrong label cannot have been memorised into agreeing with itself.

CV_DIR/label_issues.csv   the suspects, most likely wrong first, one per row:
    path       the image, relative to the dataset's data folder (as in oof_predictions.jsonl)
    given      the class it is labelled with
    suggested  the class the fold model found most likely apart from the given one
    score      label quality from 0 to 1: the probability the fold model gave the given label. LOW = likely wrong.
"""
from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from cleanlab.filter import find_label_issues
from cleanlab.rank import get_label_quality_scores

from core import runs
from core.runs import CV_FILE, OOF_FILE
from core.data.sources import DataError, Ingested, stored

CSV_FILE = "label_issues.csv"
CSV_COLUMNS = ("path", "given", "suggested", "score")
MIN_PER_CLASS = 2


def suspects(oof_rows: list[dict[str, Any]], classes: list[str]) -> list[dict[str, Any]]:
    """Images whose label may be wrong, most suspect first: {path, given, suggested, score, fold, probs, flagged}
    (given and suggested are class names; probs in the order of `classes`; score as in label_issues.csv).

    The suspects are the images the fold model put in another class (what cleanlab's "predicted_neq_given" does),
    ranked by cleanlab's self_confidence label quality. flagged marks those cleanlab.filter.find_label_issues
    (confident learning) also flags: it estimates from per-class confidence thresholds how many labels are wrong,
    so it separates wrong labels from hard images without a hand-picked cut-off. Its flags alone are too few to be
    the list: cleanlab 2.9 only ever flags disagreements, and a model from a few quick epochs, unsure everywhere,
    stays under the thresholds even where it clearly disagrees (measured: an image filed in the wrong class folder
    and predicted as its real class was not flagged). A class with fewer than MIN_PER_CLASS out-of-fold images
    has no meaningful threshold (with none, cleanlab silently flags nothing), so then nothing is flagged.
    """
    if len(classes) < 2:
        raise DataError("Label review needs at least two classes: with one, no label can be wrong.")
    if not oof_rows:
        return []
    labels = np.array([r["label"] for r in oof_rows])
    if any(len(r["probs"]) != len(classes) for r in oof_rows) or labels.min() < 0 or labels.max() >= len(classes):
        raise DataError(f"The out-of-fold predictions do not match the {len(classes)} classes of this "
                        "cross-validation (the data changed while it ran?). Run the cross-validation again.")
    probs = np.array([r["probs"] for r in oof_rows], dtype=np.float64)
    score = get_label_quality_scores(labels, probs, method="self_confidence")
    flagged = np.zeros(len(labels), dtype=bool)
    if not thin_classes(oof_rows, classes):
        with warnings.catch_warnings():  # "may not flag all label issues in class": the list has them all
            warnings.simplefilter("ignore")
            flagged = find_label_issues(labels, probs, n_jobs=1)
    order = np.flatnonzero((probs.argmax(1) != labels) | flagged)
    order = order[np.argsort(score[order], kind="stable")]
    others = probs.copy()
    others[np.arange(len(labels)), labels] = -1
    suggested = others.argmax(1)
    return [{"path": oof_rows[i]["path"], "given": classes[labels[i]], "suggested": classes[suggested[i]],
             "score": float(score[i]), "fold": oof_rows[i]["fold"], "probs": oof_rows[i]["probs"],
             "flagged": bool(flagged[i])} for i in order]


def thin_classes(oof_rows: list[dict[str, Any]], classes: list[str]) -> list[str]:
    """Classes with too few out-of-fold images for confident learning: suspects() then flags nothing."""
    counts = np.bincount([r["label"] for r in oof_rows], minlength=len(classes))
    return [c for c, n in zip(classes, counts) if n < MIN_PER_CLASS]


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    with runs.replace_atomically(Path(path)) as tmp, open(tmp, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(CSV_COLUMNS)
        out.writerows([r["path"], r["given"], r["suggested"], f"{r['score']:.6f}"] for r in rows)


def review(cv_dir: Path) -> list[dict[str, Any]]:
    """suspects() of a cross-validation folder, also written to CV_DIR/label_issues.csv."""
    cv_dir = Path(cv_dir)
    summary = runs.read_json(cv_dir / CV_FILE)
    if not summary:
        raise DataError(f"{cv_dir.name} is not a cross-validation folder (it has no {CV_FILE}).")
    rows = runs.read_jsonl(cv_dir / OOF_FILE)
    if not rows:
        raise DataError("No fold of this cross-validation has finished, so there are no out-of-fold predictions to "
                        "review yet.")
    found = suspects(rows, summary["classes"])
    write_csv(found, cv_dir / CSV_FILE)
    return found


def dataset_of(cv_dir: Path, workspace: Path) -> Ingested:
    """The dataset copy the folds trained on (each fold's config.json records its key): where the images and
    the label overrides live."""
    for run_dir in sorted(Path(cv_dir).glob("fold-*")):
        key = runs.read_json(run_dir / "config.json", {}).get("provenance", {}).get("dataset", {}).get("key")
        if key:
            return stored(workspace, key)
    raise DataError("No fold of this cross-validation recorded which dataset it trained on (none got as far as "
                    "loading its data).")
