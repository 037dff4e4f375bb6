"""Regression: one or more numbers per sequence (e.g. fitness, stability).

MSE or Huber loss on targets standardised with the training mean and deviation, undone at
prediction, so outputs are in the targets' own units. Scored by Spearman (the usual measure for
fitness landscapes), Pearson, R², RMSE and MAE.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from esmtune.config import DataConfig, Task
from esmtune.data.fasta import SequenceRecord, Target
from esmtune.data.report import DataReport, align_table, length_stats
from esmtune.plots import plot_scatter
from esmtune.tasks.base import HfProblemType, TaskSpec, metric_table, number
from esmtune.weighted_metrics import regression_means

if TYPE_CHECKING:
    import torch

__all__ = ["RegressionTask"]

# Two runtimes "agree" on a sequence when every value is within this share of the spread.
_VALUE_TOLERANCE = 0.01


@dataclass
class RegressionTask(TaskSpec):
    """One or more numbers: MSE or Huber on standardised targets, undone at prediction."""

    task: ClassVar[Task] = Task.REGRESSION
    target_noun: ClassVar[str] = "target(s)"
    headline_metrics: ClassVar[tuple[str, ...]] = ("spearman", "pearson", "r2", "rmse")
    hf_problem_type: ClassVar[HfProblemType] = "regression"
    hf_usage: ClassVar[str] = "values = logits  # in the targets' own units"
    baseline_model_name: ClassVar[str] = "ridge regression"

    # --- reading and checking targets --------------------------------------------------------

    @classmethod
    def parse_target(cls, values: list[str], columns: list[str], separator: str) -> Target:
        """A finite number from each target column."""
        numbers = []
        for column, value in zip(columns, values, strict=True):
            try:
                number_ = float(value)
            except ValueError:
                number_ = math.nan
                if value.strip():
                    raise ValueError(
                        f"column '{column}' holds {value!r}, not a number; regression targets "
                        "must be numeric"
                    ) from None
            if not math.isfinite(number_):
                shown = repr(value) if value.strip() else "empty"
                raise ValueError(
                    f"column '{column}' is {shown}; "
                    "every regression target needs a finite number: fill it in or drop the row"
                )
            numbers.append(number_)
        return tuple(numbers)

    @classmethod
    def find_labels(cls, report: DataReport, data: DataConfig) -> None:
        """The target columns are the outputs' names."""
        report.labels = list(data.target_columns or cls.default_target_columns())

    @classmethod
    def target_table(cls, report: DataReport) -> str:
        """Per target and split: count, mean, deviation and range; then lengths."""
        header = ["target", "split", "n", "mean", "std", "min", "max"]
        rows = []
        for column, name in enumerate(report.labels):
            for split in report.present:
                values = [r.values[column] for r in report.splits[split]]
                spread = statistics.pstdev(values)  # as in the summary and the standardisation
                rows.append([
                    name, split, str(len(values)), f"{statistics.mean(values):.4g}",
                    f"{spread:.4g}", f"{min(values):.4g}", f"{max(values):.4g}",
                ])  # fmt: skip
        lengths = [len(r.sequence) for s in report.present for r in report.splits[s]]
        low, median, high = length_stats(lengths)
        return align_table(
            header, rows, [["length", "all", str(len(lengths)), median, "", low, high]]
        )

    @classmethod
    def target_summary(cls, report: DataReport) -> dict[str, object]:
        """Count, mean and deviation of each target per split."""
        return {
            split: {
                "n": len(records),
                **{
                    name: {
                        "mean": statistics.mean(r.values[i] for r in records),
                        "std": statistics.pstdev(r.values[i] for r in records),
                    }
                    for i, name in enumerate(report.labels)
                },
            }
            for split, records in report.splits.items()
        }

    def unknown_targets(self, records: list[SequenceRecord], found: list[str]) -> str | None:
        """Data to evaluate must have the model's targets."""
        if found == self.labels:
            return None
        return f"targets {found} differ from the model's {self.labels}"

    # --- training ------------------------------------------------------------------------

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
        import torch

        mean = torch.as_tensor(self.target_mean or 0.0, dtype=torch.float32, device=like.device)
        std = torch.as_tensor(self.target_std or 1.0, dtype=torch.float32, device=like.device)
        return mean, std

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """Values on their own scale, shape ``(n, targets)``."""
        return np.asarray([r.values for r in records], dtype=np.float32).reshape(len(records), -1)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """MSE or Huber between the outputs and the standardised targets."""
        from torch import nn

        mean, std = self._scale(logits)
        scaled = (targets.float() - mean) / std
        if self.objective.regression_loss == "huber":
            return nn.functional.huber_loss(logits, scaled, delta=self.objective.huber_delta)
        return nn.functional.mse_loss(logits, scaled)

    def activation(self, logits: torch.Tensor) -> torch.Tensor:
        """Outputs back on the targets' scale."""
        mean, std = self._scale(logits)
        return logits.float() * std + mean

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """Outputs back on the targets' scale."""
        mean = np.asarray(self.target_mean or 0.0, dtype=np.float32)
        std = np.asarray(self.target_std or 1.0, dtype=np.float32)
        return np.asarray(logits, dtype=np.float32) * std + mean

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Spearman, Pearson, RMSE, MAE, R² per target and averaged."""
        from esmtune.metrics import regression_metrics

        return regression_metrics(targets, outputs, self.labels)

    def resampled_scores(
        self, targets: np.ndarray, outputs: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Spearman, Pearson, R² and RMSE (means over targets) of each resample."""
        return regression_means(targets, outputs, weights)

    # --- predictions -----------------------------------------------------------------------

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

    def decided_label(self, outputs: np.ndarray) -> int:
        """No target is chosen by a prediction: the first one."""
        return 0

    def agreement(self, reference: np.ndarray, other: np.ndarray) -> float:
        """Share of sequences whose every value is within 1% of the values' spread."""
        spread = np.maximum(reference.std(axis=0), 1e-6)
        close = np.abs(other - reference) <= _VALUE_TOLERANCE * spread
        return float(close.all(axis=1).mean())

    def table_header(self) -> list[str]:
        """id, then one column per target."""
        return ["id", *self.labels]

    def table_row(self, result: dict[str, Any]) -> list[str]:
        """One prediction under :meth:`table_header`."""
        return [result["id"], *(f"{result['values'][x]:.6g}" for x in self.labels)]

    def text_lines(self, result: dict[str, Any]) -> list[str]:
        """Each target's value."""
        return [f"  {name}: {value:.4g}" for name, value in result["values"].items()]

    def frame_row(self, result: dict[str, Any]) -> dict[str, Any]:
        """One column per target."""
        return dict(result["values"])

    def display(self) -> dict[str, Any]:
        """Each target's value."""
        return {"noun": "target(s)", "list_title": "targets", "values": "values"}

    # --- evaluation ------------------------------------------------------------------------

    @classmethod
    def report_lines(cls, metrics: dict[str, Any]) -> tuple[str, list[str]]:
        """Rank and linear correlation, R², errors; then the same per target."""
        head = (
            f"Spearman {number(metrics['spearman'])}  Pearson {number(metrics['pearson'])}  "
            f"R² {number(metrics['r2'])}  RMSE {number(metrics['rmse'])}  "
            f"MAE {number(metrics['mae'])}"
        )
        columns = ["spearman", "pearson", "r2", "rmse", "mae"]
        return head, metric_table(metrics["per_target"], columns, "target")

    def plots(
        self, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, Any], out: Path
    ) -> list[Path]:
        """Predicted against true values, one panel per target."""
        path = out / "scatter.png"
        plot_scatter(targets, outputs, self.labels, path, f"{metrics['split']}: predicted vs true")
        return [path]

    def prediction_columns(self) -> list[str]:
        """Header of predictions.csv: true and predicted value of each target."""
        return [
            "id", *(f"true_{x}" for x in self.labels), *(f"predicted_{x}" for x in self.labels),
        ]  # fmt: skip

    def prediction_rows(
        self, records: list[SequenceRecord], outputs: np.ndarray
    ) -> list[list[str]]:
        """id, the true values, the predicted ones."""
        return [
            [record.id, *map(str, record.values), *(f"{v:.6g}" for v in row)]
            for record, row in zip(records, outputs, strict=True)
        ]

    # --- the composition baseline -------------------------------------------------------------

    def baseline_estimator(self) -> Any:
        """Ridge regression on standardised composition."""
        from sklearn.linear_model import Ridge
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), Ridge(alpha=1.0))

    def baseline_outputs(self, estimator: Any, features: np.ndarray) -> np.ndarray:
        """Predicted values, shape ``(n, targets)``."""
        return estimator.predict(features).reshape(len(features), -1)

    def trivial_outputs(self, train_targets: np.ndarray, count: int) -> tuple[np.ndarray, str]:
        """The training mean, for every sequence."""
        mean = np.broadcast_to(train_targets.mean(axis=0), (count, train_targets.shape[1]))
        return mean, "the train mean"

    # --- Hugging Face ------------------------------------------------------------------------

    def hf_output_layer(
        self, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardisation folded into out_proj, so logits are values in target units."""
        import torch

        mean = torch.as_tensor(self.target_mean, dtype=weight.dtype)
        std = torch.as_tensor(self.target_std, dtype=weight.dtype)
        return weight * std.unsqueeze(1), bias * std + mean
