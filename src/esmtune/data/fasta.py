"""Reading FASTA files the way ESM2 needs them.

A small reader of our own because errors must name the line: Biopython's parsers join wrapped
lines but forget where each record started. Wrapped lines are joined, residues upper-cased and a
trailing stop ``*`` removed; validation happens later, in :mod:`esmtune.data.check`.
"""

from __future__ import annotations

import gzip
import io
import re
import shlex
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard, TypeVar

from esmtune.errors import DataError

__all__ = [
    "FASTA_SUFFIXES",
    "MASK_IGNORE",
    "MASK_USE",
    "FastaEntry",
    "SequenceRecord",
    "Target",
    "clean_sequence",
    "header_fields",
    "label_from_path",
    "parse_entries",
    "parse_fasta",
    "read_entries",
    "read_fasta",
]

FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")
_Item = TypeVar("_Item")
_SHLEX_SPACE = re.compile(r"[ \t\r\n]+")  # what separates words for shlex


# A sequence's target: a class label (multiclass, binary), a set of labels (multilabel, sorted),
# one number per target column (regression), one label character per residue (a string as long
# as the sequence: residue_classification) or one number per residue (residue_regression). Read
# it through SequenceRecord's typed views (label, labels, values, residue_labels), which say
# what they expect instead of converting whatever is there.
Target = str | tuple[str, ...] | tuple[float, ...]
# A residue's place in a mask: '1' uses it, '0' leaves it out of the loss and every metric.
MASK_USE, MASK_IGNORE = "1", "0"


def _all_text(items: tuple[object, ...]) -> TypeGuard[tuple[str, ...]]:
    return all(isinstance(item, str) for item in items)


def _all_numbers(items: tuple[object, ...]) -> TypeGuard[tuple[float, ...]]:
    return all(isinstance(item, float) for item in items)


@dataclass(frozen=True, slots=True)
class SequenceRecord:
    """One sequence, with where it came from so that errors can point at it.

    ``line`` is the header line of a FASTA record, the line of a CSV/TSV row, or the row number
    (from 1) in a Parquet file. ``mask`` (per-residue tasks) holds one character per residue:
    ``1`` to use the residue, ``0`` to ignore it in the loss and every metric; a masked residue's
    target may be anything (a placeholder label, NaN) and is never checked or counted.
    """

    id: str
    sequence: str
    target: Target | None = None
    source: str = "<input>"
    line: int = 0
    description: str = ""
    mask: str | None = None

    @property
    def position(self) -> str:
        """File and line (or Parquet row), for messages."""
        unit = "row" if self.source.endswith(".parquet") else "line"
        return f"{self.source}, {unit} {self.line}" if self.line else self.source

    @property
    def where(self) -> str:
        """File, line (or row) and id, for messages."""
        return f"{self.position}, record '{self.id}'"

    @property
    def label(self) -> str:
        """The class label of a single-label record (multiclass, binary).

        Raises:
            TypeError: When the target is not one label (a set, numbers, or no target).
        """
        if not isinstance(self.target, str):
            raise TypeError(f"{self.where}: expected one class label, found {self.target!r}")
        return self.target

    @property
    def labels(self) -> tuple[str, ...]:
        """The class labels the record carries: its label or label set; none for numbers."""
        target = self.target
        if isinstance(target, str):
            return (target,)
        if target is not None and _all_text(target):
            return target
        return ()

    @property
    def values(self) -> tuple[float, ...]:
        """The numbers of a regression record (none without a target).

        One per target column (regression), or one per residue (residue_regression; NaN only
        where the mask is 0).

        Raises:
            TypeError: When the target is class labels.
        """
        target = self.target
        if target is None:
            return ()
        if isinstance(target, str) or not _all_numbers(target):
            raise TypeError(f"{self.where}: expected numbers, found {target!r}")
        return target

    @property
    def residue_labels(self) -> str:
        """The label of each residue (residue_classification): one character per residue.

        Raises:
            TypeError: When the target is not a label string as long as the sequence.
        """
        target = self.target
        if not isinstance(target, str) or len(target) != len(self.sequence):
            raise TypeError(
                f"{self.where}: expected one label per residue ({len(self.sequence)}), "
                f"found {target!r}"
            )
        return target

    @property
    def used_residues(self) -> tuple[bool, ...]:
        """Per residue, whether it counts (its mask is 1); every residue without a mask."""
        if self.mask is None:
            return (True,) * len(self.sequence)
        return tuple(flag == MASK_USE for flag in self.mask)

    @property
    def known_target(self) -> Target | tuple[object, ...] | None:
        """The target with masked residues blanked (None), for comparing two records' targets.

        Two records whose targets differ only where residues are masked carry the same
        knowledge; without a mask this is the target itself.
        """
        target = self.target
        if self.mask is None or not isinstance(target, str | tuple):
            return target
        return tuple(
            value if flag == MASK_USE else None
            for value, flag in zip(target, self.mask, strict=False)
        )


def header_fields(description: str) -> dict[str, str]:
    """``key=value`` pairs of a FASTA header after the id (``>P1 label=Nucleus split=train``).

    Values may be quoted to hold spaces (``label="cell projection"``); words without ``=`` are
    ordinary description and ignored.
    """
    if not any(char in description for char in "'\"\\"):
        # Without quotes or escapes, shlex's words are these (and long per-residue headers,
        # TARGET= and MASK= of a thousand characters each, are read many times faster).
        words = [word for word in _SHLEX_SPACE.split(description) if word]
    else:
        try:
            words = shlex.split(description)
        except ValueError:  # an apostrophe in free text, e.g. "Crohn's": fall back to words
            words = description.split()
    pairs = (word.partition("=") for word in words)
    return {key: value for key, sep, value in pairs if sep and key}


def label_from_path(path: Path) -> str | None:
    """The label a per-label FASTA file stands for (its name without extensions), or None."""
    name = path.name
    if name.endswith(".gz"):
        name = name[:-3]
    for suffix in FASTA_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return None


def clean_sequence(sequence: str) -> str:
    """Residues as ESM2 reads them: no whitespace, upper case, no final stop '*'."""
    return "".join(sequence.split()).upper().removesuffix("*")


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig")


@dataclass(frozen=True, slots=True)
class FastaEntry:
    """One FASTA record as written: what per-residue label and mask files need.

    Their "sequences" are labels, masks or numbers, so they are kept as text lines (stripped of
    surrounding whitespace, wrapped lines not yet joined) for the reader to join as they mean.
    """

    id: str
    description: str
    line: int  # of the header
    lines: tuple[str, ...]


def parse_entries(lines: Iterable[str], source: str = "<input>") -> Iterator[FastaEntry]:
    """Yield FASTA records as written, with their header's line number.

    Args:
        lines: Text lines (a file object or ``text.splitlines()``).
        source: Name used in error messages.

    Yields:
        Each record's id, description and text lines (``;`` comment lines left out).

    Raises:
        DataError: On text before the first header or a header without an id.
    """
    header: str | None = None
    header_line = 0
    chunks: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if header is not None:
                yield _entry(header, header_line, chunks)
            header, header_line, chunks = line[1:].strip(), number, []
            if not header:
                raise DataError(
                    f"{source}, line {number}: header '>' has no sequence id; "
                    "write an id after '>', e.g. '>P12345'"
                )
        elif header is None:
            raise DataError(
                f"{source}, line {number}: sequence text before the first '>' header; "
                "is this a FASTA file? Each record must start with a '>id' line"
            )
        else:
            chunks.append(line)
    if header is not None:
        yield _entry(header, header_line, chunks)


def _entry(header: str, line: int, chunks: list[str]) -> FastaEntry:
    identifier, *rest = header.split(maxsplit=1)
    return FastaEntry(identifier, rest[0] if rest else "", line, tuple(chunks))


def parse_fasta(
    lines: Iterable[str], source: str = "<input>", label: str | None = None
) -> Iterator[SequenceRecord]:
    """Yield records from FASTA text lines.

    Args:
        lines: Text lines (a file object or ``text.splitlines()``).
        source: Name used in error messages.
        label: Label given to every record (per-label files).

    Yields:
        Records with joined, upper-cased sequences and the header's line number.

    Raises:
        DataError: On text before the first header or a header without an id.
    """
    for entry in parse_entries(lines, source):
        sequence = "".join(entry.lines).replace(" ", "").upper()
        if sequence.endswith("*"):
            sequence = sequence[:-1]
        yield SequenceRecord(entry.id, sequence, label, source, entry.line, entry.description)


def read_fasta(path: Path | str, label: str | None = None) -> list[SequenceRecord]:
    """Read a FASTA file (plain or gzipped).

    Args:
        path: The file.
        label: Label for every record; for per-label files use :func:`label_from_path`.

    Returns:
        The records, in file order.

    Raises:
        DataError: When the file is missing, not text, or not FASTA.
    """
    path = Path(path)
    return _read(path, lambda handle: list(parse_fasta(handle, str(path), label)))


def read_entries(path: Path | str) -> list[FastaEntry]:
    """Read a FASTA file (plain or gzipped) as written: see :class:`FastaEntry`.

    Raises:
        DataError: When the file is missing, not text, or not FASTA.
    """
    path = Path(path)
    return _read(path, lambda handle: list(parse_entries(handle, str(path))))


def _read(path: Path, parse: Callable[[io.TextIOBase], list[_Item]]) -> list[_Item]:
    try:
        with _open_text(path) as handle:
            return parse(handle)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise DataError(f"{path}: cannot be read as (gzipped) FASTA text: {error}") from None
