"""Metrics for each task, as pure functions of targets and predicted probabilities."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    log_loss,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

__all__ = ["HIGHER_IS_BETTER", "is_improvement", "multiclass_metrics"]

# Direction of every metric that can select a checkpoint.
HIGHER_IS_BETTER = {"accuracy": True, "macro_f1": True, "mcc": True, "loss": False}


def is_improvement(metric: str, value: float, best: float | None, min_delta: float = 0.0) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in the metric's direction."""
    if best is None:
        return True
    if HIGHER_IS_BETTER[metric]:
        return value > best + min_delta
    return value < best - min_delta


def multiclass_metrics(
    targets: np.ndarray, probabilities: np.ndarray, labels: list[str]
) -> dict[str, Any]:
    """Accuracy, macro-F1, MCC, per-class report, one-vs-rest ROC-AUC and confusion matrix.

    Args:
        targets: Integer class indices, shape ``(n,)``.
        probabilities: Class probabilities, shape ``(n, num_classes)``.
        labels: Class names in index order.

    Returns:
        A JSON-serialisable dictionary.
    """
    classes = list(range(len(labels)))
    predicted = probabilities.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, labels=classes, zero_division=0
    )
    per_class = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, label in enumerate(labels)
    }
    clipped = np.clip(probabilities, 1e-7, 1.0)
    metrics: dict[str, Any] = {
        "n": len(targets),
        "loss": float(log_loss(targets, clipped / clipped.sum(1, keepdims=True), labels=classes)),
        "accuracy": float(accuracy_score(targets, predicted)),
        "macro_f1": float(
            f1_score(targets, predicted, average="macro", labels=classes, zero_division=0)
        ),
        "weighted_f1": float(
            f1_score(targets, predicted, average="weighted", labels=classes, zero_division=0)
        ),
        "mcc": float(matthews_corrcoef(targets, predicted)),
        "roc_auc_ovr": _roc_auc(targets, probabilities, classes),
        "per_class": per_class,
        "confusion_matrix": confusion_matrix(targets, predicted, labels=classes).tolist(),
        "labels": list(labels),
    }
    return metrics


def _roc_auc(targets: np.ndarray, probabilities: np.ndarray, classes: list[int]) -> float | None:
    """Macro one-vs-rest ROC-AUC; None when a class is absent (it is undefined then)."""
    if len(set(targets.tolist())) < len(classes):
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if len(classes) == 2:
            return float(roc_auc_score(targets, probabilities[:, 1]))
        return float(roc_auc_score(targets, probabilities, multi_class="ovr", labels=classes))
