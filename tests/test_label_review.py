"""Label review: cleanlab ranks the images whose label is probably wrong, from out-of-fold predictions."""
import csv
import time

import numpy as np
import pytest

from conftest import make_dataset
from core.data.sources import DataError
from core.evaluate import label_review
from core.experiments.crossval import cross_validate
from test_engine import small_config

pytestmark = pytest.mark.integration

CLASSES = ["blue", "green", "red"]


def oof_rows(per_class=10, seed=0):
    """Confident, correct predictions; the model favours the given class with some noise."""
    rng = np.random.default_rng(seed)
    rows = []
    for label in range(len(CLASSES)):
        for i in range(per_class):
            probs = rng.uniform(0.02, 0.15, len(CLASSES))
            probs[label] = rng.uniform(0.6, 0.9)
            rows.append({"path": f"{CLASSES[label]}/{i}.png", "fold": i % 3, "label": label,
                         "probs": (probs / probs.sum()).round(6).tolist()})
    return rows


def test_a_clearly_wrong_label_is_ranked_first_and_written_to_csv(tmp_path):
    rows = oof_rows()
    rows.append({"path": "blue/odd.png", "fold": 1, "label": 0, "probs": [0.03, 0.02, 0.95]})
    rows.append({"path": "green/unsure.png", "fold": 2, "label": 1, "probs": [0.2, 0.35, 0.45]})
    found = label_review.suspects(rows, CLASSES)
    assert [r["path"] for r in found] == ["blue/odd.png", "green/unsure.png"]  # what the models disagree with
    assert (found[0]["given"], found[0]["suggested"], found[0]["fold"]) == ("blue", "red", 1)
    assert found[0]["score"] == pytest.approx(0.03) and found[0]["probs"] == [0.03, 0.02, 0.95]
    assert found[0]["flagged"]  # confident learning: a wrong label, not just a hard image

    label_review.write_csv(found, tmp_path / "label_issues.csv")
    with open(tmp_path / "label_issues.csv", newline="") as f:
        table = list(csv.DictReader(f))
    assert list(table[0]) == ["path", "given", "suggested", "score"]
    assert [r["path"] for r in table] == [r["path"] for r in found]
    assert table[0] == {"path": "blue/odd.png", "given": "blue", "suggested": "red", "score": "0.030000"}


def test_a_class_too_small_for_confident_learning_falls_back_to_disagreements():
    rows = oof_rows()
    rows.append({"path": "purple/0.png", "fold": 0, "label": 3, "probs": [0.7, 0.1, 0.1, 0.1]})
    rows = [r | {"probs": r["probs"] + [0.0]} if len(r["probs"]) == 3 else r for r in rows]
    classes = CLASSES + ["purple"]
    assert label_review.thin_classes(rows, classes) == ["purple"]
    found = label_review.suspects(rows, classes)
    assert [(r["path"], r["suggested"], r["flagged"]) for r in found] == [("purple/0.png", "blue", False)]


def test_predictions_that_do_not_fit_the_classes_are_refused():
    with pytest.raises(DataError, match="do not match the 2 classes"):
        label_review.suspects(oof_rows(), ["blue", "green"])
    with pytest.raises(DataError, match="at least two classes"):
        label_review.suspects(oof_rows(), ["blue"])
    assert label_review.suspects([], CLASSES) == []


def test_a_folder_without_finished_folds_says_so(tmp_path):
    with pytest.raises(DataError, match="not a cross-validation"):
        label_review.review(tmp_path)
    (tmp_path / "cv.json").write_text('{"classes": ["a", "b"]}')
    with pytest.raises(DataError, match="No fold"):
        label_review.review(tmp_path)


def test_cross_validation_finds_an_image_in_the_wrong_class_folder(workspace, tmp_path):
    data = make_dataset(tmp_path / "data", {"red": 12, "blue": 12, "green": 12})
    (data / "red" / "0.png").rename(data / "blue" / "moved.png")  # a red image filed as blue
    config = small_config(data, epochs=5, lr=1e-3)
    config.data.folds = 3
    # the best epoch by val_loss, a confident model: by val_acc it is the first epoch at 100%, still unsure (red 0.47
    # for the moved image), under confident learning's per-class thresholds on some training orders
    config.early_stop.monitor = "val_loss"
    started = time.perf_counter()
    summary = cross_validate(config, tmp_path / "cv")
    seconds = time.perf_counter() - started
    assert summary["status"] == "finished" and summary["oof"]["acc"] >= 0.8, summary.get("oof")

    found = label_review.review(tmp_path / "cv")
    top = [r["path"] for r in found[:3]]
    assert "blue/moved.png" in top, (top, seconds)
    moved = next(r for r in found if r["path"] == "blue/moved.png")
    assert (moved["given"], moved["suggested"], moved["flagged"]) == ("blue", "red", True)
    with open(tmp_path / "cv" / "label_issues.csv", newline="") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [r["path"] for r in found]
    assert label_review.dataset_of(tmp_path / "cv", workspace).data_dir.joinpath("blue", "moved.png").is_file()
