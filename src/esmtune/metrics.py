"""Metrics for each task, as pure functions of targets and predicted probabilities."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
from scipy.stats import ConstantInputWarning, pearsonr, spearmanr
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    matthews_corrcoef,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
    roc_auc_score,
    roc_curve,
)

from esmtune.config import TASK_METRICS

__all__ = [
    "HIGHER_IS_BETTER",
    "binary_metrics",
    "fmax_score",
    "is_improvement",
    "multiclass_metrics",
    "multilabel_metrics",
    "protein_spearman",
    "regression_metrics",
    "residue_classification_metrics",
    "residue_regression_metrics",
    "tune_threshold",
    "tune_thresholds",
]

# Direction of every metric that can select a checkpoint; a name shared by tasks means the same.
_LOWER_IS_BETTER = {"loss", "mse", "rmse", "mae"}
HIGHER_IS_BETTER: dict[str, bool] = {
    name: name not in _LOWER_IS_BETTER for names in TASK_METRICS.values() for name in names
}

# Probabilities are clipped before cross-entropy so that a confident mistake costs a finite loss.
_EPSILON = 1e-7
# Scores closer than this count as a tie when choosing a decision threshold.
_TIE_TOLERANCE = 1e-12


def is_improvement(
    metric: str, value: float | None, best: float | None, min_delta: float = 0.0
) -> bool:
    """Whether ``value`` beats ``best`` by more than ``min_delta`` in the metric's direction.

    Args:
        metric: A key of :data:`HIGHER_IS_BETTER`.
        value: The new value; None when the metric is undefined (e.g. AUC with one class),
            which never counts as an improvement.
        best: The best value so far; None when there is none yet.
        min_delta: The margin ``value`` must beat ``best`` by.

    Returns:
        True when ``value`` should become the new best.
    """
    if value is None:
        return False
    if best is None:
        return True
    if HIGHER_IS_BETTER[metric]:
        return value > best + min_delta
    return value < best - min_delta


def multiclass_metrics(
    targets: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    predicted: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy, macro-F1, MCC, per-class report, one-vs-rest ROC-AUC and confusion matrix.

    Args:
        targets: Integer class indices, shape ``(n,)``.
        probabilities: Class probabilities, shape ``(n, num_classes)``.
        labels: Class names in index order.
        predicted: The decided class indices when they are not the likeliest class (two classes
            decided at a tuned threshold); the argmax of ``probabilities`` by default.

    Returns:
        A JSON-serialisable dictionary.
    """
    classes = list(range(len(labels)))
    predicted = probabilities.argmax(axis=1) if predicted is None else predicted
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
        # An undefined score is reported as None by the caller's checks, not as a warning.
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        if len(classes) == 2:
            return float(roc_auc_score(targets, probabilities[:, 1]))
        return float(roc_auc_score(targets, probabilities, multi_class="ovr", labels=classes))


def binary_metrics(
    targets: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    threshold: float = 0.5,
) -> dict[str, Any]:
    """Threshold metrics of the positive class plus ranking metrics that need no threshold.

    Args:
        targets: 0/1 targets, shape ``(n,)``.
        probabilities: Probability of the positive class, shape ``(n,)``.
        labels: ``[negative_name, positive_name]``.
        threshold: Predict positive when the probability is at least this.

    Returns:
        A JSON-serialisable dictionary with ``n``, ``loss``, ``accuracy``, ``precision``,
        ``recall``, ``f1``, ``mcc``, ``roc_auc`` and ``pr_auc`` (None when ``targets`` hold one
        class), ``threshold``, ``positives``, ``confusion_matrix`` (``[[tn, fp], [fn, tp]]``) and
        ``labels``.
    """
    targets = np.asarray(targets).astype(np.int64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    predicted = (probabilities >= threshold).astype(np.int64)
    precision, recall, f1, _ = precision_recall_fscore_support(
        targets, predicted, labels=[0, 1], pos_label=1, average="binary", zero_division=0
    )
    both_classes = len(np.unique(targets)) == 2
    clipped = np.clip(probabilities, _EPSILON, 1.0 - _EPSILON)
    return {
        "n": len(targets),
        "loss": float(log_loss(targets, clipped, labels=[0, 1])),
        "accuracy": float(accuracy_score(targets, predicted)),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "mcc": float(matthews_corrcoef(targets, predicted)),
        "roc_auc": float(roc_auc_score(targets, probabilities)) if both_classes else None,
        "pr_auc": float(average_precision_score(targets, probabilities)) if both_classes else None,
        "threshold": float(threshold),
        "positives": int(targets.sum()),
        "confusion_matrix": confusion_matrix(targets, predicted, labels=[0, 1]).tolist(),
        "labels": list(labels),
    }


def tune_threshold(targets: np.ndarray, probabilities: np.ndarray, metric: str = "f1") -> float:
    """The decision threshold that maximises F1 or MCC on validation data.

    Every distinct probability is a candidate (predict positive when ``p >= t``); the confusion
    counts of all of them come from one ROC sweep, so this is O(n log n). Among equally good
    thresholds the one nearest 0.5 wins (the lower on equal distance), so results are
    reproducible and stay close to the untuned default.

    Args:
        targets: 0/1 targets, shape ``(n,)``.
        probabilities: Probability of the positive class, shape ``(n,)``.
        metric: ``"f1"`` or ``"mcc"``.

    Returns:
        The threshold; 0.5 when ``targets`` hold a single class, where tuning has no signal.

    Raises:
        ValueError: If ``metric`` is neither ``"f1"`` nor ``"mcc"``.
    """
    if metric not in ("f1", "mcc"):
        raise ValueError(f"cannot tune a threshold for {metric!r}; use 'f1' or 'mcc'")
    targets = np.asarray(targets).astype(np.int64).ravel()
    probabilities = np.asarray(probabilities, dtype=np.float64).ravel()
    positives = int(targets.sum())
    negatives = len(targets) - positives
    if positives == 0 or negatives == 0:
        return 0.5
    false_positive_rate, true_positive_rate, thresholds = roc_curve(
        targets, probabilities, drop_intermediate=False
    )
    # The first point is the "predict nothing" threshold (inf), not a probability.
    tp = np.rint(true_positive_rate[1:] * positives)
    fp = np.rint(false_positive_rate[1:] * negatives)
    fn = positives - tp
    tn = negatives - fp
    candidates = thresholds[1:]
    if metric == "f1":
        # One division of integers per threshold, so mathematically equal F1s are equal floats.
        scores = 2 * tp / (2 * tp + fp + fn)
    else:
        denominator = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        # sklearn's convention: MCC is 0 when a row or column of the confusion matrix is empty.
        safe = np.where(denominator > 0, denominator, 1.0)
        scores = np.where(denominator > 0, (tp * tn - fp * fn) / safe, 0.0)
    best = candidates[scores >= scores.max() - _TIE_TOLERANCE]
    best = np.sort(best)
    return float(best[np.argmin(np.abs(best - 0.5))])


def tune_thresholds(
    targets: np.ndarray, probabilities: np.ndarray, metric: str = "f1"
) -> np.ndarray:
    """Per-label decision thresholds for multilabel data, each tuned by :func:`tune_threshold`.

    Args:
        targets: 0/1 targets, shape ``(n, L)``.
        probabilities: Per-label probabilities, shape ``(n, L)``.
        metric: ``"f1"`` or ``"mcc"``.

    Returns:
        Thresholds, shape ``(L,)``; 0.5 for a label without positives or without negatives.
    """
    targets = np.asarray(targets)
    probabilities = np.asarray(probabilities)
    return np.array(
        [
            tune_threshold(targets[:, label], probabilities[:, label], metric)
            for label in range(targets.shape[1])
        ],
        dtype=np.float64,
    )


def fmax_score(
    targets: np.ndarray, probabilities: np.ndarray, steps: int = 100
) -> dict[str, float | None]:
    """The CAFA protein-centric Fmax, the usual headline metric for function prediction.

    At each threshold ``t`` in ``1/steps, 2/steps, ..., 1``, precision is averaged over the
    proteins with at least one score ``>= t`` and recall over all annotated proteins; F is their
    harmonic mean and Fmax its maximum. Proteins without a true label are left out, as CAFA
    leaves them out of its benchmark set.

    Args:
        targets: 0/1 targets, shape ``(n, L)``.
        probabilities: Per-label scores, shape ``(n, L)``.
        steps: Number of thresholds.

    Returns:
        ``fmax``, its ``threshold`` (the smallest on ties), ``coverage`` (the share of proteins
        with a prediction at that threshold), ``precision`` and ``recall`` there. ``fmax`` is 0.0
        and the rest None (coverage 0.0) when no threshold yields a prediction; everything is
        None when no protein has a true label.
    """
    targets = np.asarray(targets).astype(bool)
    probabilities = np.asarray(probabilities, dtype=np.float64)
    annotated = targets.any(axis=1)
    if not annotated.any():
        return dict.fromkeys(("fmax", "threshold", "coverage", "precision", "recall"))
    targets, probabilities = targets[annotated], probabilities[annotated]
    n, _ = targets.shape
    thresholds = np.arange(1, steps + 1) / steps
    # passed[i, l] = how many thresholds the score clears, so cell (i, l) is predicted at
    # threshold index j exactly when j < passed[i, l]. Histogramming it per protein and summing
    # from the top gives predicted and true-positive counts at every threshold in O(n*L + n*steps).
    passed = np.searchsorted(thresholds, probabilities, side="right")
    bins = (np.arange(n)[:, None] * (steps + 1) + passed).ravel()
    size = n * (steps + 1)
    predicted_hist = np.bincount(bins, minlength=size).reshape(n, steps + 1)
    correct_hist = np.bincount(bins, weights=targets.ravel(), minlength=size).reshape(n, steps + 1)
    predicted = np.cumsum(predicted_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
    correct = np.cumsum(correct_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]

    has_prediction = predicted > 0
    covered = has_prediction.sum(axis=0)
    precision_sum = (correct / np.maximum(predicted, 1)).sum(axis=0)
    precision = np.divide(precision_sum, covered, out=np.zeros(steps), where=covered > 0)
    recall = (correct / targets.sum(axis=1, keepdims=True)).mean(axis=0)
    denominator = precision + recall
    f = np.divide(2 * precision * recall, denominator, out=np.zeros(steps), where=denominator > 0)
    f[covered == 0] = -1.0  # precision is undefined without predictions; never pick these
    if (covered == 0).all():
        return {"fmax": 0.0, "threshold": None, "coverage": 0.0, "precision": None, "recall": None}
    best = int(np.argmax(f))  # argmax takes the first maximum: the smallest threshold on ties
    return {
        "fmax": float(f[best]),
        "threshold": float(thresholds[best]),
        "coverage": float(covered[best] / n),
        "precision": float(precision[best]),
        "recall": float(recall[best]),
    }


def multilabel_metrics(
    targets: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    thresholds: np.ndarray | None = None,
) -> dict[str, Any]:
    """Thresholded F1, ranking AP and the protein-centric Fmax for multilabel predictions.

    Args:
        targets: 0/1 targets, shape ``(n, L)``.
        probabilities: Per-label probabilities, shape ``(n, L)``.
        labels: Label names in column order.
        thresholds: Per-label decision thresholds, shape ``(L,)``; 0.5 each by default.

    Returns:
        A JSON-serialisable dictionary with ``n``, ``loss`` (mean binary cross-entropy over all
        cells), ``micro_f1``, ``macro_f1``, ``micro_ap``, ``macro_ap`` (over labels with a
        positive; None when no label has one), ``fmax``, ``fmax_threshold``, ``coverage``,
        ``label_cardinality``, ``per_label`` and ``labels``.
    """
    # sklearn's per-label loop is over ten times slower on column-major arrays.
    targets = np.ascontiguousarray(targets, dtype=np.int64)
    probabilities = np.ascontiguousarray(probabilities, dtype=np.float64)
    num_labels = targets.shape[1]
    if thresholds is None:
        thresholds = np.full(num_labels, 0.5)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    predicted = (probabilities >= thresholds[None, :]).astype(np.int64)

    clipped = np.clip(probabilities, _EPSILON, 1.0 - _EPSILON)
    precision, recall, f1, support = precision_recall_fscore_support(
        targets, predicted, average=None, zero_division=0
    )
    # AP is undefined for a label without positives, so such labels are left out of it.
    with_positives = np.flatnonzero(targets.sum(axis=0) > 0)
    label_ap = np.full(num_labels, np.nan)
    if len(with_positives):
        label_ap[with_positives] = average_precision_score(
            np.ascontiguousarray(targets[:, with_positives]),
            np.ascontiguousarray(probabilities[:, with_positives]),
            average=None,
        )
    fmax = fmax_score(targets, probabilities)
    per_label = {
        label: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "ap": None if np.isnan(label_ap[i]) else float(label_ap[i]),
            "support": int(support[i]),
            "threshold": float(thresholds[i]),
        }
        for i, label in enumerate(labels)
    }
    return {
        "n": len(targets),
        "loss": float(log_loss(targets.ravel(), clipped.ravel(), labels=[0, 1])),
        "micro_f1": float(f1_score(targets, predicted, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(targets, predicted, average="macro", zero_division=0)),
        "micro_ap": (
            float(average_precision_score(targets, probabilities, average="micro"))
            if len(with_positives)
            else None
        ),
        "macro_ap": float(label_ap[with_positives].mean()) if len(with_positives) else None,
        "fmax": fmax["fmax"],
        "fmax_threshold": fmax["threshold"],
        "coverage": fmax["coverage"],
        "label_cardinality": float(targets.sum(axis=1).mean()),
        "per_label": per_label,
        "labels": list(labels),
    }


def regression_metrics(
    targets: np.ndarray, predictions: np.ndarray, names: list[str]
) -> dict[str, Any]:
    """Error, R² and rank / linear correlation per target, and their means over targets.

    Args:
        targets: True values, shape ``(n, T)`` or ``(n,)`` for one target.
        predictions: Predicted values, the same shape as ``targets``.
        names: Target names in column order.

    Returns:
        A JSON-serialisable dictionary with ``n``, ``loss`` (the mean MSE), the means of ``mse``,
        ``rmse``, ``mae``, ``r2``, ``spearman`` and ``pearson`` (a mean is None when any target's
        value is undefined, e.g. a correlation of constant input), ``per_target`` and ``names``.

    Raises:
        ValueError: If the shapes disagree with each other or with ``names``.
    """
    targets = np.asarray(targets, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    targets = targets.reshape(len(targets), -1)
    predictions = predictions.reshape(len(predictions), -1)
    if targets.shape != predictions.shape or targets.shape[1] != len(names):
        raise ValueError(
            f"targets {targets.shape}, predictions {predictions.shape} and {len(names)} names "
            "do not match; expected (n, T) arrays and T names"
        )
    per_target = {
        name: _regression_target(targets[:, i], predictions[:, i]) for i, name in enumerate(names)
    }
    keys = ("mse", "rmse", "mae", "r2", "spearman", "pearson")
    means = {key: _mean_or_none([row[key] for row in per_target.values()]) for key in keys}
    return {
        "n": len(targets),
        "loss": means["mse"],
        **means,
        "per_target": per_target,
        "names": list(names),
    }


def _regression_target(targets: np.ndarray, predictions: np.ndarray) -> dict[str, float | None]:
    """Metrics of one regression target; undefined values (constant input, n < 2) are None."""
    mse = float(mean_squared_error(targets, predictions))
    spearman = pearson = r2 = None
    if len(targets) >= 2:
        with warnings.catch_warnings():
            # Constant input makes a correlation undefined; it is reported as None instead.
            warnings.simplefilter("ignore", ConstantInputWarning)
            spearman = _finite_or_none(spearmanr(targets, predictions).statistic)
            pearson = _finite_or_none(pearsonr(targets, predictions).statistic)
        r2 = _finite_or_none(r2_score(targets, predictions))
    return {
        "spearman": spearman,
        "pearson": pearson,
        "mse": mse,
        "rmse": float(np.sqrt(mse)),
        "mae": float(mean_absolute_error(targets, predictions)),
        "r2": r2,
    }


def _finite_or_none(value: float) -> float | None:
    """``value`` as a float, or None when it is NaN or infinite (JSON has no NaN)."""
    value = float(value)
    return value if np.isfinite(value) else None


def _mean_or_none(values: list[float | None]) -> float | None:
    """The mean of ``values``, or None when any is undefined."""
    defined = [value for value in values if value is not None]
    if len(defined) < len(values):
        return None
    return float(np.mean(defined))


# --- per residue: one array per protein, metrics over the residues that count --------------------


def _quartiles(values: list[float]) -> dict[str, float | None]:
    """Mean and quartiles of per-protein scores (None when no protein has one)."""
    if not values:
        return {"mean": None, "q1": None, "median": None, "q3": None, "proteins": 0}
    q1, median, q3 = np.percentile(values, [25, 50, 75])
    return {
        "mean": float(np.mean(values)),
        "q1": float(q1),
        "median": float(median),
        "q3": float(q3),
        "proteins": len(values),
    }


def residue_classification_metrics(
    targets: np.ndarray,
    probabilities: np.ndarray,
    labels: list[str],
    ignored: int,
    threshold: float | None = None,
) -> dict[str, Any]:
    """:func:`multiclass_metrics` over every residue that counts, and per-protein accuracy.

    Args:
        targets: One array of class indices per protein (an object array); residues out of
            every metric (masked) hold ``ignored``.
        probabilities: One ``(residues, classes)`` array per protein; NaN rows for residues
            that were not read (a cut sequence), which are left out too and counted as
            ``unread``.
        labels: Class names in index order.
        ignored: The class index of residues that do not count.
        threshold: Two classes only: a residue is the positive class (index 1) when its
            probability is at least this, and the positive-class metrics of
            :func:`binary_metrics` are added. None: the likeliest class.

    Returns:
        :func:`multiclass_metrics`' keys (``n`` counts residues; ``accuracy`` is Q3 for three
        states), plus ``proteins``, ``unread``, ``per_protein_accuracy`` (mean, quartiles) and
        ``protein_accuracy`` (its mean); with a threshold also ``precision``, ``recall``,
        ``f1``, ``roc_auc``, ``pr_auc``, ``threshold`` and ``positives`` of the positive class.
    """

    def decide(probability: np.ndarray) -> np.ndarray:
        if threshold is None:
            return probability.argmax(axis=1)
        return (probability[:, 1] >= threshold).astype(np.int64)

    kept_targets, kept_probabilities, accuracies = [], [], []
    unread = 0
    for target, probability in zip(targets, probabilities, strict=True):
        counts = target != ignored
        read = np.isfinite(probability).all(axis=1)
        unread += int((counts & ~read).sum())
        used = counts & read
        if not used.any():
            continue
        kept_targets.append(target[used])
        kept_probabilities.append(probability[used])
        accuracies.append(float((decide(probability[used]) == target[used]).mean()))
    flat_targets = np.concatenate(kept_targets)
    flat_probabilities = np.concatenate(kept_probabilities)
    metrics = multiclass_metrics(
        flat_targets, flat_probabilities, labels, predicted=decide(flat_probabilities)
    )
    if threshold is not None:
        positive = binary_metrics(flat_targets, flat_probabilities[:, 1], labels, threshold)
        keys = ("precision", "recall", "f1", "roc_auc", "pr_auc", "threshold", "positives")
        metrics.update({key: positive[key] for key in keys})
    spread = _quartiles(accuracies)
    return {
        **metrics,
        "proteins": len(targets),
        "unread": unread,
        "per_protein_accuracy": spread,
        "protein_accuracy": spread["mean"],
    }


def protein_spearman(target: np.ndarray, values: np.ndarray) -> float | None:
    """Spearman of one protein's residues that count (finite on both sides), or None."""
    values = np.asarray(values, dtype=np.float64).reshape(len(target))
    used = np.isfinite(target) & np.isfinite(values)
    if used.sum() < 2:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConstantInputWarning)
        return _finite_or_none(spearmanr(target[used], values[used]).statistic)


def residue_regression_metrics(
    targets: np.ndarray, predictions: np.ndarray, name: str
) -> dict[str, Any]:
    """:func:`regression_metrics` over every residue that counts, and per-protein Spearman.

    Args:
        targets: One array of values per protein (an object array); NaN on residues out of
            every metric (masked).
        predictions: One ``(residues, 1)`` array per protein; NaN rows for residues that were
            not read, left out and counted as ``unread``.
        name: The output's name.

    Returns:
        :func:`regression_metrics`' keys (``n`` counts residues), plus ``proteins``,
        ``unread``, ``per_protein_spearman`` (mean and quartiles over proteins whose
        correlation is defined: two or more residues, neither side constant) and
        ``protein_spearman`` (its mean).
    """
    kept_targets, kept_predictions, spearmans = [], [], []
    unread = 0
    for target, prediction in zip(targets, predictions, strict=True):
        values = np.asarray(prediction, dtype=np.float64).reshape(len(target))
        counts = np.isfinite(target)
        read = np.isfinite(values)
        unread += int((counts & ~read).sum())
        used = counts & read
        kept_targets.append(target[used])
        kept_predictions.append(values[used])
        rho = protein_spearman(target, values)
        if rho is not None:
            spearmans.append(rho)
    metrics = regression_metrics(
        np.concatenate(kept_targets), np.concatenate(kept_predictions), [name]
    )
    spread = _quartiles(spearmans)
    return {
        **metrics,
        "proteins": len(targets),
        "unread": unread,
        "per_protein_spearman": spread,
        "protein_spearman": spread["mean"],
    }
