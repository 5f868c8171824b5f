"""An ingested folder -> a Dataset of usable samples and a Report a person can read.

Layouts: ImageFolder (`class/.../img`, deeper folders count for their top-level class) or pre-split
(`train/class/img`, `val/...`, optional `test/...`). Every file is decoded once (in threads; Pillow releases
the GIL) and the result cached beside the copy, so validating the same data again is instant.
"""
from __future__ import annotations

import json
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median
from typing import Callable

from core import settings
from core.config import DataConfig
from core.data import overrides
from core.data.groups import assign_groups
from core.data.images import MAX_PIXELS, ImageError, inspect_image, is_image_name
from core.data.sources import DataError, DataSource, Ingested, Limits, ingest, stored
from core.runs import replace_atomically
from core.data.splits import stratified_group_kfold, stratified_group_split, stratified_kfold, stratified_split

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "test": "test", "testing": "test"}
IMBALANCE_RATIO = 5
MIN_PER_CLASS = 5
_SCAN_VERSION = 1

Progress = Callable[[int, int], None]


@dataclass
class Skipped:
    path: str
    reason: str


@dataclass
class Report:
    layout: str  # "folders" | "pre-split"
    classes: dict[str, int]  # usable images per class, all splits together
    splits: dict[str, dict[str, int]]  # split -> class -> count
    sizes: dict[str, list[int]]  # min / median / max of width and height
    modes: dict[str, int]
    formats: dict[str, int]
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # any error: this data cannot be trained on
    groups: dict | None = None  # {"source": "pattern ...", "count": n}: patients/specimens kept in one split
    folds: dict | None = None  # {"k": k, "fold": f}: k-fold cross-validation, fold f is val
    label_review: dict | None = None  # {"version", "digest", "relabelled", "excluded"}

    @property
    def trainable(self) -> bool:
        return not self.errors

    @property
    def num_images(self) -> int:
        return sum(self.classes.values())

    def to_dict(self) -> dict:
        return {**asdict(self), "trainable": self.trainable, "num_images": self.num_images}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False)

    def text(self) -> str:
        lines = [f"{self.num_images} usable images in {len(self.classes)} classes ({self.layout} layout)"]
        width = max((len(c) for c in self.classes), default=0)
        for name, count in self.classes.items():
            per_split = ", ".join(f"{s} {c.get(name, 0)}" for s, c in self.splits.items())
            lines.append(f"  {name:<{width}}  {count:>6}   ({per_split})")
        if self.sizes:
            lo, mid, hi = (self.sizes[k] for k in ("min", "median", "max"))
            lines.append(f"sizes: {lo[0]}x{lo[1]} to {hi[0]}x{hi[1]} (median {mid[0]}x{mid[1]})")
            lines.append("modes: " + ", ".join(f"{m} {n}" for m, n in self.modes.items()))
        if self.groups:
            lines.append(f"groups: {self.groups['count']} patients/specimens ({self.groups['source']}), "
                         "each kept within one split")
        if self.folds:
            lines.append(f"cross-validation: fold {self.folds['fold']} of folds 0-{self.folds['k'] - 1} "
                         "is validation, the others train")
        if self.label_review:
            r = self.label_review
            lines.append(f"{r['relabelled']} labels corrected, {r['excluded']} images excluded in label review "
                         f"(version {r['version']})")
        if self.skipped:
            lines.append(f"skipped {len(self.skipped)} files:")
            lines += [f"  {s.path}: {s.reason}" for s in self.skipped]
        lines += [f"warning: {w}" for w in self.warnings]
        lines += [f"error: {e}" for e in self.errors]
        return "\n".join(lines)


@dataclass(frozen=True)
class Sample:
    path: str  # relative to Dataset.data_dir
    label: int
    split: str  # train | val | test
    group: str = ""  # patient/specimen id when groups are set (an ungrouped image is its own: its path)


@dataclass
class Dataset:
    key: str
    data_dir: Path
    classes: list[str]
    samples: list[Sample]
    report: Report
    labels_version: int = 0  # label review version applied (0: original labels); key stays the content key
    labels_digest: str = ""

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]


def load_dataset(
    source: DataSource,
    workspace: Path,
    data: DataConfig = DataConfig(),
    limits: Limits = Limits(),
    progress: Progress | None = None,
) -> Dataset:
    """Ingest (copy once) and validate; raises DataError only when nothing at all can be read."""
    return validate(ingest(source, workspace, limits), data, progress)


def open_dataset(key: str, workspace: Path, data: DataConfig = DataConfig()) -> Dataset:
    """A stored dataset again, validated with (possibly new) split settings; the scan is cached."""
    return validate(stored(workspace, key), data)


def validate(ingested: Ingested, data: DataConfig = DataConfig(), progress: Progress | None = None) -> Dataset:
    """Raises DataError for settings that cannot apply to any data (folds, group sources); data problems go
    into the report."""
    _check_folds(data)
    infos = _scan(ingested, progress)
    skipped = [Skipped(r.path, r.reason) for r in ingested.refused]
    warnings: list[str] = []
    errors: list[str] = []
    layout = _layout(ingested.files)

    candidates: list[tuple[str, str, str]] = []  # (path, class, split)
    for path in sorted(ingested.files):
        parts = path.split("/")
        split = ""
        if layout == "pre-split":
            split, parts = SPLIT_ALIASES.get(parts[0].lower(), ""), parts[1:]
        info = infos[path]
        if layout == "pre-split" and not split:
            skipped.append(Skipped(path, "not inside train/, val/ or test/"))
        elif "error" in info:
            skipped.append(Skipped(path, _reason(path, info["error"])))
        elif len(parts) < 2:
            skipped.append(Skipped(path, "not inside a class folder; put each image in its class's subfolder"))
        else:
            candidates.append((path, parts[0], split))
    review = overrides.read(ingested.root)
    candidates, review_summary = _apply_review(candidates, review, ingested.files, skipped, warnings)
    candidates = _drop_duplicates(candidates, ingested.files, skipped, warnings)

    class_names = sorted({c for _, c, _ in candidates})
    classes = {c: 0 for c in class_names}
    for _, c, _ in candidates:
        classes[c] += 1
    folders = {_class_of(p, layout) for p in ingested.files} | {_class_of(d + "/", layout) for d in ingested.empty_dirs}
    for name in sorted(folders - set(classes) - {None}):
        warnings.append(f"Class folder '{name}' has no usable images and was left out.")

    groups, group_source, group_warnings = assign_groups([p for p, _, _ in candidates], data, layout,
                                                         ingested.data_dir)
    warnings += group_warnings
    splits = _assign_splits(candidates, groups, layout, data, warnings, errors)
    if groups:
        _warn_straddling(splits, groups, warnings)
    index = {c: i for i, c in enumerate(class_names)}
    group_ids = groups or [""] * len(candidates)
    samples = [Sample(p, index[c], s, g) for (p, c, _), s, g in zip(candidates, splits, group_ids)]
    split_counts = {s: dict(Counter(class_names[x.label] for x in samples if x.split == s))
                    for s in ("train", "val", "test") if any(x.split == s for x in samples)}
    wants_val = layout == "pre-split" or data.val_ratio > 0 or data.folds > 1
    _check_classes(classes, split_counts, wants_val, warnings, errors)

    used = [infos[p] for p, _, _ in candidates]
    report = Report(layout, classes, split_counts, _sizes(used), _count(used, "mode"), _count(used, "format"),
                    skipped, warnings, errors,
                    groups={"source": group_source, "count": len(set(groups))} if groups is not None else None,
                    folds={"k": data.folds, "fold": data.fold} if data.folds > 1 else None,
                    label_review=review_summary)
    return Dataset(ingested.key, ingested.data_dir, class_names, samples, report, review.version, review.digest)


def _scan(ingested: Ingested, progress: Progress | None) -> dict[str, dict]:
    cache = ingested.root / "scan.json"
    if cache.exists():
        cached = json.loads(cache.read_text())
        if cached.get("version") == _SCAN_VERSION:
            return cached["files"]
    paths = sorted(ingested.files)
    results: dict[str, dict] = {}

    def one(path: str) -> tuple[str, dict]:
        file = ingested.data_dir / path
        if file.stat().st_size == 0:
            return path, {"error": "empty file (0 bytes)"}
        try:
            info = inspect_image(file, MAX_PIXELS)
        except ImageError as exc:
            return path, {"error": str(exc)}
        return path, {"width": info.width, "height": info.height, "mode": info.mode, "format": info.format}

    with ThreadPoolExecutor(max_workers=settings.cpus()) as pool:
        for done, (path, info) in enumerate(pool.map(one, paths), 1):
            results[path] = info
            if progress:
                progress(done, len(paths))
    with replace_atomically(cache) as tmp:
        tmp.write_text(json.dumps({"version": _SCAN_VERSION, "files": results}))
    return results


def _class_of(path: str, layout: str) -> str | None:
    parts = path.split("/")[1 if layout == "pre-split" else 0:]
    return parts[0] if len(parts) > 1 and parts[0] else None


def _layout(files: dict[str, str]) -> str:
    tops = {p.split("/")[0].lower() for p in files if "/" in p}
    if tops and tops <= set(SPLIT_ALIASES) and any(SPLIT_ALIASES[t] == "train" for t in tops):
        return "pre-split"
    return "folders"


def _reason(path: str, error: str) -> str:
    if error.startswith("not an image") and is_image_name(path):
        return f"named like an image ({Path(path).suffix}) but its content is not an image"
    return error


def _drop_duplicates(candidates, hashes, skipped, warnings):
    """Byte-identical files: one copy per class is kept; one in two classes has no label, so none is."""
    by_hash: dict[str, list[tuple[str, str, str]]] = defaultdict(list)
    for item in candidates:
        by_hash[hashes[item[0]]].append(item)
    drop: set[str] = set()
    leaks = 0
    for items in by_hash.values():
        if len(items) == 1:
            continue
        if len({c for _, c, _ in items}) > 1:
            for path, cls, _ in items:
                other = next(p for p, c, _ in items if c != cls)
                skipped.append(Skipped(path, f"the same image is also in another class ({other}): its label "
                                             "is ambiguous, so every copy was left out"))
                drop.add(path)
            continue
        first = items[0][0]
        for path, _, split in items[1:]:
            skipped.append(Skipped(path, f"duplicate of {first}"))
            drop.add(path)
        leaks += len({s for _, _, s in items}) > 1
    if leaks:
        warnings.append(f"{leaks} images appear in more than one of train/val/test; the copies outside the "
                        "first were dropped so validation does not see training images.")
    return [c for c in candidates if c[0] not in drop]


def _assign_splits(candidates, groups, layout, data: DataConfig, warnings, errors) -> list[str]:
    """Given split folders stay; what the data leaves open is split here, whole groups at a time when there are
    groups. With k-fold, everything outside test takes its turn as val: fold `data.fold` is val, the rest train."""
    keys, labels = [p for p, _, _ in candidates], [c for _, c, _ in candidates]
    everything = list(range(len(candidates)))
    if layout == "pre-split":
        splits = [s for _, _, s in candidates]
        if "val" not in splits and data.folds <= 1:
            warnings.append(f"No val/ folder: {data.val_ratio:.0%} of train/ is held out for validation.")
            train = [i for i in everything if splits[i] == "train"]
            for i, s in zip(train, _split(train, keys, labels, groups, data.val_ratio, 0.0, data.split_seed)):
                splits[i] = s
    else:
        val_ratio = 0.0 if data.folds > 1 else data.val_ratio
        splits = _split(everything, keys, labels, groups, val_ratio, data.test_ratio, data.split_seed)
    if data.folds > 1:
        pool = [i for i in everything if splits[i] != "test"]
        units = len({groups[i] if groups else keys[i] for i in pool})
        if units < data.folds:
            errors.append(f"{data.folds}-fold cross-validation needs at least {data.folds} "
                          f"{'groups (patients or specimens)' if groups else 'images'} outside the test split, "
                          f"but there are {units}. Use fewer folds.")
            return splits
        for i, fold in zip(pool, _kfold(pool, keys, labels, groups, data.folds, data.split_seed)):
            splits[i] = "val" if fold == data.fold else "train"
    return splits


def _split(indices, keys, labels, groups, val_ratio, test_ratio, seed) -> list[str]:
    keys, labels = _pick(keys, indices), _pick(labels, indices)
    if groups is None:
        return stratified_split(keys, labels, val_ratio, test_ratio, seed)
    return stratified_group_split(keys, labels, _pick(groups, indices), val_ratio, test_ratio, seed)


def _kfold(indices, keys, labels, groups, k, seed) -> list[int]:
    keys, labels = _pick(keys, indices), _pick(labels, indices)
    if groups is None:
        return stratified_kfold(keys, labels, k, seed)
    return stratified_group_kfold(keys, labels, _pick(groups, indices), k, seed)


def _pick(items: list, indices: list[int]) -> list:
    return [items[i] for i in indices]


def _check_folds(data: DataConfig) -> None:
    if data.folds < 0 or data.folds == 1:
        raise DataError(f"folds is {data.folds}: use 0 for a single split, or 2 or more for k-fold "
                        "cross-validation.")
    if data.folds > 1 and not 0 <= data.fold < data.folds:
        raise DataError(f"fold {data.fold} does not exist with {data.folds} folds; pick a fold from 0 to "
                        f"{data.folds - 1}.")


def _warn_straddling(splits, groups, warnings) -> None:
    """Only given split folders can put one group in two splits; training and validating on one patient leaks."""
    seen: dict[str, set[str]] = defaultdict(set)
    for group, split in zip(groups, splits):
        seen[group].add(split)
    straddling = sorted(g for g, s in seen.items() if len(s) > 1)
    if straddling:
        example = straddling[0]
        warnings.append(f"{len(straddling)} patient/specimen groups have images in more than one of train/val/test "
                        f"(for example '{example}' in {' and '.join(sorted(seen[example]))}): validation then sees "
                        "patients the model trained on and looks better than it is. Move each group's images into "
                        "one split folder.")


def _apply_review(candidates, review: overrides.Overrides, files, skipped, warnings):
    """Label review corrections: another class (one of the dataset's own) or left out."""
    if not review.version:
        return candidates, None
    known = {c for _, c, _ in candidates}
    excluded = set(review.excluded)
    kept, relabelled, unknown = [], 0, []
    for path, cls, split in candidates:
        if path in excluded:
            skipped.append(Skipped(path, "excluded in label review"))
            continue
        new = review.relabelled.get(path, cls)
        if new not in known:
            unknown.append(f"{path} -> '{new}'")
            new = cls
        relabelled += new != cls
        kept.append((path, new, split))
    if unknown:
        warnings.append(f"{len(unknown)} label review corrections name a class this dataset does not have and were "
                        f"ignored (for example {unknown[0]}). Classes: {', '.join(sorted(known))}.")
    stray = [p for p in [*review.relabelled, *review.excluded] if p not in files]
    if stray:
        warnings.append(f"{len(stray)} label review entries name files that are not in this dataset and were "
                        f"ignored (for example '{stray[0]}').")
    summary = {"version": review.version, "digest": review.digest, "relabelled": relabelled,
               "excluded": len(candidates) - len(kept)}
    return kept, summary


def _check_classes(classes, splits, wants_val, warnings, errors) -> None:
    if not classes:
        errors.append("No usable images were found. Put images in one subfolder per class "
                      "(for example cats/1.jpg and dogs/2.jpg).")
        return
    if len(classes) == 1:
        errors.append(f"Only one class ('{next(iter(classes))}') was found; a classifier needs at least two. "
                      "Put each class in its own subfolder.")
    train = splits.get("train", {})
    for name, count in classes.items():
        if train.get(name, 0) == 0:
            errors.append(f"Class '{name}' has no training images; add some to train/{name}/.")
        elif count < MIN_PER_CLASS:
            warnings.append(f"Class '{name}' has only {count} images; at least {MIN_PER_CLASS} "
                            "(better 20 or more) are needed for a meaningful result.")
    counts = sorted(classes.items(), key=lambda kv: kv[1])
    (small, n_small), (big, n_big) = counts[0], counts[-1]
    if n_small and n_big / n_small > IMBALANCE_RATIO:
        warnings.append(f"Classes are imbalanced: '{big}' has {n_big} images, '{small}' only {n_small} "
                        f"(1:{n_big / n_small:.0f}). Consider class weighting or more images of the small classes.")
    val = splits.get("val", {})
    short = [n for n in classes if val.get(n, 0) == 0 and train.get(n, 0) > 0]
    if short and wants_val and len(classes) > 1:
        names = ", ".join(f"'{n}'" for n in short)
        warnings.append(f"Too few images for the requested split: {names} has no validation images, "
                        "so its accuracy cannot be measured. Add images or raise the validation share.")


def _sizes(infos: list[dict]) -> dict[str, list[int]]:
    if not infos:
        return {}
    ws, hs = [i["width"] for i in infos], [i["height"] for i in infos]
    return {"min": [min(ws), min(hs)], "median": [int(median(ws)), int(median(hs))], "max": [max(ws), max(hs)]}


def _count(infos: list[dict], key: str) -> dict[str, int]:
    return dict(Counter(i[key] for i in infos).most_common())
