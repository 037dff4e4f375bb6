"""Experiment trackers (TensorBoard, MLflow, Weights & Biases) through accelerate's tracker API.

accelerate starts each tracker, stores the config and sends every scalar (``accelerator.log``);
what it has no call for, the run's files and its best metrics at the end, goes through each
tracker's own run object, one small function per tracker in :data:`_FINISH`. Trackers live on the
main process only: the other processes hold none, and ``accelerator.log`` skips them.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.tracking import GeneralTracker, MLflowTracker, TensorBoardTracker, WandBTracker

from esmtune.config import Tracker, TrainConfig
from esmtune.errors import ConfigError
from esmtune.rundir import atomic_write_text

__all__ = ["TRACKER_RUNS_FILE", "check_trackers_installed", "finish_trackers", "start_trackers"]

# The MLflow and W&B run ids of a run directory, for --resume.
TRACKER_RUNS_FILE = "trackers.json"

# The package each tracker imports, which its esmtune extra installs (TensorBoard is a dependency).
_PACKAGES = {Tracker.MLFLOW: "mlflow", Tracker.WANDB: "wandb"}

# Uploaded at the end, when they exist: what describes the run, its plots and its metrics (the
# weights stay in the run directory: large, and `esmtune predict` reads them from there).
_RUN_FILES = (
    "config.yaml",
    "manifest.json",
    "labels.json",
    "data_check.txt",
    "metrics.json",
    "model/best_validation_metrics.json",
    "train.log",
)


def check_trackers_installed(trackers: Sequence[Tracker]) -> None:
    """Fail before any data is read when a configured tracker's package is missing.

    Raises:
        ConfigError: Naming each missing package and the extra that installs it.
    """
    missing = [t for t in trackers if t in _PACKAGES and not _installed(_PACKAGES[t])]
    if missing:
        lines = [
            f"  - training.trackers: {t.value} needs the {_PACKAGES[t]} package: "
            f"pip install 'esmtune[{t.value}]' (or remove {t.value} from training.trackers)"
            for t in missing
        ]
        raise ConfigError("\n".join([f"{len(lines)} tracker(s) not installed:", *lines]))


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


def start_trackers(accelerator: Accelerator, config: TrainConfig, run_dir: Path) -> None:
    """Start the configured trackers for ``run_dir`` (main process) and store the config.

    TensorBoard writes into ``run_dir/tensorboard`` as it always has, and is not given the config
    as hyperparameters: accelerate would write them as a second, timestamped TensorBoard run
    beside the first, and ``config.yaml`` already holds them. MLflow and W&B run ids are kept in
    ``run_dir/trackers.json``, so that ``--resume`` goes on logging into the same tracker runs.
    """
    if not accelerator.is_main_process or not config.training.trackers:
        return
    training = config.training
    earlier = _earlier_run_ids(run_dir)
    built: list[GeneralTracker] = []
    for tracker in training.trackers:
        if tracker is Tracker.TENSORBOARD:
            built.append(TensorBoardTracker("tensorboard", run_dir))
        elif tracker is Tracker.MLFLOW:
            if training.mlflow_tracking_uri is not None:
                import mlflow

                mlflow.set_tracking_uri(training.mlflow_tracking_uri)
            built.append(
                MLflowTracker(
                    training.tracker_project, run_id=earlier.get("mlflow"), run_name=run_dir.name
                )
            )
        elif tracker is Tracker.WANDB:
            again = {"id": earlier["wandb"], "resume": "allow"} if "wandb" in earlier else {}
            built.append(WandBTracker(training.tracker_project, name=run_dir.name, **again))
    # Built here, not named in Accelerator(log_with=...): the run directory that TensorBoard and
    # the run names need is chosen after the accelerator exists. init_trackers starts prebuilt
    # trackers as it does the ones it builds.
    accelerator.log_with = built
    accelerator.init_trackers(training.tracker_project)
    parameters = flat_parameters(config.to_yaml_dict())
    run_ids: dict[str, str] = {}
    for started in accelerator.trackers:
        if started.name == Tracker.MLFLOW.value:
            run_ids[started.name] = started.tracker.info.run_id
        elif started.name == Tracker.WANDB.value:
            run_ids[started.name] = started.tracker.id
        if started.name != Tracker.TENSORBOARD.value:
            started.store_init_configuration(parameters)
    if run_ids:
        atomic_write_text(run_dir / TRACKER_RUNS_FILE, json.dumps(run_ids, indent=2) + "\n")


def _earlier_run_ids(run_dir: Path) -> dict[str, str]:
    """The tracker runs an interrupted session of this run logged to (none for a fresh run)."""
    path = run_dir / TRACKER_RUNS_FILE
    return dict(json.loads(path.read_text())) if path.is_file() else {}


def flat_parameters(values: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested config as ``{"training.learning_rate": 0.0003, ...}``: how trackers list it.

    Lists stay one value (``model.head_hidden: [32]``); an empty mapping stays one (``{}``).
    """
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(flat_parameters(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def finish_trackers(
    accelerator: Accelerator, run_dir: Path | None, best: Mapping[str, float], step: int
) -> None:
    """Send the best validation metrics and the run's files, then end every tracker's run.

    Args:
        accelerator: The accelerator whose trackers were started.
        run_dir: The finished run, or None when training failed: its runs are ended, no files
            are sent.
        best: The best evaluation's metrics, as ``best/<name>`` scalars.
        step: The last optimizer step, where the best metrics are recorded.
    """
    files = [] if run_dir is None else _run_files(run_dir)
    for tracker in accelerator.trackers:
        if run_dir is None:
            _mark_failed(tracker)
        elif (finish := _FINISH.get(tracker.name)) is not None:
            finish(tracker, run_dir, files, best, step)
        tracker.finish()
    accelerator.trackers.clear()


def _run_files(run_dir: Path) -> list[Path]:
    """The run's describing files and its plots (every PNG at its top level), where present."""
    files = [run_dir / name for name in _RUN_FILES] + sorted(run_dir.glob("*.png"))
    return [path for path in files if path.is_file()]


def _mark_failed(tracker: GeneralTracker) -> None:
    """End a failed run as failed, where the tracker records it (accelerate ends it finished)."""
    if tracker.name == Tracker.MLFLOW.value:
        import mlflow

        mlflow.end_run(status="FAILED")
    elif tracker.name == Tracker.WANDB.value:
        tracker.tracker.finish(exit_code=1)


def _finish_mlflow(
    tracker: GeneralTracker,
    run_dir: Path,
    files: list[Path],
    best: Mapping[str, float],
    step: int,
) -> None:
    """Best metrics as metrics at the last step; files as artifacts in the run's own layout."""
    if best:
        tracker.log(dict(best), step=step)
    for path in files:
        folder = path.parent.relative_to(run_dir).as_posix()
        tracker.log_artifact(str(path), artifact_path=None if folder == "." else folder)


def _finish_wandb(
    tracker: GeneralTracker,
    run_dir: Path,
    files: list[Path],
    best: Mapping[str, float],
    step: int,
) -> None:
    """Best metrics in the run's summary; files saved with the run (copied now, also offline).

    The files go in a folder named after the run directory: W&B keeps its own ``config.yaml``
    (the parameters) among the run's files, which ours would overwrite.
    """
    run = tracker.tracker
    run.summary.update(dict(best))
    for path in files:
        run.save(str(path), base_path=str(run_dir.parent), policy="now")


_FINISH: dict[str, Callable[[GeneralTracker, Path, list[Path], Mapping[str, float], int], None]] = {
    Tracker.MLFLOW.value: _finish_mlflow,
    Tracker.WANDB.value: _finish_wandb,
}
