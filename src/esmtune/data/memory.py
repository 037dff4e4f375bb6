"""Datasets given as Python objects, read as if they were files.

``esmtune.fit`` (in a notebook, say) takes each split as a list of ``(sequence, target)`` pairs,
``SequenceRecord`` objects or dicts, or as a pandas DataFrame. They become
the same :class:`~esmtune.data.sources.SplitRecords` the file readers build, and targets are read
by the task's own ``parse_target`` from their text, exactly as a table cell would be. So the data
check applies every rule it applies to files (invalid residues, duplicate ids, conflicting
targets, leakage, labels missing from train ...) with the same messages, naming each record by
where it sits: ``train[12], record 'P3'``, ``validation.iloc[4], record 'Q9'``.

Training reads its data through ``check_dataset(config.data, ...)``; a dataset in memory reaches it
while it is :meth:`MemoryDataset.active`, for a config whose ``data.path`` is :data:`IN_MEMORY`.
Nothing is written to disk: a run trained this way records ``data.path: <in memory>``, and
evaluating it later needs the data given again (``esmtune evaluate RUN --data PATH``).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from esmtune.config import DataConfig
from esmtune.data.fasta import SequenceRecord, Target
from esmtune.data.layout import SPLITS, Layout
from esmtune.data.sources import Columns, SplitRecords, parse_record
from esmtune.data.targets import TargetKind
from esmtune.errors import DataError

__all__ = ["IN_MEMORY", "MemoryDataset", "is_in_memory", "read_memory"]

# The data.path of a dataset held in memory (what a run trained on one records).
IN_MEMORY = Path("<in memory>")
# A pair's target under this key of a dict, whatever the target columns are called.
_TARGET_KEY = "target"
_FORMS = "(sequence, target) pairs, SequenceRecords, dicts, or a pandas DataFrame"

_ACTIVE: ContextVar[MemoryDataset | None] = ContextVar("esmtune_memory_dataset", default=None)


@dataclass(frozen=True)
class MemoryDataset:
    """The splits of a dataset as Python objects, as the caller gave them.

    Attributes:
        splits: ``train``, ``validation``, ``test`` -> a list of records in any accepted form,
            or a DataFrame; a split that is absent or None was not given.
        caller: Who took the data (``esmtune.fit``), for messages saying how to add a split.
    """

    splits: Mapping[str, Any]
    caller: str = "esmtune.fit"

    @contextmanager
    def active(self) -> Iterator[Path]:
        """Serve this dataset to every read of :data:`IN_MEMORY` in this context; yields it."""
        token = _ACTIVE.set(self)
        try:
            yield IN_MEMORY
        finally:
            _ACTIVE.reset(token)


def is_in_memory(path: Path | str) -> bool:
    """Whether a data.path stands for a dataset held in memory rather than files."""
    return Path(path) == IN_MEMORY


def read_memory(data: DataConfig, kind: TargetKind, targets: list[str]) -> SplitRecords:
    """The records of the active in-memory dataset, read with the config's names and the task.

    Args:
        data: The data section of the config (column names, label separator).
        kind: The task's way of reading targets.
        targets: The target column names.

    Returns:
        Records per split, with the problems met on the way (as :func:`read_splits` gives).

    Raises:
        DataError: When no dataset is active: the config names one held in memory that is gone
            (a run trained by ``esmtune.fit``, evaluated later).
    """
    dataset = _ACTIVE.get()
    if dataset is None:
        raise DataError(
            f"{IN_MEMORY}: this dataset was given in Python (esmtune.fit) and is not on disk; "
            "give a dataset path instead (e.g. `esmtune evaluate RUN --data PATH`)"
        )
    columns = Columns.of(data, kind, targets)
    result = SplitRecords(
        form=Layout.MEMORY,
        layout=f"in memory ({dataset.caller})",
        missing_split=f"{{split}}: no records; the {{split}} split is required: pass "
        f"{{split}}=[(sequence, target), ...] to {dataset.caller}",
    )
    for split in SPLITS:
        items = dataset.splits.get(split)
        if items is not None:
            _read_split(split, items, columns, result)
    return result


def _read_split(split: str, items: Any, columns: Columns, result: SplitRecords) -> None:
    if _is_frame(items):
        _read_frame(split, items, columns, result)
        return
    if isinstance(items, str | bytes | Mapping) or not isinstance(items, Iterable):
        result.errors.append(
            f"{split}: a {type(items).__name__} is not a collection of records; give {_FORMS}"
        )
        result.unread.add(split)
        return
    result.splits[split] = []
    for index, item in enumerate(items):
        _add_item(split, index, item, columns, result)


def _is_frame(items: Any) -> bool:
    """A pandas DataFrame, recognised without importing pandas."""
    return hasattr(items, "columns") and hasattr(items, "to_dict") and hasattr(items, "iloc")


def _read_frame(split: str, frame: Any, columns: Columns, result: SplitRecords) -> None:
    """Rows keyed by the config's column names, as a table's are; named ``split.iloc[i]``."""
    present = [str(name) for name in frame.columns]
    required = [
        ("sequence column", "sequence_column", [columns.sequence]),
        ("target column(s)", "target_columns", columns.targets),
    ]
    problems = [
        _missing(f"{split}: the DataFrame has no {what}", names, present, f"data.{key}")
        for what, key, names in required
        if any(name not in present for name in names)
    ]
    if problems:
        result.errors += problems
        result.unread.add(split)
        return
    if columns.id not in present:
        result.notes.append(
            f"{split}: the DataFrame has no '{columns.id}' column; records are named by position "
            f"({split}:0, {split}:1, ...)"
        )
    result.splits[split] = []
    for index, raw in enumerate(frame.to_dict("records")):
        row = {str(key): value for key, value in raw.items()}
        identifier = _text(row[columns.id]) if columns.id in row else f"{split}:{index}"
        cells = [row[name] for name in columns.targets]
        source = f"{split}.iloc[{index}]"
        _add(split, identifier, row[columns.sequence], _Cells(cells), source, 0, columns, result)


def _missing(what: str, wanted: list[str], present: list[str], setting: str) -> str:
    """Names not found, each with the closest present one, and the setting that names them."""
    hints = []
    for name in (name for name in wanted if name not in present):
        close = difflib.get_close_matches(name, present, n=1)
        hints.append(f"'{name}'" + (f" (did you mean '{close[0]}'?)" if close else ""))
    return (
        f"{what} {', '.join(hints)}; it has {', '.join(present) or 'none'}. Rename it, or set "
        f"{setting}"
    )


@dataclass(frozen=True)
class _Cells:
    """A target given as one value per target column (a table row, a dict by column)."""

    values: list[Any]


def _add_item(split: str, index: int, item: Any, columns: Columns, result: SplitRecords) -> None:
    """One record in any accepted form; a problem is noted with where the record sits."""
    source, line = f"{split}[{index}]", 0
    if isinstance(item, SequenceRecord):
        if item.source != _UNNAMED.source:  # read from a file: point at the file
            source, line = item.source, item.line
        _add(split, item.id, item.sequence, item.target, source, line, columns, result, item.mask)
    elif isinstance(item, Mapping):
        _add_mapping(split, index, item, columns, result)
    elif isinstance(item, tuple | list) and len(item) == 2:
        sequence, target = item
        _add(split, f"{split}:{index}", sequence, target, source, line, columns, result)
    else:
        shown = repr(item) if len(repr(item)) <= 40 else f"{repr(item)[:37]}..."
        result.record_errors.append(
            f"{source}: {shown} is not a record; give {_FORMS} (a dict with the keys "
            f"'{columns.id}', '{columns.sequence}' and '{_TARGET_KEY}')"
        )


# A record built without saying where it came from (the default source).
_UNNAMED = SequenceRecord("", "")


def _add_mapping(
    split: str, index: int, item: Mapping[str, Any], columns: Columns, result: SplitRecords
) -> None:
    """A dict: id and sequence under the config's names, and the target.

    The target is under each target column's name (as in a table row) or, whole, under
    ``target`` (as in a pair).
    """
    source = f"{split}[{index}]"
    keys = [str(key) for key in item]
    by_column = [name for name in columns.targets if name in item]
    problem = None
    if columns.sequence not in item:
        problem = _missing(f"{source}: no key", [columns.sequence], keys, "data.sequence_column")
    elif _TARGET_KEY in item and by_column and _TARGET_KEY not in columns.targets:
        shown = ", ".join(f"'{name}'" for name in by_column)
        problem = (
            f"{source}: the target is given twice, as '{_TARGET_KEY}' and as {shown}; keep one"
        )
    elif len(by_column) < len(columns.targets) and _TARGET_KEY not in item:
        wanted = " and ".join(f"'{name}'" for name in columns.targets)
        problem = (
            f"{source}: no target; give it under '{_TARGET_KEY}', or under {wanted} "
            f"(data.target_columns); the dict has {', '.join(keys) or 'no keys'}"
        )
    if problem is not None:
        result.record_errors.append(problem)
        return
    identifier = _text(item[columns.id]) if columns.id in item else f"{split}:{index}"
    whole = len(by_column) < len(columns.targets)
    target = item[_TARGET_KEY] if whole else _Cells([item[name] for name in columns.targets])
    _add(split, identifier, item[columns.sequence], target, source, 0, columns, result)


def _add(
    split: str,
    identifier: str,
    sequence: Any,
    target: Any,
    source: str,
    line: int,
    columns: Columns,
    result: SplitRecords,
    mask: str | None = None,
) -> None:
    """Parse one record as a file's would be, or note why not, with where it sits.

    ``target`` is the whole target (a pair's second item) or :class:`_Cells`; ``mask`` a
    per-residue record's mask, if it has one.
    """
    where = SequenceRecord(identifier, "", None, source, line).where
    try:
        values = target.values if isinstance(target, _Cells) else _whole(target, columns)
        texts, counts = zip(*(_cell(value, columns.separator) for value in values), strict=True)
        try:
            record = parse_record(
                identifier, _sequence(sequence), list(texts), columns, source, line, mask
            )
        except ValueError:
            _check_count(None, counts[0], columns)  # the real problem: too many values
            raise
        _check_count(record.target, counts[0], columns)
    except ValueError as problem:
        result.record_errors.append(f"{where}: {problem}")
        return
    result.splits[split].append(record)


def _sequence(value: Any) -> str:
    """A sequence's text ('' for a missing value, which the check reports as empty)."""
    if _is_missing(value):
        return ""
    if not isinstance(value, str):
        raise ValueError(f"the sequence is a {type(value).__name__}, not text")
    return value


def _is_missing(value: Any) -> bool:
    """None, NaN, or pandas' NA / NaT: what an empty table cell becomes in a DataFrame."""
    if value is None:
        return True
    if isinstance(value, str | bytes | tuple | list | set | frozenset | Mapping):
        return False
    try:
        return bool(value != value)  # NaN is the one value unequal to itself
    except TypeError:  # pandas.NA refuses to be a truth value
        return True
    except ValueError:  # an array: several values, not a missing one
        return False


def _plain(value: Any) -> Any:
    """Values of numpy (scalars, arrays) as Python values and lists."""
    return value.tolist() if hasattr(value, "tolist") and hasattr(value, "ndim") else value


def _whole(target: Any, columns: Columns) -> list[Any]:
    """A whole target as one value per target column: a tuple or list in column order."""
    target = _plain(target)
    if len(columns.targets) == 1:
        return [target]
    names = ", ".join(f"'{name}'" for name in columns.targets)
    if isinstance(target, set | frozenset):
        raise ValueError(
            f"a set has no order; give a tuple with one value per target column ({names})"
        )
    if not isinstance(target, tuple | list) or len(target) != len(columns.targets):
        count = len(target) if isinstance(target, tuple | list) else 1
        raise ValueError(
            f"the target has {count} value(s) for {len(columns.targets)} target columns "
            f"({names}); give a tuple with one value per column, in that order"
        )
    return list(target)


def _cell(value: Any, separator: str) -> tuple[str, int]:
    """One target column's value as a table cell would hold it, and how many values it holds.

    Numbers and labels become their text, True/False ``true``/``false`` (as YAML and the binary
    task's words have them), a missing value an empty cell, and a list or set of labels one
    ``separator``-joined cell: the task reads its target from this text as from a file's.
    """
    value = _plain(value)
    if isinstance(value, tuple | list | set | frozenset):
        texts = [_text(item) for item in value]
        if isinstance(value, set | frozenset):
            texts.sort()
        clashing = [text for text in texts if separator in text]
        if clashing:
            raise ValueError(
                f"label {clashing[0]!r} holds the label separator {separator!r}; rename it, "
                "or choose another data.label_separator"
            )
        return separator.join(texts), len(texts)
    return _text(value), 1


def _text(value: Any) -> str:
    """One plain value as text ('' when missing)."""
    value = _plain(value)
    if _is_missing(value):
        return ""
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _check_count(target: Target | None, given: int, columns: Columns) -> None:
    """Several values given for one column must have been read as a set of labels.

    A task with one label or one number per column reads ``a;b`` as one odd label (or fails
    to read it as a number): the target has too many values, and that is the message.
    """
    if columns.kind.per_residue:
        return  # many values in one column is what a per-residue target is
    read_as_labels = isinstance(target, tuple) and all(isinstance(x, str) for x in target)
    if len(columns.targets) == 1 and given > 1 and not read_as_labels:
        raise ValueError(
            f"the target has {given} values but there is one target column "
            f"('{columns.targets[0]}'); give one value, or name a column per value in "
            "data.target_columns"
        )
