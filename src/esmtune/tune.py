"""Hyperparameter search: an Optuna study whose trials are ordinary training runs.

Each trial samples the search space (TPE, seeded), trains through :func:`esmtune.train.train`
into ``<output.dir>/<study>/trial-NNN`` and reports every validation to the trial, so the median
pruner can stop a poor trial after an epoch; the run then ends as an early stop does and the
trial is recorded as pruned. The study lives in ``<output.dir>/<study>/study.db`` (SQLite): an
interrupted search resumes, and several ``esmtune tune`` processes sharing the file system work
on one study at once. After the trials, the search writes its leaderboard, the best trial's
config and Optuna's plots beside the database.
"""

from __future__ import annotations

import csv
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import yaml
from filelock import FileLock

from esmtune.config import TrainConfig, load_config
from esmtune.metrics import HIGHER_IS_BETTER
from esmtune.search_space import Dimension, TuneOptions, load_search_space
from esmtune.train import train

__all__ = ["TuneResult", "tune"]

STUDY_FILE = "study.db"
# Held while a process creates or joins the study (see _open_study).
_STUDY_LOCK = "study.db.lock"
# The study's count of the processes that have joined it (each seeds its sampler apart).
_JOINED = "processes_joined"
# How long a process waits for another's write to the SQLite file before giving up.
_SQLITE_TIMEOUT_SECONDS = 120
LEADERBOARD_FILE = "leaderboard.csv"
BEST_CONFIG_FILE = "best_config.yaml"
_HEARTBEAT_SECONDS = 60
# The leaderboard's word for each state a trial ends in.
_STATES = {"COMPLETE": "complete", "PRUNED": "pruned", "FAIL": "failed", "RUNNING": "running"}


@dataclass(frozen=True)
class TuneResult:
    """Where a search wrote, and its best trial (None until one completes)."""

    folder: Path
    best_trial: int | None
    best_value: float | None
    table: str


def tune(
    config_path: Path | None,
    search_path: Path,
    options: TuneOptions,
    overrides: list[str] | None = None,
) -> TuneResult:
    """Run more trials of a study, then write its leaderboard, best config and plots.

    Args:
        config_path: The base config every trial starts from.
        search_path: The YAML search space (see :mod:`esmtune.search_space`).
        options: How many trials, the study's name and when pruning may start.
        overrides: ``key=value`` overrides of the base config.

    Returns:
        The study folder and its best trial so far.

    Raises:
        ConfigError: When the config or the search space has problems (all listed at once).
    """
    overrides = list(overrides or [])
    dimensions = load_search_space(search_path, config_path, overrides)
    base = load_config(config_path, overrides)
    study_name = options.study
    folder = base.output.dir / study_name
    folder.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(logging.WARNING)
    higher = HIGHER_IS_BETTER[base.selection_metric]
    direction = (
        optuna.study.StudyDirection.MAXIMIZE if higher else optuna.study.StudyDirection.MINIMIZE
    )
    study, joined = _open_study(folder, study_name, direction, options)
    # Seeded by the config and by how many processes joined the study before this one, so a
    # resumed search, or a second process started at the same moment, draws its own samples.
    study.sampler = optuna.samplers.TPESampler(seed=base.training.seed + joined)
    objective = _Objective(config_path, overrides, dimensions, base.output.dir, study_name)
    # A trial that fails is recorded as failed and the search goes on.
    study.optimize(objective, n_trials=options.trials, catch=(Exception,))
    return _write_results(study, folder, config_path, overrides, dimensions, base)


def _open_study(
    folder: Path, study_name: str, direction: optuna.study.StudyDirection, options: TuneOptions
) -> tuple[optuna.Study, int]:
    """Create the study's SQLite storage or join it; also how many processes joined before."""
    # One process at a time: Optuna stamps a new file's schema version on first use, and two
    # processes doing so at once collide (sqlite3.IntegrityError, UNIQUE constraint failed).
    with FileLock(folder / _STUDY_LOCK), warnings.catch_warnings():
        # The heartbeat is "experimental" since Optuna 2.9.
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        storage = optuna.storages.RDBStorage(
            f"sqlite:///{folder / STUDY_FILE}",
            engine_kwargs={"connect_args": {"timeout": _SQLITE_TIMEOUT_SECONDS}},
            # A process killed mid-trial stops its heartbeat; the next marks that trial failed.
            heartbeat_interval=_HEARTBEAT_SECONDS,
            grace_period=3 * _HEARTBEAT_SECONDS,
        )
        study = optuna.create_study(
            study_name=study_name,
            storage=storage,
            load_if_exists=True,  # resume, or join another process's search
            direction=direction,
            pruner=optuna.pruners.MedianPruner(
                n_startup_trials=options.pruner_startup_trials,
                n_warmup_steps=options.pruner_warmup_epochs,  # steps are epochs, from 1
            ),
        )
        joined = int(study.user_attrs.get(_JOINED, 0))
        study.set_user_attr(_JOINED, joined + 1)
    return study, joined


class _Objective:
    """One trial: sample, train the normal way with a pruning hook, return the best value."""

    def __init__(
        self,
        config_path: Path | None,
        overrides: list[str],
        dimensions: list[Dimension],
        output_dir: Path,
        study_name: str,
    ) -> None:
        self.config_path, self.overrides, self.dimensions = config_path, overrides, dimensions
        self.output_dir, self.study_name = output_dir, study_name

    def __call__(self, trial: optuna.Trial) -> float:
        sampled = [d.override(_suggest(trial, d)) for d in self.dimensions]
        name = f"{self.study_name}/trial-{trial.number:03d}"
        config = load_config(self.config_path, [*self.overrides, *sampled, f"output.name={name}"])
        trial.set_user_attr("run_dir", str(config.output.dir / name))
        pruned: list[int] = []

        def report(epoch: int, value: float | None) -> bool:
            if value is None:
                return False
            trial.report(value, step=epoch)
            if trial.should_prune():
                pruned.append(epoch)
                return True
            return False

        run_dir = train(config, on_validation=report)
        summary = yaml.safe_load((run_dir / "metrics.json").read_text())
        trial.set_user_attr("epochs", summary["epochs_run"])
        if pruned:
            raise optuna.TrialPruned(f"pruned after epoch {pruned[0]}")
        if summary["best_value"] is None:
            raise ValueError(f"{config.selection_metric} was never defined on validation")
        return float(summary["best_value"])


def _suggest(trial: optuna.Trial, dimension: Dimension) -> Any:
    """Sample one dimension with Optuna's matching ``suggest_*``."""
    if dimension.kind == "choice":
        return trial.suggest_categorical(dimension.key, list(dimension.choices))
    log = dimension.kind.startswith("log_")
    if dimension.kind.endswith("int"):
        return trial.suggest_int(dimension.key, int(dimension.low), int(dimension.high), log=log)
    return trial.suggest_float(dimension.key, dimension.low, dimension.high, log=log)


def _write_results(
    study: optuna.Study,
    folder: Path,
    config_path: Path | None,
    overrides: list[str],
    dimensions: list[Dimension],
    base: TrainConfig,
) -> TuneResult:
    """The leaderboard (CSV and text), the best trial's config and the plots."""
    keys = [d.key for d in dimensions]
    header = ["trial", *keys, base.selection_metric, "epochs", "seconds", "state"]
    rows = []
    for trial in study.get_trials(deepcopy=False):
        seconds = (
            round((trial.datetime_complete - trial.datetime_start).total_seconds(), 1)
            if trial.datetime_complete and trial.datetime_start
            else ""
        )
        value = trial.value if trial.value is not None else _best_reported(study, trial)
        rows.append(
            [
                trial.number,
                *[trial.params.get(key, "") for key in keys],
                "" if value is None else round(value, 4),
                trial.user_attrs.get("epochs", ""),
                seconds,
                _STATES.get(trial.state.name, trial.state.name.lower()),
            ]
        )
    text = io.StringIO()
    csv.writer(text).writerows([header, *rows])
    (folder / LEADERBOARD_FILE).write_text(text.getvalue())
    table = _table(header, rows)
    complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    best_trial = best_value = None
    if complete:
        best = study.best_trial
        best_trial, best_value = best.number, best.value
        _write_best_config(study, best, folder, config_path, overrides, dimensions)
    _write_plots(study, folder, len(complete))
    return TuneResult(folder, best_trial, best_value, table)


def _best_reported(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> float | None:
    """A pruned trial's best reported value (it has no final one)."""
    values = list(trial.intermediate_values.values())
    if not values:
        return None
    return max(values) if study.direction == optuna.study.StudyDirection.MAXIMIZE else min(values)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    """The leaderboard as aligned text for the terminal."""
    cells = [[_shown(c) for c in row] for row in [header, *rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _shown(value: Any) -> str:
    """A cell for people: sampled floats to four significant digits (the CSV keeps them all)."""
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _write_best_config(
    study: optuna.Study,
    best: optuna.trial.FrozenTrial,
    folder: Path,
    config_path: Path | None,
    overrides: list[str],
    dimensions: list[Dimension],
) -> None:
    """The best trial's config, ready for ``esmtune train --config`` (its own output name)."""
    sampled = [d.override(best.params[d.key]) for d in dimensions]
    config = load_config(config_path, [*overrides, *sampled])
    path = folder / BEST_CONFIG_FILE
    params = ", ".join(f"{key}={_shown(value)}" for key, value in best.params.items())
    head = (
        f"# Run: esmtune train --config {path}\n"
        f"# Best of study '{study.study_name}': trial {best.number}, "
        f"validation {config.selection_metric} {best.value:.4f} ({params})\n"
    )
    path.write_text(head + yaml.safe_dump(config.to_yaml_dict(), sort_keys=False))


def _write_plots(study: optuna.Study, folder: Path, complete: int) -> None:
    """Optuna's optimization history, and parameter importances once two trials completed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as optuna_plots

    plots: dict[str, Callable[[optuna.Study], Any]] = {
        "optimization_history.png": optuna_plots.plot_optimization_history
    }
    if complete >= 2:
        plots["param_importances.png"] = optuna_plots.plot_param_importances
    for name, plot in plots.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                axes = plot(study)
            except (RuntimeError, ValueError):  # e.g. importances when no parameter varied
                continue
        figure = axes.get_figure(root=True)
        figure.tight_layout()
        figure.savefig(folder / name, dpi=100)
        plt.close(figure)
