"""Stratified splits and k-fold, reproducible from a seed.

Each class is shuffled on its own, seeded by (seed, class), after sorting by path: the same files and seed
give the same split whatever order the files arrived in, and adding a class leaves the others' split alone.
The group versions keep each group (a patient, a specimen) whole: groups are placed greedily, in a seeded order
that depends only on the group names, each where it best keeps every class near its target share.
"""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from dataclasses import dataclass
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


def stratified_group_split(
    keys: Sequence[str], labels: Sequence[str], groups: Sequence[str], val_ratio: float, test_ratio: float, seed: int
) -> list[str]:
    """stratified_split where a group (a patient, a specimen) never straddles two splits.

    Test is carved from everything first and val from the rest, so the test split does not move when only the
    val share (or k-fold) changes, as with stratified_split."""
    if not (0 <= val_ratio < 1 and 0 <= test_ratio < 1 and val_ratio + test_ratio < 1):
        raise ValueError("val and test ratios must each be in [0, 1) and add up to less than 1")
    result = ["train"] * len(keys)
    units = _groups(keys, labels, groups, seed)
    rest = units
    for name, ratio in (("test", test_ratio), ("val", val_ratio / (1 - test_ratio))):
        if ratio <= 0:
            continue
        out = _carve(rest, ratio)
        for unit in out:
            for i in unit.members:
                result[i] = name
        taken = set(out)
        rest = [u for u in rest if u not in taken]
    return result


def stratified_group_kfold(
    keys: Sequence[str], labels: Sequence[str], groups: Sequence[str], k: int, seed: int
) -> list[int]:
    """stratified_kfold where every group lands in exactly one fold (scikit-learn's StratifiedGroupKFold idea)."""
    if k < 2:
        raise ValueError("k-fold needs k >= 2")
    units = _groups(keys, labels, groups, seed)
    if k > len(units):
        raise ValueError(f"{k}-fold cross-validation needs at least {k} groups (patients or specimens), but there "
                         f"are only {len(units)}. Use fewer folds.")
    folds = [0] * len(keys)
    for fold, bin_units in enumerate(_greedy(units, [1 / k] * k)):
        for unit in bin_units:
            for i in unit.members:
                folds[i] = fold
    return folds


@dataclass(eq=False)
class _Group:
    members: list[int]  # item indices
    counts: Counter  # label -> items


def _groups(keys: Sequence[str], labels: Sequence[str], groups: Sequence[str], seed: int) -> list[_Group]:
    """Groups in the order the greedy places them: seeded shuffle by name, then the largest and most one-sided
    first (hard to place late). Sorting by key and name first makes the result independent of arrival order."""
    by_name: dict[str, list[int]] = defaultdict(list)
    for i in sorted(range(len(keys)), key=lambda i: keys[i]):
        by_name[groups[i]].append(i)
    names = sorted(by_name)
    random.Random(f"{seed}:groups").shuffle(names)
    units = [_Group(by_name[n], Counter(labels[i] for i in by_name[n])) for n in names]
    return sorted(units, key=lambda u: (-len(u.members), -max(u.counts.values()) / len(u.members)))


def _greedy(units: list[_Group], ratios: list[float]) -> list[list[_Group]]:
    """Each group to the bin where it most reduces the squared deviation from that bin's per-class target (each
    class weighted by 1 / its size squared, so a rare class counts as much as a common one); ties to the bin
    furthest below its overall target."""
    totals: Counter = Counter()
    for unit in units:
        totals.update(unit.counts)
    n = sum(totals.values())
    bins: list[list[_Group]] = [[] for _ in ratios]
    counts = [Counter() for _ in ratios]
    sizes = [0] * len(ratios)

    def cost(unit: _Group, b: int) -> tuple[float, float]:
        change = sum(x * (2 * (counts[b][c] - ratios[b] * totals[c]) + x) / totals[c] ** 2
                     for c, x in unit.counts.items())
        return change, sizes[b] - ratios[b] * n

    for unit in units:
        best = min(range(len(ratios)), key=lambda b: cost(unit, b))
        bins[best].append(unit)
        counts[best].update(unit.counts)
        sizes[best] += len(unit.members)
    return bins


def _carve(units: list[_Group], ratio: float) -> list[_Group]:
    """About `ratio` of the items out of `units`, whole groups only. Every class keeps a group in what remains,
    and some group is carved when the ratio asks for it, as far as the groups allow."""
    keep, out = _greedy(units, [1 - ratio, ratio])
    for label in sorted({c for u in units for c in u.counts}):
        if not any(label in u.counts for u in keep):
            back = min((u for u in out if label in u.counts), key=lambda u: len(u.members))
            out.remove(back)
            keep.append(back)
    if not out:
        kept = Counter(c for u in keep for c in u.counts)
        movable = [u for u in keep if all(kept[c] > 1 for c in u.counts)]
        if movable:
            out.append(min(movable, key=lambda u: len(u.members)))
    return out
