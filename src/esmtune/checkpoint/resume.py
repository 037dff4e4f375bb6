"""What ``esmtune train`` does with a run folder that already exists: resume, restart or refuse.

Decided from what is on disk (checkpoint sizes and headers, ``state.json``, ``metrics.json``)
before any data or model is loaded, so a finished run is left exactly as it is and every refusal
names what is in the folder and the way out that actually works.
"""

from __future__ import annotations

import errno
from dataclasses import dataclass
from pathlib import Path

from esmtune.checkpoint.files import (
    ResumePoint,
    find_resume_point,
    latest_checkpoint,
    resume_hint,
    unfinished_checkpoints,
)
from esmtune.config import TrainConfig
from esmtune.errors import RunDirError
from esmtune.rundir import CONFIG_FILE, METRICS_FILE

__all__ = ["ResumePlan", "occupied_error", "plan_resume", "storage_failure_fix"]


def occupied_error(run_dir: Path) -> RunDirError:
    """Why a fresh run will not go into ``run_dir``: what is there, and the way out that works."""
    head = f"run directory {run_dir} already exists and"
    kept = "nothing was overwritten."
    other = "choose another output.name=... (or output.dir=...) for a new run"
    resume = f"`esmtune train --resume {run_dir}`"
    if not (run_dir / CONFIG_FILE).is_file():
        entries = sorted(p.name for p in run_dir.iterdir())
        shown = ", ".join(entries[:5]) + (", ..." if len(entries) > 5 else "")
        return RunDirError(
            f"{head} holds files that are not an esmtune run ({shown}); {kept} Please {other}, "
            "or move those files away"
        )
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        unfinished = unfinished_checkpoints(run_dir)
        held = (
            f"it holds only an unfinished checkpoint, {unfinished[-1].name}"
            if unfinished
            else "it holds no checkpoint"
        )
        return RunDirError(
            f"{head} holds a run that stopped before its first complete checkpoint ({held}); "
            f"{kept} {resume} starts that run afresh in place with its saved {CONFIG_FILE}; "
            f"or {other}"
        )
    if (run_dir / METRICS_FILE).is_file():
        return RunDirError(
            f"{head} holds a finished run (newest checkpoint {checkpoint.name}); {kept} Please "
            f"{other}, or delete {run_dir} first"
        )
    return RunDirError(
        f"{head} holds an interrupted run (newest checkpoint {checkpoint.name}); {kept} "
        f"Continue it with {resume} (it uses its saved {CONFIG_FILE}, not this config), "
        f"or {other}"
    )


@dataclass
class ResumePlan:
    """What ``--resume`` found, decided before anything heavy is loaded."""

    point: ResumePoint
    notes: list[str]  # what to tell the user (fallbacks, a fresh start, a finished run)
    finished: bool  # the run already ended: change nothing


def plan_resume(config: TrainConfig, run_dir: Path) -> ResumePlan:
    """Pick the checkpoint (passing over damaged ones) and see whether the run already ended.

    Only sizes, headers and ``state.json`` are read, so a finished run is recognised, and left
    exactly as it is, without loading the data or the model.
    """
    point = find_resume_point(run_dir)
    notes = [f"checkpoint {path.name} cannot be used: {problem}" for path, problem in point.skipped]
    if point.checkpoint is None:
        unfinished = unfinished_checkpoints(run_dir)
        held = (
            f"only an unfinished checkpoint ({unfinished[-1].name}, removed now)"
            if unfinished
            else "no checkpoint"
        )
        notes.append(
            f"{run_dir} holds {held}: the run stopped before its first complete checkpoint, "
            f"so it starts afresh in place, with its saved {CONFIG_FILE}"
        )
        return ResumePlan(point, notes, finished=False)
    if point.skipped:
        notes.append(f"falling back to the previous complete checkpoint, {point.checkpoint.name}")
    state = point.state
    assert state is not None
    training = config.training
    if training.max_steps is not None:  # a budget of optimizer steps, not of epochs
        budget_spent = state.global_step >= training.max_steps
        planned = f"all {training.max_steps} optimizer steps ran (training.max_steps)"
    else:
        budget_spent = state.epoch >= training.epochs
        planned = f"all {state.epoch} of {training.epochs} epochs ran"
    ended = budget_spent or state.stopped_early
    if ended and (run_dir / METRICS_FILE).is_file():
        how = f"stopped early after {state.epoch} epoch(s)" if state.stopped_early else planned
        best = "undefined" if state.best_value is None else f"{state.best_value:.4f}"
        notes.append(
            f"{run_dir} is complete: {how}; best validation {config.selection_metric} {best} "
            f"at epoch {state.best_epoch}. Nothing to resume, and nothing was changed. "
            f"Evaluate it with `esmtune evaluate {run_dir}`; for more epochs, start a new run"
        )
        return ResumePlan(point, notes, finished=True)
    if ended:
        notes.append(
            f"{planned} before the interruption ({point.checkpoint.name}); writing the run's "
            f"{METRICS_FILE}"
        )
    return ResumePlan(point, notes, finished=False)


def storage_failure_fix(run_dir: Path, code: int) -> str:
    """After a full disk or a read-only folder mid-run: what to do, and where to resume from."""
    if code in (errno.ENOSPC, errno.EDQUOT):
        first = "Free space on that disk"
    elif code == errno.EROFS:
        first = f"Make {run_dir} writable (or copy the run somewhere writable)"
    else:
        first = "Check who may read and write that path"
    return f"{first}; {resume_hint(run_dir)}"
