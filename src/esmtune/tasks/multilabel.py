"""Multilabel: any set of labels per sequence (e.g. Gene Ontology terms, several localisations).

One sigmoid per label, binary cross-entropy, a threshold per label tuned on validation. With an
OBO ontology, annotations are propagated to their ancestors, outputs carry term names and each
parent scores at least as high as its best descendant. Scored by protein-centric Fmax (CAFA).
"""

from __future__ import annotations

import functools
import statistics
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from esmtune.config import DataConfig, Task
from esmtune.data.fasta import SequenceRecord, Target
from esmtune.data.ontology import Ontology, consistent_scores, read_obo
from esmtune.data.report import DataReport, label_table
from esmtune.data.targets import FALSE_WORDS, TRUE_WORDS
from esmtune.errors import DataError
from esmtune.plots import plot_roc_pr
from esmtune.tasks.base import (
    HfProblemType,
    TaskSpec,
    logistic_composition_model,
    metric_table,
    number,
    positive_weights,
    probability_logits,
    ranked_text,
    sigmoid,
)
from esmtune.weighted_metrics import multilabel_scores

if TYPE_CHECKING:
    import torch

__all__ = ["MultilabelTask"]

# Positives and negatives on validation a label needs for a Platt fit of its own.
_OWN_PLATT_FIT = 10


def _labels_from_indicators(values: list[str], columns: list[str]) -> tuple[str, ...]:
    labels = []
    for column, value in zip(columns, values, strict=True):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            labels.append(column)
        elif word not in FALSE_WORDS:
            raise ValueError(
                f"column '{column}' holds {value!r}; one-column-per-label data needs 1/0 "
                "(or true/false)"
            )
    return tuple(sorted(labels))


def _ontology(path: Path) -> Ontology:
    """An OBO file, read once per check (propagation and names both need it)."""
    changed = path.stat().st_mtime_ns if path.is_file() else 0
    return _read_ontology(path, changed)


@functools.lru_cache(maxsize=2)
def _read_ontology(path: Path, changed: int) -> Ontology:
    return read_obo(path)


@dataclass
class MultilabelTask(TaskSpec):
    """Any set of labels: one sigmoid per label, BCE, a tuned threshold per label."""

    task: ClassVar[Task] = Task.MULTILABEL
    headline_metrics: ClassVar[tuple[str, ...]] = ("fmax", "micro_f1", "macro_f1", "micro_ap")
    hf_problem_type: ClassVar[HfProblemType] = "multi_label_classification"
    hf_usage: ClassVar[str] = "probabilities = logits.sigmoid()"

    def __post_init__(self) -> None:
        index = {label: i for i, label in enumerate(self.labels)}
        self._ancestor_index = [
            [index[a] for a in self.ancestors.get(label, []) if a in index] for label in self.labels
        ]

    # --- reading and checking targets --------------------------------------------------------

    @classmethod
    def parse_target(cls, values: list[str], columns: list[str], separator: str) -> Target:
        """Labels from one separated column, or from one 0/1 column per label."""
        if len(columns) > 1:
            labels = _labels_from_indicators(values, columns)
        else:
            labels = tuple(sorted({x.strip() for x in values[0].split(separator) if x.strip()}))
        if not labels:
            where = f"column '{columns[0]}'" if len(columns) == 1 else "any label column"
            raise ValueError(
                f"no label in {where}; every multilabel record needs at least one "
                f"(several separated by '{separator}'); drop unlabelled records"
            )
        return labels

    @classmethod
    def prepare_targets(cls, report: DataReport, data: DataConfig) -> bool:
        """With an ontology, propagate every annotation to its ancestors (the true path rule)."""
        if data.ontology is None:
            return True
        try:
            ontology = _ontology(Path(data.ontology))
        except DataError as error:
            report.errors.append(str(error))
            return False  # labels cannot be judged; the ontology error says what to do
        for split, records in report.splits.items():
            report.splits[split] = [
                replace(r, target=tuple(sorted(ontology.propagate(r.labels)))) for r in records
            ]
        report.notes.append(
            f"multilabel: annotations propagated to their ancestors in {data.ontology}"
        )
        return True

    @classmethod
    def find_labels(cls, report: DataReport, data: DataConfig) -> None:
        """The vocabulary of train; rare labels dropped (data.min_label_count)."""
        train = report.splits.get("train", [])
        counts = Counter(label for r in train for label in r.labels)
        for split in ("validation", "test"):
            records = report.splits.get(split, [])
            unknown = sorted({x for r in records for x in r.labels} - set(counts))
            if unknown and train:
                listed = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
                example = next(r for r in records if set(r.labels) & set(unknown))
                report.errors.append(
                    f"{split}: {len(unknown)} label(s) never occur in train: {listed} (e.g. "
                    f"{example.where}); add training examples of each, or remove them from "
                    f"{split}"
                )
        labels = sorted(label for label, n in counts.items() if n >= data.min_label_count)
        columns = data.target_columns or []
        never = [column for column in columns if len(columns) > 1 and column not in counts]
        if never and train:
            report.notes.append(
                f"multilabel: label column(s) {', '.join(never)} are never 1 in train and are "
                "left out"
            )
        if len(counts) > len(labels):
            cls._drop_rare(report, data, labels, len(counts) - len(labels))
        if train and len(labels) < 2:
            report.errors.append(
                f"multilabel needs at least two labels with {data.min_label_count}+ training "
                f"sequences; found {len(labels)} (lower data.min_label_count, or use task=binary)"
            )
        report.labels = labels
        if data.ontology is not None:
            ontology = _ontology(Path(data.ontology))
            report.label_names = {label: ontology.name(label) for label in labels}
            report.ancestors = ontology.ancestors_within(labels)

    @staticmethod
    def _drop_rare(report: DataReport, data: DataConfig, labels: list[str], rare: int) -> None:
        """Keep only ``labels`` in every record; records left with none are left out."""
        report.notes.append(
            f"multilabel: {rare} label(s) with fewer than {data.min_label_count} training "
            f"sequences dropped; {len(labels)} remain (data.min_label_count)"
        )
        keep = set(labels)
        for split, records in report.splits.items():
            relabelled = [
                replace(r, target=tuple(x for x in r.labels if x in keep)) for r in records
            ]
            kept = [r for r in relabelled if r.target]
            if len(kept) < len(records):
                report.notes.append(
                    f"{split}: {len(records) - len(kept)} record(s) had only dropped labels and "
                    "were left out"
                )
            report.splits[split] = kept

    @classmethod
    def target_table(cls, report: DataReport) -> str:
        """Sequences per label and split, and labels per sequence."""
        per_record = [
            f"{statistics.mean(len(r.labels) for r in report.splits[s]):.2f}"
            for s in report.present
        ]
        return label_table(report, [["labels per sequence", *per_record, "", "", ""]])

    def unknown_targets(self, records: list[SequenceRecord], found: list[str]) -> str | None:
        """Labels outside the vocabulary are ignored (as in training), so nothing is unknown."""
        return None

    # --- training ------------------------------------------------------------------------

    def fit(self, targets: np.ndarray) -> None:
        """Positive weights per label, when configured."""
        self.weights = positive_weights(targets, self.objective.pos_weight)

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """Multi-hot rows over the label vocabulary (labels outside it are ignored)."""
        index = {label: i for i, label in enumerate(self.labels)}
        rows = np.zeros((len(records), len(self.labels)), dtype=np.float32)
        for row, record in enumerate(records):
            columns = [index[x] for x in record.labels if x in index]
            rows[row, columns] = 1.0
        return rows

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy per label, averaged."""
        from torch import nn

        return nn.functional.binary_cross_entropy_with_logits(
            logits, targets.float(), pos_weight=self._weight_tensor(logits)
        )

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """An independent probability per label (of its calibrated logit)."""
        import torch

        return torch.sigmoid(self.calibrated_logits(logits.float()))

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """An independent probability per label (of its calibrated logit)."""
        return sigmoid(self.calibrated_array(logits))

    def fit_calibration(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, Any] | None:
        """Platt scaling per label; labels with few examples on validation share one fit.

        A slope and intercept from a handful of positives would be noise, so a label with fewer
        than ``_OWN_PLATT_FIT`` positives or negatives takes the fit of all labels pooled.
        """
        from esmtune.calibration import fit_platt

        logits = self.logits_of(outputs)
        targets = np.asarray(targets)
        shared = fit_platt(logits.ravel(), targets.ravel())
        fits = []
        for column in range(logits.shape[1]):
            positives = int(targets[:, column].sum())
            if min(positives, len(targets) - positives) >= _OWN_PLATT_FIT:
                fits.append(fit_platt(logits[:, column], targets[:, column]))
            else:
                fits.append(shared)
        return {"slope": [a for a, _ in fits], "intercept": [b for _, b in fits]}

    def logits_of(self, outputs: np.ndarray) -> np.ndarray:
        """Each label's logit."""
        return probability_logits(outputs)

    def reliability_pairs(
        self, targets: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Every label's probability for every sequence, and whether the label applies."""
        return np.asarray(outputs).ravel(), np.asarray(targets).ravel()

    def outputs(self, logits: np.ndarray | torch.Tensor) -> np.ndarray:
        """Probabilities; with an ontology, each parent at least its best descendant."""
        probabilities = super().outputs(logits)
        if self.objective.ontology_consistent and any(self._ancestor_index):
            probabilities = consistent_scores(probabilities, self._ancestor_index)
        return probabilities

    def tune(self, targets: np.ndarray, outputs: np.ndarray) -> list[float] | None:
        """Per-label thresholds that maximise objective.threshold_metric on validation."""
        if not self.objective.tune_thresholds:
            return None
        from esmtune.metrics import tune_thresholds

        return tune_thresholds(targets, outputs, self.objective.threshold_metric).tolist()

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Micro/macro F1 and AP, protein-centric Fmax and its coverage, per-label report."""
        from esmtune.metrics import multilabel_metrics

        chosen = thresholds or self.thresholds
        return multilabel_metrics(
            targets, outputs, self.labels, None if chosen is None else np.asarray(chosen)
        )

    def resampled_scores(
        self, targets: np.ndarray, outputs: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Fmax, micro/macro-F1 at the saved thresholds and micro-AP of each resample."""
        thresholds = np.asarray(self.thresholds or [0.5] * len(self.labels))
        return multilabel_scores(targets, outputs, thresholds, weights)

    # --- predictions -----------------------------------------------------------------------

    def predictions(self, outputs: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        """Every label at or above its threshold, and the top-k ranking with probabilities."""
        thresholds = np.asarray(self.thresholds or [0.5] * len(self.labels))
        results = []
        for row in outputs:
            above = np.flatnonzero(row >= thresholds)
            chosen = sorted(above.tolist(), key=lambda i: -row[i])
            ranked = self._ranked(row, top_k or self.default_top_k)
            shown = {self.labels[i] for i in chosen} | {label for label, _ in ranked}
            results.append(
                {
                    "labels": [self.labels[i] for i in chosen],
                    "probabilities": dict(zip(self.labels, row.tolist(), strict=True)),
                    "top_k": ranked,
                    "names": {x: self.label_names[x] for x in shown if x in self.label_names},
                }
            )
        return results

    @property
    def default_top_k(self) -> int | None:
        """The five most probable labels."""
        return 5

    def agreement(self, reference: np.ndarray, other: np.ndarray) -> float:
        """Share of sequences given the same set of labels by two runtimes' outputs."""
        expected, got = self.predictions(reference, 1), self.predictions(other, 1)
        same = [a["labels"] == b["labels"] for a, b in zip(expected, got, strict=True)]
        return float(np.mean(same))

    def table_header(self) -> list[str]:
        """id, the chosen labels, the ranking, then p_<label> columns (if not too many)."""
        return ["id", "labels", "top_k", *(f"p_{x}" for x in self._probability_columns())]

    def table_row(self, result: dict[str, Any]) -> list[str]:
        """One prediction under :meth:`table_header`."""
        probabilities = [f"{result['probabilities'][x]:.6f}" for x in self._probability_columns()]
        return [result["id"], ";".join(result["labels"]), ranked_text(result), *probabilities]

    def text_lines(self, result: dict[str, Any]) -> list[str]:
        """The chosen labels by name, then the ranking with probability bars."""
        names = result.get("names", {})
        chosen = ", ".join(names.get(x, x) for x in result["labels"]) or "none above threshold"
        return [f"  labels: {chosen}", *self._ranking_lines(result)]

    def frame_row(self, result: dict[str, Any]) -> dict[str, Any]:
        """``labels`` joined by ';', then ``p_<label>`` for every label."""
        row: dict[str, Any] = {"labels": ";".join(result["labels"])}
        row.update({f"p_{k}": v for k, v in result["probabilities"].items()})
        return row

    def display(self) -> dict[str, Any]:
        """The chosen labels, then bars of the ranking (with term names)."""
        return {
            "noun": "labels",
            "list_title": "labels",
            "chosen": {"field": "labels", "title": "labels", "empty": "none"},
            "bars": "top_k",
        }

    # --- evaluation ------------------------------------------------------------------------

    @classmethod
    def report_lines(cls, metrics: dict[str, Any]) -> tuple[str, list[str]]:
        """Fmax (threshold, coverage), F1s and APs, then scores per label with its name."""
        head = (
            f"Fmax {number(metrics['fmax'])} (threshold {number(metrics['fmax_threshold'])}, "
            f"coverage {number(metrics['coverage'])})  micro-F1 {number(metrics['micro_f1'])}  "
            f"macro-F1 {number(metrics['macro_f1'])}  micro-AP {number(metrics['micro_ap'])}  "
            f"macro-AP {number(metrics['macro_ap'])}"
        )
        names = metrics.get("label_names", {})
        rows = {f"{k} {names[k]}" if k in names else k: v for k, v in metrics["per_label"].items()}
        columns = ["precision", "recall", "f1", "ap", "threshold", "support"]
        return head, metric_table(rows, columns, "label")

    def plots(
        self, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, Any], out: Path
    ) -> list[Path]:
        """ROC and precision-recall curves over every protein-label pair (micro-average)."""
        path = out / "roc_pr_curves.png"
        plot_roc_pr(targets, outputs, path, f"{metrics['split']}: all labels (micro-average)")
        return [path]

    def prediction_columns(self) -> list[str]:
        """Header of predictions.csv: true and predicted label sets, then probabilities."""
        return ["id", "true_labels", "predicted_labels", *(f"p_{x}" for x in self.labels)]

    # --- the composition baseline -------------------------------------------------------------

    def baseline_estimator(self) -> Any:
        """One logistic regression per label on standardised composition."""
        return logistic_composition_model(one_per_label=True)

    def baseline_outputs(self, estimator: Any, features: np.ndarray) -> np.ndarray:
        """A probability per label."""
        return estimator.predict_proba(features)

    def trivial_outputs(self, train_targets: np.ndarray, count: int) -> tuple[np.ndarray, str]:
        """Each label's frequency in train, for every sequence."""
        frequencies = np.broadcast_to(train_targets.mean(axis=0), (count, len(self.labels)))
        return frequencies, "label frequencies in train"
