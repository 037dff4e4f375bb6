"""Frozen backbone, per-residue task: every residue's state computed once and kept on disk.

A frozen backbone gives the same states every epoch, so only the first epoch (or none, when an
earlier run on the same backbone and data left them) needs it. The states are stored as float16
in safetensors shards of the embedding cache, under a key of their own (``states``), and read
back lazily through memory maps: a dataset far larger than memory trains with its states on
disk. Batches keep the token-budget shapes of the encoded dataset, laid out as the model's
stitched states (``<cls> residues <eos> padding``), so the head and the targets line up exactly
as when the backbone runs.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from esmtune.data.batching import BudgetedDataset, EncodedDataset, residue_target_rows
from esmtune.embeddings import EmbeddingCache, sequence_key
from esmtune.processes import Processes

__all__ = ["CachedResidueStates", "cache_residue_states", "residue_state_collate"]

# Sequences computed (and written as one shard per process) at a time: bounds the memory of a
# first epoch.
CHUNK = 256


def cache_residue_states(
    cache: EmbeddingCache,
    sequences: Sequence[str],
    compute: Callable[[list[int]], dict[int, torch.Tensor]],
    processes: Processes | None = None,
) -> tuple[list[tuple[Path, str]], list[int]]:
    """Where each sequence's residue states are on disk, computing the missing ones.

    Under several processes each computes and writes its own share of every chunk, as
    :meth:`EmbeddingCache.fetch` does: states never travel between processes.

    Args:
        cache: The cache entry of the run's frozen backbone (per-residue states).
        sequences: Residue strings.
        compute: Given indices of missing sequences, ``{index: (residues, hidden)}`` for those
            this process computed (all, with one process).
        processes: The processes sharing the work (default: this one alone).

    Returns:
        ``(shard, key)`` of each sequence, in order, and how many each process computed.
    """
    processes = processes or Processes()
    keys = [sequence_key(s) for s in sequences]
    missing = processes.on_main(lambda: cache.missing(keys))
    counts = [0] * processes.count
    for first in range(0, len(missing), CHUNK):
        chunk = missing[first : first + CHUNK]

        def compute_share(chunk: list[int] = chunk) -> int:
            states = compute(chunk)
            fresh = {keys[i]: s.to(torch.float16).contiguous() for i, s in states.items()}
            if fresh:
                cache.write(fresh)
            return len(fresh)

        counts = [c + n for c, n in zip(counts, processes.gather(compute_share), strict=True)]
    stored = cache.stored()
    return [(stored[key], key) for key in keys], counts


class CachedResidueStates(BudgetedDataset):
    """Cached per-residue states in place of token windows, batched exactly like them."""

    residue_targets = True

    def __init__(self, locations: list[tuple[Path, str]], encoded: EncodedDataset) -> None:
        self.locations = locations
        self.targets = encoded.targets
        self.starts = [windows[0].start for windows in encoded.windows]
        self._tokens = encoded.tokens
        self._window_counts = encoded.window_counts
        self._handles: dict[Path, Any] = {}

    def __len__(self) -> int:
        return len(self.locations)

    @property
    def tokens(self) -> list[int]:
        """Tokens of each sequence's longest window, as if it were run from tokens."""
        return self._tokens

    @property
    def window_counts(self) -> list[int]:
        """Windows each sequence has, as if it were run from tokens."""
        return self._window_counts

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, np.ndarray | None, int]:
        shard, key = self.locations[index]
        handle = self._handles.get(shard)
        if handle is None:  # one memory map per shard, opened on first use
            handle = self._handles[shard] = safe_open(str(shard), framework="pt")
        target = None if self.targets is None else self.targets[index]
        return index, handle.get_tensor(key), target, self.starts[index]

    def __getstate__(self) -> dict[str, Any]:
        # Loader workers open their own maps.
        return {**self.__dict__, "_handles": {}}


def residue_state_collate(
    items: list[tuple[int, torch.Tensor, np.ndarray | None, int]],
) -> dict[str, torch.Tensor]:
    """States padded to ``<cls> residues <eos> padding`` (float32), with the residue mask."""
    width = max(len(states) for _, states, _, _ in items) + 2
    size = items[0][1].shape[-1]
    embeddings = torch.zeros(len(items), width, size)
    mask = torch.zeros(len(items), width, dtype=torch.bool)
    for row, (_, states, _, _) in enumerate(items):
        embeddings[row, 1 : 1 + len(states)] = states.float()
        mask[row, 1 : 1 + len(states)] = True
    batch = {
        "index": torch.tensor([index for index, _, _, _ in items], dtype=torch.long),
        "embeddings": embeddings,
        "embedding_mask": mask,
    }
    if all(target is not None for _, _, target, _ in items):
        read = [(start, len(states), target) for _, states, target, start in items]
        batch["target"] = torch.from_numpy(residue_target_rows(read, width))
    return batch
