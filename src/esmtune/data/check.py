"""Checking a dataset before any compute is spent on it.

Every problem is collected (file, line, record id, what to do) and reported at once. The same
check runs in ``esmtune data check`` and at the start of training.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from esmtune.data.fasta import SequenceRecord
from esmtune.data.layout import SPLITS, read_split
from esmtune.errors import DataError

__all__ = [
    "RESIDUES",
    "CheckOptions",
    "DataReport",
    "check_dataset",
    "invalid_residue",
    "sequence_problem",
]

# Residue letters of the ESM2 vocabulary (20 standard, X unknown, B/Z ambiguous, U/O rare).
RESIDUES = frozenset("ACDEFGHIKLMNPQRSTVWYXBZUO")
_MAX_LISTED = 10


def invalid_residue(sequence: str) -> tuple[int, str] | None:
    """The first character that is not an ESM2 residue letter, as (0-based index, char)."""
    for index, char in enumerate(sequence):
        if char not in RESIDUES:
            return index, char
    return None


@dataclass(frozen=True)
class CheckOptions:
    """What to do about problems that have a sensible automatic way forward."""

    max_length: int = 1022
    fail_on_leakage: bool = False
    drop_conflicts: bool = False
    drop_duplicates: bool = False
    require_test: bool = False


@dataclass
class DataReport:
    """The records that passed, the label set and everything found on the way."""

    data_dir: Path
    splits: dict[str, list[SequenceRecord]]
    labels: list[str]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing blocks training."""
        return not self.errors

    def raise_if_errors(self) -> None:
        """Raise one DataError listing every blocking problem."""
        if self.errors:
            lines = [f"{self.data_dir}: {len(self.errors)} problem(s) in the data:"]
            lines += [f"  - {error}" for error in self.errors]
            raise DataError("\n".join(lines))

    def table(self) -> str:
        """Sequences per label per split and length statistics, as aligned text."""
        present = [split for split in SPLITS if self.splits.get(split)]
        header = ["label", *present, "len min", "len median", "len max"]
        rows = []
        for label in sorted({r.label for recs in self.splits.values() for r in recs if r.label}):
            counts = [sum(r.label == label for r in self.splits[s]) for s in present]
            lengths = [len(r.sequence) for s in present for r in self.splits[s] if r.label == label]
            rows.append([label, *map(str, counts), *_length_stats(lengths)])
        all_lengths = [len(r.sequence) for s in present for r in self.splits[s]]
        totals = [str(len(self.splits[s])) for s in present]
        rows.append(["TOTAL", *totals, *_length_stats(all_lengths)])
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def fmt(row: list[str]) -> str:
            cells = [row[0].ljust(widths[0])]
            cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
            return "  ".join(cells)

        rule = "-" * len(fmt(header))
        return "\n".join([fmt(header), rule, *map(fmt, rows[:-1]), rule, fmt(rows[-1])])

    def summary(self) -> dict[str, object]:
        """Counts per split and label, for the run manifest."""
        return {
            split: {label: sum(r.label == label for r in recs) for label in self.labels}
            for split, recs in self.splits.items()
        }


def _length_stats(lengths: list[int]) -> list[str]:
    if not lengths:
        return ["-", "-", "-"]
    return [str(min(lengths)), f"{statistics.median(lengths):g}", str(max(lengths))]


def _where(record: SequenceRecord) -> str:
    line = f"line {record.line}, " if record.line else ""
    return f"{record.source}, {line}record '{record.id}'"


def sequence_problem(record: SequenceRecord) -> str | None:
    """What is wrong with one record's sequence (where, what, how to fix), or None."""
    if not record.sequence:
        return f"{_where(record)}: empty sequence; remove the record or add residues"
    bad = invalid_residue(record.sequence)
    if bad is None:
        return None
    index, char = bad
    return (
        f"{_where(record)}: invalid residue {char!r} at position {index + 1}; ESM2 reads "
        "only the letters ACDEFGHIKLMNPQRSTVWY plus X, B, Z, U, O: replace it "
        "(unknown residues with X, remove gaps '-') or remove the record"
    )


def _listed(items: list[str]) -> list[str]:
    """At most a screenful of repeated problems, then a count of the rest."""
    if len(items) <= _MAX_LISTED:
        return items
    return [*items[:_MAX_LISTED], f"... and {len(items) - _MAX_LISTED} more of the same kind"]


def _check_records(records: list[SequenceRecord]) -> list[str]:
    """Empty sequences and invalid characters, one message per bad record."""
    return [problem for record in records if (problem := sequence_problem(record))]


def _find_duplicates(
    split: str, records: list[SequenceRecord], drop: bool
) -> tuple[list[SequenceRecord], list[str], list[str]]:
    seen: dict[str, SequenceRecord] = {}
    kept, problems = [], []
    for record in records:
        first = seen.get(record.id)
        if first is None:
            seen[record.id] = record
            kept.append(record)
        else:
            problems.append(
                f"{split}: duplicate id '{record.id}' at {record.source}, line {record.line} "
                f"(first at {first.source}, line {first.line})"
            )
    if not problems:
        return records, [], []
    if drop:
        return kept, [], [f"{split}: dropped {len(problems)} record(s) with repeated ids"]
    fix = "rename them, or set data.drop_duplicates=true to keep the first of each"
    return records, [*_listed(problems[:]), f"{split}: {len(problems)} duplicate id(s); {fix}"], []


def _find_conflicts(
    splits: dict[str, list[SequenceRecord]], drop: bool
) -> tuple[dict[str, list[SequenceRecord]], list[str], list[str]]:
    """Sequences that occur under two different labels anywhere in the dataset."""
    labels_of: dict[str, set[str]] = defaultdict(set)
    first_of: dict[str, SequenceRecord] = {}
    for records in splits.values():
        for record in records:
            if not record.sequence:
                continue  # reported as empty already
            labels_of[record.sequence].add(str(record.label))
            first_of.setdefault(record.sequence, record)
    conflicting = {seq for seq, labels in labels_of.items() if len(labels) > 1}
    if not conflicting:
        return splits, [], []
    if drop:
        kept = {s: [r for r in recs if r.sequence not in conflicting] for s, recs in splits.items()}
        dropped = sum(len(splits[s]) - len(kept[s]) for s in splits)
        note = (
            f"dropped {dropped} record(s) of {len(conflicting)} sequence(s) "
            "found under two or more labels"
        )
        return kept, [], [note]
    found = [
        f"{_where(first_of[seq])}: the same sequence is labelled "
        f"{' and '.join(sorted(labels_of[seq]))}"
        for seq in sorted(conflicting, key=lambda s: (first_of[s].source, first_of[s].line))
    ]
    fix = "fix the labels, or set data.drop_conflicts=true to drop them"
    summary = f"{len(conflicting)} sequence(s) occur under two or more labels; {fix}"
    return splits, [*_listed(found), summary], []


def _find_leakage(splits: dict[str, list[SequenceRecord]], fatal: bool) -> tuple[list[str], str]:
    train = {r.sequence for r in splits.get("train", []) if r.sequence}
    leaked = [r for s in ("validation", "test") for r in splits.get(s, []) if r.sequence in train]
    if not leaked:
        return [], ""
    by_split = defaultdict(int)
    for record in leaked:
        by_split[Path(record.source).parent.name] += 1
    counts = ", ".join(f"{n} in {split}" for split, n in sorted(by_split.items()))
    message = (
        f"leakage: {len(leaked)} sequence(s) of train also occur in evaluation splits "
        f"({counts}), e.g. {_where(leaked[0])}; such scores overstate generalisation"
    )
    if fatal:
        return [f"{message}; remove them from one side (data.fail_on_leakage is true)"], ""
    return [], f"{message} (set data.fail_on_leakage=true to make this fatal)"


def check_dataset(data_dir: Path | str, options: CheckOptions | None = None) -> DataReport:
    """Read and check a per-label dataset.

    Args:
        data_dir: Folder with ``train/``, ``validation/`` and optionally ``test/``.
        options: Which problems to repair instead of report.

    Returns:
        A report; ``report.errors`` is empty when the data can be trained on.

    Raises:
        DataError: When the folder cannot be read at all (missing, unreadable or not FASTA).
    """
    options = options or CheckOptions()
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(
            f"{data_dir}: no such dataset folder; expected {data_dir}/train/<Label>.fasta, "
            f"{data_dir}/validation/<Label>.fasta and {data_dir}/test/<Label>.fasta"
        )
    errors: list[str] = []
    warnings: list[str] = []
    notes: list[str] = []
    splits: dict[str, list[SequenceRecord]] = {}
    for split in SPLITS:
        files, records = read_split(data_dir, split)
        required = split != "test" or options.require_test
        if not files:
            if required:
                errors.append(
                    f"{data_dir / split}: no FASTA files (.fasta, .fa, .faa, optionally .gz); "
                    f"add one file per label, e.g. {data_dir / split}/<Label>.fasta"
                )
            else:
                warnings.append(f"{data_dir / split}: absent; `esmtune evaluate` will need it")
            continue
        for label, path in files.items():
            if not any(r.label == label for r in records):
                errors.append(f"{path}: no sequences in this file; remove it or add records")
        errors += _listed(_check_records(records))
        records, found, dropped = _find_duplicates(split, records, options.drop_duplicates)
        errors += found
        notes += dropped
        splits[split] = records

    splits, found, dropped = _find_conflicts(splits, options.drop_conflicts)
    errors += found
    notes += dropped
    leak_errors, leak_warning = _find_leakage(splits, options.fail_on_leakage)
    errors += leak_errors
    if leak_warning:
        warnings.append(leak_warning)

    labels = sorted({str(r.label) for r in splits.get("train", [])})
    if labels and len(labels) < 2:
        errors.append(f"{data_dir / 'train'}: only one label ({labels[0]}); need at least two")
    for split in ("validation", "test"):
        unknown = sorted({str(r.label) for r in splits.get(split, [])} - set(labels))
        if unknown and "train" in splits:
            errors.append(
                f"{data_dir / split}: label(s) {', '.join(unknown)} have no training file; "
                f"add {data_dir}/train/<Label>.fasta for each, or remove them from {split}"
            )
    too_long = sum(len(r.sequence) > options.max_length for recs in splits.values() for r in recs)
    if too_long:
        notes.append(
            f"{too_long} sequence(s) longer than {options.max_length} residues will be truncated "
            "to their first residues (data.max_length)"
        )
    return DataReport(data_dir, splits, labels, errors, warnings, notes)
