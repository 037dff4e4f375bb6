"""What each task owns: its loss, output activation and metrics.

Adding a task means adding a :class:`TaskSpec` here, not ``if`` statements across the code.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from esmtune.config import Task
from esmtune.metrics import multiclass_metrics

__all__ = ["TaskSpec", "task_spec"]


@dataclass(frozen=True)
class TaskSpec:
    """Behaviour of one task."""

    task: Task
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    activation: Callable[[torch.Tensor], torch.Tensor]
    metrics: Callable[[np.ndarray, np.ndarray, list[str]], dict[str, Any]]

    def outputs(self, labels: list[str]) -> int:
        """Size of the head's output layer."""
        return len(labels)


_SPECS = {
    Task.MULTICLASS: TaskSpec(
        task=Task.MULTICLASS,
        loss=nn.functional.cross_entropy,
        activation=lambda logits: torch.softmax(logits.float(), dim=-1),
        metrics=multiclass_metrics,
    ),
}


def task_spec(task: Task) -> TaskSpec:
    """The behaviour of ``task``."""
    return _SPECS[Task(task)]
