"""Samplers against each other: TPE, random and grid, equal trial budgets over the same space, several seeds.

Every trial is a real fit of the default path (a linear probe on cached frozen features), so a trial costs a
fraction of a second once the features exist; the features are computed once, before any sampler runs. Prints
the mean best score after 10, 30 and 60 trials per sampler, then one line of JSON. No pruning, so each sampler
spends its budget on whole trials.

    python bench/search.py --data ../shared/datasets/hymenoptera [--seeds 4] [--trials 60]
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

CHECKPOINTS = (10, 30, 60)


def best_after(values: list[float | None], n: int) -> float:
    """The best score among the first n trials (failed ones count as nothing)."""
    seen = [v for v in values[:n] if v is not None]
    return max(seen) if seen else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "datasets" / "hymenoptera")
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--trials", type=int, default=max(CHECKPOINTS))
    args = parser.parse_args()
    home = Path(tempfile.mkdtemp(prefix="ftlab-bench-search-"))
    os.environ["FTLAB_HOME"] = str(home / "workspace")

    from core.config import RunConfig
    from core.experiments import search
    from core.experiments.space import default_space, grid_size
    from core.runs import read_json
    from core.train.engine import dataset_features

    base = RunConfig()
    base.data.source = str(args.data.resolve())
    base.threads = os.cpu_count() or 1
    dataset_features(base)  # the cache every trial reads
    space = default_space()
    points = next(p for p in range(2, 10) if grid_size(space, p) >= args.trials)
    results: dict[str, list[list[float | None]]] = {}
    seconds: dict[str, float] = {}
    for sampler in ("tpe", "random", "grid"):
        started = time.perf_counter()
        for seed in range(args.seeds):
            folder = home / f"{sampler}-{seed}"
            options = search.SearchConfig(space=space, sampler=sampler, pruner="none", trials=args.trials,
                                          seed=seed, grid_points=points)
            search.create(base, options, folder)
            search.run(folder)
            values = [t["value"] for t in sorted(read_json(folder / search.TRIALS_FILE), key=lambda t: t["number"])]
            results.setdefault(sampler, []).append(values)
        seconds[sampler] = (time.perf_counter() - started) / args.seeds / args.trials
    summary: dict[str, object] = {"data": str(args.data), "seeds": args.seeds, "trials": args.trials,
                                  "grid_points": points, "space": sorted(space)}
    print(f"mean best val_acc over {args.seeds} seeds (grid: {points} points per range)")
    print(f"{'sampler':<8}" + "".join(f"{f'after {n}':>12}" for n in CHECKPOINTS) + f"{'s/trial':>10}")
    for sampler, runs in results.items():
        means = {n: statistics.fmean(best_after(v, n) for v in runs) for n in CHECKPOINTS if n <= args.trials}
        summary[sampler] = {str(n): round(m, 4) for n, m in means.items()} | {"seconds_per_trial": round(seconds[sampler], 3)}
        print(f"{sampler:<8}" + "".join(f"{m:12.4f}" for m in means.values()) + f"{seconds[sampler]:10.3f}")
    if args.trials >= 60:
        summary["tpe30_ge_random60"] = summary["tpe"]["30"] >= summary["random"]["60"]
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
