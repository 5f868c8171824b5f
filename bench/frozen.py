"""Frozen-backbone fast path against the plain loop: epoch time and accuracy, measured in one run.

Both train a linear probe (frozen backbone, new head, no random augmentation) for the same epochs;
the fast path computes features once (its own first cost, reported apart) and trains the head on them.
Uses a fresh feature cache so the extraction is measured, not read back.

    python bench/frozen.py --data ../shared/datasets/hymenoptera
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def run(data: Path, backbone: str, fast: bool, epochs: int, size: int, home: Path) -> dict:
    from core.config import RunConfig
    from core.train.engine import fit

    os.environ["FTLAB_HOME"] = str(home)
    config = RunConfig()
    config.data.source = str(data)
    config.model.backbone, config.model.strategy = backbone, "linear-probe"
    config.augment.image_size, config.augment.crop_scale_min, config.augment.hflip = size, 1.0, 0.0
    config.optim.epochs, config.optim.lr = epochs, 1e-2
    config.optim.solver = "loop"  # the same epoch loop on both paths: the head solver has no image-path twin
    config.feature_cache = fast
    start = time.perf_counter()
    result = fit(config, home / ("fast" if fast else "plain"))
    total = time.perf_counter() - start
    epoch_seconds = [r["seconds"] for r in result.history]
    return {"acc": result.best["val_acc"], "epoch_seconds": epoch_seconds, "total": total,
            "weights": result.weights.source}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--backbone", default="efficientnet_lite0")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--size", type=int, default=224)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        fast = run(args.data.resolve(), args.backbone, True, args.epochs, args.size, Path(tmp))
        plain = run(args.data.resolve(), args.backbone, False, args.epochs, args.size, Path(tmp))
    # The epochs after the first: the fast path's first epoch already runs on cached features, but the
    # claim is about steady state, so both sides drop epoch 1.
    fast_epoch = statistics.mean(fast["epoch_seconds"][1:] or fast["epoch_seconds"])
    plain_epoch = statistics.mean(plain["epoch_seconds"][1:] or plain["epoch_seconds"])
    extraction = fast["total"] - sum(fast["epoch_seconds"])
    print(f"weights: {fast['weights']}  backbone: {args.backbone}  epochs: {args.epochs}  size: {args.size}")
    print(f"plain loop   epoch {plain_epoch:8.3f} s   total {plain['total']:7.1f} s   best val acc {plain['acc']:.3f}")
    print(f"fast path    epoch {fast_epoch:8.3f} s   total {fast['total']:7.1f} s   best val acc {fast['acc']:.3f}"
          f"   (set-up incl. feature extraction {extraction:.1f} s)")
    print(json.dumps({"speedup": round(plain_epoch / fast_epoch, 1), "acc_fast": fast["acc"], "acc_plain": plain["acc"],
                      "seconds_fast": round(fast["total"], 1), "seconds_plain": round(plain["total"], 1)}))


if __name__ == "__main__":
    main()
