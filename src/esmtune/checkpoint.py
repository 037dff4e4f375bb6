"""Resumable checkpoints: weights, optimizer, scheduler, every process's RNG and the loop position.

A checkpoint is written into a hidden temporary folder and renamed into place only when complete,
so an interrupted save never leaves a checkpoint that looks valid. Resuming restores everything
the next step depends on, which is why a resumed run ends with the same weights as one that never
stopped.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from safetensors.torch import load_file

from esmtune.model.rundir import save_weights

__all__ = ["TrainerState", "latest_checkpoint", "load_checkpoint", "save_checkpoint"]

CHECKPOINTS_DIR = "checkpoints"


@dataclass
class TrainerState:
    """Where the loop is, and what early stopping and best-model selection remember."""

    epoch: int = 0
    batches_done: int = 0
    global_step: int = 0
    best_value: float | None = None
    best_epoch: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    # Training loss of the epoch so far (sum of per-step losses), for the training curves.
    epoch_loss_sum: float = 0.0
    epoch_steps: int = 0


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
        trainable: Tensors to keep (see :func:`esmtune.model.rundir.weights_to_save`).
        optimizer: The (prepared) optimizer.
        scheduler: The (prepared) learning-rate scheduler.
        state: The loop state after the last completed step.
        keep: How many checkpoints to keep.

    Returns:
        The checkpoint folder.
    """
    root = run_dir / CHECKPOINTS_DIR
    name = f"epoch-{state.epoch:04d}-step-{state.global_step:08d}"
    final, temporary = root / name, root / f".{name}.tmp"
    if accelerator.is_main_process:
        remove_tree(temporary)
        temporary.mkdir(parents=True)
    accelerator.wait_for_everyone()
    torch.save(_rng_state(), temporary / f"rng-{accelerator.process_index}.pt")
    if accelerator.is_main_process:
        save_weights(trainable, temporary / "trainable.safetensors")
        torch.save(optimizer.state_dict(), temporary / "optimizer.pt")
        torch.save(scheduler.state_dict(), temporary / "scheduler.pt")
        (temporary / "state.json").write_text(json.dumps(asdict(state), indent=2))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if final.exists():
            remove_tree(final)
        os.replace(temporary, final)
        for old in sorted(p for p in root.iterdir() if not p.name.startswith("."))[:-keep]:
            remove_tree(old)
    accelerator.wait_for_everyone()
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint of a run (names sort by epoch, then step)."""
    root = run_dir / CHECKPOINTS_DIR
    if not root.is_dir():
        return None
    complete = sorted(p for p in root.iterdir() if not p.name.startswith(".") and p.is_dir())
    return complete[-1] if complete else None


def load_checkpoint(
    accelerator: Accelerator,
    checkpoint: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> TrainerState:
    """Restore model, optimizer, scheduler and this process's RNG; return the loop state.

    The RNG is restored last, so that nothing done while loading shifts it.
    """
    result = model.load_state_dict(
        load_file(str(checkpoint / "trainable.safetensors")), strict=False
    )
    if result.unexpected_keys:
        raise ValueError(f"{checkpoint}: tensors not in the model: {result.unexpected_keys[:3]}")
    optimizer.load_state_dict(torch.load(checkpoint / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(checkpoint / "scheduler.pt", weights_only=False))
    state = TrainerState(**json.loads((checkpoint / "state.json").read_text()))
    rng_file = checkpoint / f"rng-{accelerator.process_index}.pt"
    if not rng_file.is_file():
        raise ValueError(
            f"{checkpoint} was written by fewer processes than this run has "
            f"({rng_file.name} missing); resume with the same number of processes"
        )
    _set_rng_state(torch.load(rng_file, weights_only=False))
    return state
