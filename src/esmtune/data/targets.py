"""Reading a target from text, the way each task needs it.

A table cell or FASTA header value is text; whether it is a class label, a set of labels or a
number depends on the task. Problems are returned as plain sentences so that the caller can add
the file, line and record.
"""

from __future__ import annotations

import math

from esmtune.config import Task
from esmtune.data.fasta import Target

__all__ = ["FALSE_WORDS", "TRUE_WORDS", "format_target", "parse_target"]

TRUE_WORDS = frozenset({"1", "true", "yes", "y", "t", "1.0", "positive", "pos"})
FALSE_WORDS = frozenset({"0", "false", "no", "n", "f", "0.0", "negative", "neg"})


def _labels_from_indicators(values: list[str], columns: list[str]) -> tuple[str, ...]:
    labels = []
    for column, value in zip(columns, values, strict=True):
        word = value.strip().lower()
        if word in TRUE_WORDS:
            labels.append(column)
        elif word not in FALSE_WORDS:
            raise ValueError(
                f"column '{column}' holds {value!r}; one-column-per-label data needs 1/0 "
                "(or true/false)"
            )
    return tuple(sorted(labels))


def parse_target(task: Task, values: list[str], columns: list[str], separator: str) -> Target:
    """The target of one record from the text of its target columns.

    Args:
        task: The task, which decides how the text is read.
        values: Text of each target column, in ``columns`` order.
        columns: The target column names.
        separator: Separator between labels in one multilabel column.

    Returns:
        A label (multiclass, binary), a sorted tuple of labels (multilabel) or a tuple of
        floats (regression).

    Raises:
        ValueError: Saying what is wrong and how to fix it (without the location).
    """
    if task in (Task.MULTICLASS, Task.BINARY):
        label = values[0].strip()
        if not label:
            raise ValueError(f"empty label in column '{columns[0]}'; fill it in or drop the row")
        return label
    if task is Task.MULTILABEL:
        if len(columns) > 1:
            labels = _labels_from_indicators(values, columns)
        else:
            labels = tuple(sorted({x.strip() for x in values[0].split(separator) if x.strip()}))
        if not labels:
            where = f"column '{columns[0]}'" if len(columns) == 1 else "any label column"
            raise ValueError(
                f"no label in {where}; every multilabel record needs at least one "
                f"(several separated by '{separator}'); drop unlabelled records"
            )
        return labels
    numbers = []
    for column, value in zip(columns, values, strict=True):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
            if value.strip():
                raise ValueError(
                    f"column '{column}' holds {value!r}, not a number; regression targets "
                    "must be numeric"
                ) from None
        if not math.isfinite(number):
            shown = repr(value) if value.strip() else "empty"
            raise ValueError(
                f"column '{column}' is {shown}; "
                "every regression target needs a finite number: fill it in or drop the row"
            )
        numbers.append(number)
    return tuple(numbers)


def format_target(target: Target | None) -> str:
    """A target as text for reports and predictions files."""
    if target is None:
        return ""
    if isinstance(target, str):
        return target
    return ";".join(f"{x:g}" if isinstance(x, float) else x for x in target)
