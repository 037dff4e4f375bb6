"""Tasks: what is predicted for each sequence, one module per task.

Each task module holds one :class:`TaskSpec` subclass that owns everything that differs between
tasks (see :mod:`esmtune.tasks.base`). Adding a task means: a module here with its class, the
class in :data:`TASKS`, the :class:`~esmtune.config.Task` member and its row of
:data:`~esmtune.config.TASK_OPTIONS`, and tests; nothing else branches on the task.
"""

from __future__ import annotations

from typing import Any

from esmtune.config import ObjectiveConfig, Task, TrainConfig
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import ConfigError
from esmtune.tasks.base import TaskSpec
from esmtune.tasks.binary import BinaryTask
from esmtune.tasks.multiclass import MulticlassTask
from esmtune.tasks.multilabel import MultilabelTask
from esmtune.tasks.regression import RegressionTask
from esmtune.tasks.residue_classification import ResidueClassificationTask
from esmtune.tasks.residue_regression import ResidueRegressionTask

__all__ = [
    "TASKS",
    "BinaryTask",
    "MulticlassTask",
    "MultilabelTask",
    "RegressionTask",
    "ResidueClassificationTask",
    "ResidueRegressionTask",
    "TaskSpec",
    "build_task",
    "task_class",
    "task_from_state",
]

TASKS: dict[Task, type[TaskSpec]] = {
    spec.task: spec
    for spec in (
        MulticlassTask,
        BinaryTask,
        MultilabelTask,
        RegressionTask,
        ResidueClassificationTask,
        ResidueRegressionTask,
    )
}


def task_class(task: Task | str) -> type[TaskSpec]:
    """The class of a task (by member or name)."""
    return TASKS[Task(task)]


def build_task(
    config: TrainConfig,
    labels: list[str],
    train_records: list[SequenceRecord],
    label_names: dict[str, str] | None = None,
    ancestors: dict[str, list[str]] | None = None,
) -> TaskSpec:
    """The task of ``config``, fitted on the training records.

    Raises:
        ConfigError: When objective settings name labels the data does not have, or the
            selection metric does not exist for this data.
    """
    spec = task_class(config.task)(
        labels=list(labels),
        objective=config.objective,
        label_names=dict(label_names or {}),
        ancestors=dict(ancestors or {}),
    )
    problem = spec.selection_problem(config.selection_metric)
    if problem:
        raise ConfigError(f"training.early_stopping.metric: {problem}")
    spec.fit(spec.encode_targets(train_records))
    return spec


def task_from_state(state: dict[str, Any]) -> TaskSpec:
    """Rebuild a fitted task from :meth:`TaskSpec.state` (a run's ``labels.json``)."""
    return task_class(state.get("task", Task.MULTICLASS.value))(
        labels=list(state["labels"]),
        objective=ObjectiveConfig.model_validate(state.get("objective", {})),
        label_names=state.get("label_names") or {},
        ancestors=state.get("ancestors") or {},
        weights=state.get("weights"),
        thresholds=state.get("thresholds"),
        calibration=state.get("calibration"),
        target_mean=state.get("target_mean"),
        target_std=state.get("target_std"),
    )
