"""The per-label dataset layout: ``DIR/{train,validation,test}/<Label>.fasta``."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

from esmtune.data.fasta import SequenceRecord, label_from_path, read_fasta
from esmtune.errors import DataError

__all__ = ["SPLITS", "SPLIT_NAMES", "UNSPLIT", "Layout", "find_label_files", "read_split"]

SPLITS = ("train", "validation", "test")
# Where records that name no split are filed when a reader is asked to take them (data split).
UNSPLIT = "unsplit"
# How datasets name their splits (a split column, a FASTA header key, a file name), by split.
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "validation": "validation",
    "valid": "validation",
    "val": "validation",
    "dev": "validation",
    "test": "test",
    "testing": "test",
}


class Layout(StrEnum):
    """The shapes of dataset esmtune reads (``data split`` writes its output in the same one)."""

    LABEL_FOLDERS = "label_folders"  # DIR/{train,validation,test}/<Label>.fasta
    LABEL_FILES = "label_files"  # DIR/<Label>.fasta, no splits yet (data split's input only)
    SPLIT_FILES = "split_files"  # DIR/train.csv, validation.csv, test.csv (or .tsv ... .fasta)
    ONE_FILE = "one_file"  # a table or FASTA file whose split column or header key names splits
    RESIDUE_FOLDER = "residue_folder"  # DIR/sequences.fasta + labels.fasta (+ mask.fasta), FLIP
    MEMORY = "memory"  # records handed over in Python (esmtune.fit)


def find_label_files(split_dir: Path) -> dict[str, Path]:
    """Map label -> FASTA file in one split folder (``.fasta``, ``.fa``, ``.faa``, gzipped).

    Raises:
        DataError: When two files would give the same label.
    """
    files: dict[str, Path] = {}
    for path in sorted(split_dir.iterdir()):
        label = label_from_path(path)
        if label is None or not path.is_file():
            continue
        if label in files:
            raise DataError(
                f"{split_dir}: {files[label].name} and {path.name} both give label '{label}'; "
                "keep one file per label"
            )
        files[label] = path
    return files


def read_split(data_dir: Path, split: str) -> tuple[dict[str, Path], list[SequenceRecord]]:
    """Read every label file of one split.

    Returns:
        The label files found and all their records (empty when the split folder is absent).
    """
    split_dir = Path(data_dir) / split
    if not split_dir.is_dir():
        return {}, []
    files = find_label_files(split_dir)
    records: list[SequenceRecord] = []
    for label, path in files.items():
        records.extend(read_fasta(path, label=label))
    return files, records
