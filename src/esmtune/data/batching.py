"""From records to padded tensors: encode once, cut long sequences, fill batches to a token budget.

Protein lengths are long-tailed. Padding every batch to the maximum length, or using a fixed
number of sequences per batch, wastes most of the compute on padding or starves the short
batches; instead sequences of similar length are grouped and each batch is filled up to a budget
of padded tokens. Training keeps randomness (shuffled groups and batch order, seeded per epoch).

Sequences longer than the model's context are either truncated (head or centre) or cut into
overlapping windows whose residue states the model stitches back together (see
:class:`~esmtune.model.classifier.SequenceClassifier`).
"""

from __future__ import annotations

import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

# Encoding is torch-free (predicting from an ONNX export uses it alone); re-exported here for
# the training side, which imports everything from this module.
from esmtune.data.encoding import IGNORED_CLASS, Window, encode, fill_batches, window_starts
from esmtune.processes import Processes

__all__ = [
    "IGNORED_CLASS",
    "BudgetedDataset",
    "EncodedDataset",
    "TokenBudgetBatchSampler",
    "Window",
    "encode",
    "eval_loader",
    "loader_sequences",
    "pad_collate",
    "residue_target_rows",
    "window_starts",
]


class BudgetedDataset(Dataset, ABC):
    """A dataset the token-budget sampler batches: each sequence's cost, and the targets.

    Token windows (:class:`EncodedDataset`) and cached pooled embeddings
    (:class:`~esmtune.embeddings.EmbeddedDataset`) are batched alike, so one loader takes either.
    Items are ``(index, inputs, target or None)``.
    """

    targets: np.ndarray | None
    # Targets are one array per sequence, one entry per residue (see pad_collate).
    residue_targets: bool = False

    @abstractmethod
    def __len__(self) -> int: ...

    @property
    @abstractmethod
    def tokens(self) -> list[int]:
        """Tokens of each sequence's longest model input (what padding is decided by)."""

    @property
    @abstractmethod
    def window_counts(self) -> list[int]:
        """Model inputs each sequence needs."""


@dataclass
class EncodedDataset(BudgetedDataset):
    """Encoded windows and (optional) targets, indexable by position.

    Targets are one row per sequence, as the task encodes them: class indices, 0/1, multi-hot
    rows or values; or, with ``residue_targets``, an object array holding one array per sequence
    with an entry per residue (a class index or value; ignored residues ``IGNORED_CLASS`` or NaN).
    """

    windows: list[list[Window]]
    targets: np.ndarray | None = None
    residue_targets: bool = False

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, index: int) -> tuple[int, list[Window], np.ndarray | None]:
        target = None if self.targets is None else self.targets[index]
        return index, self.windows[index], target

    @property
    def tokens(self) -> list[int]:
        """Tokens of each sequence's longest window (what padding is decided by)."""
        return [max(len(w.ids) for w in windows) for windows in self.windows]

    @property
    def starts(self) -> list[int]:
        """The first residue each sequence is read from (not 0 only for a centred cut)."""
        return [windows[0].start for windows in self.windows]

    @property
    def window_counts(self) -> list[int]:
        """Model inputs each sequence needs."""
        return [len(windows) for windows in self.windows]


class TokenBudgetBatchSampler(Sampler[list[int]]):
    """Batches of similar-length sequences whose padded size stays within a token budget.

    A batch costs (model inputs in it) x (tokens of its longest input). Training
    (``shuffle=True``): indices are shuffled with a generator seeded by (seed, epoch), cut into
    groups of ``group_size`` sequences, sorted by length inside each group and filled greedily
    into batches, whose order is shuffled again; so every epoch differs, is reproducible and pads
    little. Without shuffling, batches follow sorted length (longest first, so an out-of-memory
    shows up at once); callers restore the input order from the indices each batch carries.

    Under several processes the number of batches is made a multiple of ``num_replicas`` (see
    :meth:`_even_out`), so that handing out batches round-robin gives each process the same
    number of steps with no sample lost or repeated. A single sequence over the budget forms a
    batch of its own.
    """

    def __init__(
        self,
        tokens: Sequence[int],
        max_tokens: int,
        shuffle: bool,
        seed: int = 0,
        window_counts: Sequence[int] | None = None,
        max_sequences: int | None = None,
        num_replicas: int = 1,
        group_size: int = 2048,
    ) -> None:
        if num_replicas > len(tokens) > 0:
            raise ValueError(
                f"{len(tokens)} sequence(s) cannot be shared by {num_replicas} processes "
                "without repeating some; use fewer processes or more data"
            )
        self.tokens = list(tokens)
        self.window_counts = list(window_counts or [1] * len(self.tokens))
        self.max_tokens = max_tokens
        self.max_sequences = max_sequences
        self.shuffle = shuffle
        self.seed = seed
        self.num_replicas = num_replicas
        self.group_size = group_size
        self.epoch = 0
        self._cache: tuple[int, list[list[int]]] | None = None

    def cost(self, batch: list[int]) -> int:
        """Padded tokens of a batch: its model inputs x the tokens of its longest input."""
        inputs = sum(self.window_counts[index] for index in batch)
        return inputs * max(self.tokens[index] for index in batch)

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose order the next iteration produces."""
        self.epoch = epoch

    def _fill(self, ordered: list[int]) -> list[list[int]]:
        """Greedy batches over indices sorted by length (longest first)."""
        return fill_batches(
            ordered, self.tokens, self.window_counts, self.max_tokens, self.max_sequences
        )

    def _even_out(self, batches: list[list[int]]) -> list[list[int]]:
        """Give every process the same number of batches, losing and repeating nothing.

        The largest batch is split in two until the count is a multiple of the process count;
        when every batch is a single sequence (batch_size 1, or all over the budget), the two
        shortest are merged instead, the one case where a batch exceeds its limits.
        """
        while len(batches) % self.num_replicas:
            largest = max(range(len(batches)), key=lambda i: len(batches[i]))
            batch = batches[largest]
            if len(batch) >= 2:
                half = len(batch) // 2
                batches[largest : largest + 1] = [batch[:half], batch[half:]]
                continue
            by_cost = sorted(range(len(batches)), key=lambda i: self.tokens[batches[i][0]])
            first, second = sorted(by_cost[:2])
            batches[first] = batches[first] + batches.pop(second)
        return batches

    def _batches(self) -> list[list[int]]:
        if self._cache is not None and self._cache[0] == self.epoch:
            return self._cache[1]
        indices = list(range(len(self.tokens)))
        if not self.shuffle:
            indices.sort(key=lambda i: (-self.tokens[i], i))
            batches = self._fill(indices)
        else:
            rng = random.Random(self.seed * 100_003 + self.epoch)
            rng.shuffle(indices)
            batches = []
            for start in range(0, len(indices), self.group_size):
                group = indices[start : start + self.group_size]
                batches += self._fill(sorted(group, key=lambda i: -self.tokens[i]))
            rng.shuffle(batches)
        batches = self._even_out(batches)
        self._cache = (self.epoch, batches)
        return batches

    def __len__(self) -> int:
        return len(self._batches())

    def __iter__(self) -> Iterator[list[int]]:
        yield from self._batches()


def pad_collate(
    items: list[tuple[int, list[Window], np.ndarray | None]],
    pad_token_id: int,
    residue_targets: bool = False,
) -> dict[str, torch.Tensor]:
    """Pad to the longest input of this batch (never to the model's maximum).

    When some sequence comes as several windows, the batch also says which sequence each input
    belongs to (``window_owner``), where it starts (``window_start``) and how many residues each
    sequence has (``residue_count``), so that the model can stitch the windows back together.

    With ``residue_targets`` each sequence's target is an array with one entry per residue; the
    batch's ``target`` is laid out as the model's stitched states (``<cls> residues <eos>
    padding``, see :func:`residue_target_rows`).
    """
    windows = [window for _, sequence_windows, _ in items for window in sequence_windows]
    longest = max(len(window.ids) for window in windows)
    input_ids = torch.full((len(windows), longest), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(windows), longest), dtype=torch.long)
    for row, window in enumerate(windows):
        input_ids[row, : len(window.ids)] = torch.tensor(window.ids, dtype=torch.long)
        attention_mask[row, : len(window.ids)] = 1
    batch = {
        "index": torch.tensor([index for index, _, _ in items], dtype=torch.long),
        "input_ids": input_ids,
        "attention_mask": attention_mask,
    }
    if len(windows) > len(items):
        batch["window_owner"] = torch.tensor(
            [row for row, (_, ws, _) in enumerate(items) for _ in ws], dtype=torch.long
        )
        batch["window_start"] = torch.tensor([w.start for w in windows], dtype=torch.long)
        batch["residue_count"] = torch.tensor(
            [max(w.start + len(w.ids) - 2 for w in ws) for _, ws, _ in items], dtype=torch.long
        )
    targets = [target for _, _, target in items if target is not None]
    if targets and residue_targets:
        windowed = "residue_count" in batch
        width = int(batch["residue_count"].max()) + 2 if windowed else longest
        read = [(*_residues_read(ws), target) for _, ws, target in items]
        batch["target"] = torch.from_numpy(residue_target_rows(read, width))
    elif targets:  # a dataset has targets for every sequence or for none
        batch["target"] = torch.from_numpy(np.stack(targets))
    return batch


def residue_target_rows(read: list[tuple[int, int, np.ndarray | None]], width: int) -> np.ndarray:
    """Per-residue targets ``(sequences, width)`` at the positions of the residues read.

    ``read`` holds, per sequence, the first residue read, how many were read and its targets.
    Residue ``start + i`` of a sequence read from residue ``start`` (a centred cut) sits at
    position ``i + 1``, after ``<cls>``, as its state does; positions that are no residue read
    (``<cls>``, ``<eos>``, padding) hold the ignored value, so they never reach the loss.
    """
    dtype = next(target for _, _, target in read if target is not None).dtype
    fill = IGNORED_CLASS if np.issubdtype(dtype, np.integer) else np.nan
    rows = np.full((len(read), width), fill, dtype=dtype)
    for row, (start, count, target) in enumerate(read):
        assert target is not None
        part = target[start : start + count]
        rows[row, 1 : 1 + len(part)] = part
    return rows


def _residues_read(windows: list[Window]) -> tuple[int, int]:
    """The first residue a sequence's windows read, and how many they read."""
    start = windows[0].start
    end = max(window.start + len(window.ids) - 2 for window in windows)
    return start, end - start


def eval_loader(
    dataset: BudgetedDataset,
    max_tokens: int,
    pad_token_id: int,
    max_sequences: int | None = None,
    num_replicas: int = 1,
    num_workers: int = 0,
    collate_fn: Callable[[list], dict[str, torch.Tensor]] | None = None,
    processes: Processes | None = None,
) -> DataLoader:
    """Length-sorted batches filled to a token budget, padded to their own longest input.

    ``collate_fn`` replaces padding for datasets of cached embeddings. ``processes``: only this
    process's share of the batches one process would form, balanced by padded tokens (see
    :mod:`esmtune.processes`); each sequence stays in the batch it would have had alone.
    """
    collate = partial(
        pad_collate, pad_token_id=pad_token_id, residue_targets=dataset.residue_targets
    )
    sampler = TokenBudgetBatchSampler(
        dataset.tokens,
        max_tokens,
        shuffle=False,
        window_counts=dataset.window_counts,
        max_sequences=max_sequences,
        num_replicas=num_replicas,
    )
    batches: TokenBudgetBatchSampler | list[list[int]] = sampler
    if processes is not None and processes.count > 1:
        formed = list(sampler)
        batches = [formed[i] for i in processes.share([sampler.cost(b) for b in formed])]
    return DataLoader(
        dataset,
        batch_sampler=batches,
        collate_fn=collate_fn or collate,
        num_workers=num_workers,
        generator=torch.Generator(),  # leaves the global RNG (dropout in training) untouched
    )


def loader_sequences(loader: DataLoader) -> int:
    """Sequences an :func:`eval_loader` yields: under several processes, this one's share."""
    batches: Iterable[list[int]] | None = loader.batch_sampler
    assert batches is not None  # (eval_loader always sets one)
    return sum(len(batch) for batch in batches)
