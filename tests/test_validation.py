"""Validation: what a person is told about their data, and the reproducible splits it is trained on."""
from __future__ import annotations

import json
import random
from collections import Counter
from pathlib import Path

import pytest

import core.data.validation
from conftest import image_bytes, make_dataset
from core.config import DataConfig
from core.data.splits import stratified_kfold, stratified_split
from core.data.validation import load_dataset

pytestmark = pytest.mark.unit


_SEEDS = iter(range(10_000, 10**9))


def write_images(root: Path, counts: dict[str, int]) -> Path:
    """Like make_dataset, but every image in the test is distinct, so train/ and val/ share no bytes."""
    for name, n in counts.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            (root / name / f"{i}.png").write_bytes(image_bytes(seed=next(_SEEDS)))
    return root


def counts_by_split(dataset) -> dict[str, dict[str, int]]:
    out: dict[str, Counter] = {}
    for s in dataset.samples:
        out.setdefault(s.split, Counter())[dataset.classes[s.label]] += 1
    return {k: dict(v) for k, v in out.items()}


def reasons(report) -> dict[str, str]:
    return {s.path: s.reason for s in report.skipped}


def split_of(dataset) -> dict[str, str]:
    return {s.path: s.split for s in dataset.samples}


# --- counts and layouts --------------------------------------------------------------------------------------

def test_counts_per_class_and_split(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"ants": 8, "bees": 12})
    ds = load_dataset(root, workspace, DataConfig(val_ratio=0.25))
    r = ds.report
    assert r.layout == "folders" and r.trainable
    assert ds.classes == ["ants", "bees"]
    assert r.classes == {"ants": 8, "bees": 12} and r.num_images == 20
    assert r.splits == {"train": {"ants": 6, "bees": 9}, "val": {"ants": 2, "bees": 3}}
    assert counts_by_split(ds) == r.splits
    assert len(ds.split("train")) == 15 and len(ds.split("val")) == 5
    assert {ds.classes[s.label] for s in ds.samples if s.path.startswith("bees/")} == {"bees"}
    assert all((ds.data_dir / s.path).is_file() for s in ds.samples)
    assert r.skipped == [] and r.warnings == [] and r.errors == []
    assert r.sizes == {"min": [32, 32], "median": [32, 32], "max": [32, 32]}
    assert r.modes == {"RGB": 20} and r.formats == {"PNG": 20}


def test_test_ratio_gives_a_test_split(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"a": 10, "b": 10})
    ds = load_dataset(root, workspace, DataConfig(val_ratio=0.2, test_ratio=0.1))
    assert ds.report.splits == {"train": {"a": 7, "b": 7}, "val": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}}


def test_pre_split_layout_uses_given_train_and_val(workspace, tmp_path):
    make_dataset(tmp_path / "ds" / "train", {"cat": 6, "dog": 7})
    write_images(tmp_path / "ds" / "val", {"cat": 2, "dog": 3})
    ds = load_dataset(tmp_path / "ds", workspace, DataConfig(val_ratio=0.5))
    r = ds.report
    assert r.layout == "pre-split" and r.trainable
    assert ds.classes == ["cat", "dog"]
    assert r.splits == {"train": {"cat": 6, "dog": 7}, "val": {"cat": 2, "dog": 3}}
    assert all(s.path.split("/")[0] == s.split for s in ds.samples)  # val_ratio is ignored
    assert not any("val/" in w for w in r.warnings)


def test_pre_split_with_test_folder(workspace, tmp_path):
    for split, n in (("train", 6), ("validation", 2), ("test", 2)):
        write_images(tmp_path / "ds" / split, {"cat": n, "dog": n})
    ds = load_dataset(tmp_path / "ds", workspace)
    assert ds.report.layout == "pre-split"
    assert set(ds.report.splits) == {"train", "val", "test"}
    assert all(s.split == "val" for s in ds.samples if s.path.startswith("validation/"))


def test_pre_split_without_val_holds_out_from_train_with_warning(workspace, tmp_path):
    make_dataset(tmp_path / "ds" / "train", {"cat": 8, "dog": 8})
    ds = load_dataset(tmp_path / "ds", workspace, DataConfig(val_ratio=0.25))
    r = ds.report
    assert r.layout == "pre-split" and r.trainable
    assert r.splits == {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}}
    assert any("No val/ folder" in w and "25%" in w for w in r.warnings)


def test_pre_split_with_a_readme_at_the_top(workspace, tmp_path):
    """Downloaded datasets often carry README/labels files beside train/ and val/."""
    make_dataset(tmp_path / "ds" / "train", {"cat": 6, "dog": 6})
    write_images(tmp_path / "ds" / "val", {"cat": 2, "dog": 2})
    (tmp_path / "ds" / "README.md").write_text("# my dataset\n")
    ds = load_dataset(tmp_path / "ds", workspace)
    assert ds.report.layout == "pre-split" and ds.report.trainable
    assert ds.report.splits == {"train": {"cat": 6, "dog": 6}, "val": {"cat": 2, "dog": 2}}


def test_deeper_folders_count_for_their_top_level_class(workspace, tmp_path):
    write_images(tmp_path / "data" / "cat", {"indoor": 3, "outdoor": 3})
    write_images(tmp_path / "data" / "dog", {"x": 6})
    ds = load_dataset(tmp_path / "data", workspace)
    assert ds.report.classes == {"cat": 6, "dog": 6}


# --- skipped files, each with a reason --------------------------------------------------------------------------

def test_skipped_files_each_have_a_readable_reason(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"cat": 6, "dog": 6})
    (root / "cat" / "notes.txt").write_text("feeding times\n")
    (root / "cat" / "fake.jpg").write_text("I am text, not a JPEG\n")
    (root / "cat" / "empty.png").write_bytes(b"")
    whole = image_bytes((10, 200, 10), (128, 128), "JPEG", seed=77)
    (root / "cat" / "cut.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "dog" / "copy.png").write_bytes((root / "dog" / "0.png").read_bytes())
    (root / "loose.png").write_bytes(image_bytes(seed=5))

    ds = load_dataset(root, workspace)
    why = reasons(ds.report)
    assert set(why) == {"cat/notes.txt", "cat/fake.jpg", "cat/empty.png", "cat/cut.jpg", "dog/copy.png", "loose.png"}
    assert why["cat/notes.txt"].startswith("not an image")
    assert "named like an image (.jpg)" in why["cat/fake.jpg"]
    assert "empty" in why["cat/empty.png"] and "0 bytes" in why["cat/empty.png"]
    assert "corrupt or truncated" in why["cat/cut.jpg"]
    assert why["dog/copy.png"] == "duplicate of dog/0.png"
    assert "not inside a class folder" in why["loose.png"]
    # what was skipped is not trained on, and the rest is intact
    assert ds.report.classes == {"cat": 6, "dog": 6}
    assert not set(why) & {s.path for s in ds.samples}
    assert ds.report.trainable
    assert "skipped 6 files" in ds.report.text()


def test_too_large_image_is_skipped(workspace, tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", {"cat": 5, "dog": 5})
    (root / "cat" / "huge.png").write_bytes(image_bytes(size=(64, 64), seed=11))
    monkeypatch.setattr(core.data.validation, "MAX_PIXELS", 40 * 40)
    ds = load_dataset(root, workspace)
    why = reasons(ds.report)
    assert list(why) == ["cat/huge.png"]
    assert "too large" in why["cat/huge.png"] and "64x64" in why["cat/huge.png"]
    assert ds.report.classes == {"cat": 5, "dog": 5}


def test_same_image_in_two_classes_leaves_out_every_copy(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"cat": 6, "dog": 6})
    shared = image_bytes((1, 2, 3), seed=99)
    (root / "cat" / "x.png").write_bytes(shared)
    (root / "dog" / "y.png").write_bytes(shared)
    ds = load_dataset(root, workspace)
    why = reasons(ds.report)
    assert set(why) == {"cat/x.png", "dog/y.png"}
    assert all("another class" in r for r in why.values())
    assert "dog/y.png" in why["cat/x.png"] and "cat/x.png" in why["dog/y.png"]
    assert ds.report.classes == {"cat": 6, "dog": 6}


def test_duplicate_across_train_and_val_is_dropped_with_warning(workspace, tmp_path):
    make_dataset(tmp_path / "ds" / "train", {"cat": 6, "dog": 6})
    write_images(tmp_path / "ds" / "val", {"cat": 2, "dog": 2})
    (tmp_path / "ds" / "val" / "cat" / "leak.png").write_bytes((tmp_path / "ds" / "train" / "cat" / "3.png").read_bytes())
    ds = load_dataset(tmp_path / "ds", workspace)
    assert reasons(ds.report) == {"val/cat/leak.png": "duplicate of train/cat/3.png"}
    assert any("more than one of train/val/test" in w for w in ds.report.warnings)
    assert ds.report.splits["val"] == {"cat": 2, "dog": 2}


def test_refused_upload_entries_are_reported_as_skipped(workspace):
    pairs = [(f"cat/{i}.png", image_bytes(seed=i)) for i in range(5)]
    pairs += [(f"dog/{i}.png", image_bytes(seed=100 + i)) for i in range(5)]
    pairs += [("../evil.png", image_bytes(seed=50))]
    ds = load_dataset(pairs, workspace)
    assert "../evil.png" in reasons(ds.report)
    assert ds.report.classes == {"cat": 5, "dog": 5}


# --- warnings ------------------------------------------------------------------------------------------------

def test_imbalance_beyond_one_to_five_is_warned(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"many": 31, "few": 5})
    warnings = load_dataset(root, workspace).report.warnings
    imbalance = [w for w in warnings if "imbalanced" in w]
    assert len(imbalance) == 1 and "'many'" in imbalance[0] and "'few'" in imbalance[0] and "1:6" in imbalance[0]


def test_imbalance_of_exactly_one_to_five_is_not_warned(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"many": 25, "few": 5})
    assert not any("imbalanced" in w for w in load_dataset(root, workspace).report.warnings)


def test_class_below_five_images_is_warned(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"big": 8, "small": 4})
    r = load_dataset(root, workspace).report
    assert r.trainable
    small = [w for w in r.warnings if "only" in w]
    assert len(small) == 1 and "'small'" in small[0] and "4 images" in small[0]


def test_class_too_small_for_the_split_is_warned(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"a": 8, "b": 8, "c": 1})
    ds = load_dataset(root, workspace, DataConfig(val_ratio=0.25))
    r = ds.report
    assert r.splits["train"]["c"] == 1 and "c" not in r.splits["val"]
    short = [w for w in r.warnings if "Too few images for the requested split" in w]
    assert len(short) == 1 and "'c'" in short[0] and "'a'" not in short[0]
    assert r.trainable  # a warning, not an error


def test_no_split_warning_when_no_validation_was_asked_for(workspace, tmp_path):
    """val_ratio=0 is a valid choice (training keeps the last epoch); it must not read as 'too few images'."""
    root = make_dataset(tmp_path / "data", {"a": 8, "b": 8})
    r = load_dataset(root, workspace, DataConfig(val_ratio=0.0)).report
    assert r.splits == {"train": {"a": 8, "b": 8}}
    assert not any("Too few images" in w for w in r.warnings)


def test_empty_class_folder_is_named(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"cat": 6, "dog": 6})
    (root / "bird").mkdir()
    r = load_dataset(root, workspace).report
    assert r.classes == {"cat": 6, "dog": 6}
    assert any("'bird'" in w and "no usable images" in w for w in r.warnings)


def test_class_folder_with_only_broken_files_is_named(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"cat": 6, "dog": 6})
    (root / "fish").mkdir()
    (root / "fish" / "a.jpg").write_text("not a picture")
    r = load_dataset(root, workspace).report
    assert "fish" not in r.classes
    assert any("'fish'" in w for w in r.warnings)


def test_class_folder_with_only_os_litter_is_named(workspace, tmp_path):
    """Finder drops a .DS_Store into every folder it shows: that folder is still an empty class."""
    root = make_dataset(tmp_path / "data", {"cat": 6, "dog": 6})
    (root / "bird").mkdir()
    (root / "bird" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    r = load_dataset(root, workspace).report
    assert any("'bird'" in w and "no usable images" in w for w in r.warnings)


# --- errors: not trainable -------------------------------------------------------------------------------------

def test_single_class_is_an_error(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"only": 10})
    r = load_dataset(root, workspace).report
    assert not r.trainable
    assert len(r.errors) == 1 and "'only'" in r.errors[0] and "at least two" in r.errors[0]


def test_no_usable_images_is_an_error(workspace, tmp_path):
    root = tmp_path / "data"
    (root / "cat").mkdir(parents=True)
    (root / "dog").mkdir()
    (root / "cat" / "a.txt").write_text("x")
    (root / "dog" / "b.jpg").write_text("y")
    ds = load_dataset(root, workspace)
    r = ds.report
    assert not r.trainable and ds.samples == [] and r.classes == {}
    assert any("No usable images" in e for e in r.errors)
    assert set(reasons(r)) == {"cat/a.txt", "dog/b.jpg"}
    assert "error: No usable images" in r.text()


def test_pre_split_class_missing_from_train_is_an_error(workspace, tmp_path):
    make_dataset(tmp_path / "ds" / "train", {"cat": 6, "dog": 6})
    write_images(tmp_path / "ds" / "val", {"cat": 2, "dog": 2, "fox": 2})
    r = load_dataset(tmp_path / "ds", workspace).report
    assert not r.trainable and any("'fox' has no training images" in e for e in r.errors)


# --- the report as JSON ----------------------------------------------------------------------------------------

def test_report_to_json(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"chat noir": 6, "犬": 5})
    (root / "犬" / "notes.txt").write_text("x")
    (root / "lapin").mkdir()
    data = json.loads(load_dataset(root, workspace).report.to_json())
    assert data["classes"] == {"chat noir": 6, "犬": 5}
    assert data["skipped"] == [{"path": "犬/notes.txt", "reason": data["skipped"][0]["reason"]}]
    assert data["skipped"][0]["reason"].startswith("not an image")
    assert isinstance(data["warnings"], list) and all(isinstance(w, str) for w in data["warnings"])
    assert any("lapin" in w for w in data["warnings"])
    assert data["trainable"] is True and data["num_images"] == 11 and data["errors"] == []
    assert data["layout"] == "folders"


# --- reproducible splits ---------------------------------------------------------------------------------------

def test_same_seed_same_split_different_seed_different(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"a": 12, "b": 12})
    first = split_of(load_dataset(root, workspace, DataConfig(val_ratio=0.25, split_seed=3)))
    again = split_of(load_dataset(root, workspace, DataConfig(val_ratio=0.25, split_seed=3)))
    other = split_of(load_dataset(root, workspace, DataConfig(val_ratio=0.25, split_seed=4)))
    assert first == again
    assert other != first
    assert Counter(other.values()) == Counter(first.values())  # same sizes, different members


# --- the scan cache --------------------------------------------------------------------------------------------

def test_second_load_is_served_from_scan_cache(workspace, tmp_path, monkeypatch):
    root = make_dataset(tmp_path / "data", {"cat": 6, "dog": 6})
    (root / "cat" / "bad.jpg").write_text("nope")
    calls = []
    first = load_dataset(root, workspace, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (13, 13) and len(calls) == 13
    assert (first.data_dir.parent / "scan.json").is_file()

    def boom(*args, **kwargs):
        raise AssertionError("decoded again instead of using scan.json")

    monkeypatch.setattr(core.data.validation, "inspect_image", boom)
    second = load_dataset(root, workspace)
    assert second.report.to_dict() == first.report.to_dict()
    assert second.samples == first.samples


def test_unknown_scan_version_is_rescanned(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"cat": 5, "dog": 5})
    first = load_dataset(root, workspace)
    cache = first.data_dir.parent / "scan.json"
    cache.write_text(json.dumps({"version": -1, "files": {}}))
    second = load_dataset(root, workspace)
    assert second.report.classes == {"cat": 5, "dog": 5}
    assert json.loads(cache.read_text())["version"] != -1


# --- stratified_split ------------------------------------------------------------------------------------------

def _items(counts: dict[str, int]) -> tuple[list[str], list[str]]:
    keys = [f"{c}/{i:03d}.png" for c, n in counts.items() for i in range(n)]
    return keys, [k.split("/")[0] for k in keys]


def _per_class(labels, splits) -> dict[str, Counter]:
    out: dict[str, Counter] = {}
    for label, split in zip(labels, splits):
        out.setdefault(label, Counter())[split] += 1
    return out


def test_stratified_split_keeps_class_proportions():
    keys, labels = _items({"a": 40, "b": 20, "c": 8})
    splits = stratified_split(keys, labels, 0.25, 0.0, seed=0)
    per = _per_class(labels, splits)
    assert per["a"] == Counter(train=30, val=10)
    assert per["b"] == Counter(train=15, val=5)
    assert per["c"] == Counter(train=6, val=2)


def test_stratified_split_with_test_ratio():
    keys, labels = _items({"a": 20, "b": 30})
    per = _per_class(labels, stratified_split(keys, labels, 0.2, 0.1, seed=1))
    assert per["a"] == Counter(train=14, val=4, test=2)
    assert per["b"] == Counter(train=21, val=6, test=3)


@pytest.mark.parametrize("n", [2, 3, 4, 7])
def test_every_class_with_two_items_gets_a_val_item_and_keeps_training(n):
    keys, labels = _items({"big": 50, "tiny": n})
    per = _per_class(labels, stratified_split(keys, labels, 0.1, 0.0, seed=0))
    assert per["tiny"]["val"] >= 1 and per["tiny"]["train"] >= 1


def test_single_item_class_stays_in_train():
    keys, labels = _items({"big": 10, "one": 1})
    per = _per_class(labels, stratified_split(keys, labels, 0.5, 0.3, seed=0))
    assert per["one"] == Counter(train=1)
    assert per["big"]["train"] >= 1


def test_stratified_split_is_independent_of_input_order():
    keys, labels = _items({"a": 15, "b": 9, "c": 4})
    base = dict(zip(keys, stratified_split(keys, labels, 0.3, 0.1, seed=5)))
    order = list(range(len(keys)))
    random.Random(0).shuffle(order)
    shuffled_keys, shuffled_labels = [keys[i] for i in order], [labels[i] for i in order]
    assert dict(zip(shuffled_keys, stratified_split(shuffled_keys, shuffled_labels, 0.3, 0.1, seed=5))) == base


def test_adding_a_class_leaves_the_other_classes_split_alone():
    keys, labels = _items({"a": 15, "b": 9})
    before = dict(zip(keys, stratified_split(keys, labels, 0.3, 0.0, seed=2)))
    more_keys, more_labels = _items({"a": 15, "b": 9, "new": 6})
    after = dict(zip(more_keys, stratified_split(more_keys, more_labels, 0.3, 0.0, seed=2)))
    assert {k: after[k] for k in before} == before


def test_stratified_split_seed_changes_members():
    keys, labels = _items({"a": 30})
    assert stratified_split(keys, labels, 0.2, 0.0, 0) == stratified_split(keys, labels, 0.2, 0.0, 0)
    assert stratified_split(keys, labels, 0.2, 0.0, 0) != stratified_split(keys, labels, 0.2, 0.0, 1)


@pytest.mark.parametrize("val, test", [(1.0, 0.0), (-0.1, 0.0), (0.5, 0.5), (0.2, 1.0)])
def test_stratified_split_refuses_impossible_ratios(val, test):
    keys, labels = _items({"a": 4})
    with pytest.raises(ValueError, match="ratios"):
        stratified_split(keys, labels, val, test, 0)


# --- stratified_kfold ------------------------------------------------------------------------------------------

def test_kfold_puts_every_item_in_exactly_one_fold_balanced_per_class():
    keys, labels = _items({"a": 23, "b": 17, "c": 4})
    k = 5
    folds = stratified_kfold(keys, labels, k, seed=0)
    assert len(folds) == len(keys) and set(folds) == set(range(k))
    assert all(isinstance(f, int) and 0 <= f < k for f in folds)
    for cls in ("a", "b", "c"):
        sizes = Counter(f for f, label in zip(folds, labels) if label == cls)
        counts = [sizes.get(i, 0) for i in range(k)]
        assert max(counts) - min(counts) <= 1, (cls, counts)
        assert sum(counts) == labels.count(cls)
    totals = Counter(folds)
    assert max(totals.values()) - min(totals.values()) <= 1


def test_kfold_is_reproducible_and_order_independent():
    keys, labels = _items({"a": 11, "b": 7})
    base = dict(zip(keys, stratified_kfold(keys, labels, 3, seed=4)))
    rev_keys, rev_labels = keys[::-1], labels[::-1]
    assert dict(zip(rev_keys, stratified_kfold(rev_keys, rev_labels, 3, seed=4))) == base
    assert dict(zip(keys, stratified_kfold(keys, labels, 3, seed=5))) != base


def test_kfold_needs_two_folds():
    keys, labels = _items({"a": 4})
    with pytest.raises(ValueError):
        stratified_kfold(keys, labels, 1, 0)
