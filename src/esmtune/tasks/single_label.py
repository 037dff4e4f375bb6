"""What multiclass and binary share: one label per sequence, read from one column or file name.

The label set comes from train; validation and test may not add labels. Predictions carry one
``label`` and every class probability, and the evaluation draws a confusion matrix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from esmtune.config import DataConfig
from esmtune.data.fasta import SequenceRecord, Target
from esmtune.data.report import DataReport
from esmtune.plots import plot_confusion_matrix
from esmtune.tasks.base import TaskSpec, logistic_composition_model

__all__ = ["SingleLabelTask"]


class SingleLabelTask(TaskSpec):
    """One label of a fixed set per sequence (multiclass, binary)."""

    one_label_per_file: ClassVar[bool] = True
    # The figure title's second score after accuracy (macro_f1, mcc ...), as (key, shown).
    title_metric: ClassVar[tuple[str, str]]

    @classmethod
    def parse_target(cls, values: list[str], columns: list[str], separator: str) -> Target:
        """The label in the one target column."""
        label = values[0].strip()
        if not label:
            raise ValueError(f"empty label in column '{columns[0]}'; fill it in or drop the row")
        return label

    @classmethod
    def find_labels(cls, report: DataReport, data: DataConfig) -> None:
        """Labels of train (at least two); labels only other splits have are errors."""
        train = report.splits.get("train", [])
        labels = sorted({r.label for r in train})
        if labels and len(labels) < 2:
            report.errors.append(f"train has only one label ({labels[0]}); need at least two")
        for split in ("validation", "test"):
            records = report.splits.get(split, [])
            unknown = sorted({r.label for r in records} - set(labels))
            if unknown and train:
                example = next(r for r in records if r.label in unknown)
                report.errors.append(
                    f"{split}: label(s) {', '.join(unknown)} never occur in train, e.g. "
                    f"{example.where}; add training examples of each, or remove them from {split}"
                )
        report.labels = cls.order_labels(report, data, labels)

    @classmethod
    def order_labels(cls, report: DataReport, data: DataConfig, labels: list[str]) -> list[str]:
        """The labels in output order (sorted; binary puts the positive class second)."""
        return labels

    def unknown_targets(self, records: list[SequenceRecord], found: list[str]) -> str | None:
        """Labels to evaluate that the model never learned."""
        unknown = sorted({r.label for r in records} - set(self.labels))
        if not unknown:
            return None
        return (
            f"label(s) {', '.join(unknown)} are not among the model's labels "
            f"({', '.join(self.labels)}); remove them or retrain"
        )

    def plots(
        self, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, Any], out: Path
    ) -> list[Path]:
        """The confusion matrix, titled with accuracy and the task's main score."""
        key, shown = self.title_metric
        title = (
            f"{metrics['split']}: accuracy {metrics['accuracy']:.3f}, {shown} {metrics[key]:.3f}"
        )
        path = out / "confusion_matrix.png"
        plot_confusion_matrix(metrics["confusion_matrix"], self.labels, path, title)
        return [path]

    def baseline_estimator(self) -> Any:
        """Logistic regression on standardised composition."""
        return logistic_composition_model()

    def frame_row(self, result: dict[str, Any]) -> dict[str, Any]:
        """``label``, its probability (and threshold), then ``p_<label>`` for every label."""
        row: dict[str, Any] = {"label": result["label"]}
        row.update({k: result[k] for k in ("probability", "threshold") if k in result})
        row.update({f"p_{k}": v for k, v in result["probabilities"].items()})
        return row
