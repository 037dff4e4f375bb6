"""Putting overlapping windows of a long sequence back together, residue by residue.

A sequence longer than the model's context is read as overlapping windows (see
:func:`esmtune.data.batching.encode`). Each residue's state is the mean of its states in the
windows that cover it; the ``<cls>`` and ``<eos>`` states are the mean over windows. Pooling then
sees one sequence of residue states, as if the model had read it whole.

A sequence whose windows exceed the token budget is read a few windows per pass instead
(:func:`stream_windows`), stitched as they arrive (:class:`WindowStitcher`) into a
:class:`ResidueSink` that pools as it goes, so memory does not grow with its length.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch

__all__ = ["ResidueSink", "WindowStitcher", "over_budget", "stitch_windows", "stream_windows"]


def stitch_windows(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    window_owner: torch.Tensor,
    window_start: torch.Tensor,
    residue_count: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Average window states into one row per sequence.

    Args:
        hidden: ``(windows, tokens, hidden)`` states, each window ``<cls> residues <eos> pad``.
        attention_mask: ``(windows, tokens)``, 1 on real tokens.
        window_owner: ``(windows,)`` the sequence (row of the output) each window belongs to.
        window_start: ``(windows,)`` offset of each window's first residue in its sequence.
        residue_count: ``(sequences,)`` residues of each sequence.

    Returns:
        States ``(sequences, longest + 2, hidden)`` laid out ``<cls> residues <eos>`` and the
        residue mask ``(sequences, longest + 2)`` (True on residues only).
    """
    windows, tokens, size = hidden.shape
    sequences = residue_count.numel()
    width = int(residue_count.max()) + 2
    device = hidden.device
    residues_in = attention_mask.sum(dim=1) - 2  # per window
    # Source and target positions of every residue of every window, flattened.
    position = torch.arange(tokens - 2, device=device)
    valid = position.unsqueeze(0) < residues_in.unsqueeze(1)  # (windows, tokens - 2)
    rows, columns = valid.nonzero(as_tuple=True)
    source = rows * tokens + 1 + columns
    target = window_owner[rows] * width + 1 + window_start[rows] + columns
    # <cls> of each window to position 0, <eos> (after its last residue) to the sequence's end.
    every = torch.arange(windows, device=device)
    source = torch.cat([source, every * tokens, every * tokens + 1 + residues_in])
    target = torch.cat(
        [
            target,
            window_owner * width,
            window_owner * width + 1 + residue_count[window_owner],
        ]
    )
    flat = hidden.reshape(windows * tokens, size).float()
    total = torch.zeros(sequences * width, size, device=device, dtype=torch.float32)
    total.index_add_(0, target, flat[source])
    counts = torch.zeros(sequences * width, device=device, dtype=torch.float32)
    counts.index_add_(0, target, torch.ones_like(target, dtype=torch.float32))
    stitched = total / counts.clamp(min=1).unsqueeze(1)
    slots = torch.arange(width, device=device).unsqueeze(0)
    mask = (slots >= 1) & (slots <= residue_count.unsqueeze(1))
    return stitched.reshape(sequences, width, size).to(hidden.dtype), mask


class ResidueSink(Protocol):
    """Receives one long sequence's stitched states piece by piece (see :class:`WindowStitcher`).

    Implementations reduce as they go (streaming pooling), so that memory does not grow with the
    sequence, or keep what they must (per-residue embeddings, which are the output).
    """

    def add_residues(self, states: torch.Tensor) -> None:
        """Take the final states ``(residues, hidden)`` of the next consecutive residues."""

    def close(self, cls_state: torch.Tensor) -> torch.Tensor:
        """Take the ``<cls>`` state ``(hidden,)`` (mean over windows) and return the result."""


class WindowStitcher:
    """Stitches the windows of one long sequence as they arrive, holding only their overlap.

    The same arithmetic as :func:`stitch_windows` (each residue's state is the mean of its states
    in the windows covering it, in float32), but windows come in a few at a time, in the order of
    their starts, and a residue is handed to the sink as soon as no later window can cover it.
    So a sequence of any length needs memory for one window's overlap, not for all its windows.
    """

    def __init__(self, sink: ResidueSink) -> None:
        self.sink = sink
        self._done = 0  # residues handed to the sink
        self._sum: torch.Tensor | None = None  # states of residues done.. (float32)
        self._count: torch.Tensor | None = None
        self._cls_sum: torch.Tensor | None = None
        self._windows = 0
        self._last_start = -1

    def add(self, start: int, cls_state: torch.Tensor, residue_states: torch.Tensor) -> None:
        """Add one window: its first residue's offset, its ``<cls>`` state and residue states.

        Raises:
            ValueError: When windows arrive out of order (a residue would already be final) or
                leave residues uncovered.
        """
        if start < self._last_start or start < self._done:
            raise ValueError(f"window at residue {start} arrived out of order")
        if start > self._done + self._pending():
            raise ValueError(f"window at residue {start} leaves a gap before it")
        self._last_start = start
        self._flush(start)
        states = residue_states.float()
        cls_state = cls_state.float()
        self._cls_sum = cls_state.clone() if self._cls_sum is None else self._cls_sum + cls_state
        self._windows += 1
        offset = start - self._done  # where this window begins inside the pending buffer
        pending = self._pending()
        end = offset + len(states)
        if end > pending:  # grow the buffer to cover this window's last residues
            grow = end - pending
            self._sum = _extend(self._sum, grow, states)
            self._count = _extend(self._count, grow, states[:, 0])
        assert self._sum is not None and self._count is not None
        self._sum[offset:end] += states
        self._count[offset:end] += 1

    def finish(self) -> torch.Tensor:
        """Hand over the remaining residues and the mean ``<cls>`` state; the sink's result."""
        if self._cls_sum is None:
            raise ValueError("no window was added")
        self._flush(self._done + self._pending())
        return self.sink.close(self._cls_sum / self._windows)

    def _pending(self) -> int:
        return 0 if self._sum is None else len(self._sum)

    def _flush(self, upto: int) -> None:
        """Residues before ``upto`` are final: no later window (start >= upto) covers them."""
        ready = min(upto - self._done, self._pending())
        if ready <= 0:
            return
        assert self._sum is not None and self._count is not None
        self.sink.add_residues(self._sum[:ready] / self._count[:ready].unsqueeze(1))
        self._sum, self._count = self._sum[ready:], self._count[ready:]
        self._done += ready


def _extend(buffer: torch.Tensor | None, rows: int, like: torch.Tensor) -> torch.Tensor:
    """``buffer`` with ``rows`` zero rows appended (shaped like ``like``'s rows)."""
    zeros = torch.zeros((rows, *like.shape[1:]), dtype=torch.float32, device=like.device)
    return zeros if buffer is None else torch.cat([buffer, zeros])


def over_budget(batch: dict[str, torch.Tensor], max_tokens: int) -> bool:
    """Whether a batch is the windows of long sequence(s) too many to run in one pass.

    The sampler puts a sequence whose windows exceed the budget in a batch of its own; such a
    batch goes through :func:`stream_windows` instead of one forward pass.
    """
    return "window_owner" in batch and batch["input_ids"].numel() > max_tokens


def stream_windows(
    window_states: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    batch: dict[str, torch.Tensor],
    max_tokens: int,
    make_sink: Callable[[], ResidueSink],
    device: torch.device | None = None,
) -> list[torch.Tensor]:
    """Each sequence of a windowed batch, read a few windows per pass; one result per sequence.

    Args:
        window_states: The backbone: ``(input_ids, attention_mask) -> (rows, tokens, hidden)``.
        batch: A collated batch with ``window_owner`` and ``window_start`` (see ``pad_collate``).
        max_tokens: Token budget of each forward pass (at least one window per pass).
        make_sink: A fresh :class:`ResidueSink` per sequence (pooling, head, or a collector).
        device: Where the inputs go.

    Returns:
        What each sequence's sink returned at ``close``, in the batch's sequence order.
    """
    owners = batch["window_owner"]
    starts = batch["window_start"]
    width = batch["input_ids"].shape[1]
    per_pass = max(1, max_tokens // width)
    results = []
    for owner in range(int(owners.max()) + 1):
        rows = (owners == owner).nonzero(as_tuple=True)[0]
        rows = rows[torch.argsort(starts[rows], stable=True)]
        stitcher = WindowStitcher(make_sink())
        for first in range(0, len(rows), per_pass):
            chunk = rows[first : first + per_pass]
            mask = batch["attention_mask"][chunk]
            longest = int(mask.sum(dim=1).max())
            ids, mask = batch["input_ids"][chunk, :longest], mask[:, :longest]
            if device is not None:
                ids, mask = ids.to(device), mask.to(device)
            hidden = window_states(ids, mask)
            lengths = mask.sum(dim=1).tolist()
            for row, length in enumerate(lengths):
                start = int(starts[chunk[row]])
                stitcher.add(start, hidden[row, 0], hidden[row, 1 : length - 1])
        results.append(stitcher.finish())
    return results
