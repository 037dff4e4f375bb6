"""Evaluating a finished run on a labelled split: metrics, a readable report and plots.

Beside the metrics stand what a reader needs to trust them: a bootstrap interval for each
headline metric, and the task's baseline fitted on the run's own train split and scored on the
same proteins, with the interval of the difference (:mod:`esmtune.intervals`).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np

from esmtune.baseline import fit_baseline
from esmtune.config import TrainConfig
from esmtune.data.batching import EncodedDataset, encode
from esmtune.data.check import check_dataset
from esmtune.data.embedding_files import read_embeddings
from esmtune.data.fasta import SequenceRecord
from esmtune.data.report import DataReport
from esmtune.embeddings import FileEmbeddings, load_embedding_run
from esmtune.errors import DataError, EsmtuneError
from esmtune.evaluate_options import LEVEL, EvaluateOptions
from esmtune.inference import eval_loader, iterate_outputs, place_residues, predict_outputs
from esmtune.intervals import Scored, compare, interval_lines
from esmtune.model.run_model import load_run
from esmtune.rundir import atomic_write_text, read_run
from esmtune.storage import check_writable, storage_errors
from esmtune.tasks import TaskSpec, task_class

__all__ = ["evaluate_run", "format_report"]


def format_report(metrics: dict[str, Any]) -> str:
    """Summary metrics and a per-class (or per-label, per-target) table, as terminal text."""
    head, table = task_class(metrics["task"]).report_lines(metrics)
    lines = [f"{metrics['split']} (n={metrics['n']}): {head}", "", *table]
    return "\n".join([*lines, *interval_lines(metrics)])


def _write_predictions(task: TaskSpec, records: list, outputs: np.ndarray, path: Path) -> None:
    """One row per sequence: id, true target, prediction, and the numbers behind it."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(task.prediction_columns())
        writer.writerows(task.prediction_rows(records, outputs))


def _head_outputs(
    run_dir: Path, path: Path, records: list[SequenceRecord], task: TaskSpec
) -> np.ndarray:
    """A head trained on precomputed embeddings, on the records' embeddings from ``path``."""
    _, head = load_embedding_run(run_dir)
    found = read_embeddings(path)
    dataset = FileEmbeddings([found.vectors[r.id] for r in records], None)
    loader = eval_loader(dataset, 1 << 20, 0, max_sequences=256, collate_fn=dataset.collate)
    rows = dict(
        (index, row)
        for indices, batch in iterate_outputs(head, loader, task.outputs)
        for index, row in zip(indices.tolist(), batch, strict=True)
    )
    return np.stack([rows[i] for i in range(len(records))])


def evaluate_run(
    run_dir: Path | str,
    data_path: Path | str | None = None,
    split: str = "test",
    max_tokens: int | None = None,
    progress: bool = True,
    embeddings: Path | str | None = None,
    options: EvaluateOptions | None = None,
) -> tuple[dict[str, Any], Path, list[Path]]:
    """Score a run's best model on one split and write metrics, plots and predictions.

    Beside the metrics: each headline metric's bootstrap interval (``intervals``) and the
    task's baseline, fitted on the run's own train split and scored on the same proteins, with
    its intervals and those of the model's difference from it (``baseline``).

    Args:
        run_dir: A finished run directory.
        data_path: Dataset (default: the one the run was trained on, read the same way).
        split: ``test``, ``validation`` or ``train``.
        max_tokens: Token budget per batch (default: the device's, see
            :func:`~esmtune.inference.inference_budget`). Long sequences are handled as in
            training (data.long_sequences).
        progress: Show a progress bar.
        embeddings: A run trained on precomputed embeddings: the file holding the split's
            (default: the run's data.embeddings).
        options: Resamples, their seed, and whether to fit the baseline (default: 1,000
            resamples, seed 0, with the baseline).

    Returns:
        The metrics, the folder they were written to (``RUN/eval/<split>``) and the files.

    Raises:
        DataError: When the split is missing or holds labels the model does not know.
        RunDirError: When ``run_dir`` is not a finished run.
        StorageError: When ``RUN/eval/<split>`` cannot be written (checked before the model is
            loaded) or the disk fills up while writing.
    """
    run_dir = Path(run_dir)
    read_run(run_dir)  # a finished run? (cheap: before any folder is created in it)
    out = run_dir / "eval" / split
    check_writable(
        out,
        "Evaluate writes its report into the run: free space or make it writable, or copy the "
        f"run where it can be written (`cp -a {run_dir} COPY`) and evaluate the copy",
    )
    config, task = read_run(run_dir)
    data = config.data.model_copy()
    if data_path is not None:
        data.path = Path(data_path)
    if embeddings is not None:
        data.embeddings = Path(embeddings)
    report = check_dataset(data, config.task)
    records = report.splits.get(split)
    if not records:
        raise DataError(f"{data.path}: no {split} sequences to evaluate; is --split right?")
    if (problem := task.unknown_targets(records, report.labels)) is not None:
        raise DataError(f"{data.path} ({split}): {problem}")
    report.raise_if_errors()
    targets = task.encode_targets(records)
    if data.embeddings is not None:  # a head trained on precomputed embeddings
        outputs = _head_outputs(run_dir, data.embeddings, records, task)
    else:
        loaded = load_run(run_dir)
        task = loaded.task
        windows = encode(
            loaded.tokenizer, [r.sequence for r in records], config.data.max_length,
            config.data.long_sequences, config.data.window_stride,
        )  # fmt: skip
        outputs = predict_outputs(
            loaded.model,
            EncodedDataset(windows, targets, residue_targets=task.per_residue),
            task.outputs,
            max_tokens,
            loaded.tokenizer.pad_token_id,
            progress=progress,
        )
        outputs = place_residues(
            outputs, [w[0].start for w in windows], [len(r.sequence) for r in records]
        )
    metrics = {
        "task": config.task.value,
        "split": split,
        "data": str(data.path),
        **task.metrics(targets, outputs),
    }
    if task.label_names:
        metrics["label_names"] = task.label_names
    metrics |= _beside(
        config, task, records, targets, outputs, options or EvaluateOptions(),
        report if data_path is None else None,
    )  # fmt: skip
    with storage_errors(out, lambda _: "Free space, then evaluate again"):
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        written = [out / "metrics.json", *task.plots(targets, outputs, metrics, out)]
        _write_predictions(task, records, outputs, out / "predictions.csv")
    written.append(out / "predictions.csv")
    return metrics, out, written


def _beside(
    config: TrainConfig,
    task: TaskSpec,
    records: list[SequenceRecord],
    targets: np.ndarray,
    outputs: np.ndarray,
    options: EvaluateOptions,
    report: DataReport | None,
) -> dict[str, Any]:
    """The ``intervals`` and ``baseline`` entries of metrics.json (see :func:`evaluate_run`).

    Args:
        config: The run's config.
        task: The run's task (with its saved thresholds).
        records: The evaluated records; ``targets`` and ``outputs`` are theirs.
        targets: The evaluated targets.
        outputs: The model's outputs.
        options: The evaluation's options.
        report: The data check that read the evaluated split, when it is the run's own data
            (its train split is the run's); None to read the run's data again.
    """
    found = _baseline(config, task, records, outputs, options, report)
    baseline = None if isinstance(found, str) else found[0]
    model_intervals, compared = compare(
        targets, Scored(task, outputs), baseline, options.resamples, options.bootstrap_seed
    )
    beside: dict[str, Any] = {}
    if options.resamples:
        beside["intervals"] = {
            "level": LEVEL,
            "resamples": options.resamples,
            "seed": options.bootstrap_seed,
            "proteins": len(records),
            "metrics": model_intervals,
        }
    if isinstance(found, str):
        beside["baseline"] = {"skipped": found}
    else:
        beside["baseline"] = {**found[1], **(compared or {})}
    return beside


def _baseline(
    config: TrainConfig,
    task: TaskSpec,
    records: list[SequenceRecord],
    outputs: np.ndarray,
    options: EvaluateOptions,
    report: DataReport | None,
) -> tuple[Scored, dict[str, Any]] | str:
    """The task's baseline fitted on the run's train split, on ``records``; or why it is not.

    It is scored as ``esmtune baseline`` scores it, at its own (untuned) thresholds. For
    per-residue tasks, residues the model did not read (a cut sequence) are left out of the
    baseline's score too, so that both are scored on the same residues.

    Returns:
        Its outputs and task to score them, and what it is (``name``, ``model``,
        ``fitted_on``, ``notes``); or the reason it was skipped.
    """
    if options.skip_baseline:
        return "asked not to (--skip-baseline)"
    if report is None:  # other data: the run's own train split, as training read it
        try:
            report = check_dataset(config.data.model_copy(update={"embeddings": None}), config.task)
            report.raise_if_errors()
        except EsmtuneError as problem:
            return f"the run's train split could not be read: {problem}"
    train = report.splits.get("train", [])
    if not train:
        return f"{config.data.path} has no train split to fit it on"
    spec = dataclasses.replace(task, thresholds=None)
    fitted = fit_baseline(spec, train, records)
    baseline_outputs = fitted.outputs
    if task.per_residue:
        baseline_outputs = _unread_where(outputs, baseline_outputs)
    described = {
        "name": fitted.name,
        "model": fitted.model,
        "fitted_on": f"the run's train split, {len(train):,} proteins of {config.data.path}",
        "notes": fitted.notes,
    }
    return Scored(spec, baseline_outputs), described


def _unread_where(model: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per-residue baseline outputs, NaN (unread) on the residues the model left unread."""
    masked = np.empty(len(baseline), dtype=object)
    for chain, (ours, theirs) in enumerate(zip(model, baseline, strict=True)):
        ours = np.asarray(ours, dtype=np.float64)
        unread = ~np.isfinite(ours.reshape(len(ours), -1)).all(axis=1)
        masked[chain] = np.array(theirs, dtype=np.float64)
        masked[chain][unread] = np.nan
    return masked
