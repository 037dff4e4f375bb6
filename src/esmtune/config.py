"""The one validated training configuration: schema, YAML loading and ``key=value`` overrides.

Every field carries a one-line description; the CLI turns them into ``esmtune train --help``.
Validation collects every problem (wrong types, ranges, unknown keys with a suggestion, cross-field
rules) and reports them in one :class:`~esmtune.errors.ConfigError`.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    PrivateAttr,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)

from esmtune.errors import ConfigError

__all__ = [
    "BASELINE_WINDOW",
    "TASK_METRICS",
    "TASK_OPTIONS",
    "TASK_SPECIFIC_KEYS",
    "DataConfig",
    "EarlyStoppingConfig",
    "FinetuneConfig",
    "FinetuneMode",
    "LongSequences",
    "LoraConfig",
    "ModelConfig",
    "ObjectiveConfig",
    "OutputConfig",
    "Pooling",
    "Task",
    "TaskOptions",
    "Tracker",
    "TrainConfig",
    "TrainingConfig",
    "apply_overrides",
    "describe_fields",
    "field_description",
    "length_percentile",
    "load_config",
    "task_problems",
]


class Task(StrEnum):
    """What the model predicts for each sequence (or, residue_*, for each of its residues)."""

    MULTICLASS = "multiclass"
    BINARY = "binary"
    MULTILABEL = "multilabel"
    REGRESSION = "regression"
    RESIDUE_CLASSIFICATION = "residue_classification"
    RESIDUE_REGRESSION = "residue_regression"


@dataclass(frozen=True)
class TaskOptions:
    """What the configuration knows of a task; its behaviour lives in :mod:`esmtune.tasks`."""

    metrics: tuple[
        str, ...
    ]  # validation metrics that can select the best checkpoint, default first
    target_column: str  # the target column's name unless data.target_columns says otherwise
    several_targets: bool  # whether data.target_columns may name more than one column
    options: frozenset[str]  # the task-specific keys (of TASK_SPECIFIC_KEYS) that apply to it
    per_residue: bool = False  # one prediction per residue (a head on every residue state)


# Residue classes: mcc first (fair to rare sites and to three states alike); the positive class's
# metrics (f1 ... pr_auc) exist with two classes only.
_RESIDUE_CLASS_METRICS = (
    "mcc", "accuracy", "macro_f1", "protein_accuracy",
    "f1", "precision", "recall", "roc_auc", "pr_auc", "loss",
)  # fmt: skip

# A task's config literal: adding a task adds a Task member and its row here.
TASK_OPTIONS: dict[Task, TaskOptions] = {
    Task.MULTICLASS: TaskOptions(
        ("macro_f1", "accuracy", "weighted_f1", "mcc", "roc_auc_ovr", "loss"),
        "label",
        several_targets=False,
        options=frozenset({"objective.class_weights"}),
    ),
    Task.BINARY: TaskOptions(
        ("mcc", "f1", "accuracy", "precision", "recall", "roc_auc", "pr_auc", "loss"),
        "label",
        several_targets=False,
        options=frozenset({"data.positive_label", "objective.pos_weight"}),
    ),
    Task.MULTILABEL: TaskOptions(
        ("fmax", "micro_f1", "macro_f1", "micro_ap", "macro_ap", "loss"),
        "label",
        several_targets=True,
        options=frozenset({"data.ontology", "data.min_label_count", "objective.pos_weight"}),
    ),
    Task.REGRESSION: TaskOptions(
        ("spearman", "pearson", "r2", "rmse", "mae", "mse", "loss"),
        "target",
        several_targets=True,
        options=frozenset({"objective.regression_loss"}),
    ),
    # Per residue: metrics over every unmasked residue of a split. Two-class
    # residue_classification (site / not site) is decided like binary.
    Task.RESIDUE_CLASSIFICATION: TaskOptions(
        _RESIDUE_CLASS_METRICS,
        "label",
        several_targets=False,
        options=frozenset(
            {"data.positive_label", "objective.class_weights", "objective.pos_weight"}
        ),
        per_residue=True,
    ),
    Task.RESIDUE_REGRESSION: TaskOptions(
        ("spearman", "pearson", "rmse", "mae", "r2", "protein_spearman", "loss"),
        "target",
        several_targets=False,
        options=frozenset({"objective.regression_loss"}),
        per_residue=True,
    ),
}

# Per-residue tasks' baseline (`esmtune baseline --window`): residues in the one-hot window around
# each residue, 7 on either side, the width of the classic window-based secondary-structure
# predictors and of FLIP's reference baseline. Here so that --help shows it without torch.
BASELINE_WINDOW = 15

# Validation metrics each task can select its best checkpoint and stop early on, default first.
TASK_METRICS: dict[Task, tuple[str, ...]] = {
    task: options.metrics for task, options in TASK_OPTIONS.items()
}


def _whole_number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0


# Keys that belong to some tasks only, and when a value counts as set (not left at its default).
TASK_SPECIFIC_KEYS: dict[str, Callable[[Any], bool]] = {
    "data.positive_label": lambda value: value is not None,
    "data.ontology": lambda value: value is not None,
    "data.min_label_count": lambda value: _whole_number(value) > 1,
    "objective.class_weights": lambda value: value is not None,
    "objective.pos_weight": lambda value: value is not None,
    "objective.regression_loss": lambda value: value not in (None, "mse"),
}


def task_problems(task: Task, values: Mapping[str, Any]) -> list[str]:
    """What a config sets that does not fit its task; ``values`` maps dotted keys to values.

    Runs on the validated config and, when other fields fail validation, on the raw mapping,
    so that one message lists every problem.
    """
    problems = []
    for key, is_set in TASK_SPECIFIC_KEYS.items():
        if key in values and is_set(values[key]) and key not in TASK_OPTIONS[task].options:
            tasks = sorted(t.value for t, o in TASK_OPTIONS.items() if key in o.options)
            problems.append(f"{key} applies to task={' or '.join(tasks)}, not task={task.value}")
    columns = values.get("data.target_columns") or []
    if not TASK_OPTIONS[task].several_targets and isinstance(columns, list) and len(columns) > 1:
        problems.append(
            f"data.target_columns: task={task.value} reads one label column, got {columns}"
        )
    problems += _head_problems(task, values)
    metric = values.get("training.early_stopping.metric")
    metrics = TASK_METRICS[task]
    if metric is not None and metric not in metrics:
        close = difflib.get_close_matches(str(metric), metrics, n=1)
        hint = f"did you mean '{close[0]}'? " if close else ""
        problems.append(
            f"training.early_stopping.metric: '{metric}' is not a {task.value} metric; "
            f"{hint}choose one of {', '.join(metrics)}"
        )
    return problems


def _head_problems(task: Task, values: Mapping[str, Any]) -> list[str]:
    """Heads that read one vector per protein or one state per residue, on the other kind."""
    head = values.get("model.head")
    per_residue = TASK_OPTIONS[task].per_residue
    problems = []
    if head == "cnn" and not per_residue:
        problems.append(
            f"model.head=cnn convolves over residue states, for residue_classification or "
            f"residue_regression; task={task.value} predicts per protein: use mlp or esm"
        )
    if head == "esm" and per_residue:
        problems.append(
            f"model.head=esm reads the <cls> state; task={task.value} predicts per residue: "
            "use mlp or cnn"
        )
    if per_residue and values.get("data.embeddings") is not None:
        problems.append(
            f"data.embeddings: task={task.value} cannot train on precomputed embeddings yet; "
            "leave data.embeddings unset so that ESM2 runs"
        )
    return problems


class Pooling(StrEnum):
    """How per-residue embeddings become one vector per sequence."""

    CLS = "cls"
    MEAN = "mean"
    MAX = "max"
    ATTENTION = "attention"


class LongSequences(StrEnum):
    """What happens to sequences longer than the model's context (data.max_length)."""

    TRUNCATE = "truncate"  # keep the first residues
    CENTRE = "centre"  # keep the central residues
    WINDOW = "window"  # overlapping windows, residue states averaged where they overlap


class FinetuneMode(StrEnum):
    """Which backbone parameters are trained (the head is always trained)."""

    LORA = "lora"
    FROZEN = "frozen"
    FULL = "full"
    PARTIAL = "partial"


class Tracker(StrEnum):
    """Where training's scalars go, through accelerate's trackers (mlflow, wandb: extras)."""

    TENSORBOARD = "tensorboard"
    MLFLOW = "mlflow"
    WANDB = "wandb"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, coerce_numbers_to_str=True)


_MAX_RESIDUES = 1022  # ESM2's context: 1,026 positions less <cls>, <eos> and a margin
_PERCENTILE = re.compile(r"p(\d+(?:\.\d+)?)", re.IGNORECASE)


def length_percentile(value: object) -> float | None:
    """The percentile a ``data.max_length`` of ``pNN`` names (``p95`` -> 95.0), else None."""
    match = _PERCENTILE.fullmatch(value.strip()) if isinstance(value, str) else None
    percentile = float(match.group(1)) if match else None
    return percentile if percentile is not None and 0 < percentile <= 100 else None


class DataConfig(_Section):
    """Where the sequences are and how they are read."""

    path: Path = Field(
        Path("data"),
        description="Dataset: a folder {train,validation,test}/<Label>.fasta, a folder of "
        "train/validation/test files (.csv .tsv .parquet .fasta), or one such file with a split "
        "column. Per-residue tasks also read a folder of sequences.fasta + labels.fasta "
        "(+ mask.fasta) as FLIP has them, and one FASTA file with '>id TARGET=... SET=... "
        "MASK=...' headers (biotrainer).",
    )
    id_column: str = Field("id", description="Tables: column holding the sequence id.")
    sequence_column: str = Field("sequence", description="Tables: column holding the sequence.")
    target_columns: list[str] | None = Field(
        None,
        description="Columns (or FASTA header keys) holding the targets. multilabel: one "
        "';'-separated column or one 0/1 column per label; regression: one column per target; "
        "residue tasks: one column of a label per residue (residue_classification) or numbers "
        "separated by ';', ',' or spaces (residue_regression). [default: label; regression and "
        "residue_regression: target; FASTA headers of residue tasks: also TARGET]",
    )
    split_column: str = Field(
        "split", description="Column (or FASTA header key) naming train/validation/test."
    )
    label_separator: str = Field(
        ";", min_length=1, description="multilabel: separator between labels in one column."
    )
    min_label_count: int = Field(
        1, ge=1, description="multilabel: labels with fewer training sequences are dropped."
    )
    embeddings: Path | None = Field(
        None,
        description="Train the head on embeddings computed elsewhere (.h5, .npz, .safetensors "
        "by id: ProtT5, bio_embeddings, `esmtune embed`): no backbone runs; one vector per "
        "protein, or per residue (pooled with model.pooling). [default: none: ESM2 runs]",
    )
    ontology: Path | None = Field(
        None,
        description="multilabel: OBO file (e.g. go-basic.obo): term names in outputs, "
        "annotations propagated to ancestors, parent scores >= child scores.",
    )
    positive_label: str | None = Field(
        None,
        description="binary, two-class residue_classification: the positive class. [default: "
        "the label named 1/true/yes/positive if there is one, else the rarer label in train "
        "(per residue: the rarer class of train's unmasked residues)]",
    )

    @model_validator(mode="after")
    def _stride_within_window(self) -> DataConfig:
        if self.window_stride is not None and self.window_stride > self.max_length:
            raise ValueError(
                f"data.window_stride ({self.window_stride}) exceeds data.max_length "
                f"({self.max_length}): windows would leave residues out"
            )
        return self

    @model_validator(mode="after")
    def _identity_settings(self) -> DataConfig:
        if self.drop_similar and self.max_identity is None:
            raise ValueError(
                "data.drop_similar drops sequences above data.max_identity: set it (e.g. 0.5)"
            )
        if self.max_identity is not None and not self.measure_identity:
            raise ValueError(
                "data.max_identity needs the identity search that data.measure_identity=false "
                "turns off: set one or the other"
            )
        return self

    @field_validator("positive_label", mode="before")
    @classmethod
    def _label_as_text(cls, value: Any) -> Any:
        """YAML reads yes/true/1 as booleans or numbers; a label is text."""
        if isinstance(value, bool):
            return str(value).lower()
        return value

    max_length: int = Field(
        1022,
        ge=8,
        le=1022,
        description="Residues per model input (ESM2's context: 1,022), or pNN: the NNth "
        "percentile of the training split's lengths (e.g. p95, at most 1,022), fixed by the "
        "data check and saved in the run as a number; see long_sequences.",
    )
    # data.max_length: pNN, until the training split's lengths turn it into a number.
    _max_length_percentile: float | None = PrivateAttr(None)

    @model_validator(mode="wrap")
    @classmethod
    def _max_length_as_percentile(
        cls, data: Any, handler: ModelWrapValidatorHandler[DataConfig], info: ValidationInfo
    ) -> DataConfig:
        """``max_length: p95`` holds the cap (1,022) until :meth:`fix_max_length`.

        The field stays an ``int`` for everything that reads it: only training's data check
        sees a config before the number is known. Assigning a number ends the percentile.
        """
        percentile = None
        if isinstance(data, dict):
            percentile = length_percentile(data.get("max_length"))
            if percentile is not None:
                data = {**data, "max_length": _MAX_RESIDUES}
        config = handler(data)
        if percentile is not None:
            config._max_length_percentile = percentile
        elif info.field_name == "max_length":
            config._max_length_percentile = None
        return config

    @field_validator("max_length", mode="before")
    @classmethod
    def _number_or_percentile(cls, value: Any) -> Any:
        if isinstance(value, str) and length_percentile(value) is not None:
            raise ValueError("a percentile is read from a config file or override, not assigned")
        if isinstance(value, str) and not value.strip().isdigit():
            raise ValueError(
                f"'{value}' is neither a number of residues (8 to 1,022) nor a percentile of "
                "the training lengths (p1 to p100, e.g. p95)"
            )
        return value

    @field_serializer("max_length")
    def _saved_max_length(self, value: int) -> int | str:
        """A percentile not yet fixed is written as given, so the config reads back the same."""
        percentile = self._max_length_percentile
        return value if percentile is None else f"p{percentile:g}"

    @property
    def max_length_percentile(self) -> float | None:
        """The percentile ``max_length`` stands for until the data check fixes it, else None."""
        return self._max_length_percentile

    def fix_max_length(self, train_lengths: Sequence[int]) -> str | None:
        """Turn a percentile ``max_length`` into the number it is for these training lengths.

        The nearest-rank percentile: the shortest length that at least NN% of the training
        sequences do not exceed, so that they are read whole; at least 8, at most 1,022.

        Args:
            train_lengths: Residues of each training sequence.

        Returns:
            A line for the data check saying what was chosen, or None when ``max_length`` is
            a number already (or there are no training sequences to read it from).

        Raises:
            ConfigError: When the number breaks another rule (a longer ``window_stride``).
        """
        percentile = self._max_length_percentile
        if percentile is None or not train_lengths:
            return None
        ordered = sorted(train_lengths)
        rank = max(1, math.ceil(percentile * len(ordered) / 100))
        found = ordered[rank - 1]
        chosen = min(max(found, 8), _MAX_RESIDUES)
        try:
            self.max_length = chosen
        except ValidationError as error:
            problems = [item["msg"].removeprefix("Value error, ") for item in error.errors()]
            message = f"data.max_length p{percentile:g} = {chosen}: " + "; ".join(problems)
            raise ConfigError(message) from None
        longer = sum(length > chosen for length in ordered)
        bound = f" ({found}, outside 8 to 1,022)" if found != chosen else ""
        return (
            f"data.max_length p{percentile:g}: {chosen} residues, percentile {percentile:g} of "
            f"the {len(ordered)} training lengths{bound} (longest {ordered[-1]}); {longer} "
            "training sequence(s) are longer (see data.long_sequences)"
        )

    long_sequences: LongSequences = Field(
        LongSequences.TRUNCATE,
        description="Longer sequences: truncate (keep the first max_length residues), centre "
        "(keep the middle), or window (overlapping windows of max_length, pooled together).",
    )
    window_stride: int | None = Field(
        None, ge=1, description="window: residues between window starts [default: max_length / 2]"
    )
    fail_on_leakage: bool = Field(
        False, description="Stop when a sequence occurs in both train and test (else warn)."
    )
    measure_identity: bool = Field(
        True,
        description="Data check and training: find each validation and test sequence's "
        "highest identity to any training sequence with MMseqs2, when it is installed (one "
        "search), and report them in identity bins; false skips the search.",
    )
    identity_coverage: float = Field(
        0.8,
        gt=0,
        le=1,
        description="Leakage by identity: an alignment counts when it covers at least this share "
        "of both sequences (MMseqs2 -c with --cov-mode 0).",
    )
    max_identity: float | None = Field(
        None,
        gt=0,
        le=1,
        description="Stop when a validation or test sequence is more identical than this "
        "(0 to 1, e.g. 0.5) to a training sequence (or drop it: drop_similar); needs MMseqs2. "
        "[default: none: report only]",
    )
    drop_similar: bool = Field(
        False,
        description="With max_identity: drop the validation and test sequences above it (and "
        "count them) instead of stopping.",
    )
    drop_conflicts: bool = Field(
        False, description="Drop sequences found with two different targets instead of stopping."
    )
    drop_duplicates: bool = Field(
        False, description="Drop repeated ids within a split (first kept) instead of stopping."
    )


class LoraConfig(_Section):
    """LoRA adapter settings (used when finetune.mode is lora)."""

    r: int = Field(8, ge=1, le=1024, description="Rank of the LoRA update matrices.")
    alpha: float = Field(16.0, gt=0, description="LoRA scaling numerator (scale = alpha / r).")
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the LoRA input.")
    target_modules: list[str] = Field(
        default_factory=lambda: ["query", "key", "value", "dense"],
        min_length=1,
        description="Names of ESM2 linear layers that get adapters.",
    )


class FinetuneConfig(_Section):
    """How much of the backbone is trained."""

    mode: FinetuneMode = Field(
        FinetuneMode.LORA,
        description="lora = adapters; frozen = head only; full = everything; "
        "partial = the last unfreeze_last_layers layers.",
    )
    unfreeze_last_layers: int = Field(
        0, ge=0, description="partial: number of final transformer layers trained from the start."
    )
    unfreeze_every_epochs: int = Field(
        0,
        ge=0,
        description="partial: every N epochs unfreeze unfreeze_step more layers (0 = never).",
    )
    unfreeze_step: int = Field(
        1, ge=1, description="partial: layers unfrozen at each progressive step."
    )
    cache_embeddings: bool = Field(
        True,
        description="frozen: compute pooled embeddings once, cache them on disk and train the "
        "head on them (not with attention pooling, which trains).",
    )
    cache_dir: Path | None = Field(
        None,
        description="Embedding cache folder [default: $ESMTUNE_CACHE, else "
        "~/.cache/esmtune/embeddings]",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)

    @model_validator(mode="after")
    def _cross_field_rules(self) -> FinetuneConfig:
        """Rules between the mode and its options, all reported together."""
        problems = []
        partial = self.mode is FinetuneMode.PARTIAL
        if partial and self.unfreeze_last_layers == 0 and self.unfreeze_every_epochs == 0:
            problems.append(
                "finetune.mode=partial trains nothing of the backbone with "
                "unfreeze_last_layers=0 and unfreeze_every_epochs=0: set one of them, "
                "or use mode=frozen"
            )
        if not partial and (self.unfreeze_last_layers or self.unfreeze_every_epochs):
            problems.append(
                f"finetune.unfreeze_last_layers / unfreeze_every_epochs apply to mode=partial, "
                f"not mode={self.mode.value}"
            )
        if problems:
            raise ValueError("\n".join(problems))
        return self


class ModelConfig(_Section):
    """The backbone and the prediction head."""

    name: str = Field(
        "facebook/esm2_t6_8M_UR50D", description="Hugging Face ESM2 id or a local model directory."
    )
    revision: str | None = Field(None, description="Hub revision (branch, tag or commit).")
    pretrained: bool = Field(
        True,
        description="false = same architecture with random weights (offline runs, benchmarks).",
    )
    pooling: Pooling = Field(Pooling.MEAN, description="cls, mean, max or attention pooling.")
    head: Literal["mlp", "esm", "cnn"] = Field(
        "mlp",
        description="mlp: dropout, then Linear + GELU + dropout per head_hidden size, then a "
        "linear layer (per residue tasks: on every residue state). esm: the head of "
        "transformers' EsmForSequenceClassification (the <cls> state, a dense layer of the "
        "model's width, tanh, a linear layer; needs pooling: cls), so that `esmtune export "
        "--format hf` loads with AutoModelForSequenceClassification. cnn (per-residue tasks): "
        "two 1D convolutions over the residue states (head_channels, head_kernel_size), as "
        "biotrainer's and NetSurfP's CNN heads.",
    )
    head_channels: int = Field(32, ge=1, description="cnn head: channels of its first convolution.")
    head_kernel_size: int = Field(
        7,
        ge=1,
        description="cnn head: residues each convolution reads (odd, so that it is centred).",
    )
    head_hidden: list[int] = Field(
        default_factory=lambda: [256],
        description="Hidden layer sizes of the mlp head ([] = linear); the esm head has one "
        "of the model's width.",
    )
    head_dropout: float = Field(0.1, ge=0, lt=1, description="Dropout inside the head.")
    gradient_checkpointing: bool = Field(
        False, description="Recompute activations in backward: less memory, ~30% slower."
    )
    attn_implementation: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernel; sdpa is faster and uses less memory."
    )
    init_from: Path | None = Field(
        None,
        description="Start from an earlier run's fine-tuned weights (its adapters or trained "
        "layers, pooling and head) instead of the base model's; the finetune settings must "
        "match that run's. [default: none]",
    )
    init_skip: list[str] = Field(
        default_factory=list,
        description="With init_from: weights not taken from that run, by name prefix, e.g. "
        "[head] to start a new task's head from scratch.",
    )

    @model_validator(mode="after")
    def _positive_hidden(self) -> ModelConfig:
        if any(size < 1 for size in self.head_hidden):
            raise ValueError("model.head_hidden: every size must be >= 1")
        if self.head_kernel_size % 2 == 0:
            raise ValueError(
                f"model.head_kernel_size must be odd, so that it is centred on each residue "
                f"(it is {self.head_kernel_size}); use {self.head_kernel_size + 1}"
            )
        if self.init_skip and self.init_from is None:
            raise ValueError("model.init_skip names weights to skip from model.init_from: set it")
        if self.head == "esm" and self.pooling is not Pooling.CLS:
            raise ValueError(
                "model.head=esm reads the <cls> state, as EsmForSequenceClassification does: "
                f"set model.pooling=cls (it is {self.pooling.value})"
            )
        return self


class EarlyStoppingConfig(_Section):
    """When to stop because validation stopped improving, and which checkpoint is best."""

    metric: str | None = Field(
        None,
        description="Validation metric that selects the best checkpoint, in its direction "
        "(loss, rmse, mae, mse: lower is better). [default: per task: "
        + ", ".join(f"{task.value} {names[0]}" for task, names in TASK_METRICS.items())
        + "]",
    )
    patience: int = Field(
        0, ge=0, description="Evaluations without improvement before stopping (0 = never stop)."
    )
    min_delta: float = Field(0.0, ge=0, description="Smallest change that counts as improvement.")


class ObjectiveConfig(_Section):
    """What the loss weighs, and how probabilities become decisions."""

    class_weights: Literal["balanced"] | dict[str, float] | None = Field(
        None,
        description="multiclass, residue_classification: loss weight per class: balanced "
        "(n / (classes * count), residues for residue_classification) or {label: weight}; for "
        "imbalanced data.",
    )
    pos_weight: Literal["balanced"] | float | None = Field(
        None,
        description="binary, multilabel, two-class residue_classification: weight of "
        "positives in the loss: a number, or balanced (negatives / positives, per label; per "
        "residue: over train's unmasked residues).",
    )
    regression_loss: Literal["mse", "huber"] = Field(
        "mse",
        description="regression, residue_regression: mse, or huber (robust to outliers).",
    )
    huber_delta: float = Field(
        1.0,
        gt=0,
        description="regression, residue_regression: huber transition point, in standard "
        "deviations.",
    )
    standardize_targets: bool = Field(
        True,
        description="regression, residue_regression: learn on (y - mean) / std of train; undone "
        "at prediction.",
    )
    threshold_metric: Literal["f1", "mcc"] = Field(
        "f1",
        description="binary, multilabel, two-class residue_classification: decision thresholds "
        "are tuned on validation for this.",
    )
    tune_thresholds: bool = Field(
        True,
        description="binary, multilabel, two-class residue_classification: tune thresholds "
        "(false: 0.5).",
    )
    calibrate: bool = Field(
        True,
        description="classification tasks: fit a temperature (softmax outputs) or Platt "
        "scaling (sigmoid outputs, per label for multilabel) on validation, saved with the "
        "weights and applied by predict, serve and exports; decision thresholds are tuned on "
        "the calibrated probabilities.",
    )
    ontology_consistent: bool = Field(
        True,
        description="multilabel with data.ontology: raise each parent term's score to its best "
        "child's.",
    )

    @model_validator(mode="after")
    def _positive_weights(self) -> ObjectiveConfig:
        weights = self.class_weights if isinstance(self.class_weights, dict) else {}
        bad = [label for label, weight in weights.items() if not weight > 0]
        if bad or (isinstance(self.pos_weight, float) and not self.pos_weight > 0):
            raise ValueError("class_weights and pos_weight must be > 0")
        return self


class TrainingConfig(_Section):
    """The optimisation loop."""

    epochs: int = Field(10, ge=1, description="Passes over the training split.")
    max_steps: int | None = Field(
        None,
        ge=1,
        description="Stop after this many optimizer steps instead, however many epochs that "
        "takes (the last may be partial); the learning-rate schedule spans them and epochs is "
        "not used. [default: none: train for epochs]",
    )
    max_tokens: int = Field(
        4096,
        ge=64,
        description="Token budget of a batch on each process: inputs x longest input, padding "
        "included; sequences of similar length are batched together. On CPUs smaller is faster "
        "(see the README's Performance section); raise it on large GPUs.",
    )
    batch_size: int | None = Field(
        None, ge=1, description="Also at most this many sequences per batch [default: no limit]"
    )
    gradient_accumulation: int = Field(1, ge=1, description="Batches per optimizer step.")
    learning_rate: float = Field(3e-4, gt=0, le=1, description="Peak learning rate.")
    head_learning_rate: float | None = Field(
        None, gt=0, le=1, description="Learning rate of the head (default: learning_rate)."
    )
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay (not on biases/norms).")
    warmup_ratio: float = Field(
        0.06, ge=0, lt=1, description="Share of optimizer steps spent warming up."
    )
    scheduler: Literal["linear", "cosine", "constant"] = Field(
        "linear", description="Learning-rate decay after warm-up."
    )
    max_grad_norm: float = Field(1.0, ge=0, description="Gradient clipping norm (0 = off).")
    mixed_precision: Literal["no", "bf16", "fp16"] | None = Field(
        None,
        description="Autocast for training: bf16 (recent GPUs, CPUs with AVX512-BF16 or AMX), "
        "fp16 (older GPUs) or no. [default: what accelerate is told (accelerate launch "
        "--mixed_precision, configs/accelerate.yaml), else no]",
    )
    eval_every_epochs: int = Field(1, ge=1, description="Evaluate on validation every N epochs.")
    eval_fraction: float = Field(
        1.0,
        gt=0,
        le=1,
        description="Evaluate on this share of the validation split (a seeded sample, the same "
        "every time), for large validation sets.",
    )
    checkpoint_every_steps: int = Field(
        0, ge=0, description="Also checkpoint every N optimizer steps (0 = at evaluations only)."
    )
    keep_checkpoints: int = Field(
        2, ge=1, description="Most recent resumable checkpoints kept on disk."
    )
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    seed: int = Field(42, ge=0, description="Seed for weights, shuffling and dropout.")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes.")
    trackers: list[Tracker] = Field(
        default_factory=lambda: [Tracker.TENSORBOARD],
        description="Experiment trackers that receive the config, every logged scalar and, at "
        "the end, the run's plots and metrics: any of tensorboard (run_dir/tensorboard), "
        "mlflow, wandb ([] = none). mlflow and wandb are extras: pip install "
        "'esmtune[mlflow]' or 'esmtune[wandb]'.",
    )
    tracker_project: str = Field(
        "esmtune",
        min_length=1,
        description="MLflow experiment and W&B project the run is logged under (the run is "
        "named after its run directory); MLFLOW_EXPERIMENT_NAME, when set, wins for MLflow.",
    )
    mlflow_tracking_uri: str | None = Field(
        None,
        description="MLflow store, e.g. file:/data/mlruns, sqlite:///mlflow.db or "
        "http://host:5000. [default: $MLFLOW_TRACKING_URI, else MLflow's own default: "
        "sqlite:///mlflow.db in the working folder, or ./mlruns where one exists]",
    )

    @field_validator("trackers")
    @classmethod
    def _trackers_once(cls, trackers: list[Tracker]) -> list[Tracker]:
        repeated = sorted({t.value for t in trackers if trackers.count(t) > 1})
        if repeated:
            raise ValueError(f"trackers lists {', '.join(repeated)} more than once")
        return trackers


class OutputConfig(_Section):
    """Where the run directory goes."""

    dir: Path = Field(Path("runs"), description="Folder that holds run directories.")
    name: str | None = Field(
        None, description="Run directory name (default: <model>-<date>-<time>)."
    )


class TrainConfig(_Section):
    """Everything `esmtune train` needs; the resolved copy is saved in every run directory."""

    task: Task = Field(
        Task.MULTICLASS,
        description="What is predicted: multiclass (one of N labels), binary, multilabel "
        "(any set of labels, e.g. GO terms) or regression (one or more numbers) per sequence; "
        "residue_classification (a class per residue, e.g. secondary structure) or "
        "residue_regression (a number per residue).",
    )
    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    objective: ObjectiveConfig = Field(default_factory=ObjectiveConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    output: OutputConfig = Field(default_factory=OutputConfig)

    @model_validator(mode="after")
    def _task_rules(self) -> TrainConfig:
        """Options that belong to another task are mistakes; name them all at once."""
        problems = task_problems(self.task, _dotted(self.model_dump()))
        if problems:
            raise ValueError("\n".join(problems))
        return self

    @property
    def selection_metric(self) -> str:
        """The metric that picks the best checkpoint (the task's default unless set)."""
        return self.training.early_stopping.metric or TASK_METRICS[self.task][0]

    @property
    def target_columns(self) -> list[str]:
        """Target columns, with the task's default."""
        return self.data.target_columns or [TASK_OPTIONS[self.task].target_column]

    def to_yaml_dict(self) -> dict[str, Any]:
        """Plain data for YAML: enums as strings, paths as text."""
        return self.model_dump(mode="json")


def _dotted(mapping: Mapping[str, Any], model: type[BaseModel] | None = None) -> dict[str, Any]:
    """A config mapping as ``{"section.key": value}``; only the schema's sections are walked.

    (A value that is itself a mapping, such as ``objective.class_weights``, stays one value.)
    """
    model = model or TrainConfig
    flat: dict[str, Any] = {}
    for key, value in mapping.items():
        field = model.model_fields.get(str(key))
        section = getattr(field, "annotation", None)
        if (
            isinstance(value, Mapping)
            and isinstance(section, type)
            and issubclass(section, BaseModel)
        ):
            flat.update({f"{key}.{k}": v for k, v in _dotted(value, section).items()})
        else:
            flat[str(key)] = value
    return flat


def _field_names(model: type[BaseModel], path: tuple[str | int, ...]) -> list[str]:
    """The allowed keys at a location of the schema, for 'did you mean' hints."""
    current: type[BaseModel] = model
    for part in path:
        field = current.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        current = annotation
    return list(current.model_fields)


def _format_errors(error: ValidationError, source: str, task_problems: list[str]) -> str:
    lines = []
    for item in error.errors():
        location = ".".join(str(part) for part in item["loc"]) or "(top level)"
        message = item["msg"]
        if item["type"] == "extra_forbidden":
            allowed = _field_names(TrainConfig, item["loc"][:-1])
            close = difflib.get_close_matches(str(item["loc"][-1]), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            message = f"unknown key{hint} (allowed: {', '.join(allowed)})"
        elif item["type"] not in {"value_error", "assertion_error"}:
            message = f"{message} (got {item.get('input')!r})"
        else:
            message = message.removeprefix("Value error, ")
        # Cross-field validators report several problems, one per line.
        lines += [f"  - {location}: {part}" for part in message.split("\n")]
    shown = set(lines)
    lines += [line for problem in task_problems if (line := f"  - {problem}") not in shown]
    return "\n".join([f"{source}: {len(lines)} problem(s) in the configuration:", *lines])


def _parse_override(text: str) -> tuple[list[str], Any]:
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(
            f"override '{text}' is not key=value; write for example training.epochs=3"
        )
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else None


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Set dotted ``key=value`` pairs (values parsed as YAML) on a raw config mapping.

    Args:
        raw: The mapping read from YAML; it is changed in place and returned.
        overrides: Items like ``training.epochs=3`` or ``model.head_hidden=[128,64]``.

    Returns:
        The updated mapping. Unknown keys are left for validation to report.
    """
    for text in overrides:
        keys, value = _parse_override(text)
        node = raw
        for key in keys[:-1]:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[keys[-1]] = value
    return raw


def load_config(path: Path | str | None, overrides: list[str] | None = None) -> TrainConfig:
    """Read a YAML config, apply overrides and validate everything at once.

    Args:
        path: YAML file, or None for the built-in defaults.
        overrides: Dotted ``key=value`` strings applied after the file.

    Returns:
        The validated configuration.

    Raises:
        ConfigError: Listing every problem, with the file name.
    """
    raw: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            loaded = yaml.safe_load(Path(path).read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {path} does not exist") from None
        except (OSError, UnicodeDecodeError) as error:
            raise ConfigError(f"config file {path} cannot be read: {error}") from None
        except yaml.YAMLError as error:
            raise ConfigError(f"{path} is not valid YAML: {error}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(
                f"{path} must hold a mapping of sections, not {type(loaded).__name__}"
            )
        raw = loaded or {}
    apply_overrides(raw, overrides or [])
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as error:
        # The task rules ran (at the top level) only if every field was valid; else run them here.
        ran = any(not item["loc"] for item in error.errors())
        extra = [] if ran else _raw_task_problems(raw)
        raise ConfigError(_format_errors(error, source, extra)) from None


def _raw_task_problems(raw: Mapping[str, Any]) -> list[str]:
    """The task rules on a mapping that failed validation elsewhere (one message lists all)."""
    try:
        task = Task(raw.get("task", Task.MULTICLASS))
    except ValueError:
        return []  # an unknown task is reported by validation
    return task_problems(task, _dotted(raw))


def field_description(model: type[BaseModel], name: str) -> str:
    """The description of a schema field: the ``--help`` of the key or option that sets it.

    Raises:
        TypeError: When the field has none; every settable field must say what it does.
    """
    description = model.model_fields[name].description
    if description is None:
        raise TypeError(f"{model.__name__}.{name} has no description; give its Field one")
    return description


def describe_fields(
    model: type[BaseModel] = TrainConfig, prefix: str = ""
) -> list[tuple[str, str]]:
    """Every settable key with its default and description, for ``--help``."""
    rows: list[tuple[str, str]] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        key = f"{prefix}{name}"
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            rows.extend(describe_fields(annotation, f"{key}."))
            continue
        default = field.get_default(call_default_factory=True)
        default_text = default.value if isinstance(default, StrEnum) else default
        description = field_description(model, name)
        described = "[default: " in description  # the description says it better
        rows.append((key, description if described else f"{description} [default: {default_text}]"))
    return rows
