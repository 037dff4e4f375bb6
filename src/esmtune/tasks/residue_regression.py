"""Residue regression: one number per residue (disorder, flexibility, solvent accessibility ...).

A record's target is a tuple of numbers, one per residue, read from text where they are
separated by ``;`` (as biotrainer writes ``TARGET=0.5;0.3;...``), ``,`` or whitespace (a line
break too, so wrapped lines of FLIP-style ``labels.fasta`` join). A residue without a value (an
empty value, ``NaN``) must be masked: its target is NaN and the mask's 0 keeps it out of the loss
and every metric; unmasked, it is an error, never a number made up.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from esmtune.config import DataConfig, Task
from esmtune.data.fasta import SequenceRecord, Target
from esmtune.data.report import DataReport, align_table, residue_footer, residue_summary
from esmtune.plots import plot_scatter
from esmtune.tasks.base import (
    HfProblemType,
    TaskSpec,
    metric_table,
    number,
    residue_difference,
    residue_rows,
)
from esmtune.weighted_metrics import residue_regression_scores

if TYPE_CHECKING:
    import torch

__all__ = ["ResidueRegressionTask"]

# One separator: ';' or ',' (with any space around it), or a run of whitespace. Two separators
# in a row hold an empty value between them, a residue without one.
_SEPARATOR = re.compile(r"\s*[;,]\s*|\s+")
_MISSING = frozenset({"", "nan", "na"})
# The only output's name (report.labels): the value of each residue.
_OUTPUT = "value"
# Characters of a bad value shown in a message (a label string read as numbers is long).
_SHOWN = 24

# Export check: a residue's value agrees within this share of the values' spread.
_VALUE_TOLERANCE = 0.01


def _used_values(records: list[SequenceRecord]) -> list[float]:
    """The values of every residue that counts (unmasked)."""
    return [
        value
        for record in records
        for value, used in zip(record.values, record.used_residues, strict=True)
        if used
    ]


class ResidueRegressionTask(TaskSpec):
    """One number per residue; masked residues (and only they) may lack one."""

    task: ClassVar[Task] = Task.RESIDUE_REGRESSION
    per_residue: ClassVar[bool] = True
    target_noun: ClassVar[str] = "value(s) per residue"
    headline_metrics: ClassVar[tuple[str, ...]] = ("spearman", "pearson", "r2", "rmse")
    hf_problem_type: ClassVar[HfProblemType] = "regression"
    hf_usage: ClassVar[str] = "values = logits  # per residue, in the targets' own units"
    baseline_model_name: ClassVar[str] = "ridge regression"

    # --- reading and checking targets --------------------------------------------------------

    @classmethod
    def parse_target(cls, values: list[str], columns: list[str], separator: str) -> Target:
        """One number per residue; an empty value or NaN (or NA) is a residue without one."""
        text = values[0].strip()
        if not text:
            raise ValueError(
                "no values; give one number per residue, separated by ';', ',' or spaces"
            )
        # One separator after the last value (a line ended with ';') closes it, adds none.
        text = re.sub(r"\s*[;,]$", "", text)
        numbers, bad = [], []
        for position, word in enumerate(_SEPARATOR.split(text), start=1):
            if word.lower() in _MISSING:
                numbers.append(math.nan)
                continue
            try:
                number = float(word)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                bad.append((position, word))
            numbers.append(number)
        if bad:
            position, word = bad[0]
            shown = word if len(word) <= _SHOWN else f"{word[: _SHOWN - 3]}..."
            raise ValueError(
                f"{len(bad)} value(s) are not finite numbers, the first is value {position}, "
                f"{shown!r}; give one number per residue, separated by ';', ',' or spaces "
                "(an empty value or NaN where a residue has none, and mask it)"
            )
        return tuple(numbers)

    @classmethod
    def find_labels(cls, report: DataReport, data: DataConfig) -> None:
        """One output, the value of each residue."""
        report.labels = [_OUTPUT]

    @classmethod
    def target_table(cls, report: DataReport) -> str:
        """Mean, deviation and range of unmasked values by split; masked, chains, lengths."""
        present = report.present
        values = {split: _used_values(report.splits[split]) for split in present}
        statistic: dict[str, Callable[[list[float]], float]] = {
            "mean": statistics.mean,
            "std": statistics.pstdev,  # as in the summary (and a regression's standardisation)
            "min": min,
            "max": max,
        }
        rows = [
            [name, *(f"{function(values[s]):.4g}" if values[s] else "-" for s in present)]
            for name, function in statistic.items()
        ]
        return align_table([_OUTPUT, *present], rows, residue_footer(report))

    @classmethod
    def target_summary(cls, report: DataReport) -> dict[str, object]:
        """Per split: chains, unmasked and masked residues, and their values' statistics."""
        summary: dict[str, object] = {}
        for split, records in report.splits.items():
            values = _used_values(records)
            summary[split] = {
                **residue_summary(records),
                **(
                    {
                        "mean": statistics.mean(values),
                        "std": statistics.pstdev(values),
                        "min": min(values),
                        "max": max(values),
                    }
                    if values
                    else {}
                ),
            }
        return summary

    def unknown_targets(self, records: list[SequenceRecord], found: list[str]) -> str | None:
        """Any per-residue values fit (one output)."""
        return None

    # --- training ------------------------------------------------------------------------

    def encode_targets(self, records: list[SequenceRecord]) -> np.ndarray:
        """One float array per record, NaN on masked residues (whatever value they carry)."""
        rows = np.empty(len(records), dtype=object)
        for position, record in enumerate(records):
            values = np.asarray(record.values, dtype=np.float32)
            used = np.asarray(record.used_residues, dtype=bool)
            rows[position] = np.where(used, values, np.float32(np.nan))
        return rows

    def fit(self, targets: np.ndarray) -> None:
        """Mean and deviation of train's unmasked values (or 0 and 1 when switched off)."""
        values = np.concatenate([*targets, np.zeros(0, dtype=np.float32)]).astype(np.float64)
        values = values[np.isfinite(values)]
        if self.objective.standardize_targets and len(values):
            std = float(values.std())
            self.target_mean = [float(values.mean())]
            self.target_std = [std if std > 0 else 1.0]
        else:
            self.target_mean, self.target_std = [0.0], [1.0]

    def _scale(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        import torch

        mean = torch.as_tensor(self.target_mean or 0.0, dtype=torch.float32, device=like.device)
        std = torch.as_tensor(self.target_std or 1.0, dtype=torch.float32, device=like.device)
        return mean, std

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """MSE (or Huber) against the standardised values, averaged over residues that count.

        NaN positions (masked residues, ``<cls>``, ``<eos>``, padding) are replaced before the
        difference and multiplied by zero after it, so they add exactly zero to the gradient.
        """
        import torch
        from torch import nn

        mean, std = self._scale(logits)
        counted = ~torch.isnan(targets)
        scaled = torch.where(counted, (targets.float() - mean) / std, 0.0)
        if self.objective.regression_loss == "huber":
            per_residue = nn.functional.huber_loss(
                logits[..., 0], scaled, reduction="none", delta=self.objective.huber_delta
            )
        else:
            per_residue = (logits[..., 0] - scaled) ** 2
        return (per_residue * counted).sum() / counted.sum().clamp(min=1)

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
        """Per-residue Spearman, Pearson, RMSE, MAE, R², and the mean per-protein Spearman."""
        from esmtune.metrics import residue_regression_metrics

        return residue_regression_metrics(targets, outputs, _OUTPUT)

    def resampled_scores(
        self, targets: np.ndarray, outputs: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """Per-residue Spearman, Pearson, R² and RMSE of each resample of whole chains."""
        return residue_regression_scores(targets, outputs, weights)

    # --- the one-hot window baseline ----------------------------------------------------------

    def baseline_estimator(self) -> Any:
        """Ridge regression on one-hot windows (0/1 columns: nothing to standardise)."""
        from sklearn.linear_model import Ridge

        return Ridge(alpha=1.0)

    def baseline_outputs(self, estimator: Any, features: Any) -> np.ndarray:
        """Predicted values, shape ``(residues, 1)``."""
        return np.asarray(estimator.predict(features), dtype=np.float64).reshape(-1, 1)

    def trivial_outputs(self, train_targets: np.ndarray, count: int) -> tuple[np.ndarray, str]:
        """The mean of train's unmasked values, for every residue."""
        return np.full((count, 1), float(np.mean(train_targets))), "the train mean"

    # --- predictions -----------------------------------------------------------------------

    def predictions(self, outputs: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        """Per sequence: one value per residue (None where a cut sequence was not read)."""
        results = []
        for row in outputs:
            values = np.asarray(row, dtype=np.float64).reshape(-1)
            read = np.isfinite(values)
            results.append(
                {
                    "values": [float(v) if r else None for v, r in zip(values, read, strict=True)],
                    "unread": int((~read).sum()),
                }
            )
        return results

    def decided_label(self, outputs: np.ndarray) -> int:
        """No target is chosen: the only one."""
        return 0

    def agreement(self, reference: np.ndarray, other: np.ndarray) -> float:
        """Share of residues whose value is within 1% of the values' spread (as regression's)."""
        expected, got = residue_rows(reference), residue_rows(other)
        read = np.isfinite(expected).all(axis=1) & np.isfinite(got).all(axis=1)
        if not read.any():
            return 1.0
        spread = np.maximum(expected[read].std(axis=0), 1e-6)
        close = np.abs(got[read] - expected[read]) <= _VALUE_TOLERANCE * spread
        return float(close.all(axis=1).mean())

    def largest_difference(self, reference: np.ndarray, other: np.ndarray) -> float:
        """The largest value difference of any residue."""
        return residue_difference(reference, other)

    def hf_output_layer(
        self, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The standardisation folded into the linear layer: logits are values in target units."""
        import torch

        mean = torch.as_tensor(self.target_mean or [0.0], dtype=weight.dtype)
        std = torch.as_tensor(self.target_std or [1.0], dtype=weight.dtype)
        return weight * std.unsqueeze(1), bias * std + mean

    def table_header(self) -> list[str]:
        """id, then the values joined by ';' (biotrainer's way), nan where not read."""
        return ["id", "values"]

    def table_row(self, result: dict[str, Any]) -> list[str]:
        """One prediction under :meth:`table_header`."""
        return [result["id"], _joined(result["values"])]

    def text_lines(self, result: dict[str, Any]) -> list[str]:
        """Each residue with its value, one residue a line (numbers do not fit under a letter)."""
        width = len(str(len(result["sequence"])))
        lines = [
            f"  {position:>{width}} {residue} {'not read' if value is None else f'{value:.4g}'}"
            for position, (residue, value) in enumerate(
                zip(result["sequence"], result["values"], strict=True), start=1
            )
        ]
        return lines

    def frame_row(self, result: dict[str, Any]) -> dict[str, Any]:
        """The values joined by ';'."""
        return {"values": _joined(result["values"])}

    def display(self) -> dict[str, Any]:
        """The sequence on a colour scale of each residue's value, the value on hover."""
        return {
            "noun": "value per residue",
            "list_title": "values",
            "residues": {"letters": "sequence", "values": "values"},
        }

    def prediction_schema(self) -> dict[str, Any]:
        """One value per residue (null: not read)."""
        return {
            "type": "object",
            "required": ["sequence", "values", "unread"],
            "properties": {
                "sequence": {"type": "string", "description": "the residues read"},
                "values": {
                    "type": "array",
                    "items": {"anyOf": [{"type": "number"}, {"type": "null"}]},
                    "description": "the predicted value of each residue; null where not read",
                },
                "unread": {"type": "integer", "minimum": 0},
            },
        }

    # --- evaluation ------------------------------------------------------------------------

    @classmethod
    def report_lines(cls, metrics: dict[str, Any]) -> tuple[str, list[str]]:
        """Per-residue correlations and errors, and the per-protein Spearman."""
        spread = metrics["per_protein_spearman"]
        head = (
            f"{metrics['n']} residues of {metrics['proteins']} chains: "
            f"Spearman {number(metrics['spearman'])}  Pearson {number(metrics['pearson'])}  "
            f"R² {number(metrics['r2'])}  RMSE {number(metrics['rmse'])}  "
            f"MAE {number(metrics['mae'])}  per-chain Spearman {number(spread['mean'])} "
            f"(median {number(spread['median'])}, {spread['proteins']} chains)"
        )
        if metrics["unread"]:
            head += f"  ({metrics['unread']} residues not read: cut sequences)"
        columns = ["spearman", "pearson", "r2", "rmse", "mae"]
        return head, metric_table(metrics["per_target"], columns, "target")

    def plots(
        self, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, Any], out: Path
    ) -> list[Path]:
        """Predicted against true values of every residue that counts."""
        true = np.concatenate([*targets, np.zeros(0, dtype=np.float32)]).astype(np.float64)
        predicted = np.concatenate([np.asarray(row).reshape(-1) for row in outputs] or [true])
        kept = np.isfinite(true) & np.isfinite(predicted)
        path = out / "scatter.png"
        title = f"{metrics['split']}: predicted vs true, per residue"
        plot_scatter(true[kept, None], predicted[kept, None], self.labels, path, title)
        return [path]

    def prediction_columns(self) -> list[str]:
        """Header of predictions.csv: one row per chain."""
        return ["id", "true_values", "predicted_values", "spearman"]

    def prediction_rows(
        self, records: list[SequenceRecord], outputs: np.ndarray
    ) -> list[list[str]]:
        """id, the true values (nan where masked), the predicted ones, the chain's Spearman."""
        from esmtune.metrics import protein_spearman

        rows = []
        targets = self.encode_targets(records)
        for record, target, row in zip(records, targets, outputs, strict=True):
            rho = protein_spearman(target, row)
            rows.append([
                record.id,
                _joined([float(v) for v in target]),
                _joined([float(v) for v in np.asarray(row).reshape(-1)]),
                "" if rho is None else f"{rho:.4f}",
            ])  # fmt: skip
        return rows


def _joined(values: list[float | None]) -> str:
    """Values joined by ';', ``nan`` for none."""
    return ";".join("nan" if v is None or math.isnan(v) else f"{v:.6g}" for v in values)
