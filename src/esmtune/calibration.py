"""Calibration: whether a 0.8 means right 8 times in 10, and the fits that make it so.

A fine-tuned classifier's probabilities are usually over-confident (Guo et al. 2017). Two fits on
validation outputs correct that without changing any decision that ranks outputs:

- **temperature** (softmax outputs): one number T, the logits divided by it; the likeliest class
  stays the likeliest, so accuracy and F1 are unchanged and only confidence moves.
- **Platt scaling** (sigmoid outputs): a slope and an intercept on the logit, fitted as a
  one-feature logistic regression; with a positive slope the ranking (ROC-AUC, PR-AUC) is kept,
  and the decision threshold is tuned again on the calibrated probabilities.

The expected calibration error (ECE) compares, in 15 equal-width bins of predicted probability,
the mean prediction with the observed frequency, weighted by the bin's share of predictions.
These are pure functions of numpy arrays; the tasks decide what they are applied to.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax

__all__ = ["fit_platt", "fit_temperature", "reliability"]

# Equal-width probability bins of the reliability diagram and the ECE.
BINS = 15
# The range a temperature is searched in: from very sharp to nearly uniform.
_TEMPERATURE_RANGE = (0.05, 20.0)
# A fitted log-temperature this close to the range's edge counts as having hit it.
_EDGE = 0.01


def reliability(
    probabilities: np.ndarray, outcomes: np.ndarray, bins: int = BINS
) -> dict[str, Any]:
    """The expected calibration error and the reliability diagram's bins.

    Args:
        probabilities: Predicted probabilities of an event, shape ``(n,)`` (the top class's
            probability, or a positive class's).
        outcomes: Whether the event happened (1) or not (0), shape ``(n,)``.
        bins: Equal-width bins over [0, 1].

    Returns:
        ``ece`` (None without predictions), ``n``, and ``bins``: per non-empty bin its
        ``low``/``high`` edges, mean ``confidence``, observed ``frequency`` and ``count``.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    outcomes = np.asarray(outcomes, dtype=np.float64).ravel()
    edges = np.linspace(0.0, 1.0, bins + 1)
    # Right-closed bins, the first including 0: a probability of exactly 1 falls in the last.
    index = np.clip(np.searchsorted(edges, probabilities, side="left") - 1, 0, bins - 1)
    rows, ece = [], 0.0
    for b in range(bins):
        chosen = index == b
        count = int(chosen.sum())
        if not count:
            continue
        confidence = float(probabilities[chosen].mean())
        frequency = float(outcomes[chosen].mean())
        ece += count / len(probabilities) * abs(frequency - confidence)
        rows.append({"low": float(edges[b]), "high": float(edges[b + 1]),
                     "confidence": confidence, "frequency": frequency, "count": count})  # fmt: skip
    return {"ece": float(ece) if len(probabilities) else None, "n": len(probabilities),
            "bins": rows}  # fmt: skip


def fit_temperature(log_probabilities: np.ndarray, targets: np.ndarray) -> float:
    """The temperature T minimising the negative log-likelihood of ``softmax(logits / T)``.

    Args:
        log_probabilities: Log-probabilities (or logits: softmax ignores a shift per row),
            shape ``(n, classes)``.
        targets: Class indices, shape ``(n,)``.

    Returns:
        T within [0.05, 20]; 1.0 without examples, when every example's likeliest class is its
        own (the likelihood then only grows as T shrinks, and the data says nothing about the
        right scale), or when the best T is at the edge of that range: the logits are kept.
    """
    logits = np.asarray(log_probabilities, dtype=np.float64)
    targets = np.asarray(targets, dtype=np.int64)
    if not len(targets):
        return 1.0
    rows = np.arange(len(targets))
    if (logits.argmax(axis=1) == targets).all():
        return 1.0

    def loss(log_temperature: float) -> float:
        scaled = log_softmax(logits / math.exp(log_temperature), axis=1)
        return float(-scaled[rows, targets].mean())

    low, high = (math.log(x) for x in _TEMPERATURE_RANGE)
    found = minimize_scalar(loss, bounds=(low, high), method="bounded")
    if min(found.x - low, high - found.x) < _EDGE:
        return 1.0
    return float(math.exp(found.x))


def fit_platt(scores: np.ndarray, outcomes: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of ``sigmoid(slope * score + intercept)`` fitted to the outcomes.

    An unpenalised one-feature logistic regression (scikit-learn) on the logits. The identity
    (1, 0) is kept when the outcomes hold one class, when the scores separate them perfectly
    (the fit's slope would grow without bound), or when the fit would reverse the ranking
    (slope <= 0): calibration must never turn a good ranking upside down.
    """
    from sklearn.linear_model import LogisticRegression

    scores = np.asarray(scores, dtype=np.float64).reshape(-1, 1)
    outcomes = np.asarray(outcomes, dtype=np.int64).ravel()
    if len(np.unique(outcomes)) < 2:
        return 1.0, 0.0
    if scores[outcomes == 1].min() > scores[outcomes == 0].max():
        return 1.0, 0.0
    model = LogisticRegression(C=np.inf, max_iter=1000).fit(scores, outcomes)
    slope, intercept = float(model.coef_[0, 0]), float(model.intercept_[0])
    return (slope, intercept) if slope > 0 else (1.0, 0.0)
