"""Reading CSV, TSV and Parquet tables into rows that remember their line.

CSV and TSV go through the standard library's ``csv`` reader, which follows quoting rules and
reports the line each row started on (quoted fields may span lines), so errors can point at it.
Parquet goes through ``pyarrow``. Every value comes back as text; the task decides how to read it.
A row whose field count does not match the header is skipped and reported in ``Table.problems``,
so that one check lists every such row.
"""

from __future__ import annotations

import csv
import gzip
from dataclasses import dataclass, field
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
    """A table's column names and rows; ``lines[i]`` is where ``rows[i]`` starts.

    ``problems`` describes rows that were skipped (file, line, what to do).
    """

    path: Path
    columns: list[str]
    rows: list[dict[str, str]]
    lines: list[int]
    problems: list[str] = field(default_factory=list)


def _read_delimited(path: Path, delimiter: str) -> Table:
    opener = gzip.open if path.suffix.lower() == ".gz" else open
    with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
        reader = csv.reader(handle, delimiter=delimiter)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file; the first line must name the columns")
        columns = [name.strip() for name in header]
        rows, lines, problems = [], [], []
        start = reader.line_num + 1
        for values in reader:
            if not any(value.strip() for value in values):
                start = reader.line_num + 1
                continue  # blank line
            if len(values) != len(columns):
                problems.append(
                    f"{path}, line {start}: {len(values)} field(s) where the header has "
                    f"{len(columns)}; is the delimiter right (.csv = comma, .tsv = tab) and are "
                    "fields holding the delimiter quoted?"
                )
            else:
                rows.append(
                    {name: value.strip() for name, value in zip(columns, values, strict=True)}
                )
                lines.append(start)
            start = reader.line_num + 1
    return Table(path, columns, rows, lines, problems)


def _as_text(value: object, list_separator: str) -> str:
    if value is None:
        return ""
    if isinstance(value, list):  # a list column, e.g. the GO terms of each protein
        return list_separator.join(_as_text(x, list_separator) for x in value)
    return str(value)


def _read_parquet(path: Path, list_separator: str) -> Table:
    import pyarrow.parquet as pq  # only Parquet users pay for the import

    try:
        table = pq.read_table(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid / OSError family
        raise DataError(f"{path}: cannot be read as Parquet: {error}") from None
    columns = list(table.column_names)
    rows = [
        {name: _as_text(value, list_separator) for name, value in row.items()}
        for row in table.to_pylist()
    ]
    return Table(path, columns, rows, list(range(1, len(rows) + 1)))


def read_table(path: Path | str, list_separator: str = ";") -> Table:
    """Read a CSV (comma), TSV (tab) or Parquet table, optionally gzipped (CSV/TSV).

    Args:
        path: The table.
        list_separator: Joins the items of a Parquet list cell into one text value.

    Returns:
        The table; rows that do not match the header are left out and listed in ``problems``.

    Raises:
        DataError: When the file is missing or unreadable, or column names repeat.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    kind = _suffix(path)
    try:
        if kind == ".parquet":
            table = _read_parquet(path, list_separator)
        else:
            table = _read_delimited(path, "\t" if kind == ".tsv" else ",")
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, csv.Error) as error:
        raise DataError(f"{path}: cannot be read as a {kind[1:]} table: {error}") from None
    if len(set(table.columns)) != len(table.columns):
        repeated = sorted({c for c in table.columns if table.columns.count(c) > 1})
        raise DataError(
            f"{path}: column name(s) {', '.join(repeated)} occur twice in the header; "
            "rename or remove the repeats"
        )
    return table
