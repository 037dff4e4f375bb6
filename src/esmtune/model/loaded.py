"""A model together with what predicting needs from its run: config, task and tokenizer.

torch-free, so that a model run by onnxruntime (an ONNX export) comes back in the same object as
a torch one (:func:`esmtune.model.run_model.load_run`) without importing torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Generic, TypeVar

from esmtune.config import TrainConfig
from esmtune.data.encoding import Tokenizer
from esmtune.model.interface import RuntimeModel
from esmtune.tasks import TaskSpec

__all__ = ["LoadedRun"]

# Covariant: a run of the torch classifier is a run of a RuntimeModel, so code that only predicts
# takes either, while export, which merges the torch model, asks for the torch one.
ModelT = TypeVar("ModelT", bound=RuntimeModel, covariant=True)


@dataclass(frozen=True)
class LoadedRun(Generic[ModelT]):
    """A trained model, rebuilt from its run directory or an export, with what it needs."""

    run_dir: Path
    config: TrainConfig
    task: TaskSpec
    model: ModelT
    tokenizer: Tokenizer

    @property
    def labels(self) -> list[str]:
        """Output names: classes, multilabel vocabulary or regression targets."""
        return self.task.labels
