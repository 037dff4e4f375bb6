"""What a data check found: the records that passed, the labels, every problem, and tables of it.

The report does not know tasks: how targets are tabulated and summarised is the task's (see
:class:`~esmtune.data.targets.TargetKind`), built from the generic tables here.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from esmtune.data.fasta import SequenceRecord
from esmtune.data.layout import SPLITS
from esmtune.errors import DataError

if TYPE_CHECKING:
    from esmtune.config import Task
    from esmtune.data.leakage import IdentityLeakage
    from esmtune.data.targets import TargetKind

__all__ = [
    "DataReport",
    "align_table",
    "label_summary",
    "label_table",
    "length_stats",
    "residue_counts",
    "residue_footer",
]


@dataclass
class DataReport:
    """The records that passed, the label set and everything found on the way.

    ``labels`` are the class names (binary: negative first, positive second), the multilabel
    vocabulary, the regression target names, or per residue the classes of train's unmasked
    residues (residue_regression: ``value``), in the order of the model's outputs. ``leakage``
    holds each validation and test sequence's nearest training sequence when it was measured.
    """

    data_path: Path
    kind: TargetKind
    splits: dict[str, list[SequenceRecord]]
    labels: list[str]
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    layout: str = ""
    label_names: dict[str, str] = field(default_factory=dict)
    ancestors: dict[str, list[str]] = field(default_factory=dict)
    leakage: IdentityLeakage | None = None

    @property
    def task(self) -> Task:
        """The task whose targets were read."""
        return self.kind.task

    @property
    def ok(self) -> bool:
        """True when nothing blocks training."""
        return not self.errors

    @property
    def present(self) -> list[str]:
        """The splits that hold records, in train, validation, test order."""
        return [split for split in SPLITS if self.splits.get(split)]

    def raise_if_errors(self) -> None:
        """Raise one DataError listing every blocking problem."""
        if self.errors:
            lines = [f"{self.data_path}: {len(self.errors)} problem(s) in the data:"]
            lines += [f"  - {error}" for error in self.errors]
            raise DataError("\n".join(lines))

    def table(self) -> str:
        """Per label (or regression target) and split: counts or value statistics, as text."""
        return self.kind.target_table(self)

    def summary(self) -> dict[str, object]:
        """Counts per split and label (regression: count, mean and std), for the manifest."""
        return self.kind.target_summary(self)


def align_table(header: list[str], rows: list[list[str]], footer: list[list[str]]) -> str:
    """Rows as columns: the first left-aligned, the others right-aligned, rules around rows."""
    every = [header, *rows, *footer]
    widths = [max(len(row[i]) for row in every) for i in range(len(header))]

    def fmt(row: list[str]) -> str:
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        return "  ".join(cells).rstrip()

    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, rows), rule, *map(fmt, footer)])


def length_stats(lengths: list[int]) -> list[str]:
    """Shortest, median and longest length as text (dashes for none)."""
    if not lengths:
        return ["-", "-", "-"]
    return [str(min(lengths)), f"{statistics.median(lengths):g}", str(max(lengths))]


def label_table(report: DataReport, footer: list[list[str]] | None = None) -> str:
    """Sequences per label and split, with lengths; ``footer`` rows go under the totals."""
    present = report.present
    header = ["label", *present, "len min", "len median", "len max"]
    rows = []
    for label in report.labels or sorted(
        {x for recs in report.splits.values() for r in recs for x in r.labels}
    ):
        counts = [sum(label in r.labels for r in report.splits[s]) for s in present]
        lengths = [len(r.sequence) for s in present for r in report.splits[s] if label in r.labels]
        names = report.label_names
        shown = label if label not in names else f"{label} {names[label]}"
        rows.append([shown, *map(str, counts), *length_stats(lengths)])
    all_lengths = [len(r.sequence) for s in present for r in report.splits[s]]
    totals = [str(len(report.splits[s])) for s in present]
    rows_below = [["TOTAL", *totals, *length_stats(all_lengths)], *(footer or [])]
    return align_table(header, rows, rows_below)


def label_summary(report: DataReport) -> dict[str, object]:
    """Sequences per split and label, for the manifest."""
    return {
        split: {label: sum(label in r.labels for r in recs) for label in report.labels}
        for split, recs in report.splits.items()
    }


def residue_counts(records: list[SequenceRecord]) -> tuple[int, int]:
    """Residues that count (mask 1, or no mask) and masked residues (mask 0) of ``records``."""
    used = sum(sum(record.used_residues) for record in records)
    return used, sum(len(record.sequence) for record in records) - used


def residue_summary(records: list[SequenceRecord]) -> dict[str, int]:
    """Chains, residues that count and masked residues of one split, for the run's manifest."""
    used, masked = residue_counts(records)
    return {"chains": len(records), "residues": used, "masked": masked}


def residue_footer(report: DataReport) -> list[list[str]]:
    """The last rows of per-residue tables, by split.

    Unmasked residues, masked ones (with their share of all residues), chains and lengths.
    """
    present = report.present
    counts = [residue_counts(report.splits[split]) for split in present]
    lengths = [[len(r.sequence) for r in report.splits[split]] for split in present]
    return [
        ["unmasked", *(str(used) for used, _ in counts)],
        ["masked", *(f"{m} ({m / (u + m):.1%})" if u + m else "0" for u, m in counts)],
        ["chains", *(str(len(report.splits[split])) for split in present)],
        ["len min/median/max", *(" / ".join(length_stats(values)) for values in lengths)],
    ]
