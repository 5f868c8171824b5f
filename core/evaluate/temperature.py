"""Temperature scaling (Guo et al., ICML 2017): one scalar T dividing the logits, fitted on held-out predictions by
minimising their negative log-likelihood. argmax(z / T) = argmax(z) for T > 0, so accuracy cannot change; only
how sure the probabilities sound does.

Held-out predictions are stored as probabilities; log p is the logit up to a constant per row, which softmax
ignores, so T is fitted from them as well as from logits.

A temperature is applied only when the held-out predictions show the model mis-calibrated: a likelihood-ratio
test at 5%. A head that is already calibrated (the solved head usually is) gains nothing from a T fitted on a few
dozen images but their noise: on ants/bees over 40 random splits (80 validation images), an ungated T raised the
solved head's test ECE from 0.032 to 0.035 (scikit-learn's logistic regression's likewise), the gated one kept it;
on 100 generated classes, where the head was over-confident, both lowered it (0.039 to 0.036).
"""
from __future__ import annotations

import math

import torch

T_MIN, T_MAX = 0.05, 20.0  # beyond these the held-out set is too small or too clean to say anything
EVIDENCE = 1.92  # the summed NLL must fall by half the 95% quantile of chi-square with 1 degree of freedom


def logits_of(probs: torch.Tensor) -> torch.Tensor:
    """Logits up to a per-row constant (all softmax needs), clamped so a probability of 0 stays finite."""
    return probs.double().clamp_min(1e-12).log()


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return float(torch.nn.functional.cross_entropy(logits.double() / temperature, labels))


def fit(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The optimum's T when it passes the likelihood-ratio test against T = 1, else 1."""
    t = optimum(logits, labels)
    return t if evidence(logits, labels, t) > EVIDENCE else 1.0


def evidence(logits: torch.Tensor, labels: torch.Tensor, t: float) -> float:
    """How much T lowers the summed NLL against T = 1 (half the likelihood-ratio statistic)."""
    return len(labels) * (nll(logits, labels, 1.0) - nll(logits, labels, t)) if len(labels) else 0.0


def optimum(logits: torch.Tensor, labels: torch.Tensor) -> float:
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
    return math.exp((lo + hi) / 2)


def cross_fitted(probs: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Each group's probabilities scaled by the temperature fitted on the other groups (the folds of a
    cross-validation): calibration measured on the result is honest, since no image calibrated itself."""
    out = probs.clone()
    for g in groups.unique():
        inside = groups == g
        t = fit(logits_of(probs[~inside]), labels[~inside]) if (~inside).any() else 1.0
        out[inside] = scale(probs[inside], t)
    return out


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
