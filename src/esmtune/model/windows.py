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

import torch

from esmtune.data.encoding import StitchSink
from esmtune.data.encoding import WindowStitcher as ArrayStitcher

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


# What a torch stitcher hands its states to (pooling, a head, a recorder).
ResidueSink = StitchSink[torch.Tensor]


class WindowStitcher(ArrayStitcher[torch.Tensor]):
    """The shared window stitcher on torch tensors: :func:`stitch_windows`, a window at a time."""

    def _float32(self, array: torch.Tensor) -> torch.Tensor:
        return array.float()

    def _copy(self, array: torch.Tensor) -> torch.Tensor:
        return array.clone()

    def _grown(self, buffer: torch.Tensor | None, rows: int, like: torch.Tensor) -> torch.Tensor:
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
