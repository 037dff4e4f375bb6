"""A composition baseline, so that a fine-tuned model's score means something.

A linear model on amino-acid (20) and dipeptide (400) composition: cheap, strong on
localisation-like tasks, and the reference the bundled data's README quotes. Scored with the same
metric functions as the fine-tuned model, beside a trivial predictor.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.multiclass import OneVsRestClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from esmtune.config import DataConfig, Task
from esmtune.data.check import check_dataset
from esmtune.errors import DataError
from esmtune.metrics import (
    binary_metrics,
    multiclass_metrics,
    multilabel_metrics,
    regression_metrics,
)

__all__ = ["composition_baseline", "composition_features"]

_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_DIPEPTIDES = {a + b: i for i, (a, b) in enumerate(product(_AMINO_ACIDS, repeat=2))}


def composition_features(sequences: list[str]) -> np.ndarray:
    """Amino-acid and dipeptide frequencies (non-standard residues ignored)."""
    features = np.zeros((len(sequences), 20 + 400), dtype=np.float32)
    for row, sequence in enumerate(sequences):
        for char in sequence:
            column = _AMINO_ACIDS.find(char)
            if column >= 0:
                features[row, column] += 1
        for start in range(len(sequence) - 1):
            column = _DIPEPTIDES.get(sequence[start : start + 2])
            if column is not None:
                features[row, 20 + column] += 1
        features[row, :20] /= max(len(sequence), 1)
        features[row, 20:] /= max(len(sequence) - 1, 1)
    return features


def composition_baseline(
    data: DataConfig | Path | str, task: Task = Task.MULTICLASS, split: str = "test"
) -> dict[str, Any]:
    """Fit on train, score on ``split`` with the task's metrics; also a trivial predictor's score.

    Classification uses logistic regression (one per label for multilabel), regression uses ridge
    regression; the trivial predictor is the commonest label, label frequencies or the train mean.

    Raises:
        DataError: When the data has blocking problems or lacks the split.
    """
    if not isinstance(data, DataConfig):
        data = DataConfig(path=Path(data))
    data = data.model_copy(update={"drop_conflicts": True, "drop_duplicates": True})
    report = check_dataset(data, task)
    report.raise_if_errors()
    if not report.splits.get(split):
        raise DataError(f"{data.path}: no {split} sequences to score the baseline on")
    train, test = report.splits["train"], report.splits[split]
    features_train = composition_features([r.sequence for r in train])
    features_test = composition_features([r.sequence for r in test])
    labels = report.labels
    result: dict[str, Any] = {"task": Task(task).value, "split": split, "n": len(test)}
    if task is Task.REGRESSION:
        y_train = np.asarray([r.target for r in train], dtype=float)
        y_test = np.asarray([r.target for r in test], dtype=float)
        model = make_pipeline(StandardScaler(), Ridge(alpha=1.0)).fit(features_train, y_train)
        predicted = model.predict(features_test).reshape(len(test), -1)
        result["model"] = regression_metrics(y_test, predicted, labels)
        mean = np.broadcast_to(y_train.mean(axis=0), y_test.shape)
        result["trivial"] = regression_metrics(y_test, mean, labels)
        result["trivial_name"] = "the train mean"
        return result
    if task is Task.MULTILABEL:
        index = {label: i for i, label in enumerate(labels)}

        def multi_hot(records: list) -> np.ndarray:
            rows = np.zeros((len(records), len(labels)))
            for row, record in enumerate(records):
                rows[row, [index[x] for x in record.target if x in index]] = 1
            return rows

        y_train, y_test = multi_hot(train), multi_hot(test)
        model = make_pipeline(
            StandardScaler(), OneVsRestClassifier(LogisticRegression(max_iter=2000))
        ).fit(features_train, y_train)
        result["model"] = multilabel_metrics(y_test, model.predict_proba(features_test), labels)
        frequencies = np.broadcast_to(y_train.mean(axis=0), y_test.shape)
        result["trivial"] = multilabel_metrics(y_test, frequencies, labels)
        result["trivial_name"] = "label frequencies in train"
        return result
    positive = labels[-1]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(features_train, [r.target for r in train])
    probabilities = model.predict_proba(features_test)
    order = [list(model.classes_).index(label) for label in labels]
    counts = {label: sum(r.target == label for r in train) for label in labels}
    commonest = max(labels, key=lambda label: counts[label])
    if task is Task.BINARY:
        truth = np.asarray([r.target == positive for r in test], dtype=float)
        result["model"] = binary_metrics(truth, probabilities[:, order[1]], labels)
        always = np.full(len(test), float(commonest == positive))
        result["trivial"] = binary_metrics(truth, always, labels)
    else:
        truth = np.asarray([labels.index(str(r.target)) for r in test])
        result["model"] = multiclass_metrics(truth, probabilities[:, order], labels)
        always = np.zeros((len(test), len(labels)))
        always[:, labels.index(commonest)] = 1.0
        result["trivial"] = multiclass_metrics(truth, always, labels)
    result["trivial_name"] = f"always '{commonest}'"
    return result
