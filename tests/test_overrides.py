"""Label review: corrections stored beside the dataset copy, applied on the next load, originals untouched."""
from __future__ import annotations

import json

import pytest

from conftest import make_dataset
from core.config import DataConfig
from core.data import overrides
from core.data.sources import DataError
from core.data.validation import load_dataset, open_dataset

pytestmark = pytest.mark.unit


def labels_of(dataset) -> dict[str, str]:
    return {s.path: dataset.classes[s.label] for s in dataset.samples}


@pytest.fixture
def loaded(workspace, tmp_path):
    root = make_dataset(tmp_path / "data", {"cat": 6, "dog": 6})
    return root, load_dataset(root, workspace)


def root_of(dataset):
    return dataset.data_dir.parent


def test_relabel_changes_the_label_and_version_on_the_next_load(workspace, loaded):
    source, before = loaded
    original = (source / "cat" / "2.png").read_bytes()
    assert before.labels_version == 0 and before.labels_digest == "" and before.report.label_review is None
    written = overrides.relabel(root_of(before), "cat/2.png", "dog")
    assert written.version == 1 and len(written.digest) == 12

    after = load_dataset(source, workspace)
    assert labels_of(after)["cat/2.png"] == "dog"
    assert {p: c for p, c in labels_of(after).items() if p != "cat/2.png"} == \
           {p: c for p, c in labels_of(before).items() if p != "cat/2.png"}
    assert after.labels_version == 1 and after.labels_digest == written.digest
    assert after.key == before.key  # the image content key: feature caches stay valid
    assert after.report.classes == {"cat": 5, "dog": 7}
    assert (source / "cat" / "2.png").read_bytes() == original
    assert (after.data_dir / "cat" / "2.png").is_file()  # the copy is not moved either
    assert open_dataset(after.key, workspace).labels_version == 1


def test_exclude_removes_the_image_and_restore_brings_it_back(workspace, loaded):
    source, before = loaded
    root = root_of(before)
    overrides.exclude(root, "dog/0.png")
    ds = load_dataset(source, workspace)
    assert "dog/0.png" not in labels_of(ds) and len(ds.samples) == 11
    assert {s.path: s.reason for s in ds.report.skipped}["dog/0.png"] == "excluded in label review"
    assert ds.labels_version == 1

    restored = overrides.restore(root, "dog/0.png")
    assert restored.version == 2 and restored.excluded == () and restored.relabelled == {}
    ds = load_dataset(source, workspace)
    assert labels_of(ds) == labels_of(before) and ds.labels_version == 2
    assert ds.report.skipped == []


def test_report_counts_the_review(workspace, loaded):
    source, before = loaded
    root = root_of(before)
    overrides.relabel(root, "cat/0.png", "dog")
    overrides.relabel(root, "cat/1.png", "dog")
    overrides.exclude(root, "dog/5.png")
    report = load_dataset(source, workspace).report
    assert report.label_review == {"version": 3, "digest": overrides.read(root).digest, "relabelled": 2,
                                   "excluded": 1}
    assert "2 labels corrected, 1 images excluded in label review (version 3)" in report.text()


def test_each_change_bumps_the_version_and_the_digest_tracks_content(loaded):
    _, ds = loaded
    root = root_of(ds)
    assert overrides.read(root) == overrides.Overrides()
    first = overrides.relabel(root, "cat/0.png", "dog")
    second = overrides.exclude(root, "cat/0.png")  # the exclusion replaces the correction
    assert (first.version, second.version) == (1, 2)
    assert second.relabelled == {} and second.excluded == ("cat/0.png",)
    third = overrides.relabel(root, "cat/0.png", "dog")
    assert third.version == 3 and third.excluded == () and third.digest == first.digest != second.digest
    assert overrides.read(root) == third
    assert json.loads((root / "label_overrides.json").read_text())["version"] == 3


@pytest.mark.parametrize("path", ["cat/99.png", "../data/cat/0.png", "/etc/passwd", "data/cat/0.png", ""])
def test_only_paths_of_the_dataset_are_accepted(loaded, path):
    _, ds = loaded
    with pytest.raises(DataError, match="not an image of this dataset"):
        overrides.exclude(root_of(ds), path)
    with pytest.raises(DataError, match="not an image of this dataset"):
        overrides.relabel(root_of(ds), path, "dog")
    assert not (root_of(ds) / "label_overrides.json").exists()


def test_relabel_to_a_class_the_dataset_lacks_is_ignored_with_a_warning(workspace, loaded):
    source, before = loaded
    overrides.relabel(root_of(before), "cat/3.png", "horse")
    ds = load_dataset(source, workspace)
    assert labels_of(ds)["cat/3.png"] == "cat" and ds.classes == ["cat", "dog"]
    assert any("horse" in w and "does not have" in w for w in ds.report.warnings)
    with pytest.raises(DataError, match="not a class name"):
        overrides.relabel(root_of(before), "cat/3.png", "../dog")


def test_a_hand_edited_file_naming_other_files_is_ignored_with_a_warning(workspace, loaded):
    source, before = loaded
    (root_of(before) / "label_overrides.json").write_text(json.dumps(
        {"version": 5, "relabelled": {"../../secret.png": "dog"}, "excluded": ["/etc/passwd"]}))
    ds = load_dataset(source, workspace)
    assert labels_of(ds) == labels_of(before) and ds.labels_version == 5
    assert any("2 label review entries name files that are not in this dataset" in w for w in ds.report.warnings)


def test_a_damaged_overrides_file_is_a_clear_error(workspace, loaded):
    source, before = loaded
    (root_of(before) / "label_overrides.json").write_text('{"version": "one"}')
    with pytest.raises(DataError, match="damaged.*Delete it"):
        load_dataset(source, workspace, DataConfig())
