"""Checking a dataset before any compute is spent on it.

Every problem is collected (file, line, record id, what to do) and reported at once. The same
check runs in ``esmtune data check`` and at the start of training.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace
from pathlib import Path

from esmtune.config import DataConfig, Task
from esmtune.data.fasta import SequenceRecord
from esmtune.data.layout import SPLITS
from esmtune.data.ontology import Ontology, read_obo
from esmtune.data.sources import read_splits
from esmtune.data.targets import FALSE_WORDS, TRUE_WORDS, format_target
from esmtune.errors import DataError

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


@dataclass
class DataReport:
    """The records that passed, the label set and everything found on the way.

    ``labels`` are the class names (binary: negative first, positive second), the multilabel
    vocabulary, or the regression target names, in the order of the model's outputs.
    """

    data_path: Path
    task: Task
    splits: dict[str, list[SequenceRecord]]
    labels: list[str]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layout: str = ""
    label_names: dict[str, str] = field(default_factory=dict)
    ancestors: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """True when nothing blocks training."""
        return not self.errors

    def raise_if_errors(self) -> None:
        """Raise one DataError listing every blocking problem."""
        if self.errors:
            lines = [f"{self.data_path}: {len(self.errors)} problem(s) in the data:"]
            lines += [f"  - {error}" for error in self.errors]
            raise DataError("\n".join(lines))

    def _present(self) -> list[str]:
        return [split for split in SPLITS if self.splits.get(split)]

    def table(self) -> str:
        """Per label (or regression target) and split: counts or value statistics, as text."""
        present = self._present()
        if self.task is Task.REGRESSION:
            return self._regression_table(present)
        header = ["label", *present, "len min", "len median", "len max"]
        rows = []
        for label in self.labels or sorted(
            {x for recs in self.splits.values() for r in recs for x in _labels_of(r)}
        ):
            counts = [sum(label in _labels_of(r) for r in self.splits[s]) for s in present]
            lengths = [
                len(r.sequence) for s in present for r in self.splits[s] if label in _labels_of(r)
            ]
            shown = label if label not in self.label_names else f"{label} {self.label_names[label]}"
            rows.append([shown, *map(str, counts), *_length_stats(lengths)])
        all_lengths = [len(r.sequence) for s in present for r in self.splits[s]]
        totals = [str(len(self.splits[s])) for s in present]
        footer = [["TOTAL", *totals, *_length_stats(all_lengths)]]
        if self.task is Task.MULTILABEL:
            per_record = [
                f"{statistics.mean(len(_labels_of(r)) for r in self.splits[s]):.2f}"
                for s in present
            ]
            footer.append(["labels per sequence", *per_record, "", "", ""])
        return _align(header, rows, footer)

    def _regression_table(self, present: list[str]) -> str:
        header = ["target", "split", "n", "mean", "std", "min", "max"]
        rows = []
        for column, name in enumerate(self.labels):
            for split in present:
                values = [float(r.target[column]) for r in self.splits[split]]
                spread = statistics.pstdev(values)  # as in summary() and target standardisation
                rows.append([
                    name, split, str(len(values)), f"{statistics.mean(values):.4g}",
                    f"{spread:.4g}", f"{min(values):.4g}", f"{max(values):.4g}",
                ])  # fmt: skip
        lengths = [len(r.sequence) for s in present for r in self.splits[s]]
        low, median, high = _length_stats(lengths)
        footer = [["length", "all", str(len(lengths)), median, "", low, high]]
        return _align(header, rows, footer)

    def summary(self) -> dict[str, object]:
        """Counts per split and label (regression: count, mean and std), for the manifest."""
        if self.task is Task.REGRESSION:
            return {
                split: {
                    "n": len(recs),
                    **{
                        name: {
                            "mean": statistics.mean(float(r.target[i]) for r in recs),
                            "std": statistics.pstdev(float(r.target[i]) for r in recs),
                        }
                        for i, name in enumerate(self.labels)
                    },
                }
                for split, recs in self.splits.items()
            }
        return {
            split: {label: sum(label in _labels_of(r) for r in recs) for label in self.labels}
            for split, recs in self.splits.items()
        }


def _labels_of(record: SequenceRecord) -> tuple[str, ...]:
    """The class labels a record carries (none for regression)."""
    target = record.target
    if isinstance(target, str):
        return (target,)
    if isinstance(target, tuple) and all(isinstance(x, str) for x in target):
        return target
    return ()


def _align(header: list[str], rows: list[list[str]], footer: list[list[str]]) -> str:
    """Rows as columns: the first left-aligned, the others right-aligned, rules around rows."""
    every = [header, *rows, *footer]
    widths = [max(len(row[i]) for row in every) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, rows), rule, *map(fmt, footer)])


def _length_stats(lengths: list[int]) -> list[str]:
    if not lengths:
        return ["-", "-", "-"]
    return [str(min(lengths)), f"{statistics.median(lengths):g}", str(max(lengths))]


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
    splits: dict[str, list[SequenceRecord]], drop: bool
) -> tuple[dict[str, list[SequenceRecord]], list[str], list[str]]:
    """Sequences that occur with two different targets anywhere in the dataset."""
    targets_of: dict[str, set] = defaultdict(set)
    first_of: dict[str, SequenceRecord] = {}
    for records in splits.values():
        for record in records:
            if not record.sequence:
                continue  # reported as empty already
            targets_of[record.sequence].add(record.target)
            first_of.setdefault(record.sequence, record)
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
    found = [
        f"{first_of[seq].where}: the same sequence is labelled "
        f"{' and '.join(sorted(format_target(t) for t in targets_of[seq]))}"
        for seq in sorted(conflicting, key=lambda s: (first_of[s].source, first_of[s].line))
    ]
    fix = "fix the targets, or set data.drop_conflicts=true to drop them"
    summary = f"{len(conflicting)} sequence(s) occur with two or more different targets; {fix}"
    return splits, [*_listed(found), summary], []


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


def _positive_label(labels: list[str], train: list[SequenceRecord], chosen: str | None) -> str:
    """The binary task's positive class: as configured, a conventional name, or the rarer one."""
    if chosen is not None:
        matches = [label for label in labels if label.lower() == chosen.lower()]
        if not matches and chosen in ("true", "false"):  # YAML turned yes/no into a boolean
            words = TRUE_WORDS if chosen == "true" else FALSE_WORDS
            matches = [label for label in labels if label.lower() in words]
        if not matches:
            raise ValueError(
                f"data.positive_label '{chosen}' is not a label of train ({', '.join(labels)})"
            )
        return matches[0]
    conventional = [label for label in labels if label.lower() in TRUE_WORDS]
    if len(conventional) == 1:
        return conventional[0]
    counts = {label: sum(r.target == label for r in train) for label in labels}
    return min(labels, key=lambda label: (counts[label], labels.index(label) == 0))


def _class_labels(report: DataReport, data: DataConfig) -> None:
    """Label set of multiclass/binary data: from train; other splits may not add labels."""
    train = report.splits.get("train", [])
    labels = sorted({str(r.target) for r in train})
    if labels and len(labels) < 2:
        report.errors.append(f"train has only one label ({labels[0]}); need at least two")
    if report.task is Task.BINARY and len(labels) > 2:
        report.errors.append(
            f"task=binary needs exactly two labels; train has {len(labels)} "
            f"({', '.join(labels[:8])}): use task=multiclass, or merge labels"
        )
    for split in ("validation", "test"):
        records = report.splits.get(split, [])
        unknown = sorted({str(r.target) for r in records} - set(labels))
        if unknown and train:
            example = next(r for r in records if r.target in unknown)
            report.errors.append(
                f"{split}: label(s) {', '.join(unknown)} never occur in train, e.g. "
                f"{example.where}; add training examples of each, or remove them from {split}"
            )
    if report.task is Task.BINARY and len(labels) == 2:
        try:
            positive = _positive_label(labels, train, data.positive_label)
        except ValueError as problem:
            report.errors.append(str(problem))
            return
        labels = [next(x for x in labels if x != positive), positive]
        report.notes.append(f"binary: positive class is '{positive}' (data.positive_label)")
    report.labels = labels


def _propagate(report: DataReport, data: DataConfig) -> Ontology | None:
    """Apply the ontology's true path rule to every record (before conflicts are judged)."""
    try:
        ontology = read_obo(data.ontology)
    except DataError as error:
        report.errors.append(str(error))
        return None
    for split, records in report.splits.items():
        report.splits[split] = [
            replace(r, target=tuple(sorted(ontology.propagate(r.target)))) for r in records
        ]
    report.notes.append(f"multilabel: annotations propagated to their ancestors in {data.ontology}")
    return ontology


def _multilabel_labels(report: DataReport, data: DataConfig, ontology: Ontology | None) -> None:
    """Vocabulary of multilabel data: labels of train, rare ones dropped."""
    train = report.splits.get("train", [])
    counts = Counter(label for r in train for label in r.target)
    for split in ("validation", "test"):
        records = report.splits.get(split, [])
        unknown = sorted({x for r in records for x in r.target} - set(counts))
        if unknown and train:
            listed = ", ".join(unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            example = next(r for r in records if set(r.target) & set(unknown))
            report.errors.append(
                f"{split}: {len(unknown)} label(s) never occur in train: {listed} (e.g. "
                f"{example.where}); add training examples of each, or remove them from {split}"
            )
    labels = sorted(label for label, n in counts.items() if n >= data.min_label_count)
    columns = data.target_columns or []
    never = [column for column in columns if len(columns) > 1 and column not in counts]
    if never and train:
        report.notes.append(
            f"multilabel: label column(s) {', '.join(never)} are never 1 in train and are left out"
        )
    rare = len(counts) - len(labels)
    if rare:
        report.notes.append(
            f"multilabel: {rare} label(s) with fewer than {data.min_label_count} training "
            f"sequences dropped; {len(labels)} remain (data.min_label_count)"
        )
        keep = set(labels)
        for split, records in report.splits.items():
            relabelled = [
                replace(r, target=tuple(x for x in r.target if x in keep)) for r in records
            ]
            kept = [r for r in relabelled if r.target]
            if len(kept) < len(records):
                report.notes.append(
                    f"{split}: {len(records) - len(kept)} record(s) had only dropped labels and "
                    "were left out"
                )
            report.splits[split] = kept
    if train and len(labels) < 2:
        report.errors.append(
            f"multilabel needs at least two labels with {data.min_label_count}+ training "
            f"sequences; found {len(labels)} (lower data.min_label_count, or use task=binary)"
        )
    report.labels = labels
    if ontology is not None:
        report.label_names = {label: ontology.name(label) for label in labels}
        report.ancestors = ontology.ancestors_within(labels)


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


def check_dataset(
    data: DataConfig | Path | str, task: Task = Task.MULTICLASS, require_test: bool = False
) -> DataReport:
    """Read and check a dataset in any layout esmtune reads.

    Args:
        data: The data section of a config (path, columns, repairs), or just a path.
        task: The task, which decides how targets are read and checked.
        require_test: Treat a missing test split as an error.

    Returns:
        A report; ``report.errors`` is empty when the data can be trained on.

    Raises:
        DataError: When the dataset cannot be found or a file cannot be read at all.
    """
    if not isinstance(data, DataConfig):
        data = DataConfig(path=Path(data))
    task = Task(task)
    default_targets = ["target"] if task is Task.REGRESSION else ["label"]
    found = read_splits(data, task, data.target_columns or default_targets)
    errors = [*found.errors, *_listed(found.record_errors)]
    report = DataReport(data.path, task, {}, [], errors, [], found.notes[:], found.layout)
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

    ontology = None
    if task is Task.MULTILABEL and data.ontology is not None:
        ontology = _propagate(report, data)
        if ontology is None:
            return report  # the ontology error says what to do; labels cannot be judged
    report.splits, found_conflicts, dropped = _find_conflicts(report.splits, data.drop_conflicts)
    errors += found_conflicts
    notes += dropped
    leak_errors, leak_warning = _find_leakage(report.splits, data.fail_on_leakage)
    errors += leak_errors
    if leak_warning:
        report.warnings.append(leak_warning)

    if task is Task.MULTILABEL:
        _multilabel_labels(report, data, ontology)
    elif task is Task.REGRESSION:
        report.labels = list(data.target_columns or default_targets)
    else:
        _class_labels(report, data)
    _drop_emptied_splits(report, require_test)
    too_long = sum(
        len(r.sequence) > data.max_length for recs in report.splits.values() for r in recs
    )
    if too_long:
        notes.append(
            f"{too_long} sequence(s) longer than {data.max_length} residues will be truncated "
            "to their first residues (data.max_length)"
        )
    return report
