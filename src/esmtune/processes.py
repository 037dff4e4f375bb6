"""The processes of one command under ``accelerate launch``: who computes what, who writes.

``embed``, ``predict``, ``evaluate`` and the frozen-mode embedding cache share their batches
among the processes, balanced by padded tokens (what a forward pass costs), not by sequences:
protein lengths are long-tailed, so equal sequence counts would leave one process waiting for the
other. The batches are the ones a single process forms, so every sequence is computed in the
same batch, and so to the same bits, whatever the number of processes. The results are gathered
in input order with accelerate's collectives; only the main process writes.

Started without ``accelerate launch`` (or with one process), :meth:`Processes.current` is this
process alone and costs nothing: no process group, no accelerate state, not even its import.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, TypeVar

from esmtune.errors import EsmtuneError

if TYPE_CHECKING:
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

__all__ = ["Processes", "end_launch", "join_shares", "share_by_cost"]

T = TypeVar("T")

# How long a process waits at a collective: for the slowest process's share, or for the main
# process's report (evaluate's baseline and intervals). torch's default (10 minutes with NCCL)
# would end a long, slightly uneven job; a failure never waits for this (errors are exchanged,
# and a process that dies ends the launch), so it is a last resort only.
PATIENCE = timedelta(hours=24)


def share_by_cost(costs: Sequence[int], count: int) -> list[list[int]]:
    """Split items among ``count`` processes so that their total costs are nearly equal.

    Largest first, each to the process with the least cost so far (ties: the lowest rank), which
    is deterministic and within 4/3 of the best split; each share keeps the items' order.

    Args:
        costs: Each item's cost (a batch's padded tokens).
        count: Processes.

    Returns:
        The indices of the items of each process, in process order.
    """
    totals = [0] * count
    shares: list[list[int]] = [[] for _ in range(count)]
    for item in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        least = min(range(count), key=lambda process: (totals[process], process))
        shares[least].append(item)
        totals[least] += costs[item]
    return [sorted(share) for share in shares]


def join_shares(shares: Sequence[dict[int, T]], count: int) -> list[T]:
    """Rows ``0 .. count - 1`` in order, from the processes' ``{index: row}`` shares."""
    rows: dict[int, T] = {}
    for share in shares:
        rows.update(share)
    return [rows[index] for index in range(count)]


class Processes:
    """This process and the others of its launch, or this process alone (``Processes()``).

    Made from accelerate's state: :meth:`current` for a command, ``Processes(accelerator.state)``
    inside training.

    Every collective runs the local work first and then exchanges an outcome, so an error in one
    process is raised in all of them (:meth:`gather`, :meth:`on_main`) instead of leaving the
    others waiting for a process that died. Objects travel pickled between our own processes
    (accelerate's ``gather_object``); nothing read from a file is unpickled.
    """

    def __init__(self, state: PartialState | AcceleratorState | None = None) -> None:
        self._state = state if state is not None and state.num_processes > 1 else None
        self.count: int = self._state.num_processes if self._state is not None else 1
        self.index: int = self._state.process_index if self._state is not None else 0

    @classmethod
    def current(cls) -> Processes:
        """The processes ``accelerate launch`` (or torchrun) started this one with.

        One process: no process group, no accelerate import. Several: accelerate's state, on
        CPUs over gloo when there is no GPU (accelerate picks its multi-CPU mode only when told
        to use the CPU), waiting up to :data:`PATIENCE` at a collective.
        """
        if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
            return cls()
        import torch
        from accelerate import PartialState

        return cls(PartialState(cpu=not torch.accelerator.is_available(), timeout=PATIENCE))

    @property
    def is_main(self) -> bool:
        """Whether this process writes the outputs (and shows progress)."""
        return self.index == 0

    def __repr__(self) -> str:
        return f"Processes(index={self.index}, count={self.count})"

    def device_for(self, requested: str | None) -> str | None:
        """Where this process runs a model: under several processes, its own GPU.

        ``None`` or the bare device type (``cuda``) means this process's device (``cuda:3``
        for the fourth process of a node), not every process on the first one.
        """
        if self._state is None:
            return requested
        own = self._state.device
        return str(own) if requested in (None, own.type) else requested

    def share(self, costs: Sequence[int]) -> list[int]:
        """The items (by index) this process takes, balanced by cost (:func:`share_by_cost`)."""
        if self.count == 1:
            return list(range(len(costs)))
        return share_by_cost(costs, self.count)[self.index]

    def gather(self, work: Callable[[], T]) -> list[T]:
        """Run ``work`` here and return every process's result, in process order.

        Also a barrier: it returns when every process has finished its work.

        Raises:
            EsmtuneError: In every other process when ``work`` raised in one (which raises its
                own error).
        """
        if self._state is None:
            return [work()]
        from accelerate.utils import gather_object

        failure: Exception | None = None
        try:
            outcome: tuple[str | None, T | None] = (None, work())
        except Exception as error:
            failure, outcome = error, (f"{type(error).__name__}: {error}", None)
        outcomes = gather_object([outcome])
        self._raise_failures([problem for problem, _ in outcomes], failure)
        return [result for _, result in outcomes]  # (None only where a process failed)

    def on_main(self, work: Callable[[], T]) -> T:
        """Run ``work`` on the main process only and return its result in every process.

        For what must happen once (deciding what is missing from a cache, writing a report)
        while the others wait for its outcome.

        Raises:
            EsmtuneError: In the other processes when ``work`` raised on the main one.
        """
        if self._state is None:
            return work()
        from accelerate.utils import broadcast_object_list

        failure: Exception | None = None
        outcome: tuple[str | None, T | None] = (None, None)
        if self.is_main:
            try:
                outcome = (None, work())
            except Exception as error:
                failure, outcome = error, (f"{type(error).__name__}: {error}", None)
        (outcome,) = broadcast_object_list([outcome])
        self._raise_failures([outcome[0], *[None] * (self.count - 1)], failure)
        return outcome[1]  # type: ignore[return-value]  # (None only on failure)

    def _raise_failures(self, problems: list[str | None], own: Exception | None) -> None:
        """Raise this process's own error, or name the processes that failed."""
        if own is not None:
            raise own
        failed = [(rank, problem) for rank, problem in enumerate(problems) if problem is not None]
        if failed:
            rank, problem = failed[0]
            raise EsmtuneError(f"process {rank} of {self.count} failed: {problem}")


def end_launch() -> None:
    """Leave a launch together, once a command has succeeded in this process.

    A process that exits while its process group is alive can abort in the group's teardown
    (gloo: "terminate called without an active exception", exit -6), failing the launch after
    its work is done; the processes that do not write finish first. So each waits for the
    others, then takes the group down. Nothing happens where no group was started (one
    process, or an ONNX export: torch is not even imported).
    """
    distributed = sys.modules.get("torch.distributed")
    if distributed is None or not distributed.is_available() or not distributed.is_initialized():
        return
    distributed.barrier()
    distributed.destroy_process_group()
