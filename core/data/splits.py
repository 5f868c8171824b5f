"""Stratified splits and k-fold, reproducible from a seed.

Each class is shuffled on its own, seeded by (seed, class), after sorting by path: the same files and seed
give the same split whatever order the files arrived in, and adding a class leaves the others' split alone.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Sequence


def stratified_split(
    keys: Sequence[str], labels: Sequence[str], val_ratio: float, test_ratio: float, seed: int
) -> list[str]:
    """A split name ("train", "val", "test") per item; every class keeps at least one training item."""
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise ValueError("val and test ratios must each be in [0, 1) and add up to less than 1")
    result = ["train"] * len(keys)
    for label, members in _by_class(keys, labels, seed).items():
        n = len(members)
        n_test = _share(n, test_ratio, available=n - 1)
        n_val = _share(n, val_ratio, available=n - n_test - 1)
        for i in members[:n_test]:
            result[i] = "test"
        for i in members[n_test:n_test + n_val]:
            result[i] = "val"
    return result


def stratified_kfold(keys: Sequence[str], labels: Sequence[str], k: int, seed: int) -> list[int]:
    """A fold index in [0, k) per item, each class spread evenly over the folds."""
    if k < 2:
        raise ValueError("k-fold needs k >= 2")
    folds = [0] * len(keys)
    offset = 0
    for label, members in sorted(_by_class(keys, labels, seed).items()):
        for j, i in enumerate(members):
            folds[i] = (offset + j) % k
        offset += len(members)  # the next class starts where this one stopped: folds stay balanced
    return folds


def _by_class(keys: Sequence[str], labels: Sequence[str], seed: int) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(keys)), key=lambda i: keys[i]):
        groups[labels[i]].append(i)
    for label, members in groups.items():
        random.Random(f"{seed}:{label}").shuffle(members)
    return dict(groups)


def _share(n: int, ratio: float, available: int) -> int:
    """round(n * ratio), at least 1 when the ratio asks for some, at most what is available."""
    if ratio <= 0 or available <= 0:
        return 0
    return min(max(1, round(n * ratio)), available)
