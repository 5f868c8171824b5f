"""Temperature scaling (Guo et al., ICML 2017): one scalar T dividing the logits, fitted on held-out predictions by
minimising their negative log-likelihood. argmax(z / T) = argmax(z) for T > 0, so accuracy cannot change; only
how sure the probabilities sound does.

Held-out predictions are stored as probabilities; log p is the logit up to a constant per row, which softmax
ignores, so T is fitted from them as well as from logits.
"""
from __future__ import annotations

import math

import torch

T_MIN, T_MAX = 0.05, 20.0  # beyond these the held-out set is too small or too clean to say anything


def logits_of(probs: torch.Tensor) -> torch.Tensor:
    """Logits up to a per-row constant (all softmax needs), clamped so a probability of 0 stays finite."""
    return probs.double().clamp_min(1e-12).log()


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels))


def fit(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [T_MIN, T_MAX] minimising the NLL of softmax(logits / T): a one-dimensional convex problem in
    log T, solved by golden-section search (no learning rate, no iterations count to pick)."""
    if len(labels) == 0:
        return 1.0
    logits, labels = logits.double(), labels.long()
    lo, hi = math.log(T_MIN), math.log(T_MAX)
    ratio = (math.sqrt(5) - 1) / 2
    a, b = hi - ratio * (hi - lo), lo + ratio * (hi - lo)
    fa, fb = nll(logits, labels, math.exp(a)), nll(logits, labels, math.exp(b))
    for _ in range(80):  # the bracket shrinks by 0.618 each step: 80 steps reach float precision
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - ratio * (hi - lo)
            fa = nll(logits, labels, math.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + ratio * (hi - lo)
            fb = nll(logits, labels, math.exp(b))
    t = math.exp((lo + hi) / 2)
    return t if nll(logits, labels, t) <= nll(logits, labels, 1.0) else 1.0


def scale(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Probabilities as the temperature makes them (T = 1 returns them as they are)."""
    if temperature == 1.0:
        return probs
    return torch.softmax(logits_of(probs) / temperature, dim=1).to(probs.dtype)


def uncertain_below(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """The default confidence under which Predict calls a prediction uncertain, from held-out data: the median
    confidence of the mistakes (half of them fall below it), or, without mistakes, the 5th percentile of all
    confidences; never below chance (1 / classes)."""
    top, predicted = probs.max(1)
    wrong = top[predicted != labels]
    value = float(wrong.median()) if len(wrong) else float(top.quantile(0.05)) if len(top) else 0.5
    return max(value, 1 / probs.shape[1])
