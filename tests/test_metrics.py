"""Metrics against small cases computed by hand."""
import math

import torch

from core.metrics import confusion_matrix, per_class, summary


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
