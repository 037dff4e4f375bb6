"""Evaluating a finished run on a labelled split: metrics, a readable table and plots."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np

from esmtune.data.batching import EncodedDataset, encode
from esmtune.data.check import CheckOptions, check_dataset
from esmtune.errors import DataError
from esmtune.inference import predict_outputs
from esmtune.model.rundir import atomic_write_text, load_run
from esmtune.tasks import task_spec

__all__ = ["evaluate_run", "format_report", "plot_confusion_matrix"]


def plot_confusion_matrix(
    matrix: list[list[int]], labels: list[str], path: Path, title: str
) -> None:
    """Counts in each cell, colour by share of the true class (readable with imbalance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = np.asarray(matrix)
    shares = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    size = max(4.0, 0.6 * len(labels) + 2.5)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for row in range(len(labels)):
        for col in range(len(labels)):
            colour = "white" if shares[row, col] > 0.5 else "black"
            axes.text(col, row, str(counts[row, col]), ha="center", va="center", color=colour)
    figure.colorbar(image, ax=axes, label="share of true class")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_report(metrics: dict[str, Any]) -> str:
    """Summary metrics and a per-class table, as terminal text."""
    lines = [
        f"n={metrics['n']}  accuracy {metrics['accuracy']:.4f}  "
        f"macro-F1 {metrics['macro_f1']:.4f}  "
        f"weighted-F1 {metrics['weighted_f1']:.4f}  MCC {metrics['mcc']:.4f}  "
        + (
            f"ROC-AUC (ovr) {metrics['roc_auc_ovr']:.4f}"
            if metrics["roc_auc_ovr"] is not None
            else "ROC-AUC n/a"
        ),
        "",
    ]
    width = max(len("class"), *(len(label) for label in metrics["per_class"]))
    lines.append(f"{'class'.ljust(width)}  precision  recall      f1  support")
    for label, row in metrics["per_class"].items():
        lines.append(
            f"{label.ljust(width)}  {row['precision']:9.4f}  {row['recall']:6.4f}  "
            f"{row['f1']:6.4f}  {row['support']:7d}"
        )
    return "\n".join(lines)


def evaluate_run(
    run_dir: Path | str,
    data_dir: Path | str | None = None,
    split: str = "test",
    batch_size: int | None = None,
    progress: bool = True,
) -> tuple[dict[str, Any], Path]:
    """Score a run's best model on one split and write metrics, plot and predictions.

    Args:
        run_dir: A finished run directory.
        data_dir: Dataset folder (default: the one the run was trained on).
        split: ``test``, ``validation`` or ``train``.
        batch_size: Sequences per batch (default: the training batch size).
        progress: Show a progress bar.

    Returns:
        The metrics and the folder they were written to (``RUN/eval/<split>``).

    Raises:
        DataError: When the split is missing or holds labels the model does not know.
    """
    loaded = load_run(run_dir)
    config = loaded.config
    data_dir = Path(data_dir) if data_dir is not None else config.data.dir
    report = check_dataset(data_dir, CheckOptions(max_length=config.data.max_length))
    records = report.splits.get(split)
    if not records:
        raise DataError(f"{data_dir / split}: no sequences to evaluate; is --split right?")
    unknown = sorted({str(r.label) for r in records} - set(loaded.labels))
    if unknown:
        raise DataError(
            f"{data_dir / split}: label(s) {', '.join(unknown)} are not among the model's labels "
            f"({', '.join(loaded.labels)}); remove those files or retrain"
        )
    report.raise_if_errors()
    spec = task_spec(config.task)
    index = {label: i for i, label in enumerate(loaded.labels)}
    ids = encode(loaded.tokenizer, [r.sequence for r in records], config.data.max_length)
    dataset = EncodedDataset(ids, [index[str(r.label)] for r in records])
    probabilities = predict_outputs(
        loaded.model,
        dataset,
        spec.activation,
        batch_size or config.training.batch_size,
        loaded.tokenizer.pad_token_id,
        progress=progress,
    )
    metrics = spec.metrics(np.asarray(dataset.targets), probabilities, loaded.labels)
    metrics["data_dir"], metrics["split"] = str(data_dir), split
    out = Path(run_dir) / "eval" / split
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
    plot_confusion_matrix(
        metrics["confusion_matrix"],
        loaded.labels,
        out / "confusion_matrix.png",
        f"{split}: accuracy {metrics['accuracy']:.3f}, macro-F1 {metrics['macro_f1']:.3f}",
    )
    with (out / "predictions.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "true_label", "predicted_label", *(f"p_{x}" for x in loaded.labels)])
        for record, row in zip(records, probabilities, strict=True):
            predicted = loaded.labels[int(row.argmax())]
            writer.writerow([record.id, record.label, predicted, *(f"{p:.6f}" for p in row)])
    return metrics, out
