"""Label review page through AppTest: a cross-validation folder on disk, corrections written beside the dataset."""
import json
import shutil

import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from conftest import ROOT, make_dataset
from core import runs
from core.data import overrides
from core.data.validation import load_dataset

pytestmark = pytest.mark.integration

CV_ID = "20260101-000000-cvcvcv"
WRONG = "red/0.png"  # labelled red; the fold models are sure it is blue


@pytest.fixture
def cv(workspace, tmp_path):
    """A finished 3-fold cross-validation as crossval writes it, over a real ingested dataset; the predictions
    are made up (sure and right, but for WRONG), so the page is tested without training."""
    source = make_dataset(tmp_path / "data", {"blue": 6, "green": 6, "red": 6})
    dataset = load_dataset(source, workspace)
    folder = workspace / "cv" / CV_ID
    for fold in range(3):
        (folder / f"fold-{fold + 1}").mkdir(parents=True)
        runs.write_json(folder / f"fold-{fold + 1}" / "config.json", {"provenance": {"dataset": {"key": dataset.key}}})
    rows = []
    for i, s in enumerate(dataset.samples):
        truth = dataset.classes.index("blue") if s.path == WRONG else s.label
        probs = [0.9 if c == truth else 0.05 for c in range(3)]
        rows.append({"path": s.path, "fold": i % 3, "label": s.label, "probs": probs})
    runs.rewrite_jsonl(folder / "oof_predictions.jsonl", rows)
    runs.write_json(folder / "cv.json", {
        "status": "finished", "k": 3, "classes": dataset.classes, "folds": [{"fold": f} for f in range(3)],
        "mean": {}, "std": {}, "groups": None, "config": {"data": {"source": str(source)}},
        "oof": {"images": len(rows), "acc": (len(rows) - 1) / len(rows)}})
    return source, dataset


def open_review(cv_id=None):
    st.cache_resource.clear()
    st.cache_data.clear()
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    if cv_id:
        at.query_params["cv"] = cv_id
    at.run()
    at.switch_page("views/review.py").run()
    assert not at.exception, at.exception
    return at


def metrics(at):
    return {m.label: m.value for m in at.metric}


def captions(at):
    return [c.value for c in at.caption]


def test_the_suspect_is_shown_and_excluding_it_writes_the_overrides(cv, workspace):
    source, dataset = cv
    at = open_review(CV_ID)
    assert at.selectbox(key="review-cv").value == CV_ID
    assert any("Labelled **red** (5%) · the model says **blue** (90%)" in m.value and "likely wrong" in m.value
               for m in at.markdown)
    assert [i.proto.imgs[0].caption for i in at.get("image")] == [WRONG]  # the thumbnail, from the dataset copy
    assert metrics(at) == {"Labels version": "0", "Relabelled": "0", "Excluded": "0"}
    assert any("never touched" in c for c in captions(at))
    assert at.selectbox(key=f"review-class-{WRONG}").value == "blue"  # the suggestion is the default

    at.button(key=f"review-exclude-{WRONG}").click().run()
    assert not at.exception, at.exception
    file = dataset.data_dir.parent / overrides.FILE
    assert json.loads(file.read_text())["excluded"] == [WRONG]
    after = load_dataset(source, workspace)
    assert WRONG not in {s.path for s in after.samples} and after.labels_version == 1
    assert metrics(at) == {"Labels version": "1", "Relabelled": "0", "Excluded": "1"}
    assert any("excluded from training" in c for c in captions(at))

    at.button(key=f"review-undo-{WRONG}").click().run()
    at.button(key=f"review-relabel-{WRONG}").click().run()
    assert not at.exception, at.exception
    after = load_dataset(source, workspace)
    assert {s.path: after.classes[s.label] for s in after.samples}[WRONG] == "blue"
    assert after.labels_version == 3 and (source / WRONG).is_file()  # the original stays where it was
    assert any("relabelled to **blue**" in c for c in captions(at))


def test_an_unknown_cv_id_says_so_and_offers_the_others(cv):
    at = open_review("20990101-000000-nothere")
    assert any("no cross-validation '20990101-000000-nothere'" in w.value for w in at.warning)
    assert at.selectbox(key="review-cv").value == CV_ID


def test_no_cross_validation_points_to_the_cross_validate_page(workspace):
    at = open_review("20990101-000000-nothere")
    assert any("works from a cross-validation" in i.value for i in at.info)
    assert [p.proto.label for p in at.get("page_link")] == ["Run one on the Cross-validate page"]


def test_a_missing_image_or_dataset_copy_is_explained(cv):
    _, dataset = cv
    (dataset.data_dir / WRONG).unlink()
    at = open_review(CV_ID)
    assert not at.get("image") and f"{WRONG}: the file is missing from the app's copy of the dataset." in captions(at)
    assert at.button(key=f"review-exclude-{WRONG}")  # still correctable

    shutil.rmtree(dataset.data_dir.parent)
    at = open_review(CV_ID)
    assert any("cannot be shown or corrected" in e.value and "no longer in the workspace" in e.value
               for e in at.error)
    assert list(at.dataframe[0].value["path"]) == [WRONG]
