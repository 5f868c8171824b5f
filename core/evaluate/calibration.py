"""Calibration: does a model's top-1 confidence match how often it is right?

A model that says 90% should be right about 9 times in 10; fine-tuned networks are often overconfident, which
matters to anyone who thresholds on the confidence. Inputs are softmax probabilities (N, C) and true labels (N,),
as tensors or as the plain lists a run folder stores in JSON.

Bins are equal-width and right-closed over (0, 1]: bin i holds confidences in (i/B, (i+1)/B], so a confidence
of exactly 1.0 falls in the last bin and one exactly on an edge (0.5 with 10 bins) in the bin below that edge.
Edges are compared in the probabilities' own dtype, so a float32 0.7 lands in (0.6, 0.7] as written, not in the
next bin through rounding.
"""
from __future__ import annotations

from typing import Any

import torch


def _top1(probs: Any, labels: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-1 confidence and whether it was right, per sample."""
    probs, labels = torch.as_tensor(probs), torch.as_tensor(labels)
    if not probs.is_floating_point():
        probs = probs.double()
    if probs.numel() == 0 and labels.numel() == 0:  # also a bare [] from JSON, which has no class dimension
        return probs.new_zeros(0), torch.zeros(0, dtype=torch.bool)
    if probs.dim() != 2 or labels.dim() != 1 or len(probs) != len(labels):
        raise ValueError(f"probs must be (N, C) and labels (N,), got {tuple(probs.shape)} and {tuple(labels.shape)}")
    confidence, predicted = probs.max(dim=1)
    return confidence, predicted == labels.to(predicted.device)


def reliability(probs: torch.Tensor | list, labels: torch.Tensor | list, bins: int = 10) -> list[dict[str, Any]]:
    """One dict per confidence bin: lo, hi, count, mean confidence and accuracy (both None when the bin is empty).

    Empty bins are kept, so the list always has `bins` entries and a bin's index means the same across runs.
    """
    if bins < 1:
        raise ValueError(f"bins must be at least 1, got {bins}")
    confidence, correct = _top1(probs, labels)
    inner_edges = (torch.arange(1, bins, dtype=torch.float64) / bins).to(confidence.dtype)
    index = torch.bucketize(confidence, inner_edges.to(confidence.device), right=False).cpu()
    count = torch.bincount(index, minlength=bins)
    conf_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, confidence.cpu().double())
    correct_sum = torch.zeros(bins, dtype=torch.float64).index_add_(0, index, correct.cpu().double())
    return [{"lo": i / bins, "hi": (i + 1) / bins, "count": int(n),
             "confidence": float(conf_sum[i] / n) if n else None,
             "accuracy": float(correct_sum[i] / n) if n else None}
            for i, n in enumerate(count.tolist())]


def expected_calibration_error(probs: torch.Tensor | list, labels: torch.Tensor | list, bins: int = 10) -> float:
    """Expected calibration error (Guo et al. 2017): the count-weighted mean gap between accuracy and confidence
    over the bins, in [0, 1]; NaN without samples, since no model is calibrated or not on nothing.
    """
    table = reliability(probs, labels, bins)
    total = sum(b["count"] for b in table)
    if total == 0:
        return float("nan")
    return sum(b["count"] / total * abs(b["accuracy"] - b["confidence"]) for b in table if b["count"])
