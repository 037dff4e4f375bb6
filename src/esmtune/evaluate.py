"""Evaluating a finished run on a labelled split: metrics, a readable report and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from esmtune.config import Task
from esmtune.data.batching import EncodedDataset, encode
from esmtune.data.check import check_dataset
from esmtune.data.targets import format_target
from esmtune.errors import DataError
from esmtune.inference import predict_outputs
from esmtune.model.run_model import load_run
from esmtune.plots import plot_confusion_matrix, plot_roc_pr, plot_scatter
from esmtune.rundir import atomic_write_text, read_run
from esmtune.storage import check_writable, storage_errors
from esmtune.tasks import TaskSpec

__all__ = ["evaluate_run", "format_report"]


def _number(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _table(rows: dict[str, dict[str, Any]], columns: list[str], first: str) -> list[str]:
    """A per-class / per-label / per-target table of numbers."""
    width = max(len(first), *(len(name) for name in rows))
    lines = [f"{first.ljust(width)}  " + "  ".join(c.rjust(9) for c in columns)]
    for name, row in rows.items():
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append(str(value).rjust(9) if isinstance(value, int) else _number(value).rjust(9))
        lines.append(f"{name.ljust(width)}  " + "  ".join(cells))
    return lines


def format_report(metrics: dict[str, Any]) -> str:
    """Summary metrics and a per-class (or per-label, per-target) table, as terminal text."""
    task = Task(metrics.get("task", Task.MULTICLASS.value))
    if task is Task.MULTICLASS:
        head = (
            f"accuracy {_number(metrics['accuracy'])}  macro-F1 {_number(metrics['macro_f1'])}  "
            f"weighted-F1 {_number(metrics['weighted_f1'])}  MCC {_number(metrics['mcc'])}  "
            f"ROC-AUC (ovr) {_number(metrics['roc_auc_ovr'])}"
        )
        table = _table(metrics["per_class"], ["precision", "recall", "f1", "support"], "class")
    elif task is Task.BINARY:
        head = (
            f"positive '{metrics['labels'][1]}' at threshold {metrics['threshold']:.3f}: "
            f"accuracy {_number(metrics['accuracy'])}  precision {_number(metrics['precision'])}"
            f"  recall {_number(metrics['recall'])}  F1 {_number(metrics['f1'])}  "
            f"MCC {_number(metrics['mcc'])}  ROC-AUC {_number(metrics['roc_auc'])}  "
            f"PR-AUC {_number(metrics['pr_auc'])}"
        )
        (tn, fp), (fn, tp) = metrics["confusion_matrix"]
        table = [f"confusion: TP {tp}  FP {fp}  FN {fn}  TN {tn}"]
    elif task is Task.MULTILABEL:
        head = (
            f"Fmax {_number(metrics['fmax'])} (threshold {_number(metrics['fmax_threshold'])}, "
            f"coverage {_number(metrics['coverage'])})  micro-F1 {_number(metrics['micro_f1'])}  "
            f"macro-F1 {_number(metrics['macro_f1'])}  micro-AP {_number(metrics['micro_ap'])}  "
            f"macro-AP {_number(metrics['macro_ap'])}"
        )
        names = metrics.get("label_names", {})
        rows = {f"{k} {names[k]}" if k in names else k: v for k, v in metrics["per_label"].items()}
        table = _table(rows, ["precision", "recall", "f1", "ap", "threshold", "support"], "label")
    else:
        head = (
            f"Spearman {_number(metrics['spearman'])}  Pearson {_number(metrics['pearson'])}  "
            f"R² {_number(metrics['r2'])}  RMSE {_number(metrics['rmse'])}  "
            f"MAE {_number(metrics['mae'])}"
        )
        table = _table(
            metrics["per_target"], ["spearman", "pearson", "r2", "rmse", "mae"], "target"
        )
    return "\n".join([f"{metrics['split']} (n={metrics['n']}): {head}", "", *table])


def _plots(
    task: TaskSpec, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, Any], out: Path
) -> list[Path]:
    """The figures a person looks at for this task; returns the files written."""
    split = metrics["split"]
    written = []
    if task.task in (Task.MULTICLASS, Task.BINARY):
        title = (
            f"{split}: accuracy {metrics['accuracy']:.3f}, "
            + (f"macro-F1 {metrics['macro_f1']:.3f}" if task.task is Task.MULTICLASS else "")
            + (f"MCC {metrics['mcc']:.3f}" if task.task is Task.BINARY else "")
        )
        written.append(out / "confusion_matrix.png")
        plot_confusion_matrix(metrics["confusion_matrix"], task.labels, written[-1], title)
    if task.task is Task.BINARY:
        written.append(out / "roc_pr_curves.png")
        plot_roc_pr(
            targets, outputs, written[-1], f"{split}: positive = {task.labels[1]}",
            threshold=metrics["threshold"],
        )  # fmt: skip
    if task.task is Task.MULTILABEL:
        written.append(out / "roc_pr_curves.png")
        plot_roc_pr(targets, outputs, written[-1], f"{split}: all labels (micro-average)")
    if task.task is Task.REGRESSION:
        written.append(out / "scatter.png")
        plot_scatter(targets, outputs, task.labels, written[-1], f"{split}: predicted vs true")
    return written


def _write_predictions(task: TaskSpec, records: list, outputs: np.ndarray, path: Path) -> None:
    """One row per sequence: id, true target, prediction, and the numbers behind it."""
    results = task.predictions(outputs, top_k=None)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        if task.task is Task.REGRESSION:
            writer.writerow(["id", *(f"true_{x}" for x in task.labels),
                             *(f"predicted_{x}" for x in task.labels)])  # fmt: skip
            for record, row in zip(records, outputs, strict=True):
                writer.writerow([record.id, *record.target, *(f"{v:.6g}" for v in row)])
            return
        plural = "s" if task.task is Task.MULTILABEL else ""
        writer.writerow(
            [
                "id",
                f"true_label{plural}",
                f"predicted_label{plural}",
                *(f"p_{x}" for x in task.labels),
            ]
        )
        for record, result in zip(records, results, strict=True):
            chosen = ";".join(result["labels"]) if "labels" in result else result["label"]
            probabilities = (f"{result['probabilities'][x]:.6f}" for x in task.labels)
            writer.writerow([record.id, format_target(record.target), chosen, *probabilities])


def evaluate_run(
    run_dir: Path | str,
    data_path: Path | str | None = None,
    split: str = "test",
    max_tokens: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], Path, list[Path]]:
    """Score a run's best model on one split and write metrics, plots and predictions.

    Args:
        run_dir: A finished run directory.
        data_path: Dataset (default: the one the run was trained on, read the same way).
        split: ``test``, ``validation`` or ``train``.
        max_tokens: Token budget per batch (default: the device's, see
            :func:`~esmtune.inference.inference_budget`). Long sequences are handled as in
            training (data.long_sequences).
        progress: Show a progress bar.

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
    loaded = load_run(run_dir)
    config, task = loaded.config, loaded.task
    data = config.data.model_copy()
    if data_path is not None:
        data.path = Path(data_path)
    report = check_dataset(data, config.task)
    records = report.splits.get(split)
    if not records:
        raise DataError(f"{data.path}: no {split} sequences to evaluate; is --split right?")
    if config.task in (Task.MULTICLASS, Task.BINARY):
        unknown = sorted({str(r.target) for r in records} - set(task.labels))
        if unknown:
            raise DataError(
                f"{data.path} ({split}): label(s) {', '.join(unknown)} are not among the model's "
                f"labels ({', '.join(task.labels)}); remove them or retrain"
            )
    if config.task is Task.REGRESSION and report.labels != task.labels:
        raise DataError(
            f"{data.path}: targets {report.labels} differ from the model's {task.labels}"
        )
    report.raise_if_errors()
    windows = encode(
        loaded.tokenizer, [r.sequence for r in records], config.data.max_length,
        config.data.long_sequences, config.data.window_stride,
    )  # fmt: skip
    targets = task.encode_targets(records)
    outputs = predict_outputs(
        loaded.model,
        EncodedDataset(windows, targets),
        task.outputs,
        max_tokens,
        loaded.tokenizer.pad_token_id,
        progress=progress,
    )
    metrics = {
        "task": config.task.value,
        "split": split,
        "data": str(data.path),
        **task.metrics(targets, outputs),
    }
    if task.label_names:
        metrics["label_names"] = task.label_names
    with storage_errors(out, lambda _: "Free space, then evaluate again"):
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        written = [out / "metrics.json", *_plots(task, targets, outputs, metrics, out)]
        _write_predictions(task, records, outputs, out / "predictions.csv")
    written.append(out / "predictions.csv")
    return metrics, out, written
