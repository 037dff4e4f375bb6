"""Linear baselines, so that a fine-tuned model's score means something.

Sequence-level tasks: a linear model on amino-acid (20) and dipeptide (400) composition: cheap,
strong on localisation-like tasks, and the reference the bundled data's README quotes.
Per-residue tasks: its analogue, a linear model on the one-hot encoded window of residues around
each residue (what a residue's neighbours say about it). Each is scored with the same metric
functions as the fine-tuned model, beside a trivial predictor.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Any

import numpy as np
from scipy import sparse

from esmtune.config import BASELINE_WINDOW, DataConfig, Task
from esmtune.data.check import check_dataset
from esmtune.data.embedding_files import read_embeddings
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import DataError, EsmtuneError
from esmtune.tasks import TaskSpec, task_class

__all__ = [
    "DEFAULT_WINDOW",
    "MAX_WINDOW_RESIDUES",
    "FittedBaseline",
    "composition_baseline",
    "composition_features",
    "embedding_baseline",
    "fit_baseline",
    "task_baseline",
    "window_baseline",
    "window_features",
]

_AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
_DIPEPTIDES = {a + b: i for i, (a, b) in enumerate(product(_AMINO_ACIDS, repeat=2))}

# Residues in the one-hot window around each residue (7 on either side).
DEFAULT_WINDOW = BASELINE_WINDOW
# Training residues the window model is fitted on at most: a seeded sample beyond this keeps
# the whole FLIP split (2.3M train residues) to 17 s and 0.5 GB, at a test Q3 of 0.625 (0.627
# fitted on 3,000 chains, some 700k residues).
MAX_WINDOW_RESIDUES = 200_000
# The one-hot columns of a window position: the 20 standard amino acids, any other residue
# (X, U, B ...), and a position beyond either end of the chain.
_OTHER, _BEYOND = 20, 21
_CODES_PER_POSITION = 22
_CODE = np.full(256, _OTHER, dtype=np.uint8)
_CODE[np.frombuffer(_AMINO_ACIDS.encode(), dtype=np.uint8)] = np.arange(20, dtype=np.uint8)


_COMPOSITION_NAME = "composition baseline"
_COMPOSITION_FEATURES = "amino-acid + dipeptide composition"
_WINDOW_NAME = "one-hot window baseline"


def _window_description(window: int) -> str:
    return f"one-hot windows of {window} residue{'' if window == 1 else 's'}"


@dataclass(frozen=True)
class FittedBaseline:
    """The task's baseline fitted on train records, and what it predicts for other records.

    Attributes:
        outputs: Its outputs on the records asked about, in the task's output form.
        name: What it is, as printed (``composition baseline``).
        model: The model and its features, as printed.
        notes: What a reader should know (a sample of train residues, for instance).
    """

    outputs: np.ndarray
    name: str
    model: str
    notes: list[str]


def fit_baseline(
    spec: TaskSpec,
    train: list[SequenceRecord],
    records: list[SequenceRecord],
    window: int = DEFAULT_WINDOW,
    max_residues: int = MAX_WINDOW_RESIDUES,
    seed: int = 0,
) -> FittedBaseline:
    """The task's baseline (as `esmtune baseline` fits it) on ``train``, predicting ``records``.

    What :func:`esmtune.evaluate.evaluate_run` sets beside a fine-tuned model: the same model on
    the same features as :func:`task_baseline`, but on records the caller has already read (a
    run's own train split, and the split it evaluates, possibly from other data).

    Args:
        spec: The task, with the labels (and their order) the outputs must follow.
        train: Records to fit on.
        records: Records to predict.
        window: Per-residue tasks: residues in the one-hot window (odd).
        max_residues: Per-residue tasks: fit on a seeded sample of this many train residues.
        seed: The sample's seed.

    Returns:
        The outputs on ``records`` and what the baseline is.
    """
    if spec.per_residue:
        outputs, _, notes = _window_outputs(spec, train, records, window, max_residues, seed)
        model = f"{spec.baseline_model_name} on {_window_description(window)}"
        return FittedBaseline(outputs, _WINDOW_NAME, model, notes)
    outputs = _fitted_outputs(spec, train, records, _composition)
    model = f"{spec.baseline_model_name} on {_COMPOSITION_FEATURES}"
    return FittedBaseline(outputs, _COMPOSITION_NAME, model, [])


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


def _window_codes(sequences: list[str], window: int) -> np.ndarray:
    """Per residue of every sequence (in order), the codes of the ``window`` residues around it."""
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be a positive odd number of residues, not {window}")
    half = window // 2
    rows = [np.zeros((0, window), dtype=np.uint8)]
    for sequence in sequences:
        codes = _CODE[np.frombuffer(sequence.upper().encode("ascii", "replace"), dtype=np.uint8)]
        padded = np.concatenate([np.full(half, _BEYOND, np.uint8), codes,
                                 np.full(half, _BEYOND, np.uint8)])  # fmt: skip
        rows.append(np.lib.stride_tricks.sliding_window_view(padded, window))
    return np.concatenate(rows)


def _one_hot(codes: np.ndarray) -> sparse.csr_matrix:
    """Window codes ``(residues, window)`` as a sparse one-hot matrix, 22 columns a position."""
    residues, window = codes.shape
    columns = codes.astype(np.int32) + np.arange(window, dtype=np.int32) * _CODES_PER_POSITION
    return sparse.csr_matrix(
        (np.ones(columns.size, dtype=np.float32), columns.reshape(-1),
         np.arange(0, columns.size + 1, window)),
        shape=(residues, window * _CODES_PER_POSITION),
    )  # fmt: skip


def window_features(sequences: list[str], window: int = DEFAULT_WINDOW) -> sparse.csr_matrix:
    """One row per residue of every sequence, in order: its window of residues, one-hot encoded.

    Args:
        sequences: The chains.
        window: Residues in the window, centred on the residue (odd).

    Returns:
        A sparse ``(residues, window * 22)`` matrix: per window position, 20 amino acids, any
        other residue, and "beyond the chain" (near either end).

    Raises:
        ValueError: When ``window`` is not a positive odd number.
    """
    return _one_hot(_window_codes(sequences, window))


def task_baseline(
    data: DataConfig | Path | str,
    task: Task | str = Task.MULTICLASS,
    split: str = "test",
    window: int | None = None,
) -> dict[str, Any]:
    """The task's linear baseline: composition, or one-hot windows for per-residue tasks.

    Raises:
        EsmtuneError: When ``window`` is given for a task that predicts per sequence.
        DataError: When the data has blocking problems or lacks the split.
    """
    if task_class(task).per_residue:
        return window_baseline(data, task, split, DEFAULT_WINDOW if window is None else window)
    if window is not None:
        raise EsmtuneError(
            f"baseline: task={Task(task).value} predicts per sequence; a window of residues "
            "applies to per-residue tasks only"
        )
    return composition_baseline(data, task, split)


def window_baseline(
    data: DataConfig | Path | str,
    task: Task | str = Task.RESIDUE_CLASSIFICATION,
    split: str = "test",
    window: int = DEFAULT_WINDOW,
    max_residues: int = MAX_WINDOW_RESIDUES,
    seed: int = 0,
) -> dict[str, Any]:
    """Per-residue tasks: the task's linear model on one-hot windows, fitted on train's residues.

    Masked residues never enter the fit (their label may be a placeholder) and are left out of
    every metric, as in evaluation. Scored with the task's per-residue metrics beside its
    trivial predictor (the commonest class; the train mean).

    Args:
        data: The data section, or a path.
        task: A per-residue task.
        split: The split to score on.
        window: Residues in the window around each residue (odd).
        max_residues: Fit on a seeded sample of this many unmasked train residues at most.
        seed: The sample's seed.

    Returns:
        As :func:`composition_baseline`, with ``n`` counting scored residues, and ``notes``.

    Raises:
        EsmtuneError: When the task predicts per sequence or ``window`` is not odd.
        DataError: When the data has blocking problems or lacks the split.
    """
    if window < 1 or window % 2 == 0:
        raise EsmtuneError(f"baseline: the window must be a positive odd number, not {window}")
    if not task_class(task).per_residue:
        raise EsmtuneError(
            f"baseline: task={Task(task).value} predicts per sequence: use composition_baseline"
        )
    spec, train, test = _prepared(data, task, split)
    outputs, all_targets, notes = _window_outputs(spec, train, test, window, max_residues, seed)
    test_targets = spec.encode_targets(test)
    ends = np.cumsum([len(r.sequence) for r in test])[:-1]
    # The trivial predictor takes every unmasked train residue; the model a sample of them.
    trivial, trivial_name = spec.trivial_outputs(
        all_targets, int(sum(len(r.sequence) for r in test))
    )
    scores = spec.metrics(test_targets, outputs)
    return {
        "task": spec.task.value,
        "split": split,
        "n": scores["n"],
        "where": f"{split} n={scores['n']} residues of {len(test)} chains",
        "model": scores,
        "trivial": spec.metrics(test_targets, _per_chain(trivial, ends)),
        "model_name": spec.baseline_model_name,
        "trivial_name": trivial_name,
        "name": _WINDOW_NAME,
        "features": _window_description(window),
        "headline": list(spec.headline_metrics),
        "notes": notes,
    }


def _window_outputs(
    spec: TaskSpec,
    train: list[SequenceRecord],
    test: list[SequenceRecord],
    window: int,
    max_residues: int,
    seed: int,
) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The window model fitted on train's unmasked residues (a sample beyond ``max_residues``).

    Returns:
        Its outputs on ``test``, one array per chain; the targets of every unmasked train
        residue (for the trivial predictor); and notes (the sample, when one was taken).
    """
    used = np.concatenate([np.asarray(r.used_residues, dtype=bool) for r in train])
    all_targets = np.concatenate(list(spec.encode_targets(train)))[used]
    chosen, train_targets = np.flatnonzero(used), all_targets
    notes = []
    if len(chosen) > max_residues:
        notes.append(
            f"fitted on a seeded sample of {max_residues:,} of train's {len(chosen):,} unmasked "
            "residues"
        )
        keep = np.sort(np.random.default_rng(seed).choice(len(chosen), max_residues, False))
        chosen, train_targets = chosen[keep], all_targets[keep]
    estimator = spec.baseline_estimator()
    sequences = [r.sequence for r in train]
    estimator.fit(_one_hot(_window_codes(sequences, window)[chosen]), train_targets)
    ends = np.cumsum([len(r.sequence) for r in test])[:-1]
    features = window_features([r.sequence for r in test], window)
    return _per_chain(spec.baseline_outputs(estimator, features), ends), all_targets, notes


def _per_chain(outputs: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Rows of every residue back into one array per chain (an object array)."""
    chains = np.split(outputs, ends)
    rows = np.empty(len(chains), dtype=object)
    for position, chain in enumerate(chains):
        rows[position] = chain
    return rows


def composition_baseline(
    data: DataConfig | Path | str, task: Task | str = Task.MULTICLASS, split: str = "test"
) -> dict[str, Any]:
    """Fit on train, score on ``split`` with the task's metrics; also a trivial predictor's score.

    The model and the trivial predictor are the task's (classification: logistic regression, one
    per label for multilabel, beside the commonest label or the label frequencies; regression:
    ridge regression beside the train mean).

    Returns:
        ``task``, ``split``, ``n``, ``where`` (split and n, as printed), the ``model`` and
        ``trivial`` metrics, ``model_name``, ``trivial_name``, ``name`` and ``features`` (what
        the baseline is, as printed), ``headline`` (the metric names worth printing first) and
        ``notes``.

    Raises:
        DataError: When the data has blocking problems or lacks the split.
    """
    result = _linear_baseline(data, task, split, _composition)
    return result | {"name": _COMPOSITION_NAME, "features": _COMPOSITION_FEATURES}


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
            f"baseline: task={Task(task).value} predicts per residue; its baseline is the one-hot "
            "window of residues (window_baseline, `esmtune baseline` without --embeddings and "
            "--embed-with); a linear model on per-residue embeddings is not implemented yet"
        )
    spec, train, test = _prepared(data, task, split)
    train_targets, test_targets = spec.encode_targets(train), spec.encode_targets(test)
    outputs = _fitted_outputs(spec, train, test, features)
    trivial, trivial_name = spec.trivial_outputs(train_targets, len(test))
    return {
        "task": spec.task.value,
        "split": split,
        "n": len(test),
        "where": f"{split} n={len(test)}",
        "model": spec.metrics(test_targets, outputs),
        "trivial": spec.metrics(test_targets, trivial),
        "model_name": spec.baseline_model_name,
        "trivial_name": trivial_name,
        "headline": list(spec.headline_metrics),
        "notes": [],
    }


def _fitted_outputs(
    spec: TaskSpec,
    train: list[SequenceRecord],
    test: list[SequenceRecord],
    features: Callable[[list[SequenceRecord]], np.ndarray],
) -> np.ndarray:
    """The task's linear model fitted on ``features`` of train, its outputs on test's."""
    estimator = spec.baseline_estimator()
    estimator.fit(features(train), spec.encode_targets(train))
    return spec.baseline_outputs(estimator, features(test))


def _composition(records: list[SequenceRecord]) -> np.ndarray:
    return composition_features([r.sequence for r in records])


def _prepared(
    data: DataConfig | Path | str, task: Task | str, split: str
) -> tuple[Any, list[SequenceRecord], list[SequenceRecord]]:
    """The fitted-label task, train and ``split`` records of checked data (conflicts dropped)."""
    if not isinstance(data, DataConfig):
        data = DataConfig(path=Path(data))
    data = data.model_copy(update={"drop_conflicts": True, "drop_duplicates": True})
    report = check_dataset(data, task)
    report.raise_if_errors()
    if not report.splits.get(split):
        raise DataError(f"{data.path}: no {split} sequences to score the baseline on")
    spec = task_class(task)(labels=report.labels)
    return spec, report.splits["train"], report.splits[split]
