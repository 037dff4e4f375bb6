"""What every task has, and what each task module fills in.

A task owns everything that differs between kinds of prediction: how its targets are read and
checked, the loss and output activation, decision thresholds, metrics, the evaluation report and
plots, the predictions file and ``predict``'s table and text, the linear baseline, how two
runtimes' outputs are compared, the Hugging Face head mapping and how the serve page draws a
prediction. The rest of esmtune calls these methods and never asks which task it has.

A task is fitted once on the training targets (class weights, positive weights, target
standardisation) and saved with the run (:meth:`TaskSpec.state`), so that evaluation and
prediction rebuild exactly the same behaviour from the run directory.

What a prediction needs (the activation in numpy, :meth:`TaskSpec.outputs`, the formats) imports
only numpy, so that an ONNX export predicts without torch. torch, scipy, scikit-learn and the
metrics are imported inside the methods that train, calibrate and evaluate.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np

from esmtune.config import TASK_OPTIONS, DataConfig, ObjectiveConfig, Task
from esmtune.data.fasta import SequenceRecord, Target
from esmtune.data.report import DataReport, label_summary, label_table
from esmtune.data.targets import format_target
from esmtune.errors import ConfigError

if TYPE_CHECKING:
    import torch
    from sklearn.base import BaseEstimator

__all__ = [
    "HfProblemType",
    "TaskSpec",
    "logistic_composition_model",
    "metric_table",
    "number",
    "positive_weights",
    "probability_logits",
    "ranked_text",
    "residue_difference",
    "residue_rows",
    "sigmoid",
    "softmax",
]

# The problem types transformers' sequence classifiers know.
HfProblemType = Literal["regression", "single_label_classification", "multi_label_classification"]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax over the last axis, in float32 as torch computes it for a prediction."""
    logits = np.asarray(logits, dtype=np.float32)
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True, initial=-np.inf))
    return shifted / shifted.sum(axis=-1, keepdims=True)


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """The logistic function, elementwise, in float32 (very negative logits give 0, silently)."""
    logits = np.asarray(logits, dtype=np.float32)
    with np.errstate(over="ignore"):
        return 1.0 / (1.0 + np.exp(-logits))


def probability_logits(probabilities: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) in float64, p clipped away from 0 and 1: the inverse of the sigmoid."""
    clipped = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-12, 1 - 1e-12)
    return np.log(clipped) - np.log1p(-clipped)


def number(value: float | None) -> str:
    """A metric as report text: four decimals, or n/a when undefined."""
    return "n/a" if value is None else f"{value:.4f}"


def ranked_text(result: dict[str, Any]) -> str:
    """A top-k ranking as one table cell: ``label[ name]:p;...``."""
    names = result.get("names", {})
    return ";".join(
        f"{label}{' ' + names[label] if label in names else ''}:{p:.4f}"
        for label, p in result["top_k"]
    )


def positive_weights(targets: np.ndarray, setting: float | str | None) -> list[float] | None:
    """BCE pos_weight: negatives / positives per output ("balanced") or one number for all."""
    if setting is None:
        return None
    columns = targets.reshape(len(targets), -1)
    if setting == "balanced":
        positives = columns.sum(axis=0)
        ratio = (len(columns) - positives) / np.maximum(positives, 1)
        return np.clip(ratio, 1e-3, 1e3).tolist()
    return [float(setting)] * columns.shape[1]


def class_weights(
    setting: Literal["balanced"] | dict[str, float] | None,
    labels: list[str],
    counts: np.ndarray,
    noun: str = "labels",
) -> list[float] | None:
    """objective.class_weights as one loss weight per label (None: unweighted).

    ``balanced`` is n / (classes x count), ``counts`` being each label's training examples;
    a mapping gives the named labels their weight and the others 1.

    Raises:
        ConfigError: When the mapping names something that is not one of ``labels``.
    """
    if setting == "balanced":
        return (counts.sum() / (len(labels) * np.maximum(counts, 1))).astype(float).tolist()
    if isinstance(setting, dict):
        unknown = sorted(set(setting) - set(labels))
        if unknown:
            raise ConfigError(
                f"objective.class_weights names {', '.join(unknown)}, which are not {noun} "
                f"({', '.join(labels)})"
            )
        return [float(setting.get(label, 1.0)) for label in labels]
    return None


def logistic_composition_model(one_per_label: bool = False) -> Any:
    """The baseline classifier: standardised features, logistic regression (one per label)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = LogisticRegression(max_iter=2000)
    return make_pipeline(StandardScaler(), OneVsRestClassifier(model) if one_per_label else model)


def residue_rows(outputs: np.ndarray) -> np.ndarray:
    """Per-residue outputs (one ``(residues, outputs)`` array per sequence) as one block."""
    rows = [np.asarray(row, dtype=np.float64).reshape(len(row), -1) for row in outputs]
    return np.concatenate(rows) if rows else np.zeros((0, 1))


def residue_difference(reference: np.ndarray, other: np.ndarray) -> float:
    """The largest absolute difference of two runtimes' per-residue outputs (unread: skipped)."""
    difference = np.abs(residue_rows(other) - residue_rows(reference))
    read = np.isfinite(difference)
    return float(difference[read].max()) if read.any() else 0.0


def metric_table(rows: dict[str, dict[str, Any]], columns: list[str], first: str) -> list[str]:
    """A per-class / per-label / per-target table of numbers, as report lines."""
    width = max(len(first), *(len(name) for name in rows))
    lines = [f"{first.ljust(width)}  " + "  ".join(c.rjust(9) for c in columns)]
    for name, row in rows.items():
        cells = []
        for column in columns:
            value = row.get(column)
            cells.append(str(value).rjust(9) if isinstance(value, int) else number(value).rjust(9))
        lines.append(f"{name.ljust(width)}  " + "  ".join(cells))
    return lines


@dataclass
class TaskSpec:
    """Behaviour shared by every task; each task module's subclass fills in what differs.

    Attributes:
        labels: Output names: classes (binary: negative, positive), multilabel vocabulary or
            regression targets, in the order of the head's outputs.
        objective: Loss and threshold settings from the config.
        label_names: Readable names (e.g. GO term names) for labels that have one.
        ancestors: For each label, its ancestors within ``labels`` (ontology consistency).
        weights: Per-output loss weights fitted on train (class or positive weights), or None.
        thresholds: Decision thresholds (binary: one; multilabel: one per label), or None.
        calibration: Fitted on validation with the weights: ``{"temperature": T}`` (softmax
            logits divided by T) or ``{"slope": [...], "intercept": [...]}`` (Platt scaling of
            each sigmoid logit); None leaves the logits as they are.
        target_mean: Regression: training mean of each target.
        target_std: Regression: training standard deviation of each target.
    """

    task: ClassVar[Task]
    # One FASTA file per label can hold this task's targets (data/{split}/<Label>.fasta).
    one_label_per_file: ClassVar[bool] = False
    # One target per residue, with a mask of residues to ignore (residue_* tasks). Then
    # encode_targets gives one array per record (an object array; residues that do not count hold
    # IGNORED_CLASS or NaN), the loss takes logits (sequences, positions, outputs), and outputs,
    # metrics and predictions take one (residues, outputs) array per sequence (NaN rows unread).
    per_residue: ClassVar[bool] = False
    # How outputs are named in messages: "labels", or "target(s)" for numbers.
    target_noun: ClassVar[str] = "labels"
    # The metrics `esmtune baseline` prints, most telling first.
    headline_metrics: ClassVar[tuple[str, ...]]
    # transformers' problem_type of the equivalent EsmForSequenceClassification.
    hf_problem_type: ClassVar[HfProblemType]
    # The model card's line turning AutoModelForSequenceClassification logits into outputs.
    hf_usage: ClassVar[str]

    labels: list[str]
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    label_names: dict[str, str] = field(default_factory=dict)
    ancestors: dict[str, list[str]] = field(default_factory=dict)
    weights: list[float] | None = None
    thresholds: list[float] | None = None
    calibration: dict[str, Any] | None = None
    target_mean: list[float] | None = None
    target_std: list[float] | None = None

    # --- reading and checking targets (the data layer's TargetKind, on the class) ------------

    @classmethod
    def default_target_columns(cls) -> list[str]:
        """The target column unless data.target_columns names others."""
        return [TASK_OPTIONS[cls.task].target_column]

    @classmethod
    def parse_target(cls, values: list[str], columns: list[str], separator: str) -> Target:
        """The target of one record from the text of its target columns.

        Raises:
            ValueError: Saying what is wrong and how to fix it (without the location).
        """
        raise NotImplementedError

    @classmethod
    def prepare_targets(cls, report: DataReport, data: DataConfig) -> bool:
        """Rewrite targets before conflicts are judged (nothing by default); False stops."""
        return True

    @classmethod
    def find_labels(cls, report: DataReport, data: DataConfig) -> None:
        """Set ``report.labels`` from the data, adding errors and notes to the report."""
        raise NotImplementedError

    @classmethod
    def target_table(cls, report: DataReport) -> str:
        """Sequences per label and split, with lengths."""
        return label_table(report)

    @classmethod
    def target_summary(cls, report: DataReport) -> dict[str, object]:
        """Sequences per split and label, for the manifest."""
        return label_summary(report)

    def unknown_targets(self, records: list[SequenceRecord], found: list[str]) -> str | None:
        """Why records to evaluate do not fit this model (``found``: their label set), or None."""
        return None

    # --- training ------------------------------------------------------------------------

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
            "calibration": self.calibration,
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
        """Logits to probabilities (or values on the targets' own scale), differentiably.

        What an explanation follows back to the residues (:meth:`label_scores`); predictions
        use :meth:`activate`, its numpy twin (a test holds the two equal).
        """
        raise NotImplementedError

    def activate(self, logits: np.ndarray) -> np.ndarray:
        """:meth:`activation` in numpy (float32): what every runtime's logits become."""
        raise NotImplementedError

    def outputs(self, logits: np.ndarray | torch.Tensor) -> np.ndarray:
        """What a prediction reports, as numpy: activated, and made consistent where needed.

        Takes torch logits (a run) or numpy ones (onnxruntime) alike.
        """
        if not isinstance(logits, np.ndarray):
            logits = logits.detach().float().cpu().numpy()
        return self.activate(logits)

    def tune(self, targets: np.ndarray, outputs: np.ndarray) -> list[float] | None:
        """Thresholds that maximise the configured metric on these (validation) outputs."""
        return None

    def fit_calibration(self, targets: np.ndarray, outputs: np.ndarray) -> dict[str, Any] | None:
        """A calibration fitted on these uncalibrated (validation) outputs; None: nothing to fit."""
        return None

    def calibrated(self, outputs: np.ndarray, calibration: dict[str, Any]) -> np.ndarray:
        """Uncalibrated outputs as ``calibration`` makes them (what :meth:`outputs` would give)."""
        return replace(self, calibration=calibration).outputs(self.logits_of(outputs))

    def logits_of(self, outputs: np.ndarray) -> np.ndarray:
        """Logits that give ``outputs`` (up to what the activation ignores): its inverse."""
        raise NotImplementedError

    def reliability_pairs(
        self, targets: np.ndarray, outputs: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray] | None:
        """Predicted probabilities of events and whether each happened (ECE, reliability).

        The top class's probability and whether it was right, or each label's probability and
        whether the label applies; None for tasks without probabilities.
        """
        return None

    def calibrated_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits after the saved calibration: divided by the temperature, or Platt-scaled."""
        import torch

        factor, offset = self._calibration_terms()
        return logits * torch.as_tensor(
            factor, dtype=logits.dtype, device=logits.device
        ) + torch.as_tensor(offset, dtype=logits.dtype, device=logits.device)

    def calibrated_array(self, logits: np.ndarray) -> np.ndarray:
        """:meth:`calibrated_logits` in numpy (float32)."""
        factor, offset = self._calibration_terms()
        return np.asarray(logits, dtype=np.float32) * factor + offset

    def _calibration_terms(self) -> tuple[np.ndarray, np.ndarray]:
        """The calibration as ``logits * factor + offset`` (factor and offset per output)."""
        calibration = self.calibration or {}
        if "temperature" in calibration:
            factor, offset = 1.0 / float(calibration["temperature"]), 0.0
        elif "slope" in calibration:
            factor, offset = calibration["slope"], calibration["intercept"]
        else:
            factor, offset = 1.0, 0.0
        return np.asarray(factor, dtype=np.float32), np.asarray(offset, dtype=np.float32)

    def selection_problem(self, metric: str) -> str | None:
        """Why ``metric`` cannot select checkpoints for these labels (None: it can).

        The config allows the task's metrics; some exist only for some data (a positive class).
        """
        return None

    def metrics(
        self, targets: np.ndarray, outputs: np.ndarray, thresholds: list[float] | None = None
    ) -> dict[str, Any]:
        """Every metric of the task (thresholded ones at ``thresholds`` or the saved ones)."""
        raise NotImplementedError

    def resampled_scores(
        self, targets: np.ndarray, outputs: np.ndarray, weights: np.ndarray
    ) -> dict[str, np.ndarray]:
        """The headline metrics of bootstrap resamples, for their confidence intervals.

        Args:
            targets: As :meth:`metrics` takes them, one row (per-residue: chain) per protein.
            outputs: As :meth:`metrics` takes them.
            weights: ``(resamples, proteins)``: how often each resample drew each protein.

        Returns:
            One ``(resamples,)`` array per name of :attr:`headline_metrics`, NaN where
            :meth:`metrics` would say None. This default rebuilds every resample and calls
            :meth:`metrics` (exact, but tens of milliseconds a call); the tasks compute the same
            numbers from weighted sums (:mod:`esmtune.weighted_metrics`) in milliseconds.
        """
        scores = {name: np.full(len(weights), np.nan) for name in self.headline_metrics}
        for row, drawn in enumerate(np.asarray(weights, dtype=np.int64)):
            picked = np.repeat(np.arange(len(drawn)), drawn)
            found = self.metrics(targets[picked], outputs[picked])
            for name, values in scores.items():
                values[row] = np.nan if found.get(name) is None else found[name]
        return scores

    # --- predictions -----------------------------------------------------------------------

    def predictions(self, outputs: np.ndarray, top_k: int | None) -> list[dict[str, Any]]:
        """One result per row of ``outputs``: the task's prediction format."""
        raise NotImplementedError

    def label_scores(self, logits: torch.Tensor) -> torch.Tensor:
        """Each label's probability (regression: each target's value), ``(batch, labels)``.

        Differentiable, so that an explanation can follow a label back to the residues: the
        activation's columns in the order of :attr:`labels`, before any consistency step that
        :meth:`outputs` applies.
        """
        return self.activation(logits).reshape(len(logits), len(self.labels))

    def decided_label(self, outputs: np.ndarray) -> int:
        """The index in :attr:`labels` of what one row of :meth:`outputs` decided: the likeliest."""
        return int(np.argmax(outputs))

    @property
    def default_top_k(self) -> int | None:
        """How many ranked labels a prediction shows unless asked (None: no ranking)."""
        return None

    def agreement(self, reference: np.ndarray, other: np.ndarray) -> float:
        """Share of sequences given the same label by two runtimes' outputs (export check)."""
        expected, got = self.predictions(reference, 1), self.predictions(other, 1)
        return float(
            np.mean([a["label"] == b["label"] for a, b in zip(expected, got, strict=True)])
        )

    def largest_difference(self, reference: np.ndarray, other: np.ndarray) -> float:
        """The largest absolute difference between two runtimes' outputs (export check)."""
        return float(np.abs(np.asarray(other) - np.asarray(reference)).max())

    def table_header(self) -> list[str]:
        """Columns of ``esmtune predict``'s TSV/CSV output."""
        raise NotImplementedError

    def table_row(self, result: dict[str, Any]) -> list[str]:
        """One prediction as a row under :meth:`table_header`."""
        raise NotImplementedError

    def text_lines(self, result: dict[str, Any]) -> list[str]:
        """One prediction for people (``--format text``), under its id line."""
        raise NotImplementedError

    def frame_row(self, result: dict[str, Any]) -> dict[str, Any]:
        """One prediction as DataFrame columns (:meth:`Predictor.predict_frame`)."""
        raise NotImplementedError

    def display(self) -> dict[str, Any]:
        """How the serve page draws this task's predictions: which fields, in which form.

        ``chosen``: the decision (``field``, its ``title``, an optional ``detail`` number with a
        ``prefix``, and what to show when a list is ``empty``); ``bars``: the field of
        (label, probability) pairs or a label -> probability mapping; ``values``: a field of
        name -> number; ``noun`` / ``list_title``: how the outputs are named; ``residues``
        (per-residue tasks): the sequence drawn residue by residue, from the fields named by
        ``letters`` (the sequence), and either ``chosen`` / ``classes`` / ``probabilities``
        (coloured by class, probabilities on hover) or ``values`` (a colour scale).
        """
        raise NotImplementedError

    def prediction_schema(self) -> dict[str, Any]:
        """JSON Schema of the fields :meth:`predictions` gives one sequence (the served answer).

        The default describes any object; per-residue tasks state theirs exactly.
        """
        return {"type": "object"}

    # --- evaluation ------------------------------------------------------------------------

    @classmethod
    def report_lines(cls, metrics: dict[str, Any]) -> tuple[str, list[str]]:
        """The headline of an evaluation and the table under it, as terminal text."""
        raise NotImplementedError

    def plots(
        self, targets: np.ndarray, outputs: np.ndarray, metrics: dict[str, Any], out: Path
    ) -> list[Path]:
        """The figures a person looks at for this task; returns the files written."""
        return []

    def prediction_columns(self) -> list[str]:
        """Header of an evaluation's predictions.csv."""
        return ["id", "true_label", "predicted_label", *(f"p_{x}" for x in self.labels)]

    def prediction_rows(
        self, records: list[SequenceRecord], outputs: np.ndarray
    ) -> list[list[str]]:
        """One predictions.csv row per record: id, truth, prediction and the numbers behind it."""
        rows = []
        for record, result in zip(records, self.predictions(outputs, None), strict=True):
            chosen = ";".join(result["labels"]) if "labels" in result else result["label"]
            probabilities = (f"{result['probabilities'][x]:.6f}" for x in self.labels)
            rows.append([record.id, format_target(record.target), chosen, *probabilities])
        return rows

    # --- the linear baseline -------------------------------------------------------------------
    # Sequence tasks: one row per sequence (composition or embedding features, encoded targets).
    # Per-residue tasks: one row per residue (a sparse one-hot window; the targets of unmasked
    # residues, flat), which esmtune.baseline puts back into one array per chain for metrics.

    baseline_model_name: ClassVar[str] = "logistic regression"

    def baseline_estimator(self) -> BaseEstimator:
        """The scikit-learn model fitted on the baseline's features and encoded targets."""
        raise NotImplementedError

    def baseline_outputs(self, estimator: Any, features: np.ndarray) -> np.ndarray:
        """The fitted estimator's predictions in this task's output form (per row)."""
        raise NotImplementedError

    def trivial_outputs(self, train_targets: np.ndarray, count: int) -> tuple[np.ndarray, str]:
        """A sequence-blind predictor's outputs (commonest label, the mean) and its name."""
        raise NotImplementedError

    # --- Hugging Face ------------------------------------------------------------------------

    def hf_output_layer(
        self, weight: torch.Tensor, bias: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """out_proj weights that give, through transformers' usual recipe, this task's outputs.

        The calibration is linear in the logits, so it is folded into the layer: plain
        transformers then gives the calibrated probabilities that esmtune gives.
        """
        import torch

        zero = self.calibrated_logits(torch.zeros_like(bias))
        return (self.calibrated_logits(weight.T) - zero).T, self.calibrated_logits(bias)

    # --- shared helpers ------------------------------------------------------------------------

    def _weight_tensor(self, like: torch.Tensor) -> torch.Tensor | None:
        if self.weights is None:
            return None
        import torch

        return torch.as_tensor(self.weights, dtype=torch.float32, device=like.device)

    def _ranked(self, row: np.ndarray, top_k: int | None) -> list[tuple[str, float]]:
        order = np.argsort(-row, kind="stable")[: top_k or len(self.labels)]
        return [(self.labels[i], float(row[i])) for i in order]

    def _ranking_lines(self, result: dict[str, Any]) -> list[str]:
        """``top k:`` and one line per ranked label with a bar of its probability."""
        names = result.get("names", {})
        lines = [f"  top {len(result['top_k'])}:"]
        for label, p in result["top_k"]:
            bar = "#" * round(p * 20)
            shown = f"{names[label]} ({label})" if label in names else label
            lines.append(f"    {p:5.2f} {bar:<20} {shown}")
        return lines

    def _probability_columns(self) -> list[str]:
        """Labels that get a p_<label> column in predict's table (not too many to read)."""
        return self.labels if len(self.labels) <= _MAX_PROBABILITY_COLUMNS else []


# Per-label probability columns stop being readable (and useful in a table) beyond this many.
_MAX_PROBABILITY_COLUMNS = 50
