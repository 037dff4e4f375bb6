"""From records to padded tensors: tokenise once, group by length, pad to the batch's longest.

Padding every batch to the maximum length wastes most of the compute on long-tailed protein
lengths; sorting into length groups keeps the padding small while shuffling keeps training random.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler
from transformers import PreTrainedTokenizerBase

__all__ = ["EncodedDataset", "LengthGroupedBatchSampler", "encode", "pad_collate"]


def encode(
    tokenizer: PreTrainedTokenizerBase, sequences: Sequence[str], max_length: int
) -> list[list[int]]:
    """Token ids with BOS/EOS, each sequence truncated to its first ``max_length`` residues.

    Truncation happens here, explicitly, on the residue string; the tokenizer never cuts silently.
    """
    clipped = [sequence[:max_length] for sequence in sequences]
    return tokenizer(clipped, add_special_tokens=True, truncation=False)["input_ids"]


@dataclass
class EncodedDataset(Dataset):
    """Token ids and (optional) targets, indexable by position.

    Targets are one row per sequence, as the task encodes them: class indices, 0/1, multi-hot
    rows or values.
    """

    input_ids: list[list[int]]
    targets: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.input_ids)

    def __getitem__(self, index: int) -> tuple[int, list[int], np.ndarray | None]:
        target = None if self.targets is None else self.targets[index]
        return index, self.input_ids[index], target

    @property
    def lengths(self) -> list[int]:
        """Token counts, for length grouping."""
        return [len(ids) for ids in self.input_ids]


class LengthGroupedBatchSampler(Sampler[list[int]]):
    """Batches of similar-length sequences.

    Training (``shuffle=True``): shuffle all indices with a generator seeded by (seed, epoch), cut
    them into mega-batches of ``group_batches`` batches, sort each by length, then shuffle the batch
    order, so that each epoch differs, is reproducible, and pads little. Without shuffling, batches
    follow sorted length (longest first, so an out-of-memory shows up at once); callers restore the
    input order through the indices each batch carries.
    """

    def __init__(
        self,
        lengths: Sequence[int],
        batch_size: int,
        shuffle: bool,
        seed: int = 0,
        group_batches: int = 50,
    ) -> None:
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.seed = seed
        self.group_batches = group_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration produces."""
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)

    def _batches(self) -> list[list[int]]:
        indices = list(range(len(self.lengths)))
        if not self.shuffle:
            indices.sort(key=lambda i: -self.lengths[i])
            return [
                indices[i : i + self.batch_size] for i in range(0, len(indices), self.batch_size)
            ]
        rng = random.Random(self.seed * 100_003 + self.epoch)
        rng.shuffle(indices)
        group = self.batch_size * self.group_batches
        ordered: list[int] = []
        for start in range(0, len(indices), group):
            ordered += sorted(indices[start : start + group], key=lambda i: -self.lengths[i])
        batches = [
            ordered[i : i + self.batch_size] for i in range(0, len(ordered), self.batch_size)
        ]
        rng.shuffle(batches)
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()


def pad_collate(
    items: list[tuple[int, list[int], np.ndarray | None]], pad_token_id: int
) -> dict[str, torch.Tensor]:
    """Pad to the longest sequence of this batch (never to the model's maximum)."""
    longest = max(len(ids) for _, ids, _ in items)
    input_ids = torch.full((len(items), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(items), longest), dtype=torch.long)
    for row, (_, ids, _) in enumerate(items):
        input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        attention_mask[row, : len(ids)] = 1
    batch = {
        "index": torch.tensor([index for index, _, _ in items], dtype=torch.long),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }
    if items[0][2] is not None:
        batch["target"] = torch.from_numpy(np.stack([target for _, _, target in items]))
    return batch
