"""Residue classification: one class per residue (secondary structure C/H/E, a 0-7 code ...).

A record's target is its label string, one character per residue (FLIP's ``labels.fasta``,
biotrainer's ``TARGET=CCHHE``); its mask says which residues count. The classes are the
characters found on the train split's unmasked residues, sorted; a class that only validation or
test has is an error, since the model could never predict it. Masked residues are never read as
classes: their label may be a placeholder.
"""

from __future__ import annotations

from collections import Counter
from typing import ClassVar

from esmtune.config import DataConfig, Task
from esmtune.data.fasta import SequenceRecord, Target
from esmtune.data.report import DataReport, align_table, residue_counts, residue_footer
from esmtune.tasks.base import TaskSpec

__all__ = ["ResidueClassificationTask"]

# Records named in an error about classes missing from train.
_NAMED_RECORDS = 3


def _class_counts(records: list[SequenceRecord]) -> Counter[str]:
    """Unmasked residues per class."""
    return Counter(
        label
        for record in records
        for label, used in zip(record.residue_labels, record.used_residues, strict=True)
        if used
    )


def _share(count: int, total: int) -> str:
    return f"{count} ({count / total:.1%})" if total else str(count)


class ResidueClassificationTask(TaskSpec):
    """One class of a fixed alphabet per residue; masked residues are left out."""

    task: ClassVar[Task] = Task.RESIDUE_CLASSIFICATION
    per_residue: ClassVar[bool] = True
    target_noun: ClassVar[str] = "residue classes"

    # --- reading and checking targets --------------------------------------------------------

    @classmethod
    def parse_target(cls, values: list[str], columns: list[str], separator: str) -> Target:
        """The label string, its wrapped lines (and any spaces) joined."""
        labels = "".join(values[0].split())
        if not labels:
            raise ValueError(
                "no labels; give one label character per residue (e.g. CCHHHEEC), as long as "
                "the sequence"
            )
        return labels

    @classmethod
    def find_labels(cls, report: DataReport, data: DataConfig) -> None:
        """Classes of train's unmasked residues (at least two); new ones elsewhere are errors."""
        train = report.splits.get("train", [])
        labels = sorted(_class_counts(train))
        if train and len(labels) < 2:
            report.errors.append(
                f"train: every unmasked residue has the class {labels[0] if labels else '-'}; "
                "residue_classification needs at least two classes"
            )
        known = set(labels)
        for split in ("validation", "test"):
            records = report.splits.get(split, [])
            unknown = Counter(
                label
                for record in records
                for label, used in zip(record.residue_labels, record.used_residues, strict=True)
                if used and label not in known
            )
            if not unknown or not train:
                continue
            named = [r for r in records if set(_class_counts([r])) - known]
            shown = "; ".join(r.where for r in named[:_NAMED_RECORDS])
            more = f" and {len(named) - _NAMED_RECORDS} more" if len(named) > _NAMED_RECORDS else ""
            report.errors.append(
                f"{split}: class(es) {', '.join(sorted(unknown))} never occur on train's residues "
                f"({sum(unknown.values())} residue(s) in {len(named)} record(s): {shown}{more}); "
                f"add training examples of each, mask those residues (0), or remove the records "
                f"from {split}"
            )
        report.labels = labels

    @classmethod
    def target_table(cls, report: DataReport) -> str:
        """Unmasked residues per class and split, with shares; masked residues, chains, lengths."""
        present = report.present
        counts = {split: _class_counts(report.splits[split]) for split in present}
        used = {split: residue_counts(report.splits[split])[0] for split in present}
        labels = report.labels or sorted({label for c in counts.values() for label in c})
        rows = [
            [label, *(_share(counts[split][label], used[split]) for split in present)]
            for label in labels
        ]
        return align_table(["class", *present], rows, residue_footer(report))

    @classmethod
    def target_summary(cls, report: DataReport) -> dict[str, object]:
        """Per split: chains, unmasked and masked residues, and unmasked residues per class."""
        summary: dict[str, object] = {}
        for split, records in report.splits.items():
            used, masked = residue_counts(records)
            counts = _class_counts(records)
            summary[split] = {
                "chains": len(records),
                "residues": used,
                "masked": masked,
                "classes": {label: counts[label] for label in report.labels},
            }
        return summary
