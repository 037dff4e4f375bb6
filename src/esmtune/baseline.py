"""A composition baseline, so that a fine-tuned model's score means something.

A linear model on amino-acid (20) and dipeptide (400) composition: cheap, strong on
localisation-like tasks, and the reference the bundled data's README quotes. Scored with the same
metric functions as the fine-tuned model, beside a trivial predictor.
"""

from __future__ import annotations

from collections.abc import Callable
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np

from esmtune.config import DataConfig, Task
from esmtune.data.check import check_dataset
from esmtune.data.embedding_files import read_embeddings
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import DataError, EsmtuneError
from esmtune.tasks import task_class

__all__ = ["composition_baseline", "composition_features", "embedding_baseline"]

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
            pair = _DIPEPTIDES.get(sequence[start : start + 2])
            if pair is not None:
                features[row, 20 + pair] += 1
        features[row, :20] /= max(len(sequence), 1)
        features[row, 20:] /= max(len(sequence) - 1, 1)
    return features


def composition_baseline(
    data: DataConfig | Path | str, task: Task | str = Task.MULTICLASS, split: str = "test"
) -> dict[str, Any]:
    """Fit on train, score on ``split`` with the task's metrics; also a trivial predictor's score.

    The model and the trivial predictor are the task's (classification: logistic regression, one
    per label for multilabel, beside the commonest label or the label frequencies; regression:
    ridge regression beside the train mean).

    Returns:
        ``task``, ``split``, ``n``, the ``model`` and ``trivial`` metrics, ``model_name``,
        ``trivial_name`` and ``headline`` (the metric names worth printing first).

    Raises:
        DataError: When the data has blocking problems or lacks the split.
    """
    return _linear_baseline(
        data, task, split, lambda records: composition_features([r.sequence for r in records])
    )


def embedding_baseline(
    data: DataConfig | Path | str,
    task: Task | str = Task.MULTICLASS,
    split: str = "test",
    features: Callable[[list[SequenceRecord]], np.ndarray] | None = None,
) -> dict[str, Any]:
    """The same linear model on embeddings: is a network on top needed at all?

    Args:
        data: The data section (``data.embeddings`` names the file), or a path.
        task: The task.
        split: The split to score on.
        features: Embeddings of records (e.g. computed with a model); default: read from
            ``data.embeddings`` (pooled; per-residue ones are averaged over residues).

    Returns:
        As :func:`composition_baseline`.

    Raises:
        DataError: When the data or the embeddings have blocking problems.
    """
    if features is None:
        if not isinstance(data, DataConfig) or data.embeddings is None:
            raise DataError(
                "an embedding baseline needs data.embeddings (or a model to embed with)"
            )
        found = read_embeddings(data.embeddings)

        def features(records: list[SequenceRecord]) -> np.ndarray:
            rows = [found.vectors[r.id] for r in records]
            return np.stack([row.mean(axis=0) if row.ndim == 2 else row for row in rows])

    return _linear_baseline(data, task, split, features)


def _linear_baseline(
    data: DataConfig | Path | str,
    task: Task | str,
    split: str,
    features: Callable[[list[SequenceRecord]], np.ndarray],
) -> dict[str, Any]:
    """The task's linear model on ``features`` of train, scored on ``split``, beside trivial."""
    if task_class(task).per_residue:
        raise EsmtuneError(
            f"baseline: task={Task(task).value} predicts per residue; its baseline (a one-hot "
            "window of residues) is not implemented yet: compare with the majority class in "
            "`esmtune data check`'s class shares"
        )
    if not isinstance(data, DataConfig):
        data = DataConfig(path=Path(data))
    data = data.model_copy(update={"drop_conflicts": True, "drop_duplicates": True})
    report = check_dataset(data, task)
    report.raise_if_errors()
    if not report.splits.get(split):
        raise DataError(f"{data.path}: no {split} sequences to score the baseline on")
    train, test = report.splits["train"], report.splits[split]
    spec = task_class(task)(labels=report.labels)
    train_targets, test_targets = spec.encode_targets(train), spec.encode_targets(test)
    estimator = spec.baseline_estimator()
    estimator.fit(features(train), train_targets)
    outputs = spec.baseline_outputs(estimator, features(test))
    trivial, trivial_name = spec.trivial_outputs(train_targets, len(test))
    return {
        "task": spec.task.value,
        "split": split,
        "n": len(test),
        "model": spec.metrics(test_targets, outputs),
        "trivial": spec.metrics(test_targets, trivial),
        "model_name": spec.baseline_model_name,
        "trivial_name": trivial_name,
        "headline": list(spec.headline_metrics),
    }
