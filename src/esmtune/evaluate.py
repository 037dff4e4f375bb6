"""Evaluating a finished run on a labelled split: metrics, a readable report and plots.

Beside the metrics stand what a reader needs to trust them: a bootstrap interval for each
headline metric, and the task's baseline fitted on the run's own train split and scored on the
same proteins, with the interval of the difference (:mod:`esmtune.intervals`).
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from esmtune.baseline import fit_baseline
from esmtune.calibration import reliability
from esmtune.config import DataConfig, TrainConfig
from esmtune.data.batching import EncodedDataset, encode
from esmtune.data.check import check_dataset
from esmtune.data.embedding_files import read_embeddings
from esmtune.data.fasta import SequenceRecord
from esmtune.data.report import DataReport
from esmtune.embeddings import FileEmbeddings, load_embedding_run
from esmtune.errors import DataError, EsmtuneError
from esmtune.evaluate_options import LEVEL, EvaluateOptions
from esmtune.identity_bins import identity_bin_lines, metrics_by_identity
from esmtune.inference import eval_loader, iterate_outputs, place_residues, predict_outputs
from esmtune.intervals import Scored, compare, interval_lines
from esmtune.model.run_model import load_run
from esmtune.plots import plot_reliability
from esmtune.processes import Processes
from esmtune.report_page import write_report
from esmtune.rundir import atomic_write_text, read_run
from esmtune.storage import check_writable, storage_errors
from esmtune.tasks import TaskSpec, task_class

__all__ = ["evaluate_run", "format_report"]


def format_report(metrics: dict[str, Any]) -> str:
    """Summary metrics and a per-class (or per-label, per-target) table, as terminal text."""
    head, table = task_class(metrics["task"]).report_lines(metrics)
    lines = [f"{metrics['split']} (n={metrics['n']}): {head}"]
    calibration = metrics.get("calibration")
    if calibration is not None and calibration["before"]["ece"] is not None:
        before, after = calibration["before"]["ece"], calibration["after"]["ece"]
        if calibration["method"] == "none":
            lines.append(f"calibration: ECE {before:.3f} (no calibration fitted)")
        else:
            lines.append(
                f"calibration: ECE {before:.3f} before, {after:.3f} after "
                f"{_describe(calibration)} fitted on validation"
            )
    return "\n".join([*lines, "", *table, *interval_lines(metrics), *identity_bin_lines(metrics)])


def _describe(calibration: dict[str, Any]) -> str:
    fitted = calibration["fitted"]
    if calibration["method"] == "temperature":
        return f"temperature {fitted['temperature']:.2f}"
    slopes = fitted["slope"]
    if len(slopes) == 1:
        return f"Platt scaling (slope {slopes[0]:.2f}, intercept {fitted['intercept'][0]:+.2f})"
    return f"Platt scaling of {len(slopes)} labels"


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


def _calibration_report(
    task: TaskSpec, targets: np.ndarray, raw: np.ndarray, outputs: np.ndarray
) -> dict[str, Any] | None:
    """The ECE and reliability bins before and after the run's calibration (None: no probabilities).

    Without a saved calibration (``objective.calibrate=false``, or a run trained before esmtune
    calibrated) both sides are the same outputs.
    """
    before = task.reliability_pairs(targets, raw)
    after = task.reliability_pairs(targets, outputs)
    if before is None or after is None:
        return None
    return {
        "method": _calibration_name(task.calibration),
        "fitted": task.calibration,
        "before": reliability(*before),
        "after": reliability(*after),
    }


def _calibration_name(calibration: dict[str, Any] | None) -> str:
    if not calibration:
        return "none"
    return "temperature" if "temperature" in calibration else "platt"


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

    Under ``accelerate launch`` the processes share the model's batches by tokens; the main
    process alone scores and writes, and every process returns its metrics.

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
    processes = Processes.current()
    processes.on_main(
        lambda: check_writable(
            out,
            "Evaluate writes its report into the run: free space or make it writable, or copy "
            f"the run where it can be written (`cp -a {run_dir} COPY`) and evaluate the copy",
        )
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
    # Outputs before calibration, so that the report shows what it changed.
    if data.embeddings is not None:  # a head trained on precomputed embeddings
        raw = _head_outputs(run_dir, data.embeddings, records, replace(task, calibration=None))
    else:
        loaded = load_run(run_dir)
        task = loaded.task
        windows = encode(
            loaded.tokenizer, [r.sequence for r in records], config.data.max_length,
            config.data.long_sequences, config.data.window_stride,
        )  # fmt: skip
        if (device := processes.device_for(None)) is not None:  # several: each its own GPU
            loaded.model.to(device)
        raw = predict_outputs(
            loaded.model,
            EncodedDataset(windows, targets, residue_targets=task.per_residue),
            replace(task, calibration=None).outputs,
            max_tokens,
            loaded.tokenizer.pad_token_id,
            progress=progress,
            processes=processes,
        )
        raw = place_residues(raw, [w[0].start for w in windows], [len(r.sequence) for r in records])
    options = options or EvaluateOptions()
    # Scores, baseline, plots and files: once, on the main process; the others get its metrics.
    return processes.on_main(
        lambda: _score_and_write(
            run_dir, out, config, report, data, records, task, targets, raw, options, data_path
        )
    )


def _score_and_write(
    run_dir: Path,
    out: Path,
    config: TrainConfig,
    report: DataReport,
    data: DataConfig,
    records: list[SequenceRecord],
    task: TaskSpec,
    targets: np.ndarray,
    raw: np.ndarray,
    options: EvaluateOptions,
    data_path: Path | str | None,
) -> tuple[dict[str, Any], Path, list[Path]]:
    """Metrics (with intervals, baseline and identity bins), plots and files of an evaluation."""
    split = out.name
    outputs = task.calibrated(raw, task.calibration) if task.calibration else raw
    metrics = {
        "task": config.task.value,
        "split": split,
        "data": str(data.path),
        **task.metrics(targets, outputs),
    }
    calibration = _calibration_report(task, targets, raw, outputs)
    if calibration is not None:
        metrics["calibration"] = calibration
    if task.label_names:
        metrics["label_names"] = task.label_names
    # The run's own train split, read once for the baseline and the identity bins (again from
    # disk only with other data) and not at all when neither is wanted.
    train: list[SequenceRecord] | str = "not needed"
    if not (options.skip_baseline and options.skip_identity):
        train = _run_train(config, report if data_path is None else None)
    metrics |= _beside(config, task, records, targets, outputs, options, train)
    metrics["by_identity"] = _by_identity(
        task, records, targets, outputs, options, train, config.data.identity_coverage
    )
    with storage_errors(out, lambda _: "Free space, then evaluate again"):
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        written = [out / "metrics.json", *task.plots(targets, outputs, metrics, out)]
        if calibration is not None:
            written.append(out / "reliability.png")
            plot_reliability(calibration, out / "reliability.png", f"{split}: calibration")
        _write_predictions(task, records, outputs, out / "predictions.csv")
        written.append(out / "predictions.csv")
        written.append(write_report(out, run_dir, metrics, task.headline_metrics))
    return metrics, out, written


def _beside(
    config: TrainConfig,
    task: TaskSpec,
    records: list[SequenceRecord],
    targets: np.ndarray,
    outputs: np.ndarray,
    options: EvaluateOptions,
    train: list[SequenceRecord] | str,
) -> dict[str, Any]:
    """The ``intervals`` and ``baseline`` entries of metrics.json (see :func:`evaluate_run`).

    Args:
        config: The run's config.
        task: The run's task (with its saved thresholds).
        records: The evaluated records; ``targets`` and ``outputs`` are theirs.
        targets: The evaluated targets.
        outputs: The model's outputs.
        options: The evaluation's options.
        train: The run's own train split, or why it could not be read.
    """
    found = _baseline(config, task, records, outputs, options, train)
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
    train: list[SequenceRecord] | str,
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
    if isinstance(train, str):
        return train
    spec = replace(task, thresholds=None, calibration=None)
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


def _run_train(config: TrainConfig, report: DataReport | None) -> list[SequenceRecord] | str:
    """The run's own train split (``report`` when it read the run's data), or why there is none.

    With other data (``--data``) the run's data is read again, as training read it.
    """
    if report is None:
        try:
            report = check_dataset(config.data.model_copy(update={"embeddings": None}), config.task)
            report.raise_if_errors()
        except EsmtuneError as problem:
            return f"the run's train split could not be read: {problem}"
    train = report.splits.get("train", [])
    return train or f"{config.data.path} has no train split"


def _by_identity(
    task: TaskSpec,
    records: list[SequenceRecord],
    targets: np.ndarray,
    outputs: np.ndarray,
    options: EvaluateOptions,
    train: list[SequenceRecord] | str,
    coverage: float,
) -> dict[str, Any]:
    """The ``by_identity`` entry of metrics.json: headline metrics per identity bin to train."""
    if options.skip_identity:
        return {"skipped": "asked not to (--skip-identity)"}
    if isinstance(train, str):
        return {"skipped": train}
    return metrics_by_identity(task, records, targets, outputs, train, coverage)


def _unread_where(model: np.ndarray, baseline: np.ndarray) -> np.ndarray:
    """Per-residue baseline outputs, NaN (unread) on the residues the model left unread."""
    masked = np.empty(len(baseline), dtype=object)
    for chain, (ours, theirs) in enumerate(zip(model, baseline, strict=True)):
        ours = np.asarray(ours, dtype=np.float64)
        unread = ~np.isfinite(ours.reshape(len(ours), -1)).all(axis=1)
        masked[chain] = np.array(theirs, dtype=np.float64)
        masked[chain][unread] = np.nan
    return masked
