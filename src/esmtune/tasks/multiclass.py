"""Multiclass: one label of N per sequence (e.g. subcellular localisation).

Softmax over the classes, cross-entropy (optionally class-weighted); a prediction is the most
probable label with every class probability and a top-k ranking.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from esmtune.config import Task
from esmtune.data.fasta import SequenceRecord
from esmtune.tasks.base import (
    HfProblemType,
    class_weights,
    metric_table,
    number,
    ranked_text,
    softmax,
)
from esmtune.tasks.single_label import SingleLabelTask
from esmtune.weighted_metrics import multiclass_scores

if TYPE_CHECKING:
    import torch

__all__ = ["MulticlassTask"]


class MulticlassTask(SingleLabelTask):
    """One label of N: softmax, cross-entropy (optionally class-weighted)."""

    task: ClassVar[Task] = Task.MULTICLASS
    title_metric: ClassVar[tuple[str, str]] = ("macro_f1", "macro-F1")
    headline_metrics: ClassVar[tuple[str, ...]] = ("accuracy", "macro_f1", "mcc")
    hf_problem_type: ClassVar[HfProblemType] = "single_label_classification"
    hf_usage: ClassVar[str] = "probabilities = logits.softmax(-1)"

    def fit(self, targets: np.ndarray) -> None:
        """Class weights: balanced (n / (classes x count)) or as configured."""
        counts = np.bincount(targets, minlength=len(self.labels)).astype(float)
        self.weights = class_weights(self.objective.class_weights, self.labels, counts)

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """Class indices."""
        index = {label: i for i, label in enumerate(self.labels)}
        return np.asarray([index[r.label] for r in records], dtype=np.int64)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, class-weighted when configured."""
        from torch import nn

        return nn.functional.cross_entropy(logits, targets, weight=self._weight_tensor(logits))

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes (of the calibrated logits)."""
        import torch

        return torch.softmax(self.calibrated_logits(logits.float()), dim=-1)

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Softmax over classes (of the calibrated logits)."""
        return softmax(self.calibrated_array(logits))

    def fit_calibration(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, Any] | None:
        """A temperature: the likeliest class stays the likeliest, confidence moves."""
        from esmtune.calibration import fit_temperature

        return {"temperature": fit_temperature(self.logits_of(outputs), targets)}

    def logits_of(self, outputs: np.ndarray) -> np.ndarray:
        """Log-probabilities: softmax gives the probabilities back."""
        return np.log(np.clip(outputs, 1e-12, 1.0))

    def reliability_pairs(
        self, targets: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """The top class's probability, and whether it was the true class."""
        return outputs.max(axis=1), outputs.argmax(axis=1) == targets

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Accuracy, macro/weighted F1, MCC, per-class report, ROC-AUC, confusion matrix."""
        from esmtune.metrics import multiclass_metrics

        return multiclass_metrics(targets, outputs, self.labels)

    def resampled_scores(
        self, targets: np.ndarray, outputs: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Accuracy, macro-F1 and MCC of each resample, from weighted confusion matrices."""
        return multiclass_scores(targets, outputs, weights)

    def predictions(self, outputs: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        """The most probable label, every class probability and the top-k ranking."""
        results = []
        for row in outputs:
            ranked = self._ranked(row, top_k)
            results.append(
                {
                    "label": ranked[0][0],
                    "probability": ranked[0][1],
                    "probabilities": dict(zip(self.labels, row.tolist(), strict=True)),
                    "top_k": ranked,
                }
            )
        return results

    @property
    def default_top_k(self) -> int | None:
        """Every class, ranked."""
        return len(self.labels)

    def table_header(self) -> list[str]:
        """id, label, its probability, the ranking, then p_<label> columns."""
        return [
            "id",
            "label",
            "probability",
            "top_k",
            *(f"p_{x}" for x in self._probability_columns()),
        ]

    def table_row(self, result: dict[str, Any]) -> list[str]:
        """One prediction under :meth:`table_header`."""
        probabilities = [f"{result['probabilities'][x]:.6f}" for x in self._probability_columns()]
        return [
            result["id"], result["label"], f"{result['probability']:.6f}", ranked_text(result),
            *probabilities,
        ]  # fmt: skip

    def text_lines(self, result: dict[str, Any]) -> list[str]:
        """The ranking with probability bars."""
        return self._ranking_lines(result)

    def display(self) -> dict[str, Any]:
        """The label and its probability, then bars of the ranking."""
        return {
            "noun": "labels",
            "list_title": "labels",
            "chosen": {"field": "label", "title": "label", "detail": "probability", "prefix": ""},
            "bars": "top_k",
        }

    @classmethod
    def report_lines(cls, metrics: dict[str, Any]) -> tuple[str, list[str]]:
        """Accuracy, F1s, MCC and ROC-AUC, then precision/recall/F1 per class."""
        head = (
            f"accuracy {number(metrics['accuracy'])}  macro-F1 {number(metrics['macro_f1'])}  "
            f"weighted-F1 {number(metrics['weighted_f1'])}  MCC {number(metrics['mcc'])}  "
            f"ROC-AUC (ovr) {number(metrics['roc_auc_ovr'])}"
        )
        return head, metric_table(
            metrics["per_class"], ["precision", "recall", "f1", "support"], "class"
        )

    def baseline_outputs(self, estimator: Any, features: np.ndarray) -> np.ndarray:
        """Class probabilities in label order."""
        probabilities = np.zeros((len(features), len(self.labels)))
        probabilities[:, estimator.classes_] = estimator.predict_proba(features)
        return probabilities

    def trivial_outputs(self, train_targets: np.ndarray, count: int) -> tuple[np.ndarray, str]:
        """Always the commonest training label."""
        commonest = int(np.bincount(train_targets, minlength=len(self.labels)).argmax())
        always = np.zeros((count, len(self.labels)))
        always[:, commonest] = 1.0
        return always, f"always '{self.labels[commonest]}'"
