"""Metrics per task, checked against scikit-learn / scipy and against slow reference versions."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    confusion_matrix,
    f1_score,
    log_loss,
    matthews_corrcoef,
    mean_absolute_error,
    mean_squared_error,
    precision_score,
    r2_score,
    recall_score,
    roc_auc_score,
)

from esmtune.config import TASK_METRICS
from esmtune.metrics import (
    HIGHER_IS_BETTER,
    binary_metrics,
    fmax_score,
    is_improvement,
    multiclass_metrics,
    multilabel_metrics,
    regression_metrics,
    tune_threshold,
    tune_thresholds,
)


def _json_roundtrip(metrics: dict) -> dict:
    """Fails on NaN or numpy scalars, which would make metrics.json invalid."""
    return json.loads(json.dumps(metrics, allow_nan=False))


# --- selection metadata ---------------------------------------------------------------------


def test_every_selectable_metric_has_a_direction() -> None:
    assert set(TASK_METRICS) == {
        "multiclass", "binary", "multilabel", "regression", "residue_classification",
        "residue_regression",
    }  # fmt: skip
    for names in TASK_METRICS.values():
        assert all(name in HIGHER_IS_BETTER for name in names)
    assert {name for name, higher in HIGHER_IS_BETTER.items() if not higher} == {
        "loss",
        "mse",
        "rmse",
        "mae",
    }


def test_is_improvement_follows_the_metric_direction() -> None:
    assert is_improvement("rmse", 0.4, 0.5)
    assert not is_improvement("rmse", 0.6, 0.5)
    assert is_improvement("r2", 0.6, 0.5)
    assert not is_improvement("r2", 0.4, 0.5)
    assert not is_improvement("r2", 0.55, 0.5, min_delta=0.1)
    assert is_improvement("rmse", 0.5, None)


def test_an_undefined_value_is_never_an_improvement() -> None:
    assert not is_improvement("roc_auc", None, 0.5)
    assert not is_improvement("roc_auc", None, None)
    assert is_improvement("roc_auc", 0.5, None)


def test_multiclass_metrics_keep_their_keys() -> None:
    rng = np.random.default_rng(0)
    probabilities = rng.dirichlet(np.ones(3), size=40)
    targets = rng.integers(0, 3, size=40)
    metrics = _json_roundtrip(multiclass_metrics(targets, probabilities, ["a", "b", "c"]))
    assert set(metrics) == {
        "n",
        "loss",
        "accuracy",
        "macro_f1",
        "weighted_f1",
        "mcc",
        "roc_auc_ovr",
        "per_class",
        "confusion_matrix",
        "labels",
    }


# --- binary ---------------------------------------------------------------------------------


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_binary_metrics_match_sklearn(threshold: float) -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, size=200)
    probabilities = np.clip(0.3 * targets + rng.random(200) * 0.7, 0.0, 1.0)
    predicted = (probabilities >= threshold).astype(int)

    metrics = _json_roundtrip(binary_metrics(targets, probabilities, ["neg", "pos"], threshold))

    assert metrics["n"] == 200
    assert metrics["threshold"] == threshold
    assert metrics["positives"] == int(targets.sum())
    assert metrics["labels"] == ["neg", "pos"]
    assert metrics["loss"] == pytest.approx(log_loss(targets, probabilities, labels=[0, 1]))
    assert metrics["accuracy"] == pytest.approx(accuracy_score(targets, predicted))
    assert metrics["precision"] == pytest.approx(precision_score(targets, predicted))
    assert metrics["recall"] == pytest.approx(recall_score(targets, predicted))
    assert metrics["f1"] == pytest.approx(f1_score(targets, predicted))
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(targets, predicted))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(targets, probabilities))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(targets, probabilities))
    assert metrics["confusion_matrix"] == confusion_matrix(targets, predicted).tolist()


def test_binary_ranking_metrics_are_none_with_one_class() -> None:
    metrics = binary_metrics(np.zeros(5, dtype=int), np.linspace(0.1, 0.9, 5), ["neg", "pos"])
    assert metrics["roc_auc"] is None
    assert metrics["pr_auc"] is None
    # Rows are true classes, columns predicted: 0.5, 0.7 and 0.9 are false positives.
    assert metrics["confusion_matrix"] == [[2, 3], [0, 0]]
    _json_roundtrip(metrics)


# --- threshold tuning -----------------------------------------------------------------------


def _brute_force_best(targets: np.ndarray, probabilities: np.ndarray, metric: str) -> tuple:
    """Score every distinct probability as a threshold with sklearn, the slow way."""
    score = f1_score if metric == "f1" else matthews_corrcoef
    candidates = np.unique(probabilities)
    scores = np.array(
        [score(targets, (probabilities >= t).astype(int)) for t in candidates], dtype=float
    )
    return candidates, scores


@pytest.mark.parametrize("metric", ["f1", "mcc"])
def test_tune_threshold_on_a_known_example(metric: str) -> None:
    # Sorted by probability the targets are 0 0 1 1 0 1. At t = 0.3 all three positives are
    # predicted with one false positive: F1 = 6/7 and MCC = 6/sqrt(72), both the best.
    targets = np.array([0, 0, 1, 1, 0, 1])
    probabilities = np.array([0.1, 0.2, 0.3, 0.4, 0.6, 0.8])
    assert tune_threshold(targets, probabilities, metric) == 0.3


def test_tune_threshold_breaks_ties_towards_one_half() -> None:
    # t = 0.9: tp 1, fp 0, fn 1 -> F1 = 2/3; t = 0.2: tp 2, fp 2, fn 0 -> F1 = 4/6 = 2/3.
    # Both are best; 0.2 is nearer 0.5 than 0.9.
    targets = np.array([1, 0, 0, 1])
    probabilities = np.array([0.9, 0.7, 0.35, 0.2])
    assert tune_threshold(targets, probabilities, "f1") == 0.2


@pytest.mark.parametrize("metric", ["f1", "mcc"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_tune_threshold_matches_brute_force(metric: str, seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = rng.integers(0, 2, size=150)
    # Rounding creates repeated probabilities and tied scores.
    probabilities = np.round(np.clip(0.25 * targets + rng.random(150) * 0.75, 0, 1), 2)

    chosen = tune_threshold(targets, probabilities, metric)

    candidates, scores = _brute_force_best(targets, probabilities, metric)
    assert chosen in candidates
    best = scores.max()
    assert scores[candidates == chosen][0] == pytest.approx(best, abs=1e-9)
    tied = candidates[scores >= best - 1e-9]
    assert abs(chosen - 0.5) == pytest.approx(np.abs(tied - 0.5).min())


@pytest.mark.parametrize("metric", ["f1", "mcc"])
def test_tune_threshold_returns_one_half_for_one_class(metric: str) -> None:
    probabilities = np.linspace(0, 1, 10)
    assert tune_threshold(np.zeros(10, dtype=int), probabilities, metric) == 0.5
    assert tune_threshold(np.ones(10, dtype=int), probabilities, metric) == 0.5


def test_tune_threshold_rejects_other_metrics() -> None:
    with pytest.raises(ValueError, match="'f1' or 'mcc'"):
        tune_threshold(np.array([0, 1]), np.array([0.2, 0.8]), "accuracy")


def test_tune_thresholds_per_label() -> None:
    rng = np.random.default_rng(4)
    targets = rng.integers(0, 2, size=(80, 3))
    targets[:, 1] = 0  # a label without positives keeps the default
    probabilities = np.round(rng.random((80, 3)), 2)

    thresholds = tune_thresholds(targets, probabilities, "mcc")

    assert thresholds.shape == (3,)
    assert thresholds[1] == 0.5
    assert thresholds[0] == tune_threshold(targets[:, 0], probabilities[:, 0], "mcc")
    assert thresholds[2] == tune_threshold(targets[:, 2], probabilities[:, 2], "mcc")


# --- Fmax -----------------------------------------------------------------------------------


def _slow_fmax(targets: np.ndarray, probabilities: np.ndarray, steps: int = 100) -> dict:
    """CAFA Fmax written out protein by protein, as a reference."""
    best = None
    for k in range(1, steps + 1):
        t = k / steps
        precisions, recalls, covered, annotated = [], [], 0, 0
        for truth, scores in zip(targets, probabilities, strict=True):
            true_set = set(np.flatnonzero(truth))
            if not true_set:
                continue
            annotated += 1
            predicted_set = set(np.flatnonzero(scores >= t))
            hits = len(true_set & predicted_set)
            recalls.append(hits / len(true_set))
            if predicted_set:
                covered += 1
                precisions.append(hits / len(predicted_set))
        if not precisions:
            continue
        precision, recall = sum(precisions) / len(precisions), sum(recalls) / len(recalls)
        f = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        if best is None or f > best["fmax"]:
            best = {
                "fmax": f,
                "threshold": t,
                "coverage": covered / annotated,
                "precision": precision,
                "recall": recall,
            }
    return best


def test_fmax_on_a_hand_computed_example() -> None:
    targets = np.array(
        [
            [1, 1, 0],  # A
            [0, 0, 1],  # B
            [0, 1, 0],  # C
            [0, 0, 0],  # D: no true label, so left out (it would otherwise lower precision)
        ]
    )
    probabilities = np.array(
        [
            [0.9, 0.4, 0.2],
            [0.3, 0.1, 0.6],
            [0.3, 0.2, 0.1],
            [0.8, 0.8, 0.8],
        ]
    )
    # Per threshold, precision over proteins with a prediction, recall over A, B, C:
    # t=0.1: A 2/3, B 1/3, C 1/3 -> P 4/9, R 1        -> F 8/13  = 0.615
    # t=0.2: A 2/3, B 1/2, C 1/2 -> P 5/9, R 1        -> F 10/14 = 0.714
    # t=0.3: A 1,   B 1/2, C 0   -> P 1/2, R (1+1+0)/3 -> F 4/7   = 0.571
    # t=0.4: A 1,   B 1,   C none -> P 1,  R (1+1+0)/3 -> F 4/5   = 0.800  <- Fmax
    # t=0.5 and 0.6: A {0} R 1/2, B 1 -> P 1, R 1/2    -> F 2/3
    # t=0.7..0.9: only A {0}        -> P 1, R 1/6      -> F 2/7;  t=1.0: nothing predicted.
    # At t=0.4 C has no prediction, so coverage is 2/3.
    result = fmax_score(targets, probabilities, steps=10)
    assert result["fmax"] == pytest.approx(0.8)
    assert result["threshold"] == pytest.approx(0.4)
    assert result["coverage"] == pytest.approx(2 / 3)
    assert result["precision"] == pytest.approx(1.0)
    assert result["recall"] == pytest.approx(2 / 3)
    assert fmax_score(targets, probabilities, steps=100)["fmax"] == pytest.approx(0.8)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fmax_matches_a_slow_reference(seed: int) -> None:
    rng = np.random.default_rng(seed)
    targets = (rng.random((60, 7)) < 0.25).astype(int)
    targets[:5] = 0  # proteins without true labels
    probabilities = np.round(np.clip(0.3 * targets + rng.random((60, 7)) * 0.7, 0, 1), 2)

    result = fmax_score(targets, probabilities)
    expected = _slow_fmax(targets, probabilities)

    assert result == pytest.approx(expected)


def test_fmax_is_zero_when_nothing_is_predicted() -> None:
    targets = np.array([[1, 0], [0, 1]])
    probabilities = np.full((2, 2), 0.001)
    result = fmax_score(targets, probabilities)
    assert result["fmax"] == 0.0
    assert result["coverage"] == 0.0
    _json_roundtrip(result)


# --- multilabel -----------------------------------------------------------------------------


def test_multilabel_metrics_match_sklearn() -> None:
    rng = np.random.default_rng(5)
    targets = (rng.random((100, 5)) < 0.3).astype(int)
    targets[:, 4] = 0  # a label without positives
    probabilities = np.clip(0.3 * targets + rng.random((100, 5)) * 0.7, 0, 1)
    thresholds = np.array([0.5, 0.4, 0.6, 0.5, 0.5])
    predicted = (probabilities >= thresholds).astype(int)
    labels = ["a", "b", "c", "d", "e"]

    metrics = _json_roundtrip(multilabel_metrics(targets, probabilities, labels, thresholds))

    assert metrics["n"] == 100
    assert metrics["loss"] == pytest.approx(log_loss(targets.ravel(), probabilities.ravel()))
    assert metrics["micro_f1"] == pytest.approx(
        f1_score(targets, predicted, average="micro", zero_division=0)
    )
    assert metrics["macro_f1"] == pytest.approx(
        f1_score(targets, predicted, average="macro", zero_division=0)
    )
    assert metrics["micro_ap"] == pytest.approx(
        average_precision_score(targets, probabilities, average="micro")
    )
    # Macro AP skips label "e", which has no positives.
    assert metrics["macro_ap"] == pytest.approx(
        average_precision_score(targets[:, :4], probabilities[:, :4], average="macro")
    )
    assert metrics["per_label"]["e"]["ap"] is None
    assert metrics["per_label"]["e"]["support"] == 0
    assert metrics["per_label"]["b"]["threshold"] == 0.4
    assert metrics["per_label"]["c"]["f1"] == pytest.approx(
        f1_score(targets[:, 2], predicted[:, 2])
    )
    assert metrics["label_cardinality"] == pytest.approx(targets.sum(axis=1).mean())
    fmax = fmax_score(targets, probabilities)
    assert metrics["fmax"] == pytest.approx(fmax["fmax"])
    assert metrics["fmax_threshold"] == pytest.approx(fmax["threshold"])
    assert metrics["coverage"] == pytest.approx(fmax["coverage"])
    assert metrics["labels"] == labels


def test_multilabel_ap_is_none_without_any_positive() -> None:
    targets = np.zeros((4, 2), dtype=int)
    metrics = _json_roundtrip(multilabel_metrics(targets, np.full((4, 2), 0.3), ["a", "b"]))
    assert metrics["micro_ap"] is None
    assert metrics["macro_ap"] is None


# --- regression -----------------------------------------------------------------------------


@pytest.mark.parametrize("num_targets", [1, 2])
def test_regression_metrics_match_scipy_and_sklearn(num_targets: int) -> None:
    rng = np.random.default_rng(6)
    targets = rng.normal(size=(50, num_targets))
    predictions = targets + rng.normal(scale=0.5, size=(50, num_targets))
    names = [f"y{i}" for i in range(num_targets)]

    metrics = _json_roundtrip(regression_metrics(targets, predictions, names))

    assert metrics["n"] == 50
    assert metrics["names"] == names
    for i, name in enumerate(names):
        row = metrics["per_target"][name]
        truth, guess = targets[:, i], predictions[:, i]
        assert row["spearman"] == pytest.approx(spearmanr(truth, guess).statistic)
        assert row["pearson"] == pytest.approx(pearsonr(truth, guess).statistic)
        assert row["mse"] == pytest.approx(mean_squared_error(truth, guess))
        assert row["rmse"] == pytest.approx(np.sqrt(mean_squared_error(truth, guess)))
        assert row["mae"] == pytest.approx(mean_absolute_error(truth, guess))
        assert row["r2"] == pytest.approx(r2_score(truth, guess))
    for key in ("spearman", "pearson", "mse", "rmse", "mae", "r2"):
        expected = np.mean([metrics["per_target"][name][key] for name in names])
        assert metrics[key] == pytest.approx(expected)
    assert metrics["loss"] == metrics["mse"]


def test_regression_accepts_one_dimensional_input() -> None:
    targets = np.array([1.0, 2.0, 3.0, 4.0])
    predictions = np.array([1.5, 2.0, 2.5, 4.5])
    metrics = regression_metrics(targets, predictions, ["y"])
    assert metrics["mae"] == pytest.approx(0.375)
    assert metrics["spearman"] == pytest.approx(1.0)


def test_constant_predictions_give_none_correlations_without_warnings() -> None:
    targets = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 5.0], [4.0, 3.0]])
    predictions = np.array([[2.5, 1.0], [2.5, 2.0], [2.5, 4.0], [2.5, 3.5]])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        metrics = _json_roundtrip(regression_metrics(targets, predictions, ["flat", "ok"]))
    assert metrics["per_target"]["flat"]["spearman"] is None
    assert metrics["per_target"]["flat"]["pearson"] is None
    assert metrics["per_target"]["ok"]["pearson"] is not None
    # One undefined target makes the mean undefined, rather than silently averaging the rest.
    assert metrics["spearman"] is None
    assert metrics["pearson"] is None
    assert metrics["mse"] is not None


def test_regression_rejects_mismatched_names() -> None:
    with pytest.raises(ValueError, match="names"):
        regression_metrics(np.zeros((3, 2)), np.zeros((3, 2)), ["only_one"])
