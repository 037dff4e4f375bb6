"""Targets as the data layer sees them: text read by a task's rules, and shown back as text.

A table cell or FASTA header value is text; whether it is a class label, a set of labels or a
number is the task's business. The data layer reads and checks datasets through the
:class:`TargetKind` protocol, which each task class in :mod:`esmtune.tasks` implements, so that
this layer never branches on the task.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from esmtune.data.fasta import Target

if TYPE_CHECKING:
    from esmtune.config import DataConfig, Task
    from esmtune.data.report import DataReport

__all__ = ["FALSE_WORDS", "TRUE_WORDS", "TargetKind", "format_target"]

TRUE_WORDS = frozenset({"1", "true", "yes", "y", "t", "1.0", "positive", "pos"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "f", "0.0", "negative", "neg"})


class TargetKind(Protocol):
    """How one task's targets are read from text, checked, labelled and tabulated.

    Problems found while parsing are ``ValueError``s with plain sentences (the reader adds the
    file, line and record); problems with the label set go into the report.
    """

    task: Task
    # One FASTA file per label (``data/{split}/<Label>.fasta``) can hold these targets.
    one_label_per_file: bool
    # A target per residue (a label string or numbers as long as the sequence, and a mask),
    # read from the per-residue layouts (FLIP / biotrainer) as well as tables.
    per_residue: bool

    def default_target_columns(self) -> list[str]:
        """The target column(s) unless data.target_columns names others."""
        ...

    def parse_target(self, values: list[str], columns: list[str], separator: str) -> Target:
        """The target of one record from the text of its target columns (in ``columns`` order).

        Raises:
            ValueError: Saying what is wrong and how to fix it (without the location).
        """
        ...

    def prepare_targets(self, report: DataReport, data: DataConfig) -> bool:
        """Rewrite targets before duplicates and conflicts are judged; False stops the check."""
        ...

    def find_labels(self, report: DataReport, data: DataConfig) -> None:
        """Set ``report.labels`` (and names) from train, adding errors and notes to the report."""
        ...

    def target_table(self, report: DataReport) -> str:
        """Per label (or target) and split: counts or statistics, as text."""
        ...

    def target_summary(self, report: DataReport) -> dict[str, object]:
        """Counts (or statistics) per split, for the run's manifest."""
        ...


def format_target(target: Target | None) -> str:
    """A target as text for reports and predictions files."""
    if target is None:
        return ""
    if isinstance(target, str):
        return target
    return ";".join(f"{x:g}" if isinstance(x, float) else str(x) for x in target)
