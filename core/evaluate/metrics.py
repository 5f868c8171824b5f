"""Classification metrics from a confusion matrix (rows = true class, columns = predicted)."""
from __future__ import annotations

from typing import Any, Sequence

import torch


def confusion_matrix(preds: torch.Tensor, targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    idx = targets.long() * num_classes + preds.long()
    return torch.bincount(idx, minlength=num_classes**2).reshape(num_classes, num_classes)


def per_class(cm: torch.Tensor) -> dict[str, list[float]]:
    """Precision, recall, F1 and support per class; 0 where a ratio is undefined (nothing predicted)."""
    cm = cm.double()
    tp = cm.diag()
    predicted, actual = cm.sum(0), cm.sum(1)
    precision = torch.where(predicted > 0, tp / predicted.clamp(min=1), torch.zeros_like(tp))
    recall = torch.where(actual > 0, tp / actual.clamp(min=1), torch.zeros_like(tp))
    denom = precision + recall
    f1 = torch.where(denom > 0, 2 * precision * recall / denom.clamp(min=1e-12), torch.zeros_like(tp))
    return {"precision": precision.tolist(), "recall": recall.tolist(), "f1": f1.tolist(),
            "support": actual.long().tolist()}


def summary(cm: torch.Tensor) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over present classes) and macro F1."""
    total = int(cm.sum())
    if total == 0:
        return {"acc": float("nan"), "balanced_acc": float("nan"), "macro_f1": float("nan")}
    pc = per_class(cm)
    present = [i for i, s in enumerate(pc["support"]) if s > 0]
    return {
        "acc": float(cm.diag().sum()) / total,
        "balanced_acc": sum(pc["recall"][i] for i in present) / len(present),
        "macro_f1": sum(pc["f1"][i] for i in present) / len(present),
    }


def normalize_rows(cm: torch.Tensor | list[list[int]]) -> list[list[float]]:
    """Each row as shares of its true class (the diagonal is then recall), so classes of very different sizes
    read alike; a class with no images keeps a row of 0.0, since NaN would not survive JSON or a chart.
    """
    cm = torch.as_tensor(cm, dtype=torch.float64)
    totals = cm.sum(1, keepdim=True)
    return torch.where(totals > 0, cm / totals.clamp(min=1), torch.zeros_like(cm)).tolist()


def most_confused(matrix: Sequence[Sequence[int]], classes: list[str], top: int = 20) -> list[dict[str, Any]]:
    """Off-diagonal cells with images, most images first (ties: the larger share of the true class first), so a
    matrix of many classes, too big to search by eye, still says which pairs the model mixes up most."""
    n = len(classes)
    if len(matrix) != n or any(len(row) != n for row in matrix):
        raise ValueError(f"the matrix must be {n}x{n} for {n} classes")
    pairs = []
    for i, row in enumerate(matrix):
        total = sum(row)
        pairs += [{"true": classes[i], "predicted": classes[j], "count": int(count), "share": count / total}
                  for j, count in enumerate(row) if j != i and count > 0]
    return sorted(pairs, key=lambda p: (-p["count"], -p["share"]))[:top]
