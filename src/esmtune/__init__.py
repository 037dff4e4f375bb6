"""esmtune: fine-tune ESM2 protein language models, from data check to predictions.

The public API is small; heavy modules load on first use so that importing esmtune is cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = [
    "PredictOptions",
    "Predictor",
    "ProteinEncoder",
    "TrainConfig",
    "check_dataset",
    "fit",
    "load_config",
    "train",
]
__version__ = "0.1.0"

_HOMES = {
    "PredictOptions": "esmtune.predict_options",
    "Predictor": "esmtune.predict",
    "ProteinEncoder": "esmtune.model.encoder",
    "TrainConfig": "esmtune.config",
    "load_config": "esmtune.config",
    "check_dataset": "esmtune.data.check",
    "fit": "esmtune.fitting",
    "train": "esmtune.train",
}

if TYPE_CHECKING:
    from esmtune.config import TrainConfig, load_config
    from esmtune.data.check import check_dataset
    from esmtune.fitting import fit
    from esmtune.model.encoder import ProteinEncoder
    from esmtune.predict import Predictor
    from esmtune.predict_options import PredictOptions
    from esmtune.train import train


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        import importlib

        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'esmtune' has no attribute {name!r}")
