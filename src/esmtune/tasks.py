"""What each task owns: targets, loss, output activation, thresholds, metrics and predictions.

One class per :class:`~esmtune.config.Task`. A task is fitted once on the training targets
(class weights, positive weights, target standardisation) and saved with the run, so that
evaluation and prediction rebuild exactly the same behaviour from the run directory. Adding a
task means adding a class here, not ``if`` statements across the code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from esmtune.config import ObjectiveConfig, Task, TrainConfig
from esmtune.data.fasta import SequenceRecord
from esmtune.data.ontology import consistent_scores
from esmtune.errors import ConfigError
from esmtune.metrics import (
    binary_metrics,
    multiclass_metrics,
    multilabel_metrics,
    regression_metrics,
    tune_threshold,
    tune_thresholds,
)

__all__ = ["TaskSpec", "build_task", "task_from_state"]


@dataclass
class TaskSpec:
    """Behaviour shared by every task; subclasses fill in what differs.

    Attributes:
        labels: Output names: classes (binary: negative, positive), multilabel vocabulary or
            regression targets, in the order of the head's outputs.
        objective: Loss and threshold settings from the config.
        label_names: Readable names (e.g. GO term names) for labels that have one.
        ancestors: For each label, its ancestors within ``labels`` (ontology consistency).
        weights: Per-output loss weights fitted on train (class or positive weights), or None.
        thresholds: Decision thresholds (binary: one; multilabel: one per label), or None.
        target_mean: Regression: training mean of each target.
        target_std: Regression: training standard deviation of each target.
    """

    task: ClassVar[Task]
    labels: list[str]
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    label_names: dict[str, str] = field(default_factory=dict)
    ancestors: dict[str, list[str]] = field(default_factory=dict)
    weights: list[float] | None = None
    thresholds: list[float] | None = None
    target_mean: list[float] | None = None
    target_std: list[float] | None = None

    @property
    def num_outputs(self) -> int:
        """Size of the head's output layer."""
        return len(self.labels)

    def state(self) -> dict[str, Any]:
        """What the run directory keeps to rebuild this task."""
        return {
            "task": self.task.value,
            "labels": self.labels,
            "label_names": self.label_names,
            "ancestors": self.ancestors,
            "weights": self.weights,
            "thresholds": self.thresholds,
            "target_mean": self.target_mean,
            "target_std": self.target_std,
            "objective": self.objective.model_dump(mode="json"),
        }

    def fit(self, targets: np.ndarray) -> None:
        """Learn what the loss needs from the training targets (nothing by default)."""

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """Targets as the numbers the loss and metrics take."""
        raise NotImplementedError

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Training loss of a batch."""
        raise NotImplementedError

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits to probabilities (or values on the targets' own scale)."""
        raise NotImplementedError

    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        """What a prediction reports, as numpy: activated, and made consistent where needed."""
        return self.activation(logits.float()).cpu().numpy()

    def tune(self, targets: np.ndarray, outputs: np.ndarray) -> list[float] | None:
        """Thresholds that maximise the configured metric on these (validation) outputs."""
        return None

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Every metric of the task (thresholded ones at ``thresholds`` or the saved ones)."""
        raise NotImplementedError

    def predictions(self, outputs: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        """One result per row of ``outputs``: the task's prediction format."""
        raise NotImplementedError

    def _weight_tensor(self, like: torch.Tensor) -> torch.Tensor | None:
        if self.weights is None:
            return None
        return torch.as_tensor(self.weights, dtype=torch.float32, device=like.device)

    def _ranked(self, row: np.ndarray, top_k: int | None) -> list[tuple[str, float]]:
        order = np.argsort(-row, kind="stable")[: top_k or len(self.labels)]
        return [(self.labels[i], float(row[i])) for i in order]


@dataclass
class MulticlassTask(TaskSpec):
    """One label of N: softmax, cross-entropy (optionally class-weighted)."""

    task: ClassVar[Task] = Task.MULTICLASS

    def fit(self, targets: np.ndarray) -> None:
        """Class weights: balanced (n / (classes x count)) or as configured."""
        weights = self.objective.class_weights
        if weights == "balanced":
            counts = np.bincount(targets, minlength=len(self.labels)).astype(float)
            self.weights = (len(targets) / (len(self.labels) * np.maximum(counts, 1))).tolist()
        elif isinstance(weights, dict):
            unknown = sorted(set(weights) - set(self.labels))
            if unknown:
                raise ConfigError(
                    f"objective.class_weights names {', '.join(unknown)}, which are not labels "
                    f"({', '.join(self.labels)})"
                )
            self.weights = [float(weights.get(label, 1.0)) for label in self.labels]

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """Class indices."""
        index = {label: i for i, label in enumerate(self.labels)}
        return np.asarray([index[str(r.target)] for r in records], dtype=np.int64)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Cross-entropy, class-weighted when configured."""
        return nn.functional.cross_entropy(logits, targets, weight=self._weight_tensor(logits))

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Softmax over classes."""
        return torch.softmax(logits.float(), dim=-1)

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Accuracy, macro/weighted F1, MCC, per-class report, ROC-AUC, confusion matrix."""
        return multiclass_metrics(targets, outputs, self.labels)

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


def _positive_weights(targets: np.ndarray, setting: float | str | None) -> list[float] | None:
    """BCE pos_weight: negatives / positives per output ("balanced") or one number for all."""
    if setting is None:
        return None
    columns = targets.reshape(len(targets), -1)
    if setting == "balanced":
        positives = columns.sum(axis=0)
        ratio = (len(columns) - positives) / np.maximum(positives, 1)
        return np.clip(ratio, 1e-3, 1e3).tolist()
    return [float(setting)] * columns.shape[1]


@dataclass
class BinaryTask(TaskSpec):
    """Positive or not: one logit, sigmoid, BCE; the decision threshold is tuned on validation."""

    task: ClassVar[Task] = Task.BINARY

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
        self.weights = _positive_weights(targets, self.objective.pos_weight)

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """1.0 for the positive class, 0.0 for the other."""
        return np.asarray([r.target == self.labels[1] for r in records], dtype=np.float32)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy on the single logit."""
        return nn.functional.binary_cross_entropy_with_logits(
            logits[:, 0], targets.float(), pos_weight=self._weight_tensor(logits)
        )

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """P(positive), shape ``(batch,)``."""
        return torch.sigmoid(logits.float()[:, 0])

    def tune(self, targets: np.ndarray, outputs: np.ndarray) -> list[float] | None:
        """The threshold that maximises objective.threshold_metric on validation."""
        if not self.objective.tune_thresholds:
            return None
        return [tune_threshold(targets, outputs, self.objective.threshold_metric)]

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Accuracy, precision, recall, F1, MCC at the threshold; ROC-AUC and PR-AUC."""
        threshold = thresholds[0] if thresholds else self.threshold
        return binary_metrics(targets, outputs, self.labels, threshold)

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


@dataclass
class MultilabelTask(TaskSpec):
    """Any set of labels: one sigmoid per label, BCE, a tuned threshold per label."""

    task: ClassVar[Task] = Task.MULTILABEL

    def __post_init__(self) -> None:
        index = {label: i for i, label in enumerate(self.labels)}
        self._ancestor_index = [
            [index[a] for a in self.ancestors.get(label, []) if a in index] for label in self.labels
        ]

    def fit(self, targets: np.ndarray) -> None:
        """Positive weights per label, when configured."""
        self.weights = _positive_weights(targets, self.objective.pos_weight)

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """Multi-hot rows over the label vocabulary (labels outside it are ignored)."""
        index = {label: i for i, label in enumerate(self.labels)}
        rows = np.zeros((len(records), len(self.labels)), dtype=np.float32)
        for row, record in enumerate(records):
            columns = [index[x] for x in record.target or () if x in index]
            rows[row, columns] = 1.0
        return rows

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """Binary cross-entropy per label, averaged."""
        return nn.functional.binary_cross_entropy_with_logits(
            logits, targets.float(), pos_weight=self._weight_tensor(logits)
        )

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """An independent probability per label."""
        return torch.sigmoid(logits.float())

    def outputs(self, logits: torch.Tensor) -> np.ndarray:
        """Probabilities; with an ontology, each parent at least its best descendant."""
        probabilities = super().outputs(logits)
        if self.objective.ontology_consistent and any(self._ancestor_index):
            probabilities = consistent_scores(probabilities, self._ancestor_index)
        return probabilities

    def tune(self, targets: np.ndarray, outputs: np.ndarray) -> list[float] | None:
        """Per-label thresholds that maximise objective.threshold_metric on validation."""
        if not self.objective.tune_thresholds:
            return None
        return tune_thresholds(targets, outputs, self.objective.threshold_metric).tolist()

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Micro/macro F1 and AP, protein-centric Fmax and its coverage, per-label report."""
        chosen = thresholds or self.thresholds
        return multilabel_metrics(
            targets, outputs, self.labels, None if chosen is None else np.asarray(chosen)
        )

    def predictions(self, outputs: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        """Every label at or above its threshold, and the top-k ranking with probabilities."""
        thresholds = np.asarray(self.thresholds or [0.5] * len(self.labels))
        results = []
        for row in outputs:
            above = np.flatnonzero(row >= thresholds)
            chosen = sorted(above.tolist(), key=lambda i: -row[i])
            ranked = self._ranked(row, top_k or 5)
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


@dataclass
class RegressionTask(TaskSpec):
    """One or more numbers: MSE or Huber on standardised targets, undone at prediction."""

    task: ClassVar[Task] = Task.REGRESSION

    def fit(self, targets: np.ndarray) -> None:
        """Mean and standard deviation of each target on train (or 0 and 1 when switched off)."""
        if self.objective.standardize_targets:
            std = targets.std(axis=0)
            self.target_mean = targets.mean(axis=0).tolist()
            self.target_std = np.where(std > 0, std, 1.0).tolist()
        else:
            self.target_mean = [0.0] * targets.shape[1]
            self.target_std = [1.0] * targets.shape[1]

    def _scale(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.as_tensor(self.target_mean or 0.0, dtype=torch.float32, device=like.device)
        std = torch.as_tensor(self.target_std or 1.0, dtype=torch.float32, device=like.device)
        return mean, std

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """Values on their own scale, shape ``(n, targets)``."""
        return np.asarray([r.target for r in records], dtype=np.float32).reshape(len(records), -1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """MSE or Huber between the outputs and the standardised targets."""
        mean, std = self._scale(logits)
        scaled = (targets.float() - mean) / std
        if self.objective.regression_loss == "huber":
            return nn.functional.huber_loss(logits, scaled, delta=self.objective.huber_delta)
        return nn.functional.mse_loss(logits, scaled)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Outputs back on the targets' scale."""
        mean, std = self._scale(logits)
        return logits.float() * std + mean

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Spearman, Pearson, RMSE, MAE, R² per target and averaged."""
        return regression_metrics(targets, outputs, self.labels)

    def predictions(self, outputs: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        """The predicted value (one target) or values by target name."""
        results = []
        for row in outputs:
            values = dict(zip(self.labels, (float(v) for v in row), strict=True))
            result: dict[str, Any] = {"values": values}
            if len(self.labels) == 1:
                result = {"value": float(row[0]), **result}
            results.append(result)
        return results


_TASKS: dict[Task, type[TaskSpec]] = {
    Task.MULTICLASS: MulticlassTask,
    Task.BINARY: BinaryTask,
    Task.MULTILABEL: MultilabelTask,
    Task.REGRESSION: RegressionTask,
}


def build_task(
    config: TrainConfig,
    labels: list[str],
    train_records: list[SequenceRecord],
    label_names: dict[str, str] | None = None,
    ancestors: dict[str, list[str]] | None = None,
) -> TaskSpec:
    """The task of ``config``, fitted on the training records.

    Raises:
        ConfigError: When objective settings name labels the data does not have.
    """
    spec = _TASKS[config.task](
        labels=list(labels),
        objective=config.objective,
        label_names=dict(label_names or {}),
        ancestors=dict(ancestors or {}),
    )
    spec.fit(spec.encode_targets(train_records))
    return spec


def task_from_state(state: dict[str, Any]) -> TaskSpec:
    """Rebuild a fitted task from :meth:`TaskSpec.state` (a run's ``labels.json``)."""
    task = Task(state.get("task", Task.MULTICLASS.value))
    return _TASKS[task](
        labels=list(state["labels"]),
        objective=ObjectiveConfig.model_validate(state.get("objective", {})),
        label_names=state.get("label_names") or {},
        ancestors=state.get("ancestors") or {},
        weights=state.get("weights"),
        thresholds=state.get("thresholds"),
        target_mean=state.get("target_mean"),
        target_std=state.get("target_std"),
    )
