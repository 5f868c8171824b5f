"""Metrics against small cases computed by hand."""
import math

import pytest
import torch

from core.evaluate.metrics import confusion_matrix, normalize_rows, per_class, summary

pytestmark = pytest.mark.unit


def test_confusion_rows_are_true_classes():
    preds = torch.tensor([0, 1, 1, 2, 2, 2])
    targets = torch.tensor([0, 0, 1, 1, 2, 2])
    assert confusion_matrix(preds, targets, 3).tolist() == [[1, 1, 0], [0, 1, 1], [0, 0, 2]]


def test_precision_recall_f1_by_hand():
    cm = torch.tensor([[1, 1, 0], [0, 1, 1], [0, 0, 2]])
    pc = per_class(cm)
    assert pc["precision"] == [1.0, 0.5, 2 / 3]
    assert pc["recall"] == [0.5, 0.5, 1.0]
    assert math.isclose(pc["f1"][0], 2 / 3) and math.isclose(pc["f1"][1], 0.5) and math.isclose(pc["f1"][2], 0.8)
    assert pc["support"] == [2, 2, 2]
    s = summary(cm)
    assert math.isclose(s["acc"], 4 / 6)
    assert math.isclose(s["balanced_acc"], 2 / 3)
    assert math.isclose(s["macro_f1"], (2 / 3 + 0.5 + 0.8) / 3)


def test_class_never_predicted_has_zero_precision_not_nan():
    cm = torch.tensor([[0, 3], [0, 3]])
    pc = per_class(cm)
    assert pc["precision"] == [0.0, 0.5] and pc["f1"][0] == 0.0


def test_absent_classes_do_not_drag_the_balanced_accuracy():
    cm = torch.tensor([[2, 0, 0], [0, 1, 1], [0, 0, 0]])
    assert math.isclose(summary(cm)["balanced_acc"], 0.75)


def test_precision_recall_f1_by_hand_with_unequal_classes():
    # rows = true class, columns = predicted
    #            pred 0  pred 1  pred 2 | support
    #   true 0      5       2       1   |   8
    #   true 1      1       3       0   |   4
    #   true 2      2       0       6   |   8
    #   predicted   8       5       7
    # precision = tp / column: 5/8, 3/5, 6/7; recall = tp / row: 5/8, 3/4, 6/8
    # F1 = 2tp / (2tp + fp + fn): 10/16 = 5/8, 6/9 = 2/3, 12/15 = 4/5
    cm = torch.tensor([[5, 2, 1], [1, 3, 0], [2, 0, 6]])
    pc = per_class(cm)
    assert pc["precision"] == pytest.approx([5 / 8, 3 / 5, 6 / 7])
    assert pc["recall"] == pytest.approx([5 / 8, 3 / 4, 3 / 4])
    assert pc["f1"] == pytest.approx([5 / 8, 2 / 3, 4 / 5])
    assert pc["support"] == [8, 4, 8]
    # accuracy 14/20; balanced accuracy (5/8 + 3/4 + 3/4) / 3 = 17/24, below what the big classes alone suggest;
    # macro F1 (5/8 + 2/3 + 4/5) / 3 = (75 + 80 + 96) / 360 = 251/360
    s = summary(cm)
    assert s["acc"] == pytest.approx(0.7)
    assert s["balanced_acc"] == pytest.approx(17 / 24)
    assert s["macro_f1"] == pytest.approx(251 / 360)


def test_a_class_never_predicted_scores_zero_and_still_counts_in_macro_f1():
    # Class 0 has 3 images and is never predicted: precision 0/0 -> 0, recall 0/3, F1 0.
    # Class 1: tp 4, predicted 7, support 4 -> P 4/7, R 1, F1 = 8 / (8 + 3 + 0) = 8/11.
    # Class 2: tp 2, predicted 3, support 3 -> P 2/3, R 2/3, F1 2/3.
    # Macro F1 = (0 + 8/11 + 2/3) / 3 = 46/99: the class the model ignores pulls it down rather than vanishing.
    cm = torch.tensor([[0, 2, 1], [0, 4, 0], [0, 1, 2]])
    pc = per_class(cm)
    assert pc["precision"] == pytest.approx([0.0, 4 / 7, 2 / 3])
    assert pc["recall"] == pytest.approx([0.0, 1.0, 2 / 3])
    assert pc["f1"] == pytest.approx([0.0, 8 / 11, 2 / 3])
    assert all(math.isfinite(v) for key in ("precision", "recall", "f1") for v in pc[key])
    assert summary(cm)["macro_f1"] == pytest.approx(46 / 99)


def test_normalize_rows_gives_each_true_class_its_shares_and_an_empty_row_zeros():
    cm = confusion_matrix(torch.tensor([0, 0, 0, 1, 0, 1, 2, 2]), torch.tensor([0, 0, 0, 0, 2, 2, 2, 2]), 3)
    assert cm.tolist() == [[3, 1, 0], [0, 0, 0], [1, 1, 2]]  # class 1 has no images
    shares = normalize_rows(cm)
    assert shares == [[0.75, 0.25, 0.0], [0.0, 0.0, 0.0], [0.25, 0.25, 0.5]]
    assert normalize_rows([[3, 1, 0], [0, 0, 0], [1, 1, 2]]) == shares  # as confusion_matrix.json stores it
    assert all(isinstance(v, float) for row in shares for v in row)
