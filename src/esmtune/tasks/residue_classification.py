"""Residue classification: one class per residue (secondary structure C/H/E, a 0-7 code ...).

A record's target is its label string, one character per residue (FLIP's ``labels.fasta``,
biotrainer's ``TARGET=CCHHE``); its mask says which residues count. The classes are the
characters found on the train split's unmasked residues, sorted; a class that only validation or
test has is an error, since the model could never predict it. Masked residues are never read as
classes: their label may be a placeholder.

Two classes (site / not site, usually rare positives) are decided like the binary task: a
positive class (data.positive_label, a conventional name, or the rarer class of train's residues)
is the second label, a residue is positive when its probability reaches a threshold tuned on
validation, objective.pos_weight weighs positive residues, and the metrics add the positive
class's precision, recall, F1, ROC-AUC and PR-AUC. The head still gives two logits (softmax), so
every export and runtime treats both cases alike.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from esmtune.config import DataConfig, Task
from esmtune.data.encoding import IGNORED_CLASS
from esmtune.data.fasta import SequenceRecord, Target
from esmtune.data.report import (
    DataReport,
    align_table,
    residue_counts,
    residue_footer,
    residue_summary,
)
from esmtune.errors import ConfigError
from esmtune.plots import plot_confusion_matrix, plot_residue_tracks, plot_roc_pr
from esmtune.tasks.base import (
    HfProblemType,
    TaskSpec,
    class_weights,
    metric_table,
    number,
    residue_difference,
    residue_rows,
    softmax,
)
from esmtune.tasks.binary import choose_positive_label
from esmtune.weighted_metrics import residue_classification_scores

if TYPE_CHECKING:
    import torch

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

# Metrics of the positive class: defined with two classes only.
_POSITIVE_CLASS_METRICS = frozenset({"f1", "precision", "recall", "roc_auc", "pr_auc"})


def _counted(targets: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The class and probabilities of every residue that counts and was read, flat."""
    rows = residue_rows(outputs)
    flat = np.concatenate([*targets, np.zeros(0, dtype=np.int64)])
    used = (flat != IGNORED_CLASS) & np.isfinite(rows).all(axis=1)
    return flat[used], rows[used]


def _positive_scores(targets: np.ndarray, outputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two classes: 0/1 targets and P(positive) of every residue that counts and was read."""
    flat, rows = _counted(targets, outputs)
    return (flat == 1).astype(np.int64), rows[:, 1]


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
        report.labels = cls._ordered(report, data, labels)

    @classmethod
    def _ordered(cls, report: DataReport, data: DataConfig, labels: list[str]) -> list[str]:
        """Two classes: the negative first, the positive second; more: sorted, as found."""
        if len(labels) != 2:
            if data.positive_label is not None and len(labels) > 2:
                report.errors.append(
                    f"data.positive_label applies to two classes; train's residues have "
                    f"{len(labels)} ({', '.join(labels)}): unset it"
                )
            return labels
        try:
            positive = choose_positive_label(
                labels, _class_counts(report.splits.get("train", [])), data.positive_label
            )
        except ValueError as problem:
            report.errors.append(str(problem))
            return []
        report.notes.append(
            f"residue_classification with two classes: positive class '{positive}' "
            "(data.positive_label), decided at a threshold tuned on validation"
        )
        return [next(label for label in labels if label != positive), positive]

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

    @property
    def two_classes(self) -> bool:
        """Whether residues are decided like binary (positive = ``labels[1]``, a threshold)."""
        return len(self.labels) == 2

    @property
    def threshold(self) -> float | None:
        """The positive class's decision threshold (two classes), else None (the likeliest)."""
        if not self.two_classes:
            return None
        return self.thresholds[0] if self.thresholds else 0.5

    def fit(self, targets: np.ndarray) -> None:
        """Loss weight per class from objective.class_weights or (two classes) pos_weight.

        Raises:
            ConfigError: When the weights name classes that do not exist, both are set, or
                pos_weight is set for more than two classes.
        """
        classes, pos_weight = self.objective.class_weights, self.objective.pos_weight
        if classes is not None and pos_weight is not None:
            raise ConfigError(
                "objective.class_weights and objective.pos_weight both weigh residue classes; "
                "set one of them"
            )
        counted = np.concatenate([*targets, np.zeros(0, dtype=np.int64)])
        counts = np.bincount(counted[counted != IGNORED_CLASS], minlength=len(self.labels))
        if pos_weight is not None:
            if not self.two_classes:
                raise ConfigError(
                    f"objective.pos_weight weighs the positive class of two; these residues "
                    f"have {len(self.labels)} classes ({', '.join(self.labels)}): use "
                    "objective.class_weights"
                )
            ratio = counts[0] / max(counts[1], 1) if pos_weight == "balanced" else pos_weight
            self.weights = [1.0, float(np.clip(ratio, 1e-3, 1e3))]
        else:
            self.weights = class_weights(classes, self.labels, counts, "residue classes")

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy (class-weighted when configured) averaged over residues that count.

        Ignored positions (masked residues, ``<cls>``, ``<eos>``, padding) add exactly zero to
        the loss and its gradient; the weighted sum is divided by the number of counted
        residues (a batch without any gives 0, not NaN), as binary's pos_weight does, summed
        and divided so that no step waits on a device-to-host sync.
        """
        from torch import nn

        flat = targets.reshape(-1)
        total = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), flat, weight=self._weight_tensor(logits),
            ignore_index=IGNORED_CLASS, reduction="sum",
        )  # fmt: skip
        return total / (flat != IGNORED_CLASS).sum().clamp(min=1)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes (of the calibrated logits), per residue."""
        import torch

        return torch.softmax(self.calibrated_logits(logits.float()), dim=-1)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Softmax over classes (of the calibrated logits), per residue."""
        return softmax(self.calibrated_array(logits))

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Two classes with Platt scaling: (0, slope x (z1 - z0) + intercept); else the base's."""
        if not self.calibration or "slope" not in self.calibration:
            return super().calibrated_logits(logits)
        import torch

        slope, intercept = self.calibration["slope"][0], self.calibration["intercept"][0]
        difference = logits[..., 1] - logits[..., 0]
        return torch.stack([torch.zeros_like(difference), slope * difference + intercept], -1)

    def calibrated_array(self, logits: np.ndarray) -> np.ndarray:
        """:meth:`calibrated_logits` in numpy (float32)."""
        if not self.calibration or "slope" not in self.calibration:
            return super().calibrated_array(logits)
        logits = np.asarray(logits, dtype=np.float32)
        slope = np.float32(self.calibration["slope"][0])
        intercept = np.float32(self.calibration["intercept"][0])
        difference = logits[..., 1] - logits[..., 0]
        return np.stack([np.zeros_like(difference), slope * difference + intercept], -1)

    def fit_calibration(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, Any] | None:
        """A temperature; two classes: Platt scaling of the logit difference, as binary's."""
        from esmtune.calibration import fit_platt, fit_temperature

        flat_targets, rows = _counted(targets, outputs)
        logits = np.log(np.clip(rows, 1e-12, 1.0))
        if not self.two_classes:
            return {"temperature": fit_temperature(logits, flat_targets)}
        slope, intercept = fit_platt(logits[:, 1] - logits[:, 0], flat_targets == 1)
        return {"slope": [slope], "intercept": [intercept]}

    def calibrated(self, outputs: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
        """Each chain's probabilities as ``calibration`` makes them (unread rows stay NaN)."""
        task = replace(self, calibration=calibration)
        chains = np.empty(len(outputs), dtype=object)
        for i, row in enumerate(outputs):
            chains[i] = task.activate(np.log(np.clip(np.asarray(row, dtype=np.float64), 1e-12, 1)))
        return chains

    def reliability_pairs(
        self, targets: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Per counted residue: P(positive) or the top class's probability, and if it happened."""
        flat_targets, rows = _counted(targets, outputs)
        if self.two_classes:
            return rows[:, 1], flat_targets == 1
        return rows.max(axis=1), rows.argmax(axis=1) == flat_targets

    def tune(self, targets: np.ndarray, outputs: np.ndarray) -> list[float] | None:
        """Two classes: the threshold that maximises objective.threshold_metric on validation."""
        if not self.two_classes or not self.objective.tune_thresholds:
            return None
        from esmtune.metrics import tune_threshold

        positive, scores = _positive_scores(targets, outputs)
        return [tune_threshold(positive, scores, self.objective.threshold_metric)]

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Per-residue accuracy (Q3), F1s, MCC, per-class report, confusion matrix, per protein.

        Two classes: decided at ``thresholds`` (or the saved threshold), with the positive
        class's precision, recall, F1, ROC-AUC and PR-AUC.
        """
        from esmtune.metrics import residue_classification_metrics

        threshold = thresholds[0] if thresholds and self.two_classes else self.threshold
        return residue_classification_metrics(
            targets, outputs, self.labels, IGNORED_CLASS, threshold
        )

    def selection_problem(self, metric: str) -> str | None:
        """The positive-class metrics select checkpoints of two-class runs only."""
        if metric in _POSITIVE_CLASS_METRICS and not self.two_classes:
            return (
                f"{metric} scores a positive class, which two-class residue_classification "
                f"has; these residues have {len(self.labels)} classes "
                f"({', '.join(self.labels)}): choose mcc, accuracy, macro_f1 or protein_accuracy"
            )
        return None

    def decisions(self, row: np.ndarray) -> np.ndarray:
        """Each residue's class index (-1 where unread): likeliest, or positive at threshold."""
        read = np.isfinite(row).all(axis=1)
        probabilities = np.nan_to_num(row)
        if self.threshold is None:
            chosen = probabilities.argmax(axis=1)
        else:
            chosen = (probabilities[:, 1] >= self.threshold).astype(np.int64)
        return np.where(read, chosen, -1)

    def resampled_scores(
        self, targets: np.ndarray, outputs: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per-residue accuracy, macro-F1 and MCC of each resample of whole chains."""
        return residue_classification_scores(
            targets, outputs, IGNORED_CLASS, weights, self.threshold
        )

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
            chosen = self.decisions(row)
            result = {
                "prediction": "".join(self.labels[i] if i >= 0 else UNREAD for i in chosen),
                "classes": list(self.labels),
                "probabilities": [
                    [round(float(p), 6) for p in probabilities] if i >= 0 else None
                    for probabilities, i in zip(row, chosen, strict=True)
                ],
                "unread": int((chosen < 0).sum()),
            }
            if self.threshold is not None:
                result["threshold"] = self.threshold
            results.append(result)
        return results

    def agreement(self, reference: np.ndarray, other: np.ndarray) -> float:
        """Share of residues (read by both) given the same class by two runtimes' outputs."""
        expected = self.decisions(residue_rows(reference))
        got = self.decisions(residue_rows(other))
        read = (expected >= 0) & (got >= 0)
        if not read.any():
            return 1.0
        return float(np.mean(expected[read] == got[read]))

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
        if "threshold" in result:
            lines.append(
                f"  {self.labels[1]} where P({self.labels[1]}) >= {result['threshold']:.3f} "
                "(threshold tuned on validation)"
            )
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
                "threshold": {
                    "type": "number",
                    "description": "two classes: a residue is the second class when its "
                    "probability is at least this (tuned on validation)",
                },
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
        if metrics.get("threshold") is not None:
            head += (
                f"\npositive '{metrics['labels'][1]}' at threshold {metrics['threshold']:.3f} "
                f"({metrics['positives']} positive residues): precision "
                f"{number(metrics['precision'])}  recall {number(metrics['recall'])}  "
                f"F1 {number(metrics['f1'])}  ROC-AUC {number(metrics['roc_auc'])}  "
                f"PR-AUC {number(metrics['pr_auc'])}"
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
        if not self.two_classes:
            return [path, tracks_path]
        curves = out / "roc_pr_curves.png"
        positive, scores = _positive_scores(targets, outputs)
        plot_roc_pr(positive, scores, curves, f"{metrics['split']}: positive residues = "
                    f"{self.labels[1]}", threshold=metrics["threshold"])  # fmt: skip
        return [path, tracks_path, curves]

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
