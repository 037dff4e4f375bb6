"""Reading CSV, TSV and Parquet tables into rows that remember their line.

CSV and TSV go through the standard library's ``csv`` reader, which follows quoting rules and
reports the line each row started on (quoted fields may span lines), so errors can point at it.
Parquet goes through ``pyarrow``. Every value comes back as text; the task decides how to read it.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass
from pathlib import Path

from esmtune.errors import DataError

__all__ = ["TABLE_SUFFIXES", "Table", "is_table", "read_table"]

TABLE_SUFFIXES = (".csv", ".tsv", ".parquet")


def _suffix(path: Path) -> str:
    """The meaningful suffix, looking through a final ``.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    return suffixes[-1] if suffixes else ""


def is_table(path: Path) -> bool:
    """Whether ``path`` names a table by its suffix (``.csv``, ``.tsv``, ``.parquet``, ``.gz``)."""
    return _suffix(path) in TABLE_SUFFIXES


@dataclass(frozen=True)
class Table:
    """A table's column names and rows; ``lines[i]`` is where ``rows[i]`` starts."""

    path: Path
    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]


def _read_delimited(path: Path, delimiter: str) -> Table:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file; the first line must name the columns")
        columns = [name.strip() for name in header]
        rows, lines = [], []
        start = reader.line_num + 1
        for values in reader:
            if not any(value.strip() for value in values):
                start = reader.line_num + 1
                continue  # blank line
            if len(values) != len(columns):
                raise DataError(
                    f"{path}, line {start}: {len(values)} field(s) where the header has "
                    f"{len(columns)}; is the delimiter right (.csv = comma, .tsv = tab) and are "
                    "fields holding the delimiter quoted?"
                )
            rows.append({name: value.strip() for name, value in zip(columns, values, strict=True)})
            lines.append(start)
            start = reader.line_num + 1
    return Table(path, columns, rows, lines)


def _read_parquet(path: Path) -> Table:
    import pyarrow.parquet as pq  # only Parquet users pay for the import

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid / OSError family
        raise DataError(f"{path}: cannot be read as Parquet: {error}") from None
    columns = list(table.column_names)
    rows = [
        {name: "" if value is None else str(value) for name, value in row.items()}
        for row in table.to_pylist()
    ]
    return Table(path, columns, rows, list(range(1, len(rows) + 1)))


def read_table(path: Path | str) -> Table:
    """Read a CSV (comma), TSV (tab) or Parquet table, optionally gzipped (CSV/TSV).

    Raises:
        DataError: When the file is missing, unreadable, or a row does not match the header.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = _suffix(path)
    try:
        if kind == ".parquet":
            table = _read_parquet(path)
        else:
            table = _read_delimited(path, "\t" if kind == ".tsv" else ",")
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as error:
        raise DataError(f"{path}: cannot be read as a {kind[1:]} table: {error}") from None
    if len(set(table.columns)) != len(table.columns):
        repeated = sorted({c for c in table.columns if table.columns.count(c) > 1})
        raise DataError(f"{path}: column name(s) {', '.join(repeated)} occur twice in the header")
    return table
