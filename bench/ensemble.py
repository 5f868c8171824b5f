"""The k fold models of a cross-validation as one ensemble, against the mean single fold model, on the same
held-out images: accuracy, expected calibration error (ECE) and mean confidence, measured in one run.

The data's validation images (val/ of a pre-split folder, else a 20% carve-out) become a test split every fold
leaves alone; 5-fold cross-validation with the default config runs on the rest. Prints a table and one line of
JSON with acc_single, acc_ensemble, ece_single, ece_ensemble.

    python bench/ensemble.py --data ../shared/datasets/hymenoptera [--folds 5]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def with_test_split(data: Path, out: Path) -> Path:
    """A copy of a train/ val/ folder with val/ renamed test/: held out from every fold."""
    for split, name in (("train", "train"), ("val", "test")):
        shutil.copytree(data / split, out / name)
    return out


def mean_confidence(rows: list[dict], temperature: float = 1.0) -> float:
    """The mean top probability on the test images (with a member's temperature, as the ensemble uses it): set
    against accuracy, which way a model is off."""
    import torch

    from core.evaluate.temperature import scale

    probs = torch.tensor([r["probs"] for r in rows if r.get("split", "test") == "test"], dtype=torch.float64)
    return float(scale(probs, temperature).max(1).values.mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "hymenoptera")
    parser.add_argument("--folds", type=int, default=5)
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ftlab-bench-ensemble-"))
    os.environ["FTLAB_HOME"] = str(home / "workspace")

    from core.config import RunConfig
    from core.evaluate import ensemble
    from core.experiments import crossval
    from core.runs import read_json, read_jsonl

    config = RunConfig()
    if (args.data / "train").is_dir() and (args.data / "val").is_dir():
        config.data.source = str(with_test_split(args.data, home / "data"))
    else:
        config.data.source, config.data.test_ratio = str(args.data.resolve()), 0.2
    config.data.folds = args.folds
    config.threads = os.cpu_count() or 1
    summary = crossval.cross_validate(config, home / "cv")
    ensemble.create([home / "cv"], home / "ensemble")
    results = ensemble.evaluate(home / "ensemble")
    test = results["test"]
    members = test["members"]
    confidence = {m["run"]: mean_confidence(read_jsonl(Path(m["run"]) / "predictions.jsonl"),
                                            read_json(Path(m["run"]) / "calibration.json")["temperature"])
                  for m in members}
    out = {"data": str(args.data), "folds": args.folds, "test_images": test["images"],
           "cv_val_acc": summary["mean"]["val_acc"],
           "acc_single": statistics.fmean(m["acc"] for m in members), "acc_ensemble": test["acc"],
           "ece_single": statistics.fmean(m["ece"] for m in members), "ece_ensemble": test["ece"],
           "conf_single": statistics.fmean(confidence.values()),
           "conf_ensemble": mean_confidence(read_jsonl(home / "ensemble" / "predictions.jsonl")),
           "acc_members": [m["acc"] for m in members], "ece_members": [m["ece"] for m in members]}
    print(f"{test['images']} test images; {args.folds}-fold CV mean val acc {out['cv_val_acc']:.4f}")
    print(f"{'model':<16}{'acc':>8}{'ECE':>8}{'mean conf':>11}")
    for m in members:
        print(f"{m['name']:<16}{m['acc']:8.4f}{m['ece']:8.4f}{confidence[m['run']]:11.4f}")
    print(f"{'mean single':<16}{out['acc_single']:8.4f}{out['ece_single']:8.4f}{out['conf_single']:11.4f}")
    print(f"{'ensemble':<16}{out['acc_ensemble']:8.4f}{out['ece_ensemble']:8.4f}{out['conf_ensemble']:11.4f}")
    print("mean conf below acc: under-confident, which averaging makes more so; above: over-confident, which it "
          "tempers")
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in out.items()}))


if __name__ == "__main__":
    main()
