"""Reading FASTA files the way ESM2 needs them.

A small reader of our own because errors must name the line: Biopython's parsers join wrapped
lines but forget where each record started. Wrapped lines are joined, residues upper-cased and a
trailing stop ``*`` removed; validation happens later, in :mod:`esmtune.data.check`.
"""

from __future__ import annotations

import gzip
import io
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard

from esmtune.errors import DataError

__all__ = [
    "FASTA_SUFFIXES",
    "SequenceRecord",
    "Target",
    "header_fields",
    "label_from_path",
    "parse_fasta",
    "read_fasta",
]

FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")


# A sequence's target: a class label (multiclass, binary), a set of labels (multilabel, sorted),
# or one number per target column (regression). Read it through SequenceRecord's typed views
# (label, labels, values), which say what they expect instead of converting whatever is there.
Target = str | tuple[str, ...] | tuple[float, ...]


def _all_text(items: tuple[object, ...]) -> TypeGuard[tuple[str, ...]]:
    return all(isinstance(item, str) for item in items)


def _all_numbers(items: tuple[object, ...]) -> TypeGuard[tuple[float, ...]]:
    return all(isinstance(item, float) for item in items)


@dataclass(frozen=True, slots=True)
class SequenceRecord:
    """One sequence, with where it came from so that errors can point at it.

    ``line`` is the header line of a FASTA record, the line of a CSV/TSV row, or the row number
    (from 1) in a Parquet file.
    """

    id: str
    sequence: str
    target: Target | None = None
    source: str = "<input>"
    line: int = 0
    description: str = ""

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
        """The numbers of a regression record, one per target column (none without a target).

        Raises:
            TypeError: When the target is class labels.
        """
        target = self.target
        if target is None:
            return ()
        if isinstance(target, str) or not _all_numbers(target):
            raise TypeError(f"{self.where}: expected numbers, found {target!r}")
        return target


def header_fields(description: str) -> dict[str, str]:
    """``key=value`` pairs of a FASTA header after the id (``>P1 label=Nucleus split=train``).

    Values may be quoted to hold spaces (``label="cell projection"``); words without ``=`` are
    ordinary description and ignored.
    """
    try:
        words = shlex.split(description)
    except ValueError:  # an apostrophe in free text, e.g. "Crohn's": fall back to plain words
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


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8-sig")
    return path.open(encoding="utf-8-sig")


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
    header: str | None = None
    header_line = 0
    chunks: list[str] = []
    for number, raw in enumerate(lines, start=1):
        line = raw.strip()
        if not line or line.startswith(";"):
            continue
        if line.startswith(">"):
            if header is not None:
                yield _record(header, chunks, label, source, header_line)
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
        yield _record(header, chunks, label, source, header_line)


def _record(
    header: str, chunks: list[str], label: str | None, source: str, line: int
) -> SequenceRecord:
    sequence = "".join(chunks).replace(" ", "").upper()
    if sequence.endswith("*"):
        sequence = sequence[:-1]
    identifier, *rest = header.split(maxsplit=1)
    return SequenceRecord(identifier, sequence, label, source, line, rest[0] if rest else "")


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
    try:
        with _open_text(path) as handle:
            return list(parse_fasta(handle, str(path), label))
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError) as error:
        raise DataError(f"{path}: cannot be read as (gzipped) FASTA text: {error}") from None
