"""A composition baseline, so that a fine-tuned model's score means something.

Logistic regression on amino-acid (20) and dipeptide (400) composition: cheap, strong on
localisation-like tasks, and the reference the bundled data's README quotes.
"""

from __future__ import annotations

from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from esmtune.data.check import CheckOptions, check_dataset
from esmtune.errors import DataError

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


def composition_baseline(data_dir: Path | str, split: str = "test") -> dict[str, Any]:
    """Fit on train, score on ``split``; also the score of always predicting the commonest label.

    Raises:
        DataError: When the data has blocking problems or lacks the split.
    """
    report = check_dataset(data_dir, CheckOptions(drop_conflicts=True, drop_duplicates=True))
    report.raise_if_errors()
    if not report.splits.get(split):
        raise DataError(f"{Path(data_dir) / split}: no sequences to score the baseline on")
    train, test = report.splits["train"], report.splits[split]
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(composition_features([r.sequence for r in train]), [r.label for r in train])
    predicted = model.predict(composition_features([r.sequence for r in test]))
    truth = [r.label for r in test]
    commonest = max(report.labels, key=lambda label: sum(r.label == label for r in train))
    return {
        "split": split,
        "n": len(test),
        "accuracy": float(accuracy_score(truth, predicted)),
        "macro_f1": float(f1_score(truth, predicted, average="macro")),
        "majority_label": commonest,
        "majority_accuracy": float(np.mean([label == commonest for label in truth])),
    }
