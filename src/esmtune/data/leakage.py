"""Leakage measured by identity: how close each validation and test sequence is to train.

Exact copies are only the start: a test protein 90% identical to a training protein is scored as
if unseen, yet the model has all but seen it, and scores fall steadily as that identity drops.
One MMseqs2 search of validation + test against train (see :mod:`esmtune.data.homology` for
what identity and coverage mean) gives every held-out sequence its nearest training sequence;
the data check reports them in identity bins, with the worst examples, and can write them all
(one row per sequence) for a closer look.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from esmtune.data.fasta import SequenceRecord
from esmtune.data.homology import SEARCHABLE_LENGTH, MMseqs, closest_alignments
from esmtune.data.report import align_table

__all__ = [
    "BINS",
    "HELD_OUT",
    "LEAKAGE_COLUMNS",
    "NO_HIT",
    "IdentityLeakage",
    "Nearest",
    "identity_bin",
    "measure_leakage",
]

# The splits measured against train.
HELD_OUT = ("validation", "test")
# Identity bins, highest first: (least identity, name); a sequence falls in the first it reaches.
BINS = ((0.95, "≥95%"), (0.80, "80–95%"), (0.50, "50–80%"), (0.30, "30–50%"), (0.0, "<30%"))
NO_HIT = "no hit"
# The per-sequence file: one row per validation and test sequence.
LEAKAGE_COLUMNS = ("id", "split", "nearest_train_id", "identity", "coverage")
_WORST_SHOWN = 5


def identity_bin(identity: float | None) -> str:
    """The name of the bin an identity (0 to 1) falls in; :data:`NO_HIT` for None."""
    if identity is None:
        return NO_HIT
    return next(name for least, name in BINS if identity >= least)


@dataclass(frozen=True, slots=True)
class Nearest:
    """A validation or test record and its nearest training sequence (None: no hit)."""

    record: SequenceRecord
    split: str
    train: SequenceRecord | None
    identity: float | None
    coverage: float | None  # the smaller share of the two sequences the alignment covers

    @property
    def bin(self) -> str:
        """Its identity bin."""
        return identity_bin(self.identity)

    def describe(self) -> str:
        """One line for a person: where the record is, and how close its neighbour is."""
        if self.train is None or self.identity is None or self.coverage is None:
            return f"{self.split}: {self.record.where}: no training sequence aligns"
        return (
            f"{self.split}: {self.record.where} is {self.identity:.1%} identical to train "
            f"'{self.train.id}' over {self.coverage:.0%} of both"
        )


@dataclass
class IdentityLeakage:
    """Every validation and test sequence's nearest training sequence, and tables of them.

    ``coverage``: the share of both sequences an alignment had to cover to count; ``tool``:
    what measured it (MMseqs2 and its version), for the reader of a report; ``unsearched``: the
    held-out sequences too short for MMseqs2 to search and not copies of a training sequence,
    whose "no hit" means "not measured".
    """

    coverage: float
    tool: str
    rows: list[Nearest]
    unsearched: int = 0

    @property
    def splits(self) -> list[str]:
        """The held-out splits measured, in validation, test order."""
        present = {row.split for row in self.rows}
        return [split for split in HELD_OUT if split in present]

    def counts(self) -> dict[str, dict[str, int]]:
        """Sequences per split and bin (every bin listed, empty ones as 0)."""
        names = [name for _, name in BINS] + [NO_HIT]
        counts = {split: dict.fromkeys(names, 0) for split in self.splits}
        for row in self.rows:
            counts[row.split][row.bin] += 1
        return counts

    def above(self, identity: float) -> list[Nearest]:
        """The rows whose nearest training sequence is more identical than ``identity``."""
        return [row for row in self.rows if row.identity is not None and row.identity > identity]

    def worst(self, count: int = _WORST_SHOWN) -> list[Nearest]:
        """The ``count`` rows closest to train, most identical first."""
        hits = [row for row in self.rows if row.identity is not None]
        return sorted(hits, key=lambda row: (-(row.identity or 0), row.split, row.record.id))[
            :count
        ]

    def heading(self) -> str:
        """What the table shows and how it was measured."""
        return (
            "leakage by identity: each validation/test sequence's highest identity to any "
            f"training sequence ({self.tool}; alignments covering ≥{self.coverage:.0%} of both)"
        )

    def table(self) -> str:
        """Counts per bin and split, with their share of the split, as aligned text."""
        counts = self.counts()
        totals = {split: sum(counts[split].values()) for split in counts}

        def cell(split: str, name: str) -> str:
            count = counts[split][name]
            return f"{count} ({count / totals[split]:.0%})" if totals[split] else "0"

        names = [name for _, name in BINS] + [NO_HIT]
        rows = [[name, *(cell(split, name) for split in counts)] for name in names]
        footer = [["TOTAL", *(str(totals[split]) for split in counts)]]
        return align_table(["identity to train", *counts], rows, footer)

    def report_lines(self) -> list[str]:
        """The heading, the table and the worst examples, for the terminal and data_check.txt."""
        lines = [self.heading(), self.table()]
        worst = self.worst()
        if worst:
            lines.append("closest to train:")
            lines += [f"  {row.describe()}" for row in worst]
        if self.unsearched:
            lines.append(
                f"{self.unsearched} validation/test sequence(s) shorter than {SEARCHABLE_LENGTH} "
                "residues are too short for MMseqs2 to search: their 'no hit' means not measured "
                "(exact copies of training sequences are found)"
            )
        return lines

    def summary(self) -> dict[str, object]:
        """Counts per split and bin, with how they were measured, for the run's manifest."""
        return {
            "tool": self.tool,
            "coverage": self.coverage,
            "counts": self.counts(),
            "unsearched": self.unsearched,
        }

    def write(self, handle: IO[str]) -> None:
        """One tab-separated row per sequence (:data:`LEAKAGE_COLUMNS`); no hit: empty cells."""
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(LEAKAGE_COLUMNS)
        for row in self.rows:
            writer.writerow([
                row.record.id,
                row.split,
                "" if row.train is None else row.train.id,
                "" if row.identity is None else f"{row.identity:.3f}",
                "" if row.coverage is None else f"{row.coverage:.3f}",
            ])  # fmt: skip

    def write_file(self, path: Path) -> None:
        """:meth:`write` to a file (its folder created)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as handle:
            self.write(handle)


def measure_leakage(
    splits: dict[str, list[SequenceRecord]], coverage: float, mmseqs: MMseqs
) -> IdentityLeakage:
    """Find each validation and test record's nearest training record with one MMseqs2 search.

    Args:
        splits: Records per split; those of validation and test are searched against train's.
        coverage: The least share of both sequences an alignment must cover to count.
        mmseqs: The MMseqs2 to run.

    Returns:
        One row per validation and test record, in split and file order. A record too short to
        search is still found as an exact copy of a training record (identity and coverage 1).

    Raises:
        EsmtuneError: When MMseqs2 fails.
    """
    train = [record for record in splits.get("train", []) if record.sequence]
    held = [(split, r) for split in HELD_OUT for r in splits.get(split, []) if r.sequence]
    found = mmseqs.search([r.sequence for _, r in held], [r.sequence for r in train], coverage)
    best = closest_alignments(found)
    copied: dict[str, SequenceRecord] = {}
    for record in train:
        copied.setdefault(record.sequence, record)
    rows, unsearched = [], 0
    for index, (split, record) in enumerate(held):
        hit = best.get(index)
        if hit is not None:
            rows.append(Nearest(record, split, train[hit.target], hit.identity, hit.coverage))
        elif record.sequence in copied:
            rows.append(Nearest(record, split, copied[record.sequence], 1.0, 1.0))
        else:
            rows.append(Nearest(record, split, None, None, None))
            unsearched += len(record.sequence) < SEARCHABLE_LENGTH
    return IdentityLeakage(coverage, f"MMseqs2 {mmseqs.version()}", rows, unsearched)
