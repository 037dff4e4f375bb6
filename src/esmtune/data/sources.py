"""Finding a dataset's splits in any of the layouts esmtune reads.

Three layouts, recognised from what ``data.path`` points at:

* a folder ``{train,validation,test}/<Label>.fasta``: one file per class (multiclass, binary);
* a folder of per-split files ``train.csv``, ``validation.csv``, ``test.csv`` (or ``.tsv``,
  ``.parquet``, ``.fasta`` with ``key=value`` headers);
* one such file whose split column (or header key) says ``train``, ``validation`` or ``test``.

Per-residue tasks also read FLIP's folder of ``sequences.fasta`` + ``labels.fasta`` (+
``mask.fasta``), and their FASTA files take biotrainer's ``TARGET=``/``SET=``/``MASK=`` headers
(see :mod:`esmtune.data.residue_layouts`).

Problems with single records are collected, not raised, so that one run of the check lists them.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from pathlib import Path

from esmtune.config import DataConfig
from esmtune.data.fasta import (
    FASTA_SUFFIXES,
    SequenceRecord,
    clean_sequence,
    header_fields,
    read_fasta,
)
from esmtune.data.layout import SPLIT_NAMES, SPLITS, Layout, find_label_files, read_split
from esmtune.data.residue_layouts import (
    LABELS_FILE,
    SEQUENCES_FILE,
    is_residue_folder,
    mask_problem,
    read_residue_fasta,
    read_residue_folder,
    target_problem,
)
from esmtune.data.tables import TABLE_SUFFIXES, is_table, read_table
from esmtune.data.targets import TargetKind
from esmtune.errors import DataError

__all__ = [
    "Columns",
    "SplitRecords",
    "clean_sequence",
    "parse_record",
    "read_splits",
    "split_files",
]

_FILE_SUFFIXES = (*TABLE_SUFFIXES, *FASTA_SUFFIXES)


@dataclass
class SplitRecords:
    """Records per split, and what reading them found.

    ``errors`` are about whole files (a column missing); ``record_errors`` about single rows or
    records, which can be many. ``unread`` holds the splits whose file could not be read, so
    that they are not also reported as missing. ``form`` is the layout's shape, which ``data
    split`` writes back.
    """

    layout: str
    missing_split: str  # the error for a missing split, with how to add it; "{split}" filled in
    form: Layout = Layout.ONE_FILE
    splits: dict[str, list[SequenceRecord]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    record_errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unread: set[str] = field(default_factory=set)


@dataclass(frozen=True)
class Columns:
    """The names to read, from the config and task.

    ``unsplit``: the split of records that name none (no split column, no split key in their
    header), for ``data split``, which reads data before it has splits; None makes that an error.
    """

    kind: TargetKind
    id: str
    sequence: str
    targets: list[str]
    split: str
    separator: str
    unsplit: str | None = None

    @classmethod
    def of(
        cls, data: DataConfig, kind: TargetKind, targets: list[str], unsplit: str | None = None
    ) -> Columns:
        """The config's column names, with the task that reads the targets."""
        return cls(
            kind, data.id_column, data.sequence_column, targets, data.split_column,
            data.label_separator, unsplit,
        )  # fmt: skip


def _missing_columns(
    path: Path, wanted: list[str], present: list[str], what: str, key: str
) -> str | None:
    missing = [name for name in wanted if name not in present]
    if not missing:
        return None
    hints = []
    for name in missing:
        close = difflib.get_close_matches(name, present, n=1)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return (
        f"{path}: no {what} {', '.join(hints)}; the file has {', '.join(present) or 'none'}. "
        f"Rename the column, or set data.{key}"
    )


def _split_of(raw: str, split_column: str) -> str:
    split = SPLIT_NAMES.get(raw.strip().lower())
    if split is None:
        raise ValueError(
            f"{split_column} is {raw!r}; use train, validation or test (also: val, dev)"
        )
    return split


def _table_records(
    path: Path, columns: Columns, fixed_split: str | None, result: SplitRecords
) -> None:
    table = read_table(path, list_separator=columns.separator)
    result.record_errors += table.problems
    if fixed_split is None and columns.unsplit and columns.split not in table.columns:
        fixed_split = columns.unsplit  # data not split yet: every row waits for data split
    required = [
        ("sequence column", "sequence_column", [columns.sequence]),
        ("target column(s)", "target_columns", columns.targets),
        ("split column", "split_column", [] if fixed_split else [columns.split]),
    ]
    problems = [
        problem
        for what, key, names in required
        if (problem := _missing_columns(path, names, table.columns, what, key))
    ]
    if problems:
        result.errors += problems
        result.unread.update([fixed_split] if fixed_split else SPLITS)
        return
    has_ids = columns.id in table.columns
    if not has_ids:
        result.notes.append(f"{path}: no '{columns.id}' column; records are named by line")
    for row, line in zip(table.rows, table.lines, strict=True):
        identifier = row[columns.id] if has_ids else f"{path.stem}:{line}"
        values = [row[name] for name in columns.targets]
        split = fixed_split or row[columns.split]
        _add_record(result, identifier, row[columns.sequence], values, split, str(path), line,
                    columns, fixed_split is None)  # fmt: skip


def _fasta_records(
    path: Path, columns: Columns, fixed_split: str | None, result: SplitRecords
) -> None:
    keys = columns.targets + ([] if fixed_split or columns.unsplit else [columns.split])
    for record in read_fasta(path):
        fields = header_fields(record.description)
        named = fixed_split is None and columns.split in fields  # else fixed, or unsplit
        missing = [key for key in keys if key not in fields]
        if missing:
            example = " ".join(f"{key}=..." for key in keys)
            result.record_errors.append(
                f"{record.where}: header has no {', '.join(f'{k}=' for k in missing)}; write "
                f"'>{record.id} {example}' (or set data.target_columns / data.split_column)"
            )
            continue
        values = [fields[key] for key in columns.targets]
        split = fields[columns.split] if named else fixed_split or columns.unsplit or ""
        _add_record(result, record.id, record.sequence, values, split, str(path), record.line,
                    columns, named)  # fmt: skip


def parse_record(
    identifier: str,
    sequence: str,
    values: list[str],
    columns: Columns,
    source: str,
    line: int,
    mask: str | None = None,
) -> SequenceRecord:
    """One record as every reader builds it: the sequence cleaned, the target read by the task.

    Args:
        identifier: The record's id.
        sequence: Its residues as written.
        values: The text of its target columns, in ``columns.targets`` order.
        columns: The names read and the task that parses targets.
        source: Where it came from (a file, or a place in memory), for messages.
        line: Its line (Parquet: row) in ``source``; 0 where lines mean nothing.
        mask: Per-residue tasks: 1 (use) or 0 (ignore) for each residue, if given.

    Raises:
        ValueError: Saying what is wrong and how to fix it, without the location (the caller
            knows it and adds it).
    """
    if not identifier.strip():
        raise ValueError(f"empty id in column '{columns.id}'; give every record an id")
    target = columns.kind.parse_target(values, columns.targets, columns.separator)
    record = SequenceRecord(identifier, clean_sequence(sequence), target, source, line, mask=mask)
    if columns.kind.per_residue:
        problem = mask_problem(record) or target_problem(record)
        if problem is not None:
            raise ValueError(problem)
    return record


def _add_record(
    result: SplitRecords,
    identifier: str,
    sequence: str,
    values: list[str],
    split_text: str,
    source: str,
    line: int,
    columns: Columns,
    split_from_data: bool,
) -> None:
    try:
        split = _split_of(split_text, columns.split) if split_from_data else split_text
        record = parse_record(identifier, sequence, values, columns, source, line)
    except ValueError as problem:
        where = SequenceRecord(identifier, "", None, source, line).where
        result.record_errors.append(f"{where}: {problem}")
        return
    result.splits.setdefault(split, []).append(record)


def _read_file(path: Path, columns: Columns, split: str | None, result: SplitRecords) -> None:
    if is_table(path):
        _table_records(path, columns, split, result)
    elif columns.kind.per_residue:
        read_residue_fasta(path, columns, split, result)
    else:
        _fasta_records(path, columns, split, result)


def split_files(folder: Path) -> dict[str, Path]:
    """``train.csv``, ``validation.tsv``, ``test.fasta.gz`` ... found in ``folder``."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = path.name.lower().removesuffix(".gz")
        for suffix in _FILE_SUFFIXES:
            stem = name.removesuffix(suffix)
            if name.endswith(suffix) and stem in SPLIT_NAMES and path.is_file():
                split = SPLIT_NAMES[stem]
                if split in found:
                    raise DataError(
                        f"{folder}: {found[split].name} and {path.name} are both the {split} "
                        "split; keep one"
                    )
                found[split] = path
    return found


def _layout_help(path: Path) -> str:
    return (
        f"expected one of: {path}/{{train,validation,test}}/<Label>.fasta (one file per class); "
        f"{path}/train.csv, validation.csv, test.csv (or .tsv, .parquet, .fasta); or one "
        "table/FASTA file with a split column; per-residue tasks: also "
        f"{path}/{SEQUENCES_FILE} + {LABELS_FILE} (FLIP, biotrainer)"
    )


def _residue_folder(path: Path, kind: TargetKind, columns: Columns) -> SplitRecords:
    """FLIP's per-residue folder, for the tasks that read it."""
    if not kind.per_residue:
        raise DataError(
            f"{path}: {SEQUENCES_FILE} + {LABELS_FILE} is the per-residue layout of FLIP and "
            f"biotrainer (a label per residue), not one for task={kind.task.value}; use a "
            "residue_* task, or give this task one of the layouts it reads: "
            + _layout_help(path).removeprefix("expected one of: ")
        )
    result = SplitRecords(layout="", missing_split="", form=Layout.RESIDUE_FOLDER)
    read_residue_folder(path, columns, result)
    return result


def read_splits(
    data: DataConfig, kind: TargetKind, targets: list[str], unsplit: str | None = None
) -> SplitRecords:
    """Read every split of a dataset, in whichever layout ``data.path`` has.

    Args:
        data: The data section of the config (path and column names).
        kind: The task's way of reading targets (see :class:`TargetKind`).
        targets: The target column (or FASTA header key) names.
        unsplit: Where to file records that name no split (``data split``'s input); it also
            reads a folder of ``<Label>.fasta`` files without split folders. None: every record
            must have a split.

    Returns:
        Records per split, with the problems met on the way.

    Raises:
        DataError: When the path is missing or no layout is recognised.
    """
    path = Path(data.path)
    columns = Columns.of(data, kind, targets, unsplit)
    if path.is_file() and kind.per_residue and not is_table(path):
        result = SplitRecords(
            layout=f"one FASTA file with per-residue targets in its headers (biotrainer: "
            f"'>id TARGET=... SET=... MASK=...'): {path}",
            missing_split=f"{path}: no {{split}} records; the {{split}} split is required: add "
            "records with SET={split} in their header",
        )
        _read_file(path, columns, None, result)
        return result
    if path.is_file():
        result = SplitRecords(
            layout=f"one file with a '{data.split_column}' column: {path}",
            missing_split=f"{path}: no {{split}} rows; the {{split}} split is required: add rows "
            f"with {data.split_column}={{split}}",
        )
        _read_file(path, columns, None, result)
        return result
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder; {_layout_help(path)}")
    if kind.per_residue and is_residue_folder(path):
        return _residue_folder(path, kind, columns)
    if any((path / split).is_dir() for split in SPLITS):
        if not kind.one_label_per_file:
            instead = (
                f"a folder of {SEQUENCES_FILE} + {LABELS_FILE} (FLIP), or "
                if kind.per_residue
                else ""
            )
            raise DataError(
                f"{path}: one FASTA file per class gives each sequence one label, which suits "
                f"tasks with one label per sequence, not {kind.task.value}; give {instead}a "
                f"table (or FASTA with '>id {targets[0]}=...' headers) per split instead"
            )
        result = SplitRecords(
            layout=f"one FASTA file per label: {path}/<split>/<Label>.fasta",
            missing_split=f"{path}/{{split}}: no FASTA files (.fasta, .fa, .faa, optionally "
            f".gz); add one file per label, e.g. {path}/{{split}}/<Label>.fasta",
            form=Layout.LABEL_FOLDERS,
        )
        for split in SPLITS:
            files, records = read_split(path, split)
            if files:
                result.splits[split] = records
            for label, file in files.items():
                if not any(r.target == label for r in records):
                    result.errors.append(
                        f"{file}: no sequences in this file; remove it or add records"
                    )
        return result
    files = split_files(path)
    if not files and is_residue_folder(path):
        return _residue_folder(path, kind, columns)
    if not files and unsplit is not None and kind.one_label_per_file:
        label_files = find_label_files(path)
        if label_files:
            return _label_files(path, label_files, unsplit)
    if not files:
        raise DataError(f"{path}: no dataset found; {_layout_help(path)}")
    suffix = "".join(next(iter(files.values())).suffixes)
    result = SplitRecords(
        layout=f"one file per split: {', '.join(str(f) for f in files.values())}",
        missing_split=f"{path}: no {{split}} file; the {{split}} split is required: add "
        f"{path}/{{split}}{suffix}",
        form=Layout.SPLIT_FILES,
    )
    for split, file in files.items():
        _read_file(file, columns, split, result)
    return result


def _label_files(path: Path, files: dict[str, Path], unsplit: str) -> SplitRecords:
    """A folder of ``<Label>.fasta`` files not yet split: every record under ``unsplit``."""
    result = SplitRecords(
        layout=f"one FASTA file per label, not split: {path}/<Label>.fasta",
        missing_split="",
        form=Layout.LABEL_FILES,
    )
    records = result.splits.setdefault(unsplit, [])
    for label, file in files.items():
        found = read_fasta(file, label=label)
        if not found:
            result.errors.append(f"{file}: no sequences in this file; remove it or add records")
        records += found
    return result
