"""Patient/specimen groups: one patient's images never straddle train, val and test, nor two folds."""
from __future__ import annotations

import random
import warnings
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
from sklearn.model_selection import StratifiedGroupKFold

from conftest import COLOURS, image_bytes, make_dataset
from core.config import DataConfig
from core.data.sources import DataError
from core.data.splits import stratified_group_kfold, stratified_group_split
from core.data.validation import load_dataset

pytestmark = pytest.mark.unit

PATTERN = r"(?P<group>P\d+)_"
_SEEDS = iter(range(20_000, 10**9))


def write_patients(root: Path, patients: dict[str, dict[str, int]], nested: bool = False) -> Path:
    """root/<class>/P001_0.png (or root/<class>/P001/0.png): each image distinct, so none is a duplicate."""
    for c, (cls, per_patient) in enumerate(patients.items()):
        for patient, n in per_patient.items():
            folder = root / cls / patient if nested else root / cls
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                name = f"{i}.png" if nested else f"{patient}_{i}.png"
                (folder / name).write_bytes(image_bytes(COLOURS[c], (16, 16), seed=next(_SEEDS)))
    return root


def random_patients(rng: random.Random, classes=("benign", "tumour"), n_patients=14) -> dict[str, dict[str, int]]:
    """Most patients in one class, some with images in both (the case that leaks when split per image)."""
    out: dict[str, dict[str, int]] = {c: {} for c in classes}
    for p in range(n_patients):
        main = rng.choice(classes)
        out[main][f"P{p:03d}"] = rng.randint(1, 5)
        if rng.random() < 0.3:
            other = rng.choice([c for c in classes if c != main])
            out[other][f"P{p:03d}"] = rng.randint(1, 3)
    return out


def splits_of_groups(dataset) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    for s in dataset.samples:
        seen[s.group].add(s.split)
    return seen


def random_structure(rng: random.Random, n_groups: int, classes: list[str]):
    keys, labels, groups = [], [], []
    for g in range(n_groups):
        main = rng.choice(classes)
        for j in range(rng.randint(1, 12)):
            label = main if rng.random() < 0.8 else rng.choice(classes)
            keys.append(f"{label}/g{g}_{j}.png")
            labels.append(label)
            groups.append(f"g{g}")
    return keys, labels, groups


def class_spread(labels, folds, k) -> float:
    """Mean over classes of the std over folds of the class's share in each fold (0 = perfectly stratified)."""
    labels, folds = np.array(labels), np.array(folds)
    return float(np.mean([np.std([np.mean(folds[labels == c] == f) for f in range(k)]) for c in set(labels)]))


# --- splits.py -------------------------------------------------------------------------------------------------

def test_group_split_never_puts_a_group_in_two_splits_for_many_seeds():
    for seed in range(50):
        rng = random.Random(seed)
        keys, labels, groups = random_structure(rng, rng.randint(6, 40), ["a", "b", "c"][:rng.randint(2, 3)])
        splits = stratified_group_split(keys, labels, groups, 0.2, 0.1, seed)
        per_group: dict[str, set[str]] = defaultdict(set)
        for g, s in zip(groups, splits):
            per_group[g].add(s)
        assert all(len(s) == 1 for s in per_group.values()), seed
        assert {c for c, s in zip(labels, splits) if s == "train"} == set(labels), seed
        if len(per_group) >= 20:  # enough groups to land near the asked shares
            shares = Counter(splits)
            assert 0.08 < shares["val"] / len(keys) < 0.32, seed
            assert shares["test"] > 0, seed


def test_group_split_is_independent_of_input_order_and_seeded():
    keys, labels, groups = random_structure(random.Random(1), 30, ["a", "b", "c"])
    base = dict(zip(keys, stratified_group_split(keys, labels, groups, 0.25, 0.1, seed=7)))
    order = list(range(len(keys)))
    random.Random(2).shuffle(order)
    shuffled = [[xs[i] for i in order] for xs in (keys, labels, groups)]
    assert dict(zip(shuffled[0], stratified_group_split(*shuffled, 0.25, 0.1, seed=7))) == base
    assert dict(zip(keys, stratified_group_split(keys, labels, groups, 0.25, 0.1, seed=8))) != base


def test_group_split_test_share_does_not_move_when_val_share_changes():
    keys, labels, groups = random_structure(random.Random(3), 30, ["a", "b"])
    small = stratified_group_split(keys, labels, groups, 0.1, 0.2, seed=0)
    large = stratified_group_split(keys, labels, groups, 0.3, 0.2, seed=0)
    assert [s == "test" for s in small] == [s == "test" for s in large]


def test_group_split_keeps_a_class_in_train_even_when_it_is_one_group():
    keys = ["a/0.png", "a/1.png", "b/0.png", "b/1.png", "b/2.png", "b/3.png"]
    labels = ["a", "a", "b", "b", "b", "b"]
    groups = ["only-a", "only-a", "x", "y", "z", "w"]
    splits = stratified_group_split(keys, labels, groups, 0.5, 0.0, seed=0)
    assert splits[:2] == ["train", "train"]
    assert "val" in splits[2:]


def test_group_kfold_matches_sklearn_invariants_and_balance_for_many_seeds():
    ours_spread, sklearn_spread = [], []
    for seed in range(50):
        rng = random.Random(seed)
        classes = ["a", "b", "c"][:rng.randint(2, 3)]
        keys, labels, groups = random_structure(rng, rng.randint(8, 40), classes)
        k = rng.randint(2, 5)
        folds = stratified_group_kfold(keys, labels, groups, k, seed)
        oracle = np.zeros(len(keys), int)
        splitter = StratifiedGroupKFold(k, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # a class with fewer images than folds: intended here
            for f, (_, test) in enumerate(splitter.split(keys, labels, groups)):
                oracle[test] = f
        for assignment in (folds, oracle):  # the invariant sklearn guarantees, ours too
            assert len({(g, f) for g, f in zip(groups, assignment)}) == len(set(groups)), seed
        assert len(folds) == len(keys) and set(folds) == set(range(k)), seed
        ours, theirs = class_spread(labels, folds, k), class_spread(labels, oracle, k)
        assert ours <= theirs + 0.06, (seed, ours, theirs)
        ours_spread.append(ours)
        sklearn_spread.append(theirs)
    assert np.mean(ours_spread) <= 1.1 * np.mean(sklearn_spread)


def test_group_kfold_refuses_more_folds_than_groups():
    keys, labels, groups = ["a/0", "a/1", "b/0", "b/1"], ["a", "a", "b", "b"], ["p", "p", "q", "r"]
    with pytest.raises(ValueError, match="at least 4 groups.*only 3"):
        stratified_group_kfold(keys, labels, groups, 4, seed=0)
    assert sorted(set(stratified_group_kfold(keys, labels, groups, 3, seed=0))) == [0, 1, 2]


# --- validate(): the Data page's split -----------------------------------------------------------------------

def test_data_page_split_never_straddles_a_patient_for_many_seeds(workspace, tmp_path):
    root = write_patients(tmp_path / "data", random_patients(random.Random(0), n_patients=20))
    for seed in range(50):
        ds = load_dataset(root, workspace, DataConfig(val_ratio=0.2, test_ratio=0.2, split_seed=seed,
                                                      group_pattern=PATTERN))
        seen = splits_of_groups(ds)
        assert all(len(s) == 1 for s in seen.values()), (seed, {g: s for g, s in seen.items() if len(s) > 1})
        assert {s.split for s in ds.samples} == {"train", "val", "test"}
        assert ds.report.trainable
    assert ds.report.groups == {"source": f"pattern {PATTERN}", "count": 20}
    assert f"20 patients/specimens (pattern {PATTERN})" in ds.report.text()


def test_without_groups_the_same_data_does_straddle(workspace, tmp_path):
    """The check above can fail: split per image, patients do land in two splits."""
    root = write_patients(tmp_path / "data", random_patients(random.Random(0), n_patients=20))
    ds = load_dataset(root, workspace, DataConfig(val_ratio=0.2, test_ratio=0.2))
    per_patient: dict[str, set[str]] = defaultdict(set)
    for s in ds.samples:
        per_patient[s.path.split("/")[1].split("_")[0]].add(s.split)
    assert any(len(s) > 1 for s in per_patient.values())
    assert ds.report.groups is None and all(s.group == "" for s in ds.samples)


def test_group_level_takes_the_folder_below_the_class(workspace, tmp_path):
    root = write_patients(tmp_path / "data", {"benign": {"P1": 3, "P2": 3, "P3": 2}, "tumour": {"P4": 4, "P5": 3}},
                          nested=True)
    (root / "benign" / "loose.png").write_bytes(image_bytes(COLOURS[0], (16, 16), seed=next(_SEEDS)))
    ds = load_dataset(root, workspace, DataConfig(group_level=1, val_ratio=0.3))
    groups = {s.path: s.group for s in ds.samples}
    assert groups["benign/P2/0.png"] == "P2" and groups["tumour/P5/2.png"] == "P5"
    assert groups["benign/loose.png"] == "benign/loose.png"  # too shallow: a group of its own
    assert any("1 of 16 images got no group" in w and "benign/loose.png" in w for w in ds.report.warnings)
    assert ds.report.groups == {"source": "folder level 1", "count": 6}
    assert all(len(s) == 1 for s in splits_of_groups(ds).values())


def test_pattern_without_a_match_makes_singletons_with_a_warning(workspace, tmp_path):
    root = write_patients(tmp_path / "data", {"a": {"P1": 3, "P2": 3}, "b": {"P3": 3, "P4": 3}})
    make_dataset(tmp_path / "data", {"a": 2})  # a/0.png, a/1.png: no patient id in the name
    ds = load_dataset(root, workspace, DataConfig(group_pattern=PATTERN))
    warning = next(w for w in ds.report.warnings if "got no group" in w)
    assert warning.startswith("2 of 14 images") and "'a/0.png'" in warning
    assert ds.report.groups["count"] == 6


def test_groups_csv_matches_paths_and_names_rows_that_match_nothing(workspace, tmp_path):
    root = write_patients(tmp_path / "data", {"a": {"x": 4}, "b": {"y": 4}})
    csv_file = tmp_path / "groups.csv"
    rows = ["path,group", "a/x_0.png,P1", "a/x_1.png,P1", "data/a/x_2.png,P2", "train/b/y_0.png,P3",
            "b/y_1.png,P3", "b/nope.png,P4"]
    csv_file.write_text("\n".join(rows) + "\n")
    ds = load_dataset(root, workspace, DataConfig(groups=str(csv_file)))
    groups = {s.path: s.group for s in ds.samples}
    assert groups["a/x_0.png"] == groups["a/x_1.png"] == "P1"
    assert groups["a/x_2.png"] == "P2"  # an enclosing folder is dropped
    assert groups["b/y_0.png"] == groups["b/y_1.png"] == "P3"  # a split folder is dropped
    assert groups["a/x_3.png"] == "a/x_3.png"
    unmatched = next(w for w in ds.report.warnings if "match no image" in w)
    assert unmatched.startswith("1 rows of groups.csv") and "line 7: b/nope.png" in unmatched
    assert ds.report.groups["source"] == "csv groups.csv"


def test_groups_csv_inside_the_dataset_is_found(workspace, tmp_path):
    root = write_patients(tmp_path / "data", {"a": {"P1": 3, "P2": 3}, "b": {"P3": 3, "P4": 3}})
    (root / "groups.csv").write_text("group,path\nP1,a/P1_0.png\n")
    ds = load_dataset(root, workspace, DataConfig(groups="groups.csv"))
    assert {s.path: s.group for s in ds.samples}["a/P1_0.png"] == "P1"


@pytest.mark.parametrize("data, message", [
    (DataConfig(group_pattern="(?P<group>P\\d+"), "not a valid regular expression"),
    (DataConfig(group_pattern=r"P\d+"), "no part named 'group'"),
    (DataConfig(group_pattern=PATTERN, group_level=1), "group_pattern and group_level are both set"),
    (DataConfig(groups="missing.csv"), "missing.csv does not exist"),
    (DataConfig(folds=3, fold=3), "fold 3 does not exist with 3 folds"),
    (DataConfig(folds=1), "folds is 1"),
])
def test_bad_group_and_fold_settings_are_clear_errors(workspace, tmp_path, data, message):
    root = write_patients(tmp_path / "data", {"a": {"P1": 2}, "b": {"P2": 2}})
    with pytest.raises(DataError, match=message):
        load_dataset(root, workspace, data)


def test_groups_csv_without_header_is_refused(workspace, tmp_path):
    root = write_patients(tmp_path / "data", {"a": {"P1": 2}, "b": {"P2": 2}})
    (tmp_path / "g.csv").write_text("a/P1_0.png,P1\n")
    with pytest.raises(DataError, match="header row with the columns path,group"):
        load_dataset(root, workspace, DataConfig(groups=str(tmp_path / "g.csv")))


# --- pre-split layouts -----------------------------------------------------------------------------------------

def test_given_splits_stay_but_a_straddling_patient_is_warned(workspace, tmp_path):
    write_patients(tmp_path / "ds" / "train", {"a": {"P1": 3, "P2": 3}, "b": {"P3": 3, "P4": 3}})
    write_patients(tmp_path / "ds" / "val", {"a": {"P1": 2, "P5": 2}, "b": {"P6": 2}})
    ds = load_dataset(tmp_path / "ds", workspace, DataConfig(group_pattern=PATTERN))
    assert all(s.path.split("/")[0] == s.split for s in ds.samples)
    warning = next(w for w in ds.report.warnings if "more than one of train/val/test" in w)
    assert warning.startswith("1 patient/specimen groups") and "'P1' in train and val" in warning


def test_pre_split_without_val_holds_out_whole_patients(workspace, tmp_path):
    write_patients(tmp_path / "ds" / "train", random_patients(random.Random(5), n_patients=16))
    for seed in range(10):
        ds = load_dataset(tmp_path / "ds", workspace, DataConfig(val_ratio=0.25, split_seed=seed,
                                                                 group_pattern=PATTERN))
        assert {s.split for s in ds.samples} == {"train", "val"}
        assert all(len(s) == 1 for s in splits_of_groups(ds).values())
        assert not any("more than one of train/val/test" in w for w in ds.report.warnings)


# --- k-fold ----------------------------------------------------------------------------------------------------

def test_folds_cover_every_image_once_and_keep_patients_together(workspace, tmp_path):
    root = write_patients(tmp_path / "data", random_patients(random.Random(2), n_patients=18))
    k = 4
    test_split = None
    val_count: Counter = Counter()
    val_patients: dict[str, set[int]] = defaultdict(set)
    for fold in range(k):
        ds = load_dataset(root, workspace, DataConfig(test_ratio=0.2, folds=k, fold=fold, group_pattern=PATTERN))
        assert ds.report.folds == {"k": k, "fold": fold} and f"fold {fold} of folds 0-3" in ds.report.text()
        tests = {s.path for s in ds.samples if s.split == "test"}
        assert test_split is None or tests == test_split  # the test split stays put across folds
        test_split = tests
        for s in ds.samples:
            if s.split == "val":
                val_count[s.path] += 1
                val_patients[s.group].add(fold)
        assert all(len(s) == 1 for s in splits_of_groups(ds).values())
    plain = load_dataset(root, workspace, DataConfig(test_ratio=0.2, group_pattern=PATTERN))
    assert {s.path for s in plain.samples if s.split == "test"} == test_split
    pool = {s.path for s in ds.samples if s.split != "test"}
    assert set(val_count) == pool and set(val_count.values()) == {1}
    assert all(len(folds) == 1 for folds in val_patients.values())


def test_pre_split_folds_pool_train_and_val_and_keep_test(workspace, tmp_path):
    write_patients(tmp_path / "ds" / "train", {"a": {"P1": 3, "P2": 3, "P3": 2}, "b": {"P4": 3, "P5": 3}})
    write_patients(tmp_path / "ds" / "val", {"a": {"P6": 2}, "b": {"P7": 2, "P8": 1}})
    write_patients(tmp_path / "ds" / "test", {"a": {"P9": 2}, "b": {"P10": 2}})
    seen: Counter = Counter()
    for fold in range(3):
        ds = load_dataset(tmp_path / "ds", workspace, DataConfig(folds=3, fold=fold, group_pattern=PATTERN))
        assert {s.path for s in ds.samples if s.split == "test"} == {s.path for s in ds.samples
                                                                     if s.path.startswith("test/")}
        seen.update(s.path for s in ds.samples if s.split == "val")
    assert sorted(seen) == sorted(s.path for s in ds.samples if not s.path.startswith("test/"))
    assert set(seen.values()) == {1}


def test_more_folds_than_patients_is_a_report_error(workspace, tmp_path):
    root = write_patients(tmp_path / "data", {"a": {"P1": 3, "P2": 3}, "b": {"P3": 3}})
    report = load_dataset(root, workspace, DataConfig(folds=4, fold=0, group_pattern=PATTERN)).report
    assert not report.trainable
    assert any("4-fold cross-validation needs at least 4 groups" in e and "there are 3" in e for e in report.errors)

