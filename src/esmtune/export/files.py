"""What an export folder holds besides its weights, and reading it back.

Every export carries the run's config and label map (so it needs nothing else to predict),
``export.json`` (format, and the check made when exporting) and a model card. The weights'
files are each format's own (:mod:`esmtune.export.hf`, :mod:`esmtune.export.onnx`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from esmtune.config import TrainConfig, load_config
from esmtune.errors import EsmtuneError, RunDirError
from esmtune.export.names import FormatName
from esmtune.rundir import CONFIG_FILE, LABELS_FILE, read_json
from esmtune.tasks import TaskSpec, task_from_state

__all__ = [
    "CARD_FILE",
    "EXPORT_INFO_FILE",
    "HEAD_FILE",
    "INT8_FILE",
    "ONNX_FILE",
    "POOL_HEAD_FILE",
    "read_export",
    "read_export_info",
    "require_modules",
]

# hf: esmtune's pooling and head next to the Hugging Face weights.
HEAD_FILE = "esmtune_head.safetensors"
# onnx: tokens -> logits and residue states; its int8 copy; stitched windows' states -> logits.
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
POOL_HEAD_FILE = "head.onnx"
# Every export: format, the check against the run and the default runtime; the model card.
EXPORT_INFO_FILE = "export.json"
CARD_FILE = "README.md"


def require_modules(*modules: str, purpose: str = "ONNX") -> None:
    """Fail before any work when an optional dependency of the export extra is missing.

    Raises:
        EsmtuneError: Naming the missing modules and the extra that installs them.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise EsmtuneError(
            f"{purpose} needs {', '.join(missing)}, which is not installed: "
            "pip install 'esmtune[export]'"
        )


def read_export_info(folder: Path | str) -> dict[str, Any]:
    """``export.json``: format, and the parity and speed checks made when exporting."""
    return read_json(Path(folder) / EXPORT_INFO_FILE)


def read_export(folder: Path) -> tuple[TrainConfig, TaskSpec]:
    """An export's config and task (with thresholds), without any weights.

    Raises:
        RunDirError: When the folder lacks them.
    """
    for required in (CONFIG_FILE, LABELS_FILE):
        if not (Path(folder) / required).is_file():
            raise RunDirError(
                f"{folder} is not an esmtune export: {required} is missing "
                f"(create one with `esmtune export RUN --format {'|'.join(FormatName)} --out DIR`)"
            )
    config = load_config(folder / CONFIG_FILE)
    task = task_from_state(json.loads((folder / LABELS_FILE).read_text()))
    return config, task
