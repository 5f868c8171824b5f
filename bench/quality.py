"""What a person gets: the defaults against a linear probe, full fine-tuning and random initialisation.

(a) the defaults (efficientnet_lite0, packaged ImageNet weights, linear probe on cached features);
(b) a linear probe through the full loop with random crop and flip, as the PyTorch tutorial trains it;
(c) full fine-tuning with the same augmentation; (d) the defaults from random initialisation.
Wall time includes data loading and feature extraction (each variant gets a fresh workspace). Prints a table,
then one line of JSON with acc_* (best val accuracy) and seconds_*.

    python bench/quality.py --data ../shared/datasets/hymenoptera
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from core.config import RunConfig  # noqa: E402
from core.train.engine import fit  # noqa: E402


def variants(epochs_full: int) -> dict[str, RunConfig]:
    default = RunConfig()
    probe = RunConfig()
    probe.augment.crop_scale_min, probe.augment.hflip = 0.6, 0.5
    probe.optim.epochs = epochs_full
    full = RunConfig()
    full.model.strategy = "full"
    full.augment.crop_scale_min, full.augment.hflip = 0.6, 0.5
    full.optim.epochs, full.optim.lr = epochs_full, 3e-4
    random = RunConfig()
    random.model.weights = "random"
    return {"default": default, "probe": probe, "full": full, "random": random}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--epochs-full", type=int, default=5, help="epochs for (b) and (c)")
    p.add_argument("--only", nargs="*", help="run only these variants")
    args = p.parse_args()
    out: dict[str, float] = {}
    print(f"{'variant':<10} {'strategy':<13} {'weights':<9} {'epochs':>6} {'best val acc':>13} {'seconds':>8}")
    for name, config in variants(args.epochs_full).items():
        if args.only and name not in args.only:
            continue
        config.data.source = str(args.data.resolve())
        with tempfile.TemporaryDirectory() as home:
            os.environ["FTLAB_HOME"] = home
            start = time.perf_counter()
            result = fit(config, Path(home) / "run")
            seconds = time.perf_counter() - start
        out[f"acc_{name}"], out[f"seconds_{name}"] = round(result.best["val_acc"], 4), round(seconds, 1)
        print(f"{name:<10} {config.model.strategy:<13} {result.weights.source:<9} {len(result.history):>6} "
              f"{result.best['val_acc']:>13.3f} {seconds:>8.1f}", flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
