"""The self-describing run directory: the files a run leaves, written safely and read back.

A run directory holds the resolved config, the label map, library versions, data summary, the
best weights (safetensors; adapter + head, not the pretrained backbone, for LoRA and frozen runs),
metrics and logs, so that evaluate, predict, serve and export need nothing but the folder.

This module knows the files, not the model: rebuilding a model from them is
:func:`esmtune.model.run_model.load_run`'s job. Keeping the two apart lets checkpointing, export
and serving read a run's config, task and metrics without depending on the model package.
"""

from __future__ import annotations

import json
import os
import platform
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from esmtune.config import TrainConfig, load_config
from esmtune.errors import RunDirError
from esmtune.tasks import TaskSpec, task_from_state

if TYPE_CHECKING:
    import torch
    from transformers import PretrainedConfig, PreTrainedTokenizerBase

__all__ = [
    "BACKBONE_DIR",
    "CONFIG_FILE",
    "LABELS_FILE",
    "LEAKAGE_FILE",
    "MANIFEST_FILE",
    "METRICS_FILE",
    "WEIGHTS_FILE",
    "atomic_write_text",
    "library_versions",
    "read_json",
    "read_run",
    "save_run_files",
    "save_weights",
    "saved_calibration",
    "saved_thresholds",
]

CONFIG_FILE = "config.yaml"
LABELS_FILE = "labels.json"
MANIFEST_FILE = "manifest.json"
# Each validation and test sequence's nearest training sequence (MMseqs2), when measured.
LEAKAGE_FILE = "leakage.tsv"
METRICS_FILE = "metrics.json"
WEIGHTS_FILE = "model/weights.safetensors"
BACKBONE_DIR = "model/backbone"


def library_versions() -> dict[str, str]:
    """Versions of Python and of the libraries that determine a run's numbers."""
    versions = {"python": platform.python_version()}
    for package in ("esmtune", "torch", "transformers", "peft", "accelerate", "safetensors"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash or a full disk never leaves half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError:
        temporary.unlink(missing_ok=True)
        raise


def read_json(path: Path) -> dict[str, Any]:
    """A JSON file a run or export may hold (metrics, manifest); {} when absent or unreadable.

    These files describe a model and are never needed to run it, so they never fail a load.
    """
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def save_weights(
    tensors: dict[str, torch.Tensor],
    path: Path,
    thresholds: list[float] | None = None,
    calibration: dict[str, Any] | None = None,
) -> None:
    """Save safetensors atomically; thresholds and calibration fitted with them go inside.

    Decision thresholds and the probability calibration belong to the weights they were fitted
    with, so they share the file (safetensors metadata) and can never be out of step with them
    after a crash. The file gets the mode the umask implies, so other users (and the API
    container) can read it.

    Raises:
        OSError: When the file cannot be written (full disk, read-only folder).
    """
    from esmtune.storage import save_tensors  # torch: only runs and exports write weights

    fitted = {"thresholds": thresholds, "calibration": calibration}
    metadata = {key: json.dumps(value) for key, value in fitted.items() if value is not None}
    save_tensors(tensors, path, metadata or None)


def _saved(path: Path, key: str) -> Any:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
    return json.loads(metadata[key]) if key in metadata else None


def saved_thresholds(path: Path) -> list[float] | None:
    """The thresholds stored with a weights file, if any."""
    thresholds: list[float] | None = _saved(path, "thresholds")
    return thresholds


def saved_calibration(path: Path) -> dict[str, Any] | None:
    """The calibration stored with a weights file, if any."""
    calibration: dict[str, Any] | None = _saved(path, "calibration")
    return calibration


def save_run_files(
    run_dir: Path,
    config: TrainConfig,
    task: TaskSpec,
    tokenizer: PreTrainedTokenizerBase | None,
    backbone_config: PretrainedConfig | None,
    extra_manifest: dict[str, Any],
) -> None:
    """Write the files that describe a run before its first step.

    ``backbone_config`` is the encoder's own configuration (under a LoRA wrapper, the base
    model's), saved beside the tokenizer so that the backbone can be rebuilt from the folder;
    a head trained on precomputed embeddings has neither.
    """
    atomic_write_text(run_dir / CONFIG_FILE, yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))
    atomic_write_text(run_dir / LABELS_FILE, json.dumps(task.state(), indent=2) + "\n")
    if tokenizer is not None and backbone_config is not None:
        backbone_dir = run_dir / BACKBONE_DIR
        backbone_dir.mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(backbone_dir)
        backbone_config.to_json_file(backbone_dir / "config.json")
    manifest = {"versions": library_versions(), **extra_manifest}
    atomic_write_text(run_dir / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")


def read_run(run_dir: Path) -> tuple[TrainConfig, TaskSpec]:
    """A run's config (backbone pointed where it loads from) and task, without any weights.

    Raises:
        RunDirError: When the folder is not a finished run.
    """
    for required in (CONFIG_FILE, LABELS_FILE, WEIGHTS_FILE):
        if not (run_dir / required).is_file():
            raise RunDirError(
                f"{run_dir} is not a finished esmtune run: {required} is missing "
                "(train with `esmtune train`, or resume an interrupted run with --resume)"
            )
    config = load_config(run_dir / CONFIG_FILE)
    task = task_from_state(json.loads((run_dir / LABELS_FILE).read_text()))
    task.thresholds = saved_thresholds(run_dir / WEIGHTS_FILE)
    task.calibration = saved_calibration(run_dir / WEIGHTS_FILE)
    if not config.model.pretrained:
        # The random-init architecture and tokenizer were saved with the run.
        config.model.name = str(run_dir / BACKBONE_DIR)
    return config, task
