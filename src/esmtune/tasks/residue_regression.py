"""Residue regression: one number per residue (disorder, flexibility, solvent accessibility ...).

A record's target is a tuple of numbers, one per residue, read from text where they are
separated by ``;`` (as biotrainer writes ``TARGET=0.5;0.3;...``), ``,`` or whitespace (a line
break too, so wrapped lines of FLIP-style ``labels.fasta`` join). A residue without a value (an
empty value, ``NaN``) must be masked: its target is NaN and the mask's 0 keeps it out of the loss
and every metric; unmasked, it is an error, never a number made up.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable
from typing import ClassVar

from esmtune.config import DataConfig, Task
from esmtune.data.fasta import SequenceRecord, Target
from esmtune.data.report import DataReport, align_table, residue_counts, residue_footer
from esmtune.tasks.base import TaskSpec

__all__ = ["ResidueRegressionTask"]

# One separator: ';' or ',' (with any space around it), or a run of whitespace. Two separators
# in a row hold an empty value between them, a residue without one.
_SEPARATOR = re.compile(r"\s*[;,]\s*|\s+")
_MISSING = frozenset({"", "nan", "na"})
# The only output's name (report.labels): the value of each residue.
_OUTPUT = "value"
# Characters of a bad value shown in a message (a label string read as numbers is long).
_SHOWN = 24


def _used_values(records: list[SequenceRecord]) -> list[float]:
    """The values of every residue that counts (unmasked)."""
    return [
        value
        for record in records
        for value, used in zip(record.values, record.used_residues, strict=True)
        if used
    ]


class ResidueRegressionTask(TaskSpec):
    """One number per residue; masked residues (and only they) may lack one."""

    task: ClassVar[Task] = Task.RESIDUE_REGRESSION
    per_residue: ClassVar[bool] = True
    target_noun: ClassVar[str] = "value(s) per residue"

    # --- reading and checking targets --------------------------------------------------------

    @classmethod
    def parse_target(cls, values: list[str], columns: list[str], separator: str) -> Target:
        """One number per residue; an empty value or NaN (or NA) is a residue without one."""
        text = values[0].strip()
        if not text:
            raise ValueError(
                "no values; give one number per residue, separated by ';', ',' or spaces"
            )
        # One separator after the last value (a line ended with ';') closes it, adds none.
        text = re.sub(r"\s*[;,]$", "", text)
        numbers, bad = [], []
        for position, word in enumerate(_SEPARATOR.split(text), start=1):
            if word.lower() in _MISSING:
                numbers.append(math.nan)
                continue
            try:
                number = float(word)
            except ValueError:
                number = math.nan
            if not math.isfinite(number):
                bad.append((position, word))
            numbers.append(number)
        if bad:
            position, word = bad[0]
            shown = word if len(word) <= _SHOWN else f"{word[: _SHOWN - 3]}..."
            raise ValueError(
                f"{len(bad)} value(s) are not finite numbers, the first is value {position}, "
                f"{shown!r}; give one number per residue, separated by ';', ',' or spaces "
                "(an empty value or NaN where a residue has none, and mask it)"
            )
        return tuple(numbers)

    @classmethod
    def find_labels(cls, report: DataReport, data: DataConfig) -> None:
        """One output, the value of each residue."""
        report.labels = [_OUTPUT]

    @classmethod
    def target_table(cls, report: DataReport) -> str:
        """Mean, deviation and range of unmasked values by split; masked, chains, lengths."""
        present = report.present
        values = {split: _used_values(report.splits[split]) for split in present}
        statistic: dict[str, Callable[[list[float]], float]] = {
            "mean": statistics.mean,
            "std": statistics.pstdev,  # as in the summary (and a regression's standardisation)
            "min": min,
            "max": max,
        }
        rows = [
            [name, *(f"{function(values[s]):.4g}" if values[s] else "-" for s in present)]
            for name, function in statistic.items()
        ]
        return align_table([_OUTPUT, *present], rows, residue_footer(report))

    @classmethod
    def target_summary(cls, report: DataReport) -> dict[str, object]:
        """Per split: chains, unmasked and masked residues, and their values' statistics."""
        summary: dict[str, object] = {}
        for split, records in report.splits.items():
            used, masked = residue_counts(records)
            values = _used_values(records)
            summary[split] = {
                "chains": len(records),
                "residues": used,
                "masked": masked,
                **(
                    {
                        "mean": statistics.mean(values),
                        "std": statistics.pstdev(values),
                        "min": min(values),
                        "max": max(values),
                    }
                    if values
                    else {}
                ),
            }
        return summary
