"""Per-residue datasets: a label or a number for every residue, and a mask of residues to ignore.

The layouts FLIP and biotrainer users already have, read as they are:

* a folder holding ``sequences.fasta`` and ``labels.fasta`` (FLIP, biotrainer before 1.0). Each
  labels record's "sequence" is its target: one label character per residue, or numbers
  separated by ``;``, ``,`` or spaces; its header gives the split: ``SET=train
  VALIDATION=False`` (train), ``SET=train VALIDATION=True`` (validation), ``SET=test``. An
  optional ``mask.fasta`` holds ``1`` (use) or ``0`` (ignore) for each residue.
* one FASTA file whose headers carry target, split and mask (biotrainer 1.x):
  ``>id TARGET=CCHHE SET=train|val|test MASK=11101``, numbers in ``TARGET`` separated by ``;``.
  esmtune's own ``key=value`` headers (``label=``, ``split=``, ``mask=``) read the same way.

Wrapped lines are joined, of sequences, label strings and masks alike (biotrainer's reader keeps
only the last line of a wrapped record). How a target's text becomes a label string or numbers
is the task's (:class:`~esmtune.data.targets.TargetKind`); this module checks what every
per-residue target must satisfy: one per residue, a mask of 0/1 as long as the sequence, no
missing value where a residue counts. Problems are collected with their file, line and record.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from esmtune.data.fasta import (
    MASK_IGNORE,
    MASK_USE,
    FastaEntry,
    SequenceRecord,
    clean_sequence,
    header_fields,
    read_entries,
)
from esmtune.data.layout import SPLIT_NAMES, SPLITS

if TYPE_CHECKING:
    from esmtune.data.sources import Columns, SplitRecords

__all__ = [
    "LABELS_FILE",
    "MASK_FILE",
    "SEQUENCES_FILE",
    "is_residue_folder",
    "mask_problem",
    "read_residue_fasta",
    "read_residue_folder",
    "target_problem",
]

SEQUENCES_FILE = "sequences.fasta"
LABELS_FILE = "labels.fasta"
MASK_FILE = "mask.fasta"

# biotrainer's header keys (upper case, as it writes and requires them).
_TARGET_KEY, _SET_KEY, _VALIDATION_KEY = "TARGET", "SET", "VALIDATION"
_MASK_KEYS = ("MASK", "mask")
# biotrainer's other sets: sequences to predict (no target), and further test sets.
_PREDICT_SET = "pred"
_EXTRA_TEST_SET = re.compile(r"test\d+", re.IGNORECASE)
# What a header may say to name a split.
_SPLIT_HELP = "SET=train, SET=val (or SET=train VALIDATION=True) or SET=test"


def is_residue_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of the FLIP / biotrainer per-residue layout."""
    return (path / SEQUENCES_FILE).is_file() and (path / LABELS_FILE).is_file()


# --- what every per-residue record must satisfy --------------------------------------------


def target_problem(record: SequenceRecord, sequence_at: str = "") -> str | None:
    """What is wrong with a per-residue target (without its location), or None.

    One label or value per residue, and a number for every residue that counts (a missing
    value, NaN, is allowed only where the mask is 0). Check :func:`mask_problem` first: a
    broken mask cannot say which residues count.

    Args:
        record: The record, its target parsed by the task.
        sequence_at: Where its sequence is, when not where the target is (a second file).
    """
    target = record.target
    if not isinstance(target, str | tuple):
        return None
    residues = len(record.sequence)
    if len(target) != residues:
        noun = "labels" if isinstance(target, str) else "values"
        place = f" ({sequence_at})" if sequence_at else ""
        return (
            f"{len(target)} {noun} for the {residues} residues of its sequence{place}; give "
            f"exactly one per residue"
        )
    if isinstance(target, str):
        return None  # any label will do; a masked residue's is never read
    used = record.used_residues
    missing = [
        index
        for index, (value, counts) in enumerate(zip(target, used, strict=True))
        if counts and isinstance(value, float) and math.isnan(value)
    ]
    if missing:
        return (
            f"{len(missing)} residue(s) have no value (empty or NaN), the first is residue "
            f"{missing[0] + 1}; give a number, or mask the residue (a 0 in its mask: "
            f"{MASK_FILE} or a MASK= header)"
        )
    return None


def mask_problem(record: SequenceRecord, sequence_at: str = "") -> str | None:
    """What is wrong with a record's mask (without its location), or None when it has none."""
    mask = record.mask
    if mask is None:
        return None
    bad = next(
        ((i, flag) for i, flag in enumerate(mask) if flag not in MASK_USE + MASK_IGNORE), None
    )
    if bad is not None:
        index, flag = bad
        return (
            f"mask character {flag!r} at position {index + 1}; a mask holds {MASK_USE} (use the "
            f"residue) or {MASK_IGNORE} (ignore it) for each residue"
        )
    residues = len(record.sequence)
    if len(mask) != residues:
        place = f" ({sequence_at})" if sequence_at else ""
        return (
            f"mask of {len(mask)} characters for the {residues} residues of its sequence{place}; "
            f"give one {MASK_USE}/{MASK_IGNORE} per residue"
        )
    return None


@dataclass
class _Reading:
    """One file's (or folder's) reading: records filed into ``result``, and what was left out."""

    result: SplitRecords
    masked: list[str] = field(default_factory=list)  # records with every residue masked
    left_out: Counter[str] = field(default_factory=Counter)  # biotrainer's pred, test2 ...
    without_mask: list[str] = field(default_factory=list)  # records a mask file lacks

    def add(
        self, split: str, record: SequenceRecord, target_at: str, mask_at: str, in_files: bool
    ) -> None:
        """Check a parsed record and file it under its split, or say why not.

        ``target_at`` / ``mask_at``: where its target and mask were read; ``in_files``: whether
        they are in other files than its sequence (whose place messages then give too).
        """
        sequence_at = record.position if in_files else ""
        problem = mask_problem(record, sequence_at)
        if problem is not None:
            self.result.record_errors.append(f"{mask_at}: {problem}")
            return
        problem = target_problem(record, sequence_at)
        if problem is not None:
            self.result.record_errors.append(f"{target_at}: {problem}")
            return
        if record.sequence and record.mask is not None and MASK_USE not in record.mask:
            self.masked.append(record.where)
            return
        self.result.splits.setdefault(split, []).append(record)

    def finish(self, source: Path) -> None:
        """Notes on what was left out."""
        notes = self.result.notes
        if self.masked:
            notes.append(
                f"{source}: {len(self.masked)} record(s) with every residue masked "
                f"({MASK_IGNORE}) left out, as nothing in them is trained on or scored; e.g. "
                f"{self.masked[0]}"
            )
        for name, count in sorted(self.left_out.items()):
            if name == _PREDICT_SET:
                notes.append(
                    f"{source}: {count} record(s) with SET={_PREDICT_SET} (biotrainer: sequences "
                    "to predict) left out; predict them with `esmtune predict`"
                )
            else:
                notes.append(
                    f"{source}: {count} record(s) with SET={name} left out: esmtune has one test "
                    "split (SET=test); evaluate a trained run on the others with `esmtune "
                    "evaluate RUN --data PATH`"
                )
        if self.without_mask:
            notes.append(
                f"{source}: no mask for {len(self.without_mask)} record(s), whose every residue "
                f"counts; e.g. {self.without_mask[0]}"
            )


def _split_of(fields: dict[str, str], split_key: str) -> str | None:
    """The split a header names (``SET=``, or esmtune's split key), or None if it names none.

    Returns a split, ``pred`` or a further test set (``test2``) for the caller to leave out.

    Raises:
        ValueError: When the value is not a split, or VALIDATION contradicts it.
    """
    key = split_key if split_key in fields else _SET_KEY
    raw = fields.get(key)
    if raw is None:
        return None
    word = raw.strip().lower()
    if word == _PREDICT_SET or _EXTRA_TEST_SET.fullmatch(word):
        split = word
    elif word in SPLIT_NAMES:
        split = SPLIT_NAMES[word]
    else:
        raise ValueError(f"{key}={raw} is not a split; write {_SPLIT_HELP}")
    held_out = fields.get(_VALIDATION_KEY)
    if held_out is None:
        return split
    if held_out.strip().lower() not in ("true", "false"):
        raise ValueError(f"{_VALIDATION_KEY}={held_out}: write True or False")
    if held_out.strip().lower() == "false":
        if split == "validation":
            raise ValueError(
                f"{key}={raw} with {_VALIDATION_KEY}=False: say one split; write {_SPLIT_HELP}"
            )
        return split
    if split not in ("train", "validation"):
        raise ValueError(
            f"{key}={raw} with {_VALIDATION_KEY}=True: only train records are held out for "
            "validation (SET=train VALIDATION=True)"
        )
    return "validation"


def _where(path: Path, entry: FastaEntry) -> str:
    return f"{path}, line {entry.line}, record '{entry.id}'"


def _residues(entry: FastaEntry) -> str:
    """A sequence as ESM2 reads it, its wrapped lines joined."""
    return clean_sequence("".join(entry.lines))


def _mask_text(entry: FastaEntry) -> str:
    """A mask with its wrapped lines joined (and any space inside it removed)."""
    return "".join("".join(entry.lines).split())


# --- the FLIP / biotrainer folder ----------------------------------------------------------


def _by_id(path: Path, result: SplitRecords) -> dict[str, FastaEntry]:
    """The records of a labels or mask file by id; a repeated id is an error (which is meant?)."""
    found: dict[str, FastaEntry] = {}
    for entry in read_entries(path):
        first = found.get(entry.id)
        if first is None:
            found[entry.id] = entry
            continue
        result.record_errors.append(
            f"{_where(path, entry)}: the id is repeated (first at line {first.line}); keep one "
            f"record per id in {path.name}"
        )
    return found


def read_residue_folder(folder: Path, columns: Columns, result: SplitRecords) -> None:
    """Read ``sequences.fasta`` + ``labels.fasta`` (+ ``mask.fasta``) into ``result``.

    Records follow the order of ``sequences.fasta``; the split comes from the labels header
    (else the sequences header). ``result``'s layout and missing-split message are set here.

    Raises:
        DataError: When a file cannot be read at all (not FASTA text).
    """
    sequences_path, labels_path, mask_path = (
        folder / name for name in (SEQUENCES_FILE, LABELS_FILE, MASK_FILE)
    )
    has_mask = mask_path.is_file()
    files = [sequences_path, labels_path, *([mask_path] if has_mask else [])]
    result.layout = f"per-residue FASTA files (FLIP, biotrainer): {', '.join(map(str, files))}"
    result.missing_split = (
        f"{labels_path}: no {{split}} records; the {{split}} split is required: mark its records "
        "in their labels header (train: SET=train VALIDATION=False; validation: SET=train "
        "VALIDATION=True; test: SET=test)"
    )
    labels = _by_id(labels_path, result)
    masks = _by_id(mask_path, result) if has_mask else {}
    reading = _Reading(result)
    sequence_ids = set()
    for entry in read_entries(sequences_path):
        sequence_ids.add(entry.id)
        at = _where(sequences_path, entry)
        label_entry = labels.get(entry.id)
        if label_entry is None:
            result.record_errors.append(
                f"{at}: no labels for it in {labels_path}; add a record '>{entry.id} SET=train "
                "VALIDATION=False' with one label per residue, or remove the sequence"
            )
            continue
        label_at = _where(labels_path, label_entry)
        try:
            split = _folder_split(entry, label_entry, columns.split, columns.unsplit)
        except ValueError as problem:
            result.record_errors.append(f"{label_at}: {problem}")
            continue
        if split not in (*SPLITS, columns.unsplit):
            reading.left_out[split] += 1
            continue
        try:
            target = columns.kind.parse_target(
                ["\n".join(label_entry.lines)], columns.targets, columns.separator
            )
        except ValueError as problem:
            result.record_errors.append(f"{label_at}: {problem}")
            continue
        mask_entry = masks.get(entry.id)
        if has_mask and mask_entry is None:
            reading.without_mask.append(at)
        mask = None if mask_entry is None else _mask_text(mask_entry)
        record = SequenceRecord(
            entry.id, _residues(entry), target, str(sequences_path), entry.line,
            entry.description, mask,
        )  # fmt: skip
        mask_at = label_at if mask_entry is None else _where(mask_path, mask_entry)
        reading.add(split, record, label_at, mask_at, in_files=True)
    for path, entries, what in ((labels_path, labels, "labels"), (mask_path, masks, "mask")):
        for identifier, orphan in entries.items():
            if identifier not in sequence_ids:
                result.record_errors.append(
                    f"{_where(path, orphan)}: {what} for an id that {sequences_path} does not "
                    "have; add its sequence, or remove the record (ids must match exactly)"
                )
    reading.finish(folder)


def _folder_split(
    sequence: FastaEntry, labels: FastaEntry, split_key: str, unsplit: str | None
) -> str:
    """The split of a folder record: its labels header's, else its sequences header's.

    ``unsplit``: the split of a record whose headers name none (None: an error).

    Raises:
        ValueError: When neither names one (and ``unsplit`` is None), or they name different
            ones.
    """
    from_labels = _split_of(header_fields(labels.description), split_key)
    from_sequence = _split_of(header_fields(sequence.description), split_key)
    if from_labels is None and from_sequence is None:
        if unsplit is not None:
            return unsplit
        raise ValueError(f"the header names no split; write {_SPLIT_HELP} after the id")
    if from_labels and from_sequence and from_labels != from_sequence:
        raise ValueError(
            f"the labels header says {from_labels} but the sequences header (line "
            f"{sequence.line}) says {from_sequence}; make them agree, or name the split in one"
        )
    return from_labels or from_sequence or ""


# --- one FASTA file with targets in its headers ----------------------------------------------


def read_residue_fasta(
    path: Path, columns: Columns, fixed_split: str | None, result: SplitRecords
) -> None:
    """Read a FASTA file whose headers carry each record's target (and split, and mask).

    biotrainer's ``TARGET=``, ``SET=`` (``VALIDATION=``) and ``MASK=``, or esmtune's own keys
    (the target column, ``data.split_column``, ``mask=``). ``fixed_split``: the split of a
    per-split file, whose headers need not name one.

    Raises:
        DataError: When the file cannot be read at all (not FASTA text).
    """
    target_keys = list(dict.fromkeys([*columns.targets[:1], _TARGET_KEY]))
    reading = _Reading(result)
    for entry in read_entries(path):
        at = _where(path, entry)
        fields = header_fields(entry.description)
        try:
            split = fixed_split or _split_of(fields, columns.split) or columns.unsplit
        except ValueError as problem:
            result.record_errors.append(f"{at}: {problem}")
            continue
        if split is None:
            result.record_errors.append(
                f"{at}: the header names no split; write {_SPLIT_HELP} (or "
                f"{columns.split}=train|validation|test) after the id"
            )
            continue
        if split not in (*SPLITS, columns.unsplit):
            reading.left_out[split] += 1
            continue
        key = next((key for key in target_keys if key in fields), None)
        if key is None:
            result.record_errors.append(
                f"{at}: the header has no {' or '.join(f'{k}=' for k in target_keys)}; write "
                f"'>{entry.id} {_TARGET_KEY}=<one label per residue> SET=train "
                "MASK=<0 or 1 per residue>' (numbers: separated by ';')"
            )
            continue
        try:
            target = columns.kind.parse_target([fields[key]], columns.targets, columns.separator)
        except ValueError as problem:
            result.record_errors.append(f"{at}: {key}: {problem}")
            continue
        mask = next((fields[k] for k in _MASK_KEYS if k in fields), None)
        record = SequenceRecord(
            entry.id, _residues(entry), target, str(path), entry.line, entry.description,
            None if mask is None else "".join(mask.split()),
        )  # fmt: skip
        reading.add(split, record, at, at, in_files=False)
    reading.finish(path)
