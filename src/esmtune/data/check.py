"""Checking a dataset before any compute is spent on it.

Every problem is collected (file, line, record id, what to do) and reported at once. The same
check runs in ``esmtune data check`` and at the start of training. What depends on the task
(reading targets, the label set, the tables) is the task's: this module asks it through the
:class:`~esmtune.data.targets.TargetKind` its class implements.
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from esmtune.config import DataConfig, LongSequences, Task
from esmtune.data.embedding_files import read_embeddings
from esmtune.data.fasta import SequenceRecord
from esmtune.data.homology import MissingMMseqsError, MMseqs
from esmtune.data.layout import SPLITS
from esmtune.data.leakage import HELD_OUT, measure_leakage
from esmtune.data.memory import is_in_memory, read_memory
from esmtune.data.report import DataReport
from esmtune.data.sources import read_splits
from esmtune.data.targets import TargetKind, format_target
from esmtune.errors import DataError
from esmtune.tasks import task_class

__all__ = [
    "RESIDUES",
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


def sequence_problem(record: SequenceRecord) -> str | None:
    """What is wrong with one record's sequence (where, what, how to fix), or None."""
    if not record.sequence:
        return f"{record.where}: empty sequence; remove the record or add residues"
    bad = invalid_residue(record.sequence)
    if bad is None:
        return None
    index, char = bad
    return (
        f"{record.where}: invalid residue {char!r} at position {index + 1}; ESM2 reads "
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
                f"{split}: duplicate id '{record.id}' at {record.position} "
                f"(first at {first.position})"
            )
    if not problems:
        return records, [], []
    if drop:
        return kept, [], [f"{split}: dropped {len(problems)} record(s) with repeated ids"]
    fix = "rename them, or set data.drop_duplicates=true to keep the first of each"
    return records, [*_listed(problems[:]), f"{split}: {len(problems)} duplicate id(s); {fix}"], []


def _find_conflicts(
    splits: dict[str, list[SequenceRecord]], drop: bool, per_residue: bool
) -> tuple[dict[str, list[SequenceRecord]], list[str], list[str]]:
    """Sequences that occur with two different targets anywhere in the dataset.

    Targets are compared where they are known: a masked residue's label is a placeholder.
    """
    # Per sequence: each distinct (known) target, with the first record that carries it.
    targets_of: dict[str, dict[object, SequenceRecord]] = defaultdict(dict)
    for records in splits.values():
        for record in records:
            if not record.sequence:
                continue  # reported as empty already
            targets_of[record.sequence].setdefault(record.known_target, record)
    conflicting = {seq for seq, targets in targets_of.items() if len(targets) > 1}
    if not conflicting:
        return splits, [], []
    if drop:
        kept = {s: [r for r in recs if r.sequence not in conflicting] for s, recs in splits.items()}
        dropped = sum(len(splits[s]) - len(kept[s]) for s in splits)
        note = (
            f"dropped {dropped} record(s) of {len(conflicting)} sequence(s) "
            "found with two or more different targets"
        )
        return kept, [], [note]
    firsts = {seq: next(iter(targets_of[seq].values())) for seq in conflicting}
    describe = _residue_difference if per_residue else _labelled
    found = [
        f"{firsts[seq].where}: {describe(list(targets_of[seq].values()))}"
        for seq in sorted(conflicting, key=lambda s: (firsts[s].source, firsts[s].line))
    ]
    fix = "fix the targets, or set data.drop_conflicts=true to drop them"
    summary = f"{len(conflicting)} sequence(s) occur with two or more different targets; {fix}"
    return splits, [*_listed(found), summary], []


def _labelled(records: list[SequenceRecord]) -> str:
    targets = sorted(format_target(r.target) for r in records)
    return f"the same sequence is labelled {' and '.join(targets)}"


def _residue_difference(records: list[SequenceRecord]) -> str:
    """Where two records of one sequence first disagree (a whole target is too long to show)."""
    first, other = records[0], records[1]
    mine, theirs = first.known_target, other.known_target
    if not (isinstance(mine, str | tuple) and isinstance(theirs, str | tuple)):
        return _labelled(records)
    pairs = enumerate(zip(mine, theirs, strict=False))
    index = next((i for i, (a, b) in pairs if a != b), min(len(mine), len(theirs)) - 1)

    def shown(target: str | tuple[object, ...]) -> str:
        value = target[index]
        return (
            "masked" if value is None else f"{value:g}" if isinstance(value, float) else str(value)
        )

    return (
        f"the same sequence has {len(records)} different per-residue targets, e.g. residue "
        f"{index + 1} is {shown(mine)} here and {shown(theirs)} at {other.where}"
    )


def _find_leakage(splits: dict[str, list[SequenceRecord]], fatal: bool) -> tuple[list[str], str]:
    train = {r.sequence for r in splits.get("train", []) if r.sequence}
    leaked = {
        split: [r for r in splits.get(split, []) if r.sequence in train]
        for split in ("validation", "test")
    }
    total = sum(len(records) for records in leaked.values())
    if not total:
        return [], ""
    counts = ", ".join(f"{len(recs)} in {split}" for split, recs in leaked.items() if recs)
    example = next(r for recs in leaked.values() for r in recs)
    message = (
        f"leakage: {total} sequence(s) of train also occur in evaluation splits "
        f"({counts}), e.g. {example.where}; such scores overstate generalisation"
    )
    if fatal:
        return [f"{message}; remove them from one side (data.fail_on_leakage is true)"], ""
    return [], f"{message} (set data.fail_on_leakage=true to make this fatal)"


def _measure_identity(report: DataReport, data: DataConfig) -> None:
    """Leakage by identity: each validation and test sequence's nearest training sequence.

    Without MMseqs2 the check still runs and says in one note what was not measured, unless
    data.max_identity asks for the measurement (then it is an error). Sequences above
    data.max_identity stop the check, or are dropped and counted (data.drop_similar).
    """
    if not report.splits.get("train") or not any(report.splits.get(s) for s in HELD_OUT):
        return
    try:
        mmseqs = MMseqs()
    except MissingMMseqsError as error:
        if data.max_identity is None:
            report.notes.append(f"leakage by identity not measured: {error}")
        else:
            report.errors.append(f"data.max_identity={data.max_identity:g} needs MMseqs2: {error}")
        return
    report.leakage = measure_leakage(report.splits, data.identity_coverage, mmseqs)
    if data.max_identity is None:
        return
    above = report.leakage.above(data.max_identity)
    if not above:
        return
    counts = ", ".join(
        f"{n} in {split}" for split in HELD_OUT if (n := sum(r.split == split for r in above))
    )
    closer = f"more than {data.max_identity * 100:g}% identical to a training sequence"
    if data.drop_similar:
        gone = {id(row.record) for row in above}
        for split in HELD_OUT:
            if split in report.splits:
                report.splits[split] = [r for r in report.splits[split] if id(r) not in gone]
        report.notes.append(
            f"dropped {len(above)} sequence(s) ({counts}) {closer} (data.max_identity, "
            "data.drop_similar)"
        )
        return
    report.errors += _listed([row.describe() for row in above])
    report.errors.append(
        f"{len(above)} sequence(s) ({counts}) are {closer} (data.max_identity); split the data "
        "by homology (`esmtune data split`), or set data.drop_similar=true to drop them"
    )


def _drop_emptied_splits(report: DataReport, require_test: bool) -> None:
    """Splits whose every record was dropped (conflicts, rare labels) count as missing."""
    for split in SPLITS:
        if split not in report.splits or report.splits[split]:
            continue
        del report.splits[split]
        problem = f"{split}: every record was dropped (see the notes)"
        if split != "test" or require_test:
            report.errors.append(
                f"{problem}; the {split} split is required: add records, or drop fewer "
                "(data.drop_conflicts, data.min_label_count)"
            )
        else:
            report.warnings.append(f"{problem}; `esmtune evaluate` will need it")


def _check_embeddings(report: DataReport, path: Path) -> None:
    """Every record has a finite embedding of one shape (per residue: one row per residue)."""
    try:
        found = read_embeddings(path)
    except DataError as error:
        report.errors.append(str(error))
        return
    report.errors += found.problems()
    ids = {r.id for records in report.splits.values() for r in records}
    missing = sorted(ids - set(found.vectors))
    if missing:
        report.errors.append(
            f"{path}: no embedding for {len(missing)} record(s), e.g. {', '.join(missing[:5])}; "
            "compute them with the same model (`esmtune embed MODEL FASTA --out FILE`) or drop "
            "those records"
        )
    extra = len(set(found.vectors) - ids)
    if extra:
        report.notes.append(f"{path}: {extra} embedding(s) of ids not in the data, unused")
    if found.per_residue:
        wrong = [
            f"{r.id} ({len(found.vectors[r.id])} rows, {len(r.sequence)} residues)"
            for records in report.splits.values()
            for r in records
            if r.id in found.vectors and len(found.vectors[r.id]) != len(r.sequence)
        ]
        if wrong:
            report.errors.append(
                f"{path}: per-residue embeddings need one row per residue; "
                f"{len(wrong)} do not match their sequence, e.g. {', '.join(wrong[:3])}"
            )
    if not missing:
        kind = "per-residue" if found.per_residue else "pooled"
        report.notes.append(f"{path}: {kind} embeddings of size {found.dim} for every record")


def check_dataset(
    data: DataConfig | Path | str,
    task: Task | str | TargetKind = Task.MULTICLASS,
    require_test: bool = False,
    identity: bool = False,
) -> DataReport:
    """Read and check a dataset in any layout esmtune reads.

    Args:
        data: The data section of a config (path, columns, repairs), or just a path. A path of
            :data:`~esmtune.data.memory.IN_MEMORY` reads the active in-memory dataset. A
            percentile ``max_length`` (``p95``) is fixed on it from the training lengths.
        task: The task (or its class), which decides how targets are read and checked.
        require_test: Treat a missing test split as an error.
        identity: Measure leakage by identity (MMseqs2; ``data check`` and training do) unless
            data.measure_identity is false. With data.max_identity set, it is measured anyway:
            that setting decides which records are used.

    Returns:
        A report; ``report.errors`` is empty when the data can be trained on.

    Raises:
        DataError: When the dataset cannot be found or a file cannot be read at all.
        ConfigError: When the length a percentile ``max_length`` gives breaks another setting.
    """
    if not isinstance(data, DataConfig):
        data = DataConfig(path=Path(data))
    kind: TargetKind = task_class(task) if isinstance(task, str) else task
    columns = data.target_columns or kind.default_target_columns()
    # A dataset held in memory (esmtune.fit) is read from there, and checked like files.
    read = read_memory if is_in_memory(data.path) else read_splits
    found = read(data, kind, columns)
    errors = [*found.errors, *_listed(found.record_errors)]
    report = DataReport(data.path, kind, {}, [], errors, [], found.notes[:], found.layout)
    notes = report.notes
    for split in SPLITS:
        records = found.splits.get(split, [])
        if not records:
            if split in found.unread:
                continue  # its file could not be read; that error says why
            if split != "test" or require_test:
                errors.append(found.missing_split.format(split=split))
            else:
                report.warnings.append("test: absent; `esmtune evaluate` will need it")
            continue
        errors += _listed(_check_records(records))
        records, duplicate_errors, dropped = _find_duplicates(split, records, data.drop_duplicates)
        errors += duplicate_errors
        notes += dropped
        report.splits[split] = records

    if not kind.prepare_targets(report, data):
        return report  # its error says what to do; labels cannot be judged
    report.splits, found_conflicts, dropped = _find_conflicts(
        report.splits, data.drop_conflicts, kind.per_residue
    )
    errors += found_conflicts
    notes += dropped
    leak_errors, leak_warning = _find_leakage(report.splits, data.fail_on_leakage)
    errors += leak_errors
    if leak_warning:
        report.warnings.append(leak_warning)
    if (identity and data.measure_identity) or data.max_identity is not None:
        _measure_identity(report, data)

    kind.find_labels(report, data)
    _drop_emptied_splits(report, require_test)
    if data.embeddings is not None:
        _check_embeddings(report, data.embeddings)
    # data.max_length: p95 becomes a number here, on the config passed in, so that training
    # reads and saves the number (and predict and serve read the run's windows alike).
    chosen = data.fix_max_length([len(r.sequence) for r in report.splits.get("train", [])])
    notes += [chosen] if chosen else []
    too_long = sum(
        len(r.sequence) > data.max_length for recs in report.splits.values() for r in recs
    )
    if too_long:
        notes.append(
            f"{too_long} sequence(s) longer than {data.max_length} residues will be "
            f"{_LONG_SEQUENCES[data.long_sequences]} (data.max_length)"
            + (_residues_beyond(report, data) if kind.per_residue else "")
        )
    return report


def _residues_beyond(report: DataReport, data: DataConfig) -> str:
    """What a per-residue task loses to data.max_length: residues that get no prediction."""
    if data.long_sequences is LongSequences.WINDOW:
        return "; every residue gets a prediction"
    beyond = sum(
        max(len(r.sequence) - data.max_length, 0)
        for records in report.splits.values()
        for r in records
    )
    return (
        f"; their {beyond} residue(s) beyond it would get no prediction unless "
        "data.long_sequences is window"
    )


# How data.long_sequences reads what is longer than one input, for the note above.
_LONG_SEQUENCES = {
    LongSequences.TRUNCATE: "truncated to their first residues",
    LongSequences.CENTRE: "cut to their central residues",
    LongSequences.WINDOW: "read in overlapping windows",
}
