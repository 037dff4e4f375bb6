"""Binary: positive or not (e.g. secreted), with a decision threshold tuned on validation.

One logit, sigmoid, binary cross-entropy (optionally positive-weighted); the positive class is
configured, conventionally named (yes, true, 1 ...) or the rarer one in train.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from esmtune.config import DataConfig, Task
from esmtune.data.fasta import SequenceRecord
from esmtune.data.report import DataReport
from esmtune.data.targets import FALSE_WORDS, TRUE_WORDS
from esmtune.plots import plot_roc_pr
from esmtune.tasks.base import (
    HfProblemType,
    number,
    positive_weights,
    probability_logits,
    sigmoid,
)
from esmtune.tasks.single_label import SingleLabelTask
from esmtune.weighted_metrics import binary_scores

if TYPE_CHECKING:
    import torch

__all__ = ["BinaryTask", "choose_positive_label"]


def choose_positive_label(labels: list[str], counts: Mapping[str, int], chosen: str | None) -> str:
    """The positive class: as configured, a conventional name, or the rarer one in train.

    Args:
        labels: The two labels found.
        counts: Train's examples of each label (sequences, or residues per residue).
        chosen: The configured positive label (data.positive_label), or None.

    Raises:
        ValueError: When ``chosen`` is not one of ``labels``.
    """
    if chosen is not None:
        matches = [label for label in labels if label.lower() == chosen.lower()]
        if not matches and chosen in ("true", "false"):  # YAML turned yes/no into a boolean
            words = TRUE_WORDS if chosen == "true" else FALSE_WORDS
            matches = [label for label in labels if label.lower() in words]
        if not matches:
            raise ValueError(
                f"data.positive_label '{chosen}' is not a label of train ({', '.join(labels)})"
            )
        return matches[0]
    conventional = [label for label in labels if label.lower() in TRUE_WORDS]
    if len(conventional) == 1:
        return conventional[0]
    return min(labels, key=lambda label: (counts.get(label, 0), labels.index(label) == 0))


class BinaryTask(SingleLabelTask):
    """Positive or not: one logit, sigmoid, BCE; the decision threshold is tuned on validation."""

    task: ClassVar[Task] = Task.BINARY
    title_metric: ClassVar[tuple[str, str]] = ("mcc", "MCC")
    headline_metrics: ClassVar[tuple[str, ...]] = ("mcc", "f1", "roc_auc", "pr_auc")
    hf_problem_type: ClassVar[HfProblemType] = "single_label_classification"
    hf_usage: ClassVar[str] = "probabilities = logits.softmax(-1)  # [:, 1] is P(positive)"

    @classmethod
    def order_labels(cls, report: DataReport, data: DataConfig, labels: list[str]) -> list[str]:
        """Exactly two labels, the negative first and the positive second."""
        if len(labels) > 2:
            report.errors.append(
                f"task=binary needs exactly two labels; train has {len(labels)} "
                f"({', '.join(labels[:8])}): use task=multiclass, or merge labels"
            )
        if len(labels) != 2:
            return labels
        train = report.splits.get("train", [])
        counts = {label: sum(r.target == label for r in train) for label in labels}
        try:
            positive = choose_positive_label(labels, counts, data.positive_label)
        except ValueError as problem:
            report.errors.append(str(problem))
            return []
        report.notes.append(f"binary: positive class is '{positive}' (data.positive_label)")
        return [next(x for x in labels if x != positive), positive]

    @property
    def num_outputs(self) -> int:
        """One logit, for the positive class (``labels[1]``)."""
        return 1

    @property
    def threshold(self) -> float:
        """The decision threshold in use."""
        return self.thresholds[0] if self.thresholds else 0.5

    def fit(self, targets: np.ndarray) -> None:
        """Positive weight for BCE, when configured."""
        self.weights = positive_weights(targets, self.objective.pos_weight)

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """1.0 for the positive class, 0.0 for the other."""
        return np.asarray([r.target == self.labels[1] for r in records], dtype=np.float32)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy on the single logit."""
        from torch import nn

        return nn.functional.binary_cross_entropy_with_logits(
            logits[:, 0], targets.float(), pos_weight=self._weight_tensor(logits)
        )

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """P(positive) (of the calibrated logit), shape ``(batch,)``."""
        import torch

        return torch.sigmoid(self.calibrated_logits(logits.float())[:, 0])

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """P(positive) (of the calibrated logit), shape ``(batch,)``."""
        return sigmoid(self.calibrated_array(logits)[:, 0])

    def fit_calibration(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, Any] | None:
        """Platt scaling of the logit."""
        from esmtune.calibration import fit_platt

        slope, intercept = fit_platt(self.logits_of(outputs)[:, 0], targets)
        return {"slope": [slope], "intercept": [intercept]}

    def logits_of(self, outputs: np.ndarray) -> np.ndarray:
        """The logit of P(positive), one column."""
        return probability_logits(outputs)[:, None]

    def reliability_pairs(
        self, targets: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """P(positive), and whether the sequence is positive."""
        return np.asarray(outputs), np.asarray(targets)

    def label_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """P(negative) and P(positive): the one output stands for both labels."""
        import torch

        positive = self.activation(logits)
        return torch.stack([1 - positive, positive], dim=1)

    def decided_label(self, outputs: np.ndarray) -> int:
        """The positive label at or above the threshold, else the negative one."""
        return int(float(outputs) >= self.threshold)

    def tune(self, targets: np.ndarray, outputs: np.ndarray) -> list[float] | None:
        """The threshold that maximises objective.threshold_metric on validation."""
        if not self.objective.tune_thresholds:
            return None
        from esmtune.metrics import tune_threshold

        return [tune_threshold(targets, outputs, self.objective.threshold_metric)]

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Accuracy, precision, recall, F1, MCC at the threshold; ROC-AUC and PR-AUC."""
        from esmtune.metrics import binary_metrics

        threshold = thresholds[0] if thresholds else self.threshold
        return binary_metrics(targets, outputs, self.labels, threshold)

    def resampled_scores(
        self, targets: np.ndarray, outputs: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """MCC and F1 at the threshold, ROC-AUC and PR-AUC of each resample."""
        return binary_scores(targets, outputs, self.threshold, weights)

    def predictions(self, outputs: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        """The decided label, P(positive) and the threshold that decided it."""
        negative, positive = self.labels
        return [
            {
                "label": positive if p >= self.threshold else negative,
                "probability": float(p),
                "threshold": self.threshold,
                "probabilities": {negative: 1.0 - float(p), positive: float(p)},
            }
            for p in outputs
        ]

    def table_header(self) -> list[str]:
        """id, label, P(positive), the threshold, then p_<label> columns."""
        columns = self._probability_columns()
        return ["id", "label", "probability", "threshold", *(f"p_{x}" for x in columns)]

    def table_row(self, result: dict[str, Any]) -> list[str]:
        """One prediction under :meth:`table_header`."""
        probabilities = [f"{result['probabilities'][x]:.6f}" for x in self._probability_columns()]
        return [
            result["id"], result["label"], f"{result['probability']:.6f}",
            f"{result['threshold']:.4f}", *probabilities,
        ]  # fmt: skip

    def text_lines(self, result: dict[str, Any]) -> list[str]:
        """The decision, P(positive) and the threshold."""
        return [
            f"  {result['label']}  (P({self.labels[1]}) = {result['probability']:.3f}, "
            f"threshold {result['threshold']:.3f})"
        ]

    def display(self) -> dict[str, Any]:
        """The label and the threshold that decided it, then both probabilities as bars."""
        return {
            "noun": "labels",
            "list_title": "labels",
            "chosen": {
                "field": "label", "title": "label", "detail": "threshold", "prefix": "threshold ",
            },
            "bars": "probabilities",
        }  # fmt: skip

    @classmethod
    def report_lines(cls, metrics: dict[str, Any]) -> tuple[str, list[str]]:
        """The scores at the threshold and the ranking scores, then the confusion counts."""
        head = (
            f"positive '{metrics['labels'][1]}' at threshold {metrics['threshold']:.3f}: "
            f"accuracy {number(metrics['accuracy'])}  precision {number(metrics['precision'])}"
            f"  recall {number(metrics['recall'])}  F1 {number(metrics['f1'])}  "
            f"MCC {number(metrics['mcc'])}  ROC-AUC {number(metrics['roc_auc'])}  "
            f"PR-AUC {number(metrics['pr_auc'])}"
        )
        (tn, fp), (fn, tp) = metrics["confusion_matrix"]
        return head, [f"confusion: TP {tp}  FP {fp}  FN {fn}  TN {tn}"]

    def plots(
        self, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, Any], out: Path
    ) -> list[Path]:
        """The confusion matrix, then ROC and precision-recall curves with the threshold."""
        written = super().plots(targets, outputs, metrics, out)
        path = out / "roc_pr_curves.png"
        title = f"{metrics['split']}: positive = {self.labels[1]}"
        plot_roc_pr(targets, outputs, path, title, threshold=metrics["threshold"])
        return [*written, path]

    def baseline_outputs(self, estimator: Any, features: np.ndarray) -> np.ndarray:
        """P(positive)."""
        return estimator.predict_proba(features)[:, list(estimator.classes_).index(1.0)]

    def trivial_outputs(self, train_targets: np.ndarray, count: int) -> tuple[np.ndarray, str]:
        """Always the commonest training label (the negative one on a tie)."""
        positive_commonest = train_targets.sum() > len(train_targets) - train_targets.sum()
        label = self.labels[1] if positive_commonest else self.labels[0]
        return np.full(count, float(positive_commonest)), f"always '{label}'"

    def hf_output_layer(
        self, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """One logit z (calibrated) becomes two, (0, z), whose softmax is (1 - σ(z), σ(z))."""
        import torch

        weight, bias = super().hf_output_layer(weight, bias)
        return torch.cat([torch.zeros_like(weight), weight]), torch.cat([bias.new_zeros(1), bias])
