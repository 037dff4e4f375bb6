"""Putting overlapping windows of a long sequence back together, residue by residue.

A sequence longer than the model's context is read as overlapping windows (see
:func:`esmtune.data.batching.encode`). Each residue's state is the mean of its states in the
windows that cover it; the ``<cls>`` and ``<eos>`` states are the mean over windows. Pooling then
sees one sequence of residue states, as if the model had read it whole.
"""

from __future__ import annotations

import torch

__all__ = ["stitch_windows"]


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
