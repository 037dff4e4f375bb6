"""Residue classification: one class per residue (secondary structure C/H/E, a 0-7 code ...).

A record's target is its label string, one character per residue (FLIP's ``labels.fasta``,
biotrainer's ``TARGET=CCHHE``); its mask says which residues count. The classes are the
characters found on the train split's unmasked residues, sorted; a class that only validation or
test has is an error, since the model could never predict it. Masked residues are never read as
classes: their label may be a placeholder.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from esmtune.config import DataConfig, Task
from esmtune.data.batching import IGNORED_CLASS
from esmtune.data.fasta import SequenceRecord, Target
from esmtune.data.report import (
    DataReport,
    align_table,
    residue_counts,
    residue_footer,
    residue_summary,
)
from esmtune.metrics import residue_classification_metrics
from esmtune.plots import plot_confusion_matrix, plot_residue_tracks
from esmtune.tasks.base import (
    HfProblemType,
    TaskSpec,
    metric_table,
    number,
    residue_difference,
    residue_rows,
)
from esmtune.weighted_metrics import residue_classification_scores

__all__ = ["ResidueClassificationTask", "aligned_lines"]

# The character of a residue without a prediction (a cut sequence's unread residues).
UNREAD = "?"
# Residues per line of ``--format text``.
_LINE = 60

# Records named in an error about classes missing from train.
_NAMED_RECORDS = 3


def _class_counts(records: list[SequenceRecord]) -> Counter[str]:
    """Unmasked residues per class."""
    return Counter(
        label
        for record in records
        for label, used in zip(record.residue_labels, record.used_residues, strict=True)
        if used
    )


def _share(count: int, total: int) -> str:
    return f"{count} ({count / total:.1%})" if total else str(count)


def aligned_lines(sequence: str, rows: list[tuple[str, str]]) -> list[str]:
    """The sequence and lines of one character per residue under it, 60 residues a line.

    Each block starts with the position of its first residue (from 1).
    """
    width = len(str(len(sequence)))
    lines = []
    for start in range(0, len(sequence), _LINE):
        lines.append(f"  {start + 1:>{width}} {sequence[start : start + _LINE]}  sequence")
        for text, name in rows:
            lines.append(f"  {'':>{width}} {text[start : start + _LINE]}  {name}")
    return lines


# Chains drawn in the track plot of an evaluation.
TRACKED_CHAINS = 4


class ResidueClassificationTask(TaskSpec):
    """One class of a fixed alphabet per residue; masked residues are left out."""

    task: ClassVar[Task] = Task.RESIDUE_CLASSIFICATION
    per_residue: ClassVar[bool] = True
    target_noun: ClassVar[str] = "residue classes"
    headline_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "mcc")
    hf_problem_type: ClassVar[HfProblemType] = "single_label_classification"
    hf_usage: ClassVar[str] = "probabilities = logits.softmax(-1)  # per residue"

    # --- reading and checking targets --------------------------------------------------------

    @classmethod
    def parse_target(cls, values: list[str], columns: list[str], separator: str) -> Target:
        """The label string, its wrapped lines (and any spaces) joined."""
        labels = "".join(values[0].split())
        if not labels:
            raise ValueError(
                "no labels; give one label character per residue (e.g. CCHHHEEC), as long as "
                "the sequence"
            )
        return labels

    @classmethod
    def find_labels(cls, report: DataReport, data: DataConfig) -> None:
        """Classes of train's unmasked residues (at least two); new ones elsewhere are errors."""
        train = report.splits.get("train", [])
        labels = sorted(_class_counts(train))
        if train and len(labels) < 2:
            report.errors.append(
                f"train: every unmasked residue has the class {labels[0] if labels else '-'}; "
                "residue_classification needs at least two classes"
            )
        known = set(labels)
        for split in ("validation", "test"):
            records = report.splits.get(split, [])
            unknown = Counter(
                label
                for record in records
                for label, used in zip(record.residue_labels, record.used_residues, strict=True)
                if used and label not in known
            )
            if not unknown or not train:
                continue
            named = [r for r in records if set(_class_counts([r])) - known]
            shown = "; ".join(r.where for r in named[:_NAMED_RECORDS])
            more = f" and {len(named) - _NAMED_RECORDS} more" if len(named) > _NAMED_RECORDS else ""
            report.errors.append(
                f"{split}: class(es) {', '.join(sorted(unknown))} never occur on train's residues "
                f"({sum(unknown.values())} residue(s) in {len(named)} record(s): {shown}{more}); "
                f"add training examples of each, mask those residues (0), or remove the records "
                f"from {split}"
            )
        report.labels = labels

    @classmethod
    def target_table(cls, report: DataReport) -> str:
        """Unmasked residues per class and split, with shares; masked residues, chains, lengths."""
        present = report.present
        counts = {split: _class_counts(report.splits[split]) for split in present}
        used = {split: residue_counts(report.splits[split])[0] for split in present}
        labels = report.labels or sorted({label for c in counts.values() for label in c})
        rows = [
            [label, *(_share(counts[split][label], used[split]) for split in present)]
            for label in labels
        ]
        return align_table(["class", *present], rows, residue_footer(report))

    @classmethod
    def target_summary(cls, report: DataReport) -> dict[str, object]:
        """Per split: chains, unmasked and masked residues, and unmasked residues per class."""
        summary: dict[str, object] = {}
        for split, records in report.splits.items():
            counts = _class_counts(records)
            summary[split] = {
                **residue_summary(records),
                "classes": {label: counts[label] for label in report.labels},
            }
        return summary

    def unknown_targets(self, records: list[SequenceRecord], found: list[str]) -> str | None:
        """Classes on unmasked residues that the model never learned."""
        unknown = sorted(set(_class_counts(records)) - set(self.labels))
        if not unknown:
            return None
        return (
            f"residue class(es) {', '.join(unknown)} are not among the model's classes "
            f"({', '.join(self.labels)}); mask those residues (0) or retrain"
        )

    # --- training ------------------------------------------------------------------------

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """One array of class indices per record; masked residues ``IGNORED_CLASS``."""
        index = {label: i for i, label in enumerate(self.labels)}
        rows = np.empty(len(records), dtype=object)
        for position, record in enumerate(records):
            rows[position] = np.fromiter(
                (
                    index[label] if used else IGNORED_CLASS
                    for label, used in zip(record.residue_labels, record.used_residues, strict=True)
                ),
                dtype=np.int64,
                count=len(record.residue_labels),
            )
        return rows

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy averaged over the batch's residues that count.

        Ignored positions (masked residues, ``<cls>``, ``<eos>``, padding) add exactly zero to
        the loss and its gradient; the mean is over counted residues (a batch without any gives
        0, not NaN), summed and divided so that no step waits on a device-to-host sync.
        """
        flat = targets.reshape(-1)
        total = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), flat, ignore_index=IGNORED_CLASS,
            reduction="sum",
        )  # fmt: skip
        return total / (flat != IGNORED_CLASS).sum().clamp(min=1)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes, per residue."""
        return torch.softmax(logits.float(), dim=-1)

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Per-residue accuracy (Q3), F1s, MCC, per-class report, confusion matrix, per protein."""
        return residue_classification_metrics(targets, outputs, self.labels, IGNORED_CLASS)

    def resampled_scores(
        self, targets: np.ndarray, outputs: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per-residue accuracy, macro-F1 and MCC of each resample of whole chains."""
        return residue_classification_scores(targets, outputs, IGNORED_CLASS, weights)

    # --- the one-hot window baseline ----------------------------------------------------------

    def baseline_estimator(self) -> Any:
        """Logistic regression on one-hot windows (0/1 columns: nothing to standardise)."""
        from sklearn.linear_model import LogisticRegression

        return LogisticRegression(max_iter=2000)

    def baseline_outputs(self, estimator: Any, features: Any) -> np.ndarray:
        """Class probabilities in label order, one row per residue."""
        probabilities = np.zeros((features.shape[0], len(self.labels)))
        probabilities[:, estimator.classes_] = estimator.predict_proba(features)
        return probabilities

    def trivial_outputs(self, train_targets: np.ndarray, count: int) -> tuple[np.ndarray, str]:
        """Train's commonest class (of unmasked residues) for every residue."""
        commonest = int(np.bincount(train_targets, minlength=len(self.labels)).argmax())
        always = np.zeros((count, len(self.labels)))
        always[:, commonest] = 1.0
        return always, f"always '{self.labels[commonest]}'"

    # --- predictions -----------------------------------------------------------------------

    def predictions(self, outputs: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        """Per sequence: the class string (``?`` where unread) and each residue's probabilities."""
        results = []
        for row in outputs:
            read = np.isfinite(row).all(axis=1)
            chosen = np.where(read, np.nan_to_num(row).argmax(axis=1), -1)
            results.append(
                {
                    "prediction": "".join(self.labels[i] if i >= 0 else UNREAD for i in chosen),
                    "classes": list(self.labels),
                    "probabilities": [
                        [round(float(p), 6) for p in probabilities] if ok else None
                        for probabilities, ok in zip(row, read, strict=True)
                    ],
                    "unread": int((~read).sum()),
                }
            )
        return results

    def agreement(self, reference: np.ndarray, other: np.ndarray) -> float:
        """Share of residues (read by both) given the same class by two runtimes' outputs."""
        expected, got = residue_rows(reference), residue_rows(other)
        read = np.isfinite(expected).all(axis=1) & np.isfinite(got).all(axis=1)
        if not read.any():
            return 1.0
        return float(np.mean(expected[read].argmax(axis=1) == got[read].argmax(axis=1)))

    def largest_difference(self, reference: np.ndarray, other: np.ndarray) -> float:
        """The largest probability difference of any residue."""
        return residue_difference(reference, other)

    def table_header(self) -> list[str]:
        """id, then the class string."""
        return ["id", "prediction"]

    def table_row(self, result: dict[str, Any]) -> list[str]:
        """One prediction under :meth:`table_header`."""
        return [result["id"], result["prediction"]]

    def text_lines(self, result: dict[str, Any]) -> list[str]:
        """The sequence with the predicted class under each residue."""
        lines = aligned_lines(result["sequence"], [(result["prediction"], "prediction")])
        if result["unread"]:
            lines.append(f"  {result['unread']} residue(s) not read ({UNREAD}): no prediction")
        return lines

    def frame_row(self, result: dict[str, Any]) -> dict[str, Any]:
        """The class string."""
        return {"prediction": result["prediction"]}

    def display(self) -> dict[str, Any]:
        """The sequence coloured by predicted class, each residue's probabilities on hover."""
        return {
            "noun": "residue classes",
            "list_title": "classes",
            "residues": {
                "letters": "sequence",
                "chosen": "prediction",
                "classes": "classes",
                "probabilities": "probabilities",
            },
        }

    def prediction_schema(self) -> dict[str, Any]:
        """The class string, the classes and each residue's probabilities (null: not read)."""
        probabilities = {"type": "array", "items": {"type": "number", "minimum": 0, "maximum": 1}}
        return {
            "type": "object",
            "required": ["sequence", "prediction", "classes", "probabilities", "unread"],
            "properties": {
                "sequence": {"type": "string", "description": "the residues read"},
                "prediction": {
                    "type": "string",
                    "description": f"the predicted class of each residue ({UNREAD}: not read)",
                },
                "classes": {"type": "array", "items": {"type": "string"}},
                "probabilities": {
                    "type": "array",
                    "items": {"anyOf": [probabilities, {"type": "null"}]},
                    "description": "per residue, the probability of each class in the order "
                    "of classes; null where the residue was not read",
                },
                "unread": {"type": "integer", "minimum": 0},
            },
        }

    # --- evaluation ------------------------------------------------------------------------

    @classmethod
    def report_lines(cls, metrics: dict[str, Any]) -> tuple[str, list[str]]:
        """Accuracy (Q3 for three states), F1s, MCC, per-protein accuracy; then per class."""
        accuracy = "Q3" if len(metrics["labels"]) == 3 else "accuracy"
        spread = metrics["per_protein_accuracy"]
        head = (
            f"{metrics['n']} residues of {metrics['proteins']} chains: "
            f"{accuracy} {number(metrics['accuracy'])}  macro-F1 {number(metrics['macro_f1'])}  "
            f"MCC {number(metrics['mcc'])}  per-chain accuracy {number(spread['mean'])} "
            f"(quartiles {number(spread['q1'])} / {number(spread['median'])} / "
            f"{number(spread['q3'])})"
        )
        if metrics["unread"]:
            head += f"  ({metrics['unread']} residues not read: cut sequences)"
        return head, metric_table(
            metrics["per_class"], ["precision", "recall", "f1", "support"], "class"
        )

    def plots(
        self, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, Any], out: Path
    ) -> list[Path]:
        """The per-residue confusion matrix, and the tracks of a few chains."""
        title = (
            f"{metrics['split']}: per-residue accuracy {metrics['accuracy']:.3f}, "
            f"macro-F1 {metrics['macro_f1']:.3f}"
        )
        path = out / "confusion_matrix.png"
        plot_confusion_matrix(metrics["confusion_matrix"], self.labels, path, title)
        tracks_path = out / "residue_tracks.png"
        # The first chains of the split, in its order: the same ones run after run.
        chosen = range(min(TRACKED_CHAINS, len(targets)))
        tracks = [(f"chain {i + 1} of {metrics['split']}", targets[i], outputs[i]) for i in chosen]
        plot_residue_tracks(tracks, self.labels, IGNORED_CLASS, tracks_path,
                            f"{metrics['split']}: per-residue predictions")  # fmt: skip
        return [path, tracks_path]

    def prediction_columns(self) -> list[str]:
        """Header of predictions.csv: one row per chain."""
        return ["id", "true_labels", "predicted_labels", "scored_residues", "accuracy"]

    def prediction_rows(
        self, records: list[SequenceRecord], outputs: np.ndarray
    ) -> list[list[str]]:
        """id, true and predicted class strings, residues scored and the chain's accuracy."""
        rows = []
        targets = self.encode_targets(records)
        for record, target, result in zip(
            records, targets, self.predictions(outputs, None), strict=True
        ):
            predicted = np.array([self.labels.index(c) if c != UNREAD else -1 for c in
                                  result["prediction"]])  # fmt: skip
            scored = (target != IGNORED_CLASS) & (predicted >= 0)
            accuracy = f"{(predicted[scored] == target[scored]).mean():.4f}" if scored.any() else ""
            rows.append(
                [record.id, record.residue_labels, result["prediction"], str(int(scored.sum())),
                 accuracy]
            )  # fmt: skip
        return rows
