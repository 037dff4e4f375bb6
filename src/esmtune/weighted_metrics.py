"""Headline metrics of many bootstrap resamples at once, as weighted sums.

A bootstrap resample draws n proteins with replacement, so it is the evaluated set with each
protein weighted by how often it was drawn (0, 1, 2 ...). Rebuilding every resample and calling
:mod:`esmtune.metrics` a thousand times costs some 50 s on a few hundred proteins (scikit-learn's
checks and per-class reports dominate); these functions take a ``(resamples, proteins)`` matrix of
such weights and compute one metric for every resample in a few array operations: confusion
matrices are a matrix product, rank-based scores (ROC-AUC, average precision, Spearman) come
from one sort of the items shared by all resamples. They follow :mod:`esmtune.metrics`'
conventions exactly (scikit-learn's zero-division rules, average ranks for ties) and return NaN
where that module reports None (a correlation of constant values, an AUC without both classes),
so an interval describes the very number the evaluation reports.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

__all__ = [
    "average_precision",
    "binary_scores",
    "chunk_rows",
    "confusion_scores",
    "fmax",
    "multiclass_scores",
    "multilabel_f1",
    "multilabel_scores",
    "pair_codes",
    "regression_means",
    "regression_scores",
    "residue_classification_scores",
    "residue_regression_scores",
    "roc_auc",
]

# Elements of one (resamples x items) work array; larger problems are done a slice of resamples
# at a time, so memory stays near 100 MB whatever the number of items (residues, label cells).
_CELL_BUDGET = 1 << 22


def chunk_rows(rows: int, items: int) -> Iterator[slice]:
    """Slices of ``rows`` resamples whose work arrays of ``items`` columns stay within budget."""
    step = max(1, _CELL_BUDGET // max(items, 1))
    for start in range(0, rows, step):
        yield slice(start, min(start + step, rows))


def _divide(numerator: np.ndarray, denominator: np.ndarray, empty: float = 0.0) -> np.ndarray:
    """``numerator / denominator``, ``empty`` where the denominator is 0 (no warning)."""
    out = np.full(np.broadcast(numerator, denominator).shape, empty, dtype=np.float64)
    np.divide(numerator, denominator, out=out, where=denominator != 0)
    return out


# --- classification at a decision: everything follows from the confusion matrix -------------------


def pair_codes(targets: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """One-hot ``(items, classes²)`` rows of (true, predicted) pairs: weights @ it = confusion."""
    codes = np.zeros((len(targets), classes * classes))
    codes[np.arange(len(targets)), targets * classes + predicted] = 1.0
    return codes


def confusion_scores(confusion: np.ndarray) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1, MCC and the last class's F1 of each of ``(resamples, K, K)`` matrices.

    Rows are true classes, columns predicted ones, as scikit-learn's ``confusion_matrix``.

    Returns:
        ``accuracy`` (NaN for an empty matrix), ``macro_f1`` over all K classes (a class with
        no true and no predicted item scores 0, scikit-learn's ``zero_division=0``), ``mcc``
        (Gorodkin's multiclass MCC; 0 when undefined, as scikit-learn) and ``f1``, the last
        class's F1 (binary: the positive class).
    """
    confusion = np.asarray(confusion, dtype=np.float64)
    true = confusion.sum(axis=2)
    predicted = confusion.sum(axis=1)
    correct = np.einsum("rkk->rk", confusion)
    total = true.sum(axis=1)
    hits = correct.sum(axis=1)
    per_class = _divide(2 * correct, true + predicted)
    covariance = hits * total - (true * predicted).sum(axis=1)
    spread = (total**2 - (predicted**2).sum(axis=1)) * (total**2 - (true**2).sum(axis=1))
    return {
        "accuracy": _divide(hits, total, np.nan),
        "macro_f1": np.where(total > 0, per_class.mean(axis=1), np.nan),
        "mcc": np.where(total > 0, _divide(covariance, np.sqrt(spread)), np.nan),
        "f1": np.where(total > 0, per_class[:, -1], np.nan),
    }


# --- ranking: one sort of the items, shared by every resample -------------------------------------


@dataclass(frozen=True)
class _Sorted:
    """Items in the order of their values, and the runs of equal values (ties) in that order.

    Sums over a run of ties come from a cumulative sum read at the run's last item: the
    resamples' weights are counts, so those sums are exact, and no per-run loop is needed.
    """

    values: np.ndarray  # in sorted order
    order: np.ndarray  # item indices, sorted
    ends: np.ndarray  # the position of each run's last item
    run_of: np.ndarray  # the run of each sorted position

    @classmethod
    def of(cls, values: np.ndarray, descending: bool = False) -> _Sorted:
        values = np.asarray(values, dtype=np.float64)
        order = np.argsort(-values if descending else values, kind="stable")
        ordered = values[order]
        last = np.r_[ordered[1:] != ordered[:-1], True] if len(values) else np.zeros(0, bool)
        run_of = np.cumsum(np.r_[False, last[:-1]]) if len(values) else np.zeros(0, np.int64)
        return cls(ordered, order, np.flatnonzero(last), run_of)

    @property
    def tied(self) -> bool:
        return len(self.ends) < len(self.order)

    def running(self, sorted_weights: np.ndarray) -> np.ndarray:
        """Cumulative sums of ``(rows, items)`` sorted weights at the end of each run."""
        total = np.cumsum(sorted_weights, axis=1)
        return total[:, self.ends] if self.tied else total


def _columns(order: np.ndarray, drawn_with: np.ndarray | None) -> np.ndarray:
    """The weight column of each item in ``order``: its protein's."""
    return order if drawn_with is None else np.asarray(drawn_with)[order]


def roc_auc(
    scores: np.ndarray,
    positive: np.ndarray,
    weights: np.ndarray,
    drawn_with: np.ndarray | None = None,
) -> np.ndarray:
    """ROC-AUC of each resample: the chance that a positive outscores a negative (ties: half).

    This is what the area under scikit-learn's ROC curve equals, counted by weights.

    Args:
        scores: One score per item, ``(items,)``.
        positive: Whether each item is positive, ``(items,)``.
        weights: How often each protein is drawn, ``(resamples, proteins)``.
        drawn_with: The protein (column of ``weights``) each item belongs to, when items are
            parts of proteins (residues, label cells) that are drawn together; default: item i
            is protein i.

    Returns:
        ``(resamples,)``; NaN where a resample lacks positives or negatives.
    """
    if not len(scores):
        return np.full(len(weights), np.nan)
    ranked = _Sorted.of(scores)
    is_positive = np.asarray(positive, dtype=np.float64)[ranked.order]
    columns = _columns(ranked.order, drawn_with)
    result = np.empty(len(weights))
    for rows in chunk_rows(len(weights), len(columns)):
        drawn = weights[rows][:, columns]
        positives_to = ranked.running(drawn * is_positive)
        negatives_to = ranked.running(drawn * (1 - is_positive))
        positives = np.diff(positives_to, axis=1, prepend=0.0)
        negatives = np.diff(negatives_to, axis=1, prepend=0.0)
        # Each positive beats the negatives of lower runs and ties half of its own run's.
        wins = (positives * (negatives_to - negatives / 2)).sum(axis=1)
        result[rows] = _divide(wins, positives_to[:, -1] * negatives_to[:, -1], np.nan)
    return result


def average_precision(
    scores: np.ndarray,
    positive: np.ndarray,
    weights: np.ndarray,
    drawn_with: np.ndarray | None = None,
) -> np.ndarray:
    """Average precision of each resample, as scikit-learn's ``average_precision_score``.

    The sum over distinct scores, highest first, of precision times the recall gained there.
    Recall is gained only at scores held by a positive, so only those thresholds are visited:
    the true positives gained at each, and the items predicted down to it, are matrix products
    of the weights with per-protein counts. Many label cells of few proteins (multilabel
    micro-AP) then cost proteins x positive thresholds per resample, not every cell.

    Args:
        scores: One score per item, ``(items,)``.
        positive: Whether each item is positive, ``(items,)``.
        weights: How often each protein is drawn, ``(resamples, proteins)``.
        drawn_with: As in :func:`roc_auc`.

    Returns:
        ``(resamples,)``; NaN where a resample has no positive.
    """
    weights = np.asarray(weights, dtype=np.float64)
    proteins = weights.shape[1]
    ranked = _Sorted.of(np.asarray(scores, dtype=np.float64), descending=True)
    is_positive = np.asarray(positive, dtype=bool)[ranked.order]
    protein = _columns(ranked.order, drawn_with)
    # The runs of tied scores that hold a positive, highest first; each item's first such run
    # at or below its own score (len(gaining): below every positive, never counted).
    gaining = np.unique(ranked.run_of[is_positive])
    reached = np.searchsorted(gaining, ranked.run_of)
    true_positives = np.zeros(len(weights))
    area = np.zeros(len(weights))
    above = np.zeros(proteins)  # per protein: items above the runs of the current slice
    for runs in chunk_rows(len(gaining), proteins):
        width = runs.stop - runs.start
        inside = (reached >= runs.start) & (reached < runs.stop)
        cell = protein[inside] * width + reached[inside] - runs.start
        counts = np.bincount(cell, minlength=proteins * width).reshape(proteins, width)
        gains = np.bincount(cell, weights=is_positive[inside], minlength=proteins * width).reshape(
            proteins, width
        )
        gained = weights @ gains
        true_to = true_positives[:, None] + np.cumsum(gained, axis=1)
        predicted_to = weights @ (above[:, None] + np.cumsum(counts, axis=1))
        area += (gained * _divide(true_to, predicted_to)).sum(axis=1)
        true_positives = true_to[:, -1]
        above += counts.sum(axis=1)
    return _divide(area, true_positives, np.nan)


def _ranks(ranked: _Sorted, weights: np.ndarray) -> np.ndarray:
    """Each item's average rank within each resample's multiset of drawn values (1-based)."""
    drawn = weights[:, ranked.order]
    to_end = ranked.running(drawn)
    # A run of g tied draws ending at cumulative count c holds ranks c - g + 1 ... c.
    run_rank = to_end - (np.diff(to_end, axis=1, prepend=0.0) - 1) / 2
    ranks = np.empty_like(drawn)
    ranks[:, ranked.order] = run_rank[:, ranked.run_of] if ranked.tied else run_rank
    return ranks


def _constant(ranked: _Sorted, weights: np.ndarray) -> np.ndarray:
    """Whether each resample drew one distinct value only (a correlation is undefined)."""
    drawn = weights[:, ranked.order] > 0
    first = drawn.argmax(axis=1)
    last = drawn.shape[1] - 1 - drawn[:, ::-1].argmax(axis=1)
    return ranked.values[first] == ranked.values[last]


def _pearson(x: np.ndarray, y: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Weighted Pearson correlation of ``(resamples, items)`` (or ``(items,)``) x and y."""
    total = weights.sum(axis=1, keepdims=True)
    x_centred = x - _divide((weights * x).sum(axis=1, keepdims=True), total)
    y_centred = y - _divide((weights * y).sum(axis=1, keepdims=True), total)
    covariance = (weights * x_centred * y_centred).sum(axis=1)
    spread = (weights * x_centred**2).sum(axis=1) * (weights * y_centred**2).sum(axis=1)
    return np.clip(_divide(covariance, np.sqrt(spread), np.nan), -1.0, 1.0)


def regression_scores(
    targets: np.ndarray,
    predictions: np.ndarray,
    weights: np.ndarray,
    drawn_with: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Spearman, Pearson, R² and RMSE of one target in each resample.

    Args:
        targets: True values, ``(items,)``.
        predictions: Predicted values, ``(items,)``.
        weights: How often each protein is drawn, ``(resamples, proteins)``.
        drawn_with: As in :func:`roc_auc` (per-residue tasks: each residue's chain).

    Returns:
        ``(resamples,)`` arrays. As :func:`esmtune.metrics.regression_metrics`: correlations
        and R² are NaN for fewer than two drawn items, correlations also when either side is
        constant, and R² of constant targets is 1 for a perfect fit, else 0 (scikit-learn's
        convention); RMSE is NaN only when nothing is drawn.
    """
    targets = np.asarray(targets, dtype=np.float64)
    predictions = np.asarray(predictions, dtype=np.float64)
    by_target, by_prediction = _Sorted.of(targets), _Sorted.of(predictions)
    scores = {name: np.full(len(weights), np.nan) for name in ("spearman", "pearson", "r2", "rmse")}
    if not len(targets):  # nothing counts (every residue masked): every metric is undefined
        return scores
    for rows in chunk_rows(len(weights), len(targets)):
        drawn = np.asarray(weights[rows], dtype=np.float64)
        if drawn_with is not None:
            drawn = drawn[:, drawn_with]
        total = drawn.sum(axis=1)
        enough = total >= 2
        constant_target = _constant(by_target, drawn)
        either_constant = constant_target | _constant(by_prediction, drawn)
        correlated = enough & ~either_constant
        residual = (drawn * (targets - predictions) ** 2).sum(axis=1)
        mean = _divide((drawn * targets).sum(axis=1), total)
        spread = (drawn * (targets[None, :] - mean[:, None]) ** 2).sum(axis=1)
        r2 = np.where(constant_target, (residual == 0).astype(float), 1 - _divide(residual, spread))
        spearman = _pearson(_ranks(by_target, drawn), _ranks(by_prediction, drawn), drawn)
        scores["spearman"][rows] = np.where(correlated, spearman, np.nan)
        pearson = _pearson(targets, predictions, drawn)
        scores["pearson"][rows] = np.where(correlated, pearson, np.nan)
        scores["r2"][rows] = np.where(enough, r2, np.nan)
        scores["rmse"][rows] = np.sqrt(_divide(residual, total, np.nan))
    return scores


# --- multilabel -----------------------------------------------------------------------------------


def multilabel_f1(
    targets: np.ndarray, predicted: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Micro- and macro-F1 over labels of each resample (labels without any: F1 0).

    Args:
        targets: 0/1, ``(items, labels)``.
        predicted: 0/1 decisions, ``(items, labels)``.
        weights: How often each item is drawn, ``(resamples, items)``.
    """
    truth, decided = np.asarray(targets, dtype=bool), np.asarray(predicted, dtype=bool)
    weights = np.asarray(weights, dtype=np.float64)
    true_positive = weights @ (truth & decided)
    false_positive = weights @ (~truth & decided)
    false_negative = weights @ (truth & ~decided)
    per_label = _divide(2 * true_positive, 2 * true_positive + false_positive + false_negative)
    micro_tp, micro_fp, micro_fn = (c.sum(axis=1) for c in (true_positive, false_positive,
                                                            false_negative))  # fmt: skip
    return {
        "micro_f1": _divide(2 * micro_tp, 2 * micro_tp + micro_fp + micro_fn),
        "macro_f1": per_label.mean(axis=1),
    }


def fmax(
    targets: np.ndarray, probabilities: np.ndarray, weights: np.ndarray, steps: int = 100
) -> np.ndarray:
    """The CAFA protein-centric Fmax of each resample, as :func:`esmtune.metrics.fmax_score`.

    Precision at a threshold is the weighted mean over drawn annotated proteins with a
    prediction there, recall the weighted mean over drawn annotated proteins; both come from one
    table per protein and threshold, shared by every resample.

    Returns:
        ``(resamples,)``: 0 where no threshold gives a prediction; NaN where no drawn protein has
        a true label.
    """
    truth = np.asarray(targets, dtype=bool)
    annotated = truth.any(axis=1)
    truth = truth[annotated]
    scores = np.asarray(probabilities, dtype=np.float64)[annotated]
    weights = np.asarray(weights, dtype=np.float64)[:, annotated]
    count = len(truth)
    thresholds = np.arange(1, steps + 1) / steps
    # As fmax_score: per protein, how many labels clear each threshold, and how many are true.
    passed = np.searchsorted(thresholds, scores, side="right")
    bins = (np.arange(count)[:, None] * (steps + 1) + passed).ravel()
    size = count * (steps + 1)
    predicted_hist = np.bincount(bins, minlength=size).reshape(count, steps + 1)
    correct_hist = np.bincount(bins, weights=truth.ravel(), minlength=size).reshape(
        count, steps + 1
    )
    predicted = np.cumsum(predicted_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
    correct = np.cumsum(correct_hist[:, ::-1], axis=1)[:, ::-1][:, 1:]
    precision_each = correct / np.maximum(predicted, 1)
    recall_each = correct / np.maximum(truth.sum(axis=1, keepdims=True), 1)
    drawn = weights.sum(axis=1, keepdims=True)
    covered = weights @ (predicted > 0)
    precision = _divide(weights @ precision_each, covered)
    recall = _divide(weights @ recall_each, drawn)
    f = _divide(2 * precision * recall, precision + recall)
    f[covered == 0] = -1.0
    best = f.max(axis=1) if steps else np.full(len(weights), -1.0)
    return np.where(drawn[:, 0] > 0, np.maximum(best, 0.0), np.nan)


# --- each task's headline metrics, from what its function in esmtune.metrics takes ---------------


def multiclass_scores(
    targets: np.ndarray, probabilities: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Accuracy, macro-F1 and MCC of each resample (:func:`~esmtune.metrics.multiclass_metrics`)."""
    classes = probabilities.shape[1]
    confusion = weights @ pair_codes(targets, probabilities.argmax(axis=1), classes)
    return confusion_scores(confusion.reshape(-1, classes, classes))


def binary_scores(
    targets: np.ndarray, probabilities: np.ndarray, threshold: float, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Accuracy, MCC and F1 at the threshold, ROC-AUC and PR-AUC of each resample."""
    truth = np.asarray(targets).astype(np.int64).ravel()
    scores = np.asarray(probabilities, dtype=np.float64).ravel()
    confusion = weights @ pair_codes(truth, (scores >= threshold).astype(np.int64), 2)
    decided = confusion_scores(confusion.reshape(-1, 2, 2))
    return {
        "accuracy": decided["accuracy"],
        "mcc": decided["mcc"],
        "f1": decided["f1"],
        "roc_auc": roc_auc(scores, truth, weights),
        "pr_auc": average_precision(scores, truth, weights),
    }


def multilabel_scores(
    targets: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Fmax, micro/macro-F1 at the thresholds and micro-AP of each resample."""
    truth = np.asarray(targets, dtype=np.float64)
    scores = np.asarray(probabilities, dtype=np.float64)
    labels = truth.shape[1]
    protein_of_cell = np.repeat(np.arange(len(truth)), labels)
    return {
        "fmax": fmax(truth, scores, weights),
        **multilabel_f1(truth, scores >= np.asarray(thresholds)[None, :], weights),
        "micro_ap": average_precision(scores.ravel(), truth.ravel(), weights, protein_of_cell),
    }


def regression_means(
    targets: np.ndarray, predictions: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """Each of :func:`regression_scores` averaged over targets (NaN when any target's is)."""
    targets = np.asarray(targets, dtype=np.float64).reshape(len(targets), -1)
    predictions = np.asarray(predictions, dtype=np.float64).reshape(len(predictions), -1)
    each = [regression_scores(targets[:, t], predictions[:, t], weights)
            for t in range(targets.shape[1])]  # fmt: skip
    return {name: np.mean([scores[name] for scores in each], axis=0) for name in each[0]}


def residue_classification_scores(
    targets: np.ndarray,
    probabilities: np.ndarray,
    ignored: int,
    weights: np.ndarray,
    threshold: float | None = None,
) -> dict[str, np.ndarray]:
    """Per-residue accuracy, macro-F1 and MCC of each resample of whole chains.

    Args:
        targets: One array of class indices per chain; residues out of the metrics hold
            ``ignored``.
        probabilities: One ``(residues, classes)`` array per chain; NaN rows are unread.
        ignored: The class index of residues that do not count.
        weights: How often each chain is drawn, ``(resamples, chains)``.
        threshold: Two classes: a residue is the positive class (1) when its probability is
            at least this, as the task decides; None: the likeliest class.
    """
    classes = np.asarray(probabilities[0]).shape[1] if len(probabilities) else 1
    per_chain = np.zeros((len(targets), classes * classes))
    for chain, (target, probability) in enumerate(zip(targets, probabilities, strict=True)):
        probability = np.asarray(probability, dtype=np.float64)
        used = (target != ignored) & np.isfinite(probability).all(axis=1)
        if threshold is None:
            decided = probability[used].argmax(axis=1)
        else:
            decided = (probability[used, 1] >= threshold).astype(np.int64)
        pairs = target[used] * classes + decided
        per_chain[chain] = np.bincount(pairs, minlength=classes * classes)
    confusion = np.asarray(weights, dtype=np.float64) @ per_chain
    return confusion_scores(confusion.reshape(-1, classes, classes))


def residue_regression_scores(
    targets: np.ndarray, predictions: np.ndarray, weights: np.ndarray
) -> dict[str, np.ndarray]:
    """:func:`regression_scores` over the residues that count, each resample of whole chains.

    Args:
        targets: One array of values per chain; NaN where a residue does not count.
        predictions: One ``(residues, 1)`` array per chain; NaN rows are unread.
        weights: How often each chain is drawn, ``(resamples, chains)``.
    """
    kept_targets, kept_predictions, chains = [np.zeros(0)], [np.zeros(0)], [np.zeros(0, int)]
    for chain, (target, prediction) in enumerate(zip(targets, predictions, strict=True)):
        values = np.asarray(prediction, dtype=np.float64).reshape(len(target))
        used = np.isfinite(target) & np.isfinite(values)
        kept_targets.append(np.asarray(target, dtype=np.float64)[used])
        kept_predictions.append(values[used])
        chains.append(np.full(int(used.sum()), chain))
    return regression_scores(
        np.concatenate(kept_targets), np.concatenate(kept_predictions), weights,
        np.concatenate(chains),
    )  # fmt: skip
