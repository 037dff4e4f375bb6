"""What a run reports while it trains: train.log, the progress bar and step metrics.

Scalars go to the experiment trackers (:mod:`esmtune.training.trackers`: TensorBoard by default)
through ``accelerator.log``. Everything here writes on the main process only; the one collective
call (the loss reduced over processes) happens on every process, which is why
:meth:`TrainingLog.step` runs everywhere.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.distributed.tensor import DTensor
from tqdm.auto import tqdm

__all__ = ["TrainingLog", "attach_run_log", "detach_run_logs", "say"]

logger = logging.getLogger("esmtune")


class _RunLogFile(logging.FileHandler):
    """train.log; once it cannot be written (a full disk), one warning, not a traceback a line.

    The write that fails for real (weights, checkpoint) then reports the problem and the fix.
    """

    failed = False

    def handleError(self, record: logging.LogRecord) -> None:
        """Warn once, then stay quiet."""
        if not self.failed:
            self.failed = True
            print(f"warning: {self.baseFilename} can no longer be written", file=sys.stderr)


def detach_run_logs() -> None:
    """Stop logging into an earlier train()'s train.log (same process, e.g. tests, notebooks)."""
    for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
        logger.removeHandler(handler)
        handler.close()


def attach_run_log(run_dir: Path, is_main: bool) -> None:
    """Log to this run's train.log (appending on resume), and to no earlier run's."""
    logger.setLevel(logging.INFO if is_main else logging.WARNING)
    detach_run_logs()
    if is_main:
        handler = _RunLogFile(run_dir / "train.log")
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)


def say(accelerator: Accelerator, message: str) -> None:
    """Print on the main process (above any progress bar) and keep it in train.log."""
    if accelerator.is_main_process:
        tqdm.write(message)
        logger.info(message)


class TrainingLog:
    """The progress bar, step metrics and tracker scalars of one training session.

    Loss and residue counts stay on the device between optimizer steps and are read once per
    step: reading them every batch would force a GPU sync each time.
    """

    def __init__(self, accelerator: Accelerator, epochs: int) -> None:
        """A log for ``epochs`` epochs; the trackers are started beforehand (``start_trackers``)."""
        self._accelerator = accelerator
        self._epochs = epochs
        self._bar: Any = None
        self._loss = torch.zeros((), device=accelerator.device)
        self._residues = torch.zeros((), device=accelerator.device)
        self._batches = 0
        self._tick = time.perf_counter()

    def say(self, message: str | None) -> None:
        """Print and keep ``message`` (nothing when there is none)."""
        if message is not None:
            say(self._accelerator, message)

    def start_epoch(self, epoch: int, batches: int, done: int) -> None:
        """A bar for ``epoch`` (0-based) of ``batches``, ``done`` of them before a resume."""
        self._bar = tqdm(
            total=batches,
            initial=done,
            desc=f"epoch {epoch + 1}/{self._epochs}",
            unit="batch",
            disable=not self._accelerator.is_main_process,
            dynamic_ncols=True,
            # A log file gets a line every 15 s, not ten a second.
            mininterval=0.2 if sys.stderr.isatty() else 15.0,
        )
        self._loss.zero_()
        self._residues.zero_()
        self._batches, self._tick = 0, time.perf_counter()

    def batch(self, loss: torch.Tensor, batch: dict[str, torch.Tensor]) -> None:
        """Count a batch's loss and residues toward the next optimizer step, without a sync."""
        self._loss += loss.detach()
        self._batches += 1
        if "attention_mask" in batch:  # (cached embeddings have no residues to count)
            self._residues += batch["attention_mask"].sum() - 2 * len(batch["input_ids"])
        self._bar.update(1)

    def step(self, global_step: int, learning_rate: float, grad_norm: torch.Tensor) -> float:
        """Report an optimizer step; call on every process (the loss is averaged over them).

        Returns:
            The step's loss: the mean over its batches and processes.
        """
        loss = self._accelerator.reduce(self._loss / self._batches, "mean").item()
        if isinstance(grad_norm, DTensor):  # (FSDP) whole here: only the main process reads it
            grad_norm = grad_norm.full_tensor()
        seconds = max(time.perf_counter() - self._tick, 1e-9)
        rate = self._residues.item() * self._accelerator.num_processes / seconds
        self._bar.set_postfix(loss=f"{loss:.4f}", res_per_s=f"{rate:,.0f}")
        self._scalars(
            "train",
            {
                "loss": loss,
                "learning_rate": learning_rate,
                "grad_norm": grad_norm,
                "residues_per_second": rate,
            },
            global_step,
        )
        self._loss.zero_()
        self._residues.zero_()
        self._batches, self._tick = 0, time.perf_counter()
        return loss

    def end_epoch(self) -> None:
        """Close the epoch's progress bar."""
        self._bar.close()

    def validation(
        self, epoch: int, global_step: int, scalars: dict[str, float], improved: bool
    ) -> None:
        """Report an evaluation: one line (marked when it is the best so far) and its scalars."""
        self._scalars("validation", scalars, global_step)
        marker = " (best so far)" if improved else ""
        numbers = "  ".join(f"{k} {v:.4f}" for k, v in scalars.items())
        self.say(f"epoch {epoch} validation: {numbers}{marker}")

    def _scalars(
        self, section: str, values: Mapping[str, float | torch.Tensor], global_step: int
    ) -> None:
        if self._accelerator.is_main_process:  # float() inside: only it reads a tensor
            scalars = {f"{section}/{name}": float(value) for name, value in values.items()}
            self._accelerator.log(scalars, step=global_step)
