"""From residue strings to token windows and back, in plain Python and numpy.

Everything here is what predicting needs whatever runs the model: the ESM2 vocabulary lookup,
windows over long sequences, batches filled to a token budget, and per-residue outputs put back
over whole sequences. None of it imports torch, so an ONNX export predicts with numpy and
onnxruntime alone; :mod:`esmtune.data.batching` builds torch's loaders on top of it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, assert_never

import numpy as np

from esmtune.architectures import ESM2_VOCAB
from esmtune.config import LongSequences

__all__ = [
    "IGNORED_CLASS",
    "Esm2Vocabulary",
    "NumpyStitcher",
    "StitchSink",
    "Tokenizer",
    "Window",
    "WindowStitcher",
    "encode",
    "fill_batches",
    "place_residues",
    "ragged",
    "sequence_rows",
    "token_budget",
    "window_starts",
]


# A residue class outside the loss and every metric (torch cross-entropy's ignore_index): masked
# residues, <cls>, <eos> and padding. Per-residue values use NaN for the same.
IGNORED_CLASS = -100


class Tokenizer(Protocol):
    """What encoding reads of a tokenizer: its vocabulary and special tokens.

    transformers' ``EsmTokenizer`` has it, and so has :class:`Esm2Vocabulary`, which needs no
    tokenizer library.
    """

    def get_vocab(self) -> Mapping[str, int]:
        """Token -> id."""
        ...

    @property
    def unk_token_id(self) -> int:
        """Id of ``<unk>``: letters outside the vocabulary."""
        ...

    @property
    def cls_token_id(self) -> int:
        """Id of ``<cls>``, before every window."""
        ...

    @property
    def eos_token_id(self) -> int:
        """Id of ``<eos>``, after every window."""
        ...

    @property
    def pad_token_id(self) -> int:
        """Id of ``<pad>``, after the end of shorter rows of a batch."""
        ...


class Esm2Vocabulary:
    """The ESM2 tokenizer as a lookup in the fixed alphabet.

    The alphabet is :data:`~esmtune.architectures.ESM2_VOCAB`; the ids are ``EsmTokenizer``'s (a
    test checks every token), without transformers: what an ONNX export predicts with.
    """

    def __init__(self, tokens: Sequence[str] = ESM2_VOCAB) -> None:
        self.tokens = tuple(tokens)
        self._ids = {token: index for index, token in enumerate(self.tokens)}

    def get_vocab(self) -> dict[str, int]:
        """Token -> id."""
        return dict(self._ids)

    @property
    def unk_token_id(self) -> int:
        """Id of ``<unk>``."""
        return self._ids["<unk>"]

    @property
    def cls_token_id(self) -> int:
        """Id of ``<cls>``."""
        return self._ids["<cls>"]

    @property
    def eos_token_id(self) -> int:
        """Id of ``<eos>``."""
        return self._ids["<eos>"]

    @property
    def pad_token_id(self) -> int:
        """Id of ``<pad>``."""
        return self._ids["<pad>"]


@dataclass(frozen=True, slots=True)
class Window:
    """One model input: token ids with BOS/EOS, covering residues ``start`` onwards."""

    start: int
    ids: list[int]


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Residue offsets of overlapping windows of ``size`` that cover ``length`` residues.

    The last window ends exactly at the sequence end, so no window is shorter than ``size``
    and every residue is covered.
    """
    if length <= size:
        return [0]
    starts = list(range(0, length - size, stride))
    return [*starts, length - size]


class _Lookup:
    """Residue letter → token id, read once from the tokenizer.

    The ESM tokenizer splits a residue string into single letters, which a dictionary lookup does
    some 50x faster; the result is the same (a test checks it).
    """

    def __init__(self, tokenizer: Tokenizer) -> None:
        vocabulary = tokenizer.get_vocab()
        self.unknown = tokenizer.unk_token_id
        self.bos = tokenizer.cls_token_id
        self.eos = tokenizer.eos_token_id
        self.ids = {token: index for token, index in vocabulary.items() if len(token) == 1}

    def __call__(self, residues: str) -> list[int]:
        lookup = self.ids.get
        return [self.bos, *(lookup(char, self.unknown) for char in residues), self.eos]


def encode(
    tokenizer: Tokenizer,
    sequences: Sequence[str],
    max_length: int,
    long_sequences: LongSequences | str = LongSequences.TRUNCATE,
    stride: int | None = None,
) -> list[list[Window]]:
    """Windows of token ids (with BOS/EOS) for each sequence.

    Args:
        tokenizer: The ESM2 tokenizer, or :class:`Esm2Vocabulary` (only the vocabulary is used).
        sequences: Residue strings, upper-case.
        max_length: Residues per model input (ESM2: at most 1,022).
        long_sequences: What to do with longer sequences: keep the first residues
            (``truncate``), the central ones (``centre``), or cover them with overlapping
            windows (``window``).
        stride: Residues between window starts (default ``max_length // 2``).

    Returns:
        One list of windows per sequence; a single window unless ``window`` applies.
    """
    vocabulary = _Lookup(tokenizer)
    long_sequences = LongSequences(long_sequences)  # accept the plain string too
    stride = stride or max(1, max_length // 2)
    encoded = []
    for sequence in sequences:
        if len(sequence) <= max_length:
            encoded.append([Window(0, vocabulary(sequence))])
        elif long_sequences is LongSequences.WINDOW:
            starts = window_starts(len(sequence), max_length, stride)
            encoded.append([Window(s, vocabulary(sequence[s : s + max_length])) for s in starts])
        elif long_sequences is LongSequences.CENTRE:
            start = (len(sequence) - max_length) // 2
            encoded.append([Window(start, vocabulary(sequence[start : start + max_length]))])
        elif long_sequences is LongSequences.TRUNCATE:
            encoded.append([Window(0, vocabulary(sequence[:max_length]))])
        else:
            assert_never(long_sequences)
    return encoded


def token_budget(device_type: str) -> int:
    """Default token budget for inference: small batches on CPUs, large ones on GPUs.

    A CPU gains nothing from wide batches but loses its caches: on our 2-core machines a budget
    of about 1,024 tokens (mostly one protein per batch, so no padding at all) ran ESM2 35M at
    2.2x the speed of a 16,384-token budget (benchmarks/bench.py). A GPU needs the width.
    """
    return 16384 if device_type == "cuda" else 1024


def fill_batches(
    ordered: Sequence[int],
    tokens: Sequence[int],
    window_counts: Sequence[int],
    max_tokens: int,
    max_sequences: int | None = None,
) -> list[list[int]]:
    """Greedy batches over indices sorted by length (longest first), within the token budget.

    A batch costs (model inputs in it) x (tokens of its longest input); a sequence alone over
    the budget forms a batch of its own.
    """
    batches: list[list[int]] = []
    current: list[int] = []
    inputs = longest = 0
    for index in ordered:
        count, size = window_counts[index], tokens[index]
        full = max_sequences is not None and len(current) >= max_sequences
        over = (inputs + count) * max(longest, size) > max_tokens
        if current and (full or over):
            batches.append(current)
            current, inputs, longest = [], 0, 0
        current.append(index)
        inputs += count
        longest = max(longest, size)
    if current:
        batches.append(current)
    return batches


def ragged(rows: Sequence[np.ndarray]) -> np.ndarray:
    """A 1-D object array holding one array per sequence (never broadcast into one block)."""
    array = np.empty(len(rows), dtype=object)
    for position, row in enumerate(rows):
        array[position] = row
    return array


def sequence_rows(rows: Sequence[np.ndarray]) -> np.ndarray:
    """Each sequence's outputs as one array: stacked rows, or ragged per-residue arrays.

    A per-residue model's row is 2-D ``(residues, outputs)``; those go in a 1-D object array.
    """
    if rows and rows[0].ndim == 2:
        return ragged(rows)
    return np.stack(rows)


def place_residues(outputs: np.ndarray, starts: list[int], lengths: list[int]) -> np.ndarray:
    """Per-residue outputs over each whole sequence: NaN rows where residues were not read.

    A cut sequence (``truncate``, ``centre``) is read from its first window's start; its outputs
    go back to those residues, never shifted onto others. Sequence-level outputs pass unchanged.
    """
    if outputs.dtype != object:
        return outputs
    placed = []
    for row, start, length in zip(outputs, starts, lengths, strict=True):
        if start == 0 and len(row) == length:
            placed.append(row)
            continue
        whole = np.full((length, *row.shape[1:]), np.nan, dtype=np.float32)
        whole[start : start + len(row)] = row
        placed.append(whole)
    return ragged(placed)


ArrayT = TypeVar("ArrayT")


class StitchSink(Protocol[ArrayT]):
    """Receives one long sequence's stitched states piece by piece (see :class:`WindowStitcher`)."""

    def add_residues(self, states: ArrayT) -> None:
        """Take the final states ``(residues, hidden)`` of the next consecutive residues."""

    def close(self, cls_state: ArrayT) -> ArrayT:
        """Take the ``<cls>`` state ``(hidden,)`` (mean over windows) and return the result."""


class WindowStitcher(Generic[ArrayT]):
    """Stitches the windows of one long sequence as they arrive, holding only their overlap.

    Each residue's state is the mean of its states in the windows covering it (float32), the
    ``<cls>`` state the mean over windows. Windows come a few at a time in the order of their
    starts, and a residue goes to the sink as soon as no later window can cover it, so a sequence
    of any length needs memory for one window's overlap. One arithmetic for torch (training,
    runs) and numpy (ONNX exports): a subclass says how its arrays are made float32, copied and
    grown.
    """

    def __init__(self, sink: StitchSink[ArrayT]) -> None:
        self.sink = sink
        self._done = 0  # residues handed to the sink
        self._sum: Any = None  # states of residues done.. (float32)
        self._count: Any = None
        self._cls_sum: Any = None
        self._windows = 0
        self._last_start = -1

    def _float32(self, array: ArrayT) -> Any:
        raise NotImplementedError

    def _copy(self, array: Any) -> Any:
        raise NotImplementedError

    def _grown(self, buffer: Any, rows: int, like: Any) -> Any:
        """``buffer`` (or nothing) with ``rows`` zero rows appended, shaped like ``like``'s rows."""
        raise NotImplementedError

    def add(self, start: int, cls_state: ArrayT, residue_states: ArrayT) -> None:
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
        states, cls = self._float32(residue_states), self._float32(cls_state)
        self._cls_sum = self._copy(cls) if self._cls_sum is None else self._cls_sum + cls
        self._windows += 1
        offset = start - self._done  # where this window begins inside the pending buffer
        end = offset + len(states)
        if end > self._pending():  # grow the buffer to cover this window's last residues
            grow = end - self._pending()
            self._sum = self._grown(self._sum, grow, states)
            self._count = self._grown(self._count, grow, states[:, 0])
        self._sum[offset:end] += states
        self._count[offset:end] += 1

    def finish(self) -> ArrayT:
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
        self.sink.add_residues(self._sum[:ready] / self._count[:ready, None])
        self._sum, self._count = self._sum[ready:], self._count[ready:]
        self._done += ready


class NumpyStitcher(WindowStitcher[np.ndarray]):
    """:class:`WindowStitcher` on numpy arrays (onnxruntime's states)."""

    def _float32(self, array: np.ndarray) -> np.ndarray:
        return np.asarray(array, dtype=np.float32)

    def _copy(self, array: np.ndarray) -> np.ndarray:
        return array.copy()

    def _grown(self, buffer: np.ndarray | None, rows: int, like: np.ndarray) -> np.ndarray:
        zeros = np.zeros((rows, *like.shape[1:]), np.float32)
        return zeros if buffer is None else np.concatenate([buffer, zeros])
