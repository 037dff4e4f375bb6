"""Writing a dataset back in the layout it was read in, each record moved to a new split.

``esmtune data split`` decides a split per record; this module rewrites the user's own files
with it, changing as little as possible: a per-label folder gets the same label files in new
split folders, a table the same columns (a split column added if it had none), a FASTA file the
same headers with its split key set (``split=``, or biotrainer's ``SET=``), FLIP's folder the
same three files with the split in the labels headers. Rows and records are found again by
where they were read (file and line), so ids need not be unique for this, and whatever a reader
left out (biotrainer's ``SET=pred`` records) is written unchanged.
"""

from __future__ import annotations

import csv
import gzip
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from esmtune.data.fasta import FastaEntry, header_fields, read_entries
from esmtune.data.layout import SPLITS, Layout, find_label_files
from esmtune.data.residue_layouts import LABELS_FILE, MASK_FILE, SEQUENCES_FILE
from esmtune.data.sources import split_files
from esmtune.data.tables import is_table, read_table
from esmtune.errors import DataError

__all__ = ["Placement", "RecordKey", "write_layout"]

# Where a record was read: its file (as the reader named it) and its header line or row.
RecordKey = tuple[str, int]

# biotrainer's and FLIP's header keys, and the words they use for each split.
_SET, _VALIDATION, _TARGET = "SET", "VALIDATION", "TARGET"
_SET_WORDS = {"train": "train", "validation": "val", "test": "test"}
_FLIP_WORDS = {
    "train": ("train", "False"),
    "validation": ("train", "True"),
    "test": ("test", None),
}


@dataclass(frozen=True)
class Placement:
    """The new split of each record, by where it was read; ``dropped`` ones are left out."""

    splits: dict[RecordKey, str]
    dropped: set[RecordKey] = field(default_factory=set)
    # FLIP's labels and mask files are matched by id: the split of each sequence id.
    by_id: dict[str, str] = field(default_factory=dict)
    dropped_ids: set[str] = field(default_factory=set)


def write_layout(form: Layout, path: Path, split_key: str, placement: Placement, out: Path) -> Path:
    """Write the dataset at ``path`` (read as ``form``) into the folder ``out``, re-split.

    Args:
        form: The layout it was read in.
        path: The dataset (``data.path``).
        split_key: The split column or header key (``data.split_column``).
        placement: The new split of every record.
        out: An empty folder to write into.

    Returns:
        The dataset path to train on: ``out`` for folder layouts, the file in it for one file.

    Raises:
        DataError: For a layout that has no files to rewrite (records held in memory).
    """
    if form is Layout.LABEL_FOLDERS:
        files = [f for split in SPLITS if (path / split).is_dir()
                 for f in find_label_files(path / split).values()]  # fmt: skip
        _write_label_files(files, placement, out)
        return out
    if form is Layout.LABEL_FILES:
        _write_label_files(list(find_label_files(path).values()), placement, out)
        return out
    if form is Layout.SPLIT_FILES:
        _write_split_files(split_files(path), split_key, placement, out)
        return out
    if form is Layout.RESIDUE_FOLDER:
        _write_residue_folder(path, split_key, placement, out)
        return out
    if form is Layout.ONE_FILE:
        target = out / path.name  # gzipped again if it was
        if is_table(path):
            _write_one_table(path, split_key, placement, target)
        else:
            _write_one_fasta(path, split_key, placement, target)
        return target
    raise DataError(f"{path}: records held in memory have no files to write; save them first")


# --- files -----------------------------------------------------------------------------------


@contextmanager
def _opened(path: Path) -> Iterator[IO[str]]:
    """A text file to write, gzipped when its name ends in ``.gz``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gz":
        with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
            yield handle
    else:
        with path.open("w", encoding="utf-8", newline="") as handle:
            yield handle


def _write_entries(path: Path, entries: list[tuple[FastaEntry, str]]) -> None:
    """FASTA records with (possibly new) descriptions; their lines as they were written."""
    with _opened(path) as handle:
        for entry, description in entries:
            handle.write(f">{entry.id} {description}".rstrip() + "\n")
            handle.writelines(f"{line}\n" for line in entry.lines)


# --- FASTA headers -----------------------------------------------------------------------------


def _field_pattern(key: str) -> re.Pattern[str]:
    """``key=value`` as a word of a header, the value quoted or not."""
    return re.compile(rf"(?<!\S){re.escape(key)}=(?:\"[^\"]*\"|'[^']*'|\S*)")


def _set_field(description: str, key: str, value: str | None) -> str:
    """The header with ``key=value`` replaced (or added at the end); None removes the key."""
    pattern = _field_pattern(key)
    if value is None:
        return " ".join(pattern.sub("", description).split())
    if pattern.search(description):
        return pattern.sub(f"{key}={value}", description, count=1)
    return f"{description} {key}={value}".strip()


def _with_split(description: str, split: str, split_key: str, style: str | None) -> str:
    """A header naming ``split`` the way it named its old one.

    esmtune's own key (``split=``) if the header has it; else FLIP's ``SET=`` and
    ``VALIDATION=`` if it has ``VALIDATION=`` or ``style`` is ``FLIP`` (FLIP's folder);
    biotrainer's ``SET=`` if it has that or ``style`` is ``SET``; else esmtune's key.
    """
    fields = header_fields(description)
    if split_key in fields:
        description = _set_field(description, split_key, split)
        if _SET not in fields:
            return description
    if _VALIDATION in fields or style == "FLIP":
        word, held_out = _FLIP_WORDS[split]
        return _set_field(_set_field(description, _SET, word), _VALIDATION, held_out)
    if _SET in fields or style == _SET:
        return _set_field(description, _SET, _SET_WORDS[split])
    return _set_field(description, split_key, split)


def _rewritten(
    entries: list[FastaEntry], source: Path, split_key: str, placement: Placement, style: str | None
) -> list[tuple[FastaEntry, str]]:
    """The entries kept, each with its new split in its header (the others unchanged)."""
    kept = []
    for entry in entries:
        key = (str(source), entry.line)
        if key in placement.dropped:
            continue
        split = placement.splits.get(key)
        description = entry.description
        if split is not None:
            description = _with_split(description, split, split_key, style)
        kept.append((entry, description))
    return kept


# --- one layout each ---------------------------------------------------------------------------


def _write_label_files(files: list[Path], placement: Placement, out: Path) -> None:
    """``out/<split>/<Label>.fasta``: each record in its label's file of its new split."""
    by_split: dict[tuple[str, str], list[tuple[FastaEntry, str]]] = {}
    for file in files:
        for entry in read_entries(file):
            key = (str(file), entry.line)
            split = placement.splits.get(key)
            if key in placement.dropped or split is None:
                continue
            by_split.setdefault((split, file.name), []).append((entry, entry.description))
    for split in SPLITS:
        for (where, name), entries in by_split.items():
            if where == split:
                _write_entries(out / split / name, entries)


def _write_one_fasta(path: Path, split_key: str, placement: Placement, target: Path) -> None:
    """One FASTA file with ``split=`` (or ``SET=``) in each header."""
    entries = read_entries(path)
    biotrainer = any(_TARGET in header_fields(e.description) for e in entries[:1])
    _write_entries(
        target, _rewritten(entries, path, split_key, placement, _SET if biotrainer else None)
    )


def _write_residue_folder(path: Path, split_key: str, placement: Placement, out: Path) -> None:
    """FLIP's three files, the split in each labels header (and in sequences headers naming one)."""
    for name in (SEQUENCES_FILE, LABELS_FILE, MASK_FILE):
        source = path / name
        if not source.is_file():
            continue
        kept = []
        for entry in read_entries(source):
            if entry.id in placement.dropped_ids:
                continue
            split = placement.by_id.get(entry.id)
            description = entry.description
            fields = header_fields(description)
            names_split = split_key in fields or _SET in fields
            if split is not None and (name == LABELS_FILE or names_split):
                description = _with_split(description, split, split_key, "FLIP")
            kept.append((entry, description))
        _write_entries(out / name, kept)


def _write_one_table(path: Path, split_key: str, placement: Placement, target: Path) -> None:
    """The table with its split column set (added last if it had none); dropped rows left out."""
    if path.suffix.lower() == ".parquet":
        rows = _parquet_rows(path, placement)
        _write_parquet(path, [(row, split) for row, split in rows], split_key, target)
        return
    table = read_table(path)
    columns = table.columns + ([] if split_key in table.columns else [split_key])
    kept = []
    for row, line in zip(table.rows, table.lines, strict=True):
        key = (str(path), line)
        if key in placement.dropped:
            continue
        split = placement.splits.get(key)
        kept.append(row if split is None else {**row, split_key: split})
    _write_delimited(target, columns, kept)


def _write_split_files(
    files: dict[str, Path], split_key: str, placement: Placement, out: Path
) -> None:
    """One file per new split, named as the input's file of that split was (else ``split.csv``)."""
    first = next(iter(files.values()))
    suffix = "".join(first.suffixes)
    names = {split: files[split].name if split in files else f"{split}{suffix}" for split in SPLITS}
    if not is_table(first):
        gathered: dict[str, list[tuple[FastaEntry, str]]] = {split: [] for split in SPLITS}
        for source in files.values():
            for entry, description in _rewritten(
                read_entries(source), source, split_key, placement, None
            ):
                split = placement.splits.get((str(source), entry.line))
                if split is not None:
                    gathered[split].append((entry, description))
        for split, entries in gathered.items():
            if entries:
                _write_entries(out / names[split], entries)
        return
    if first.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        found = [item for source in files.values() for item in _parquet_rows(source, placement)]
        named = split_key if split_key in pq.read_schema(first).names else None
        for split in SPLITS:
            placed_here = [(row, split) for row, placed in found if placed == split]
            if placed_here:
                _write_parquet(first, placed_here, named, out / names[split])
        return
    columns: list[str] = []
    rows: dict[str, list[dict[str, str]]] = {split: [] for split in SPLITS}
    for source in files.values():
        table = read_table(source)
        columns += [name for name in table.columns if name not in columns]
        for row, line in zip(table.rows, table.lines, strict=True):
            split = placement.splits.get((str(source), line))
            if split is not None and (str(source), line) not in placement.dropped:
                rows[split].append(row if split_key not in row else {**row, split_key: split})
    for split, chosen in rows.items():
        if chosen:
            _write_delimited(out / names[split], columns, chosen)


def _write_delimited(path: Path, columns: list[str], rows: list[dict[str, str]]) -> None:
    """CSV (comma) or TSV (tab) by the name's suffix, gzipped if it ends in ``.gz``."""
    suffixes = [s.lower() for s in path.suffixes]
    delimiter = "\t" if ".tsv" in suffixes else ","
    with _opened(path) as handle:
        writer = csv.DictWriter(handle, columns, delimiter=delimiter, lineterminator="\n",
                                restval="")  # fmt: skip
        writer.writeheader()
        writer.writerows(rows)


def _parquet_rows(path: Path, placement: Placement) -> list[tuple[dict[str, object], str | None]]:
    """Every kept row of a Parquet file as a dict of Python values, with its new split."""
    import pyarrow.parquet as pq  # only Parquet users pay for the import

    rows = pq.read_table(path).to_pylist()
    kept = []
    for number, row in enumerate(rows, start=1):
        key = (str(path), number)
        if key not in placement.dropped:
            kept.append((row, placement.splits.get(key)))
    return kept


def _write_parquet(
    like: Path,
    rows: Sequence[tuple[dict[str, object], str | None]],
    split_key: str | None,
    path: Path,
) -> None:
    """Rows as a Parquet file with ``like``'s schema (plus the split column, if it is set)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(like)
    values = []
    for row, split in rows:
        values.append(row if split_key is None or split is None else {**row, split_key: split})
    if split_key is not None and split_key not in schema.names:
        schema = schema.append(pa.field(split_key, pa.string()))
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(values, schema=schema), path)
