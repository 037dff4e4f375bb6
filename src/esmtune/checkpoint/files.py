"""Resumable checkpoints: weights, optimizer, scheduler, every process's RNG and the loop position.

A checkpoint is written into a hidden temporary folder and renamed into place only when complete,
so an interrupted save never leaves a checkpoint that looks valid; a failed save removes its
temporary folder and leaves the previous checkpoint as it was. Its last file, ``files.json``,
records every file's size, so a checkpoint damaged later (a truncated copy, a full disk during a
sync) is recognised before anything is loaded, and resuming falls back to an older one.

Nothing is pickled: tensors go into safetensors files and everything else into JSON
(:mod:`esmtune.checkpoint.statefile`), because unpickling a file can run any code it names and run
directories are shared. Checkpoints in the old pickle form are refused without being opened.

Resuming restores everything the next step depends on, which is why a resumed run ends with the
same weights as one that never stopped.

A model sharded by FSDP is checkpointed shard by shard (:mod:`esmtune.checkpoint.sharded`): its
weights and optimizer moments in one safetensors file per process under ``model/`` and
``optimizer/``, the rest as above; ``files.json`` then says ``"layout": "sharded"``.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file

from esmtune.checkpoint.sharded import (
    MODEL_SHARDS,
    is_sharded,
    load_shards,
    save_shards,
)
from esmtune.checkpoint.statefile import read_state, save_state
from esmtune.errors import RunDirError, StorageError
from esmtune.rundir import atomic_write_text, save_weights
from esmtune.storage import storage_errno, storage_message

__all__ = [
    "CHECKPOINTS_DIR",
    "ResumePoint",
    "TrainerState",
    "find_resume_point",
    "latest_checkpoint",
    "load_checkpoint",
    "resume_hint",
    "save_checkpoint",
    "unfinished_checkpoints",
]

CHECKPOINTS_DIR = "checkpoints"
TRAINABLE_FILE = "trainable.safetensors"
OPTIMIZER_FILE = "optimizer.safetensors"
SCHEDULER_FILE = "scheduler.safetensors"
STATE_FILE = "state.json"
FILES_FILE = "files.json"  # written last: file sizes, and the mark of a complete checkpoint
SHARDED = "sharded"  # files.json's layout of an FSDP checkpoint; "whole" otherwise
SHARDS_INDEX = "shards.json"  # a sharded checkpoint's weights: name -> whole shape
# What esmtune before safetensors checkpoints wrote (pickles); never opened.
_PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".pickle")


def _rng_file(process_index: int) -> str:
    return f"rng-{process_index}.safetensors"


@dataclass
class TrainerState:
    """Where the loop is, and what early stopping and best-model selection remember."""

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    # Decision thresholds tuned with the best weights, so a resume needs nothing but the checkpoint.
    best_thresholds: list[float] | None = None
    # The calibration fitted on validation for the best weights (temperature or Platt scaling).
    best_calibration: dict[str, Any] | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    # Training loss of the epoch so far (sum of per-step losses), for the training curves.
    epoch_loss_sum: float = 0.0
    epoch_steps: int = 0

    def add_step_loss(self, loss: float) -> None:
        """Count an optimizer step's loss toward the training loss of the next evaluation."""
        self.epoch_loss_sum += loss
        self.epoch_steps += 1

    def take_train_loss(self) -> float | None:
        """Mean step loss since the last evaluation (None without steps); starts a new mean."""
        loss = self.epoch_loss_sum / self.epoch_steps if self.epoch_steps else None
        self.epoch_loss_sum, self.epoch_steps = 0.0, 0
        return loss


def remove_tree(path: Path) -> None:
    """Delete a folder if present (old checkpoints, unfinished temporary ones)."""
    shutil.rmtree(path, ignore_errors=True)


def _rng_state() -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(
    accelerator: Accelerator,
    run_dir: Path,
    trainable: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: TrainerState,
    keep: int,
) -> Path:
    """Write a complete checkpoint atomically and prune old ones; call on every process.

    Args:
        accelerator: The run's accelerator (for process index and barriers).
        run_dir: The run directory.
        trainable: Tensors to keep, as the model holds them (see
            :func:`esmtune.model.run_model.kept_tensors`); sharded ones are written per process.
        optimizer: The (prepared) optimizer.
        scheduler: The (prepared) learning-rate scheduler.
        state: The loop state after the last completed step.
        keep: How many checkpoints to keep.

    Returns:
        The checkpoint folder.

    Raises:
        StorageError: When the disk is full or read-only; the unfinished checkpoint is removed
            and the message names the complete one the run can be resumed from.
    """
    root = run_dir / CHECKPOINTS_DIR
    name = f"epoch-{state.epoch:04d}-step-{state.global_step:08d}"
    final, temporary = root / name, root / f".{name}.tmp"
    sharded = is_sharded(trainable)
    try:
        if accelerator.is_main_process:
            remove_tree(temporary)
            temporary.mkdir(parents=True)
        accelerator.wait_for_everyone()
        save_state(_rng_state(), temporary / _rng_file(accelerator.process_index))
        if sharded:  # every process writes its slices
            optimizer_state = save_shards(temporary, trainable, optimizer)
        elif accelerator.is_main_process:
            whole = {n: t.detach().cpu().contiguous() for n, t in trainable.items()}
            save_weights(whole, temporary / TRAINABLE_FILE)
            optimizer_state = optimizer.state_dict()
        if accelerator.is_main_process:
            if sharded:
                index = {name: list(tensor.shape) for name, tensor in trainable.items()}
                atomic_write_text(temporary / SHARDS_INDEX, json.dumps(index, indent=2))
            save_state(optimizer_state, temporary / OPTIMIZER_FILE)
            save_state(scheduler.state_dict(), temporary / SCHEDULER_FILE)
            atomic_write_text(temporary / STATE_FILE, json.dumps(asdict(state), indent=2))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            files = sorted(p for p in temporary.rglob("*") if p.is_file())
            sizes = {p.relative_to(temporary).as_posix(): p.stat().st_size for p in files}
            layout = SHARDED if sharded else "whole"
            manifest = {"sizes": sizes, "layout": layout, "processes": accelerator.num_processes}
            atomic_write_text(temporary / FILES_FILE, json.dumps(manifest, indent=2))
            if final.exists():
                remove_tree(final)
            os.replace(temporary, final)
    except Exception as error:
        if accelerator.is_main_process:
            remove_tree(temporary)
        code = storage_errno(error)
        if code is None:
            raise
        fix = (
            f"The unfinished checkpoint {name} was removed. Free space (or make the folder "
            f"writable), then {resume_hint(run_dir)}"
        )
        raise StorageError(storage_message(error, code, temporary, fix)) from error
    if accelerator.is_main_process:
        for old in sorted(p for p in root.iterdir() if not p.name.startswith("."))[:-keep]:
            remove_tree(old)
    accelerator.wait_for_everyone()
    return final


def _checkpoint_folders(run_dir: Path) -> list[Path]:
    """Checkpoint folders (not the hidden unfinished ones), oldest first: names sort by step."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())


def unfinished_checkpoints(run_dir: Path) -> list[Path]:
    """Hidden temporary folders of checkpoints whose writing never finished."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.name.startswith(".") and p.is_dir())


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose writing finished (it has ``files.json``); sizes unchecked."""
    complete = [p for p in _checkpoint_folders(run_dir) if (p / FILES_FILE).is_file()]
    return complete[-1] if complete else None


def resume_hint(run_dir: Path) -> str:
    """How to continue a run after a failure, from what is on disk now (damaged ones skipped)."""
    try:
        checkpoint = find_resume_point(run_dir).checkpoint
    except RunDirError:
        checkpoint = None  # none intact: resuming will say so, and what to do
    if checkpoint is None:
        return (
            f"`esmtune train --resume {run_dir}` starts it again (no checkpoint was completed yet)"
        )
    return (
        f"the run can be resumed from checkpoint {checkpoint.name} with "
        f"`esmtune train --resume {run_dir}`"
    )


def _problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from, or None; reads headers and sizes only.

    Nothing is unpickled and no tensor data is read, so this is cheap enough to run before the
    model is built, and safe on a folder from anyone.
    """
    pickles = sorted(p.name for p in checkpoint.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        return (
            f"it holds {', '.join(pickles)} in the pickle format of earlier esmtune versions, "
            "which is not read because unpickling a file can run any code it contains"
        )
    manifest = checkpoint / FILES_FILE
    if not manifest.is_file():
        return f"{FILES_FILE} is missing (its writing never finished)"
    try:
        listed = json.loads(manifest.read_text())
        sizes: dict[str, int] = listed["sizes"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"{FILES_FILE} is damaged ({error})"
    required = [OPTIMIZER_FILE, SCHEDULER_FILE, STATE_FILE]
    if listed.get("layout") == SHARDED:
        required += [SHARDS_INDEX, f"{MODEL_SHARDS}/"]
    else:
        required.append(TRAINABLE_FILE)
    missing = [name for name in required if not any(n.startswith(name) for n in sizes)]
    if missing:
        return f"{FILES_FILE} lists no {', '.join(missing)}"
    for name, size in sizes.items():
        path = checkpoint / name
        actual = path.stat().st_size if path.is_file() else None
        if actual is None:
            return f"{name} is missing"
        if actual != size:
            return f"{name} is {actual:,} bytes where {size:,} were written (truncated or damaged)"
        if name.endswith(".safetensors"):
            try:
                with safe_open(str(path), framework="pt") as handle:
                    handle.metadata()
            except Exception as error:  # safetensors' own error for a damaged header
                return f"{name} is damaged ({error})"
    try:
        _read_trainer_state(checkpoint)
    except ValueError as error:
        return str(error)
    return None  # (a missing rng file of this process is load_checkpoint's clearer error)


def _read_trainer_state(checkpoint: Path) -> TrainerState:
    try:
        values = json.loads((checkpoint / STATE_FILE).read_text())
        known = {f.name for f in fields(TrainerState)}
        return TrainerState(**{k: v for k, v in values.items() if k in known})
    except (OSError, ValueError, TypeError) as error:
        raise ValueError(f"{STATE_FILE} is damaged ({error})") from None


@dataclass
class ResumePoint:
    """The checkpoint a resume starts from, and the newer ones it had to pass over."""

    checkpoint: Path | None
    state: TrainerState | None
    skipped: list[tuple[Path, str]]


def find_resume_point(run_dir: Path) -> ResumePoint:
    """The newest checkpoint that is complete and undamaged, checked without loading anything.

    Returns:
        The checkpoint and its loop state (both None when the run has no checkpoint folder at
        all, i.e. it stopped before its first one), and the damaged checkpoints passed over.

    Raises:
        RunDirError: When there are checkpoints but none can be resumed from; the message lists
            each with its problem and the way out.
    """
    skipped: list[tuple[Path, str]] = []
    folders = _checkpoint_folders(run_dir)
    for checkpoint in reversed(folders):
        problem = _problem(checkpoint)
        if problem is None:
            return ResumePoint(checkpoint, _read_trainer_state(checkpoint), skipped)
        skipped.append((checkpoint, problem))
    if not folders:
        return ResumePoint(None, None, [])
    reasons = "\n".join(f"  {path}: {problem}" for path, problem in skipped)
    raise RunDirError(
        f"{run_dir} has no checkpoint that can be resumed from; nothing was read or changed:\n"
        f"{reasons}\n"
        f"Its best weights so far ({run_dir / 'model'}) are unaffected. To train it again from "
        f"the start with its saved config, move {run_dir / CHECKPOINTS_DIR} away and run "
        f"`esmtune train --resume {run_dir}` (it starts afresh in place)."
    )


def load_checkpoint(
    accelerator: Accelerator,
    checkpoint: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> TrainerState:
    """Restore model, optimizer, scheduler and this process's RNG; return the loop state.

    Every file is read before anything is changed, so a checkpoint that fails to read leaves
    the model and optimizer as they were; a sharded checkpoint's slices are the exception, read
    into the model in place (a second copy of a big model would not fit). The RNG is restored
    last, so that nothing done while loading shifts it.

    Raises:
        RunDirError: When this process has no RNG state in the checkpoint (written by fewer
            processes), its tensors do not fit the model, or it was written with FSDP and this
            run is without it (or the other way round).
        StorageError: When a file cannot be read back.
    """
    rng_file = checkpoint / _rng_file(accelerator.process_index)
    if not rng_file.is_file():
        raise RunDirError(
            f"{checkpoint} was written by fewer processes than this run has "
            f"({rng_file.name} missing); resume with the same number of processes"
        )
    sharded = (checkpoint / SHARDS_INDEX).is_file()
    own = model.state_dict(keep_vars=True)
    if sharded != is_sharded(own):
        written, now = ("with", "without") if sharded else ("without", "with")
        raise RunDirError(
            f"{checkpoint} was written {written} FSDP and this run is {now} it; resume with the "
            "accelerate config the run was started with"
        )
    try:
        trainable = {} if sharded else load_file(str(checkpoint / TRAINABLE_FILE))
        names = json.loads((checkpoint / SHARDS_INDEX).read_text()) if sharded else trainable
        optimizer_state = read_state(checkpoint / OPTIMIZER_FILE)
        scheduler_state = read_state(checkpoint / SCHEDULER_FILE)
        rng_state = read_state(rng_file)
        state = _read_trainer_state(checkpoint)
    except (OSError, ValueError, SafetensorError) as error:
        raise StorageError(
            f"{checkpoint} cannot be read back ({error}); move it away and resume again to "
            "continue from the checkpoint before it"
        ) from error
    if sharded:  # read straight into the model's and the optimizer's slices
        unexpected = [name for name in names if name not in own]
        if not unexpected:
            load_shards(checkpoint, {n: own[n] for n in names}, optimizer, optimizer_state)
    else:
        unexpected = model.load_state_dict(trainable, strict=False).unexpected_keys
    if unexpected:
        raise RunDirError(
            f"{checkpoint}: tensors not in the model: {unexpected[:3]}; was "
            "config.yaml edited after training?"
        )
    if not sharded:
        optimizer.load_state_dict(optimizer_state)
    scheduler.load_state_dict(scheduler_state)
    _set_rng_state(rng_state)
    return state
