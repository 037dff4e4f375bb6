"""Tables (CSV, TSV, Parquet) and FASTA key=value headers for every task, through the data check.

Each test writes a small dataset under tmp_path and reads it with `check_dataset` (or the CLI), so
what is asserted is what training will see: records per split, targets, labels and the messages.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import math
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from esmtune.cli import main
from esmtune.config import DataConfig, Task
from esmtune.data.check import DataReport, check_dataset
from esmtune.data.fasta import Target
from esmtune.errors import DataError

_ALPHABET = "ACDEFGHIKLMNPQRSTVWY"


def protein(length: int, start: int) -> str:
    """A valid sequence; different ``start`` (mod 20) gives a different sequence."""
    return "".join(_ALPHABET[(start + i) % len(_ALPHABET)] for i in range(length))


def only_error_with(report: DataReport, *parts: str) -> str:
    """The one error that contains every part; fails with the full list otherwise."""
    found = [error for error in report.errors if all(part in error for part in parts)]
    assert len(found) == 1, f"expected one error with {parts}, got:\n" + "\n".join(report.errors)
    return found[0]


def records_of(report: DataReport) -> dict[str, list[tuple[str, str, Target | None]]]:
    """Per split: (id, sequence, target) of every record, in file order."""
    return {
        split: [(r.id, r.sequence, r.target) for r in records]
        for split, records in report.splits.items()
    }


# --- writing a dataset in every format ----------------------------------------------------


def _quoted(value: str) -> str:
    return f'"{value}"' if " " in value else value


def write_records(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    """Write rows as CSV/TSV (``.gz`` too), Parquet (text columns) or FASTA, by suffix.

    FASTA takes the ``id`` and ``sequence`` columns for the record and writes every other column
    as a ``key=value`` header field (values with spaces quoted).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        columns = {column: [row[i] for row in rows] for i, column in enumerate(header)}
        pq.write_table(pa.table(columns), path)
        return path
    if name.endswith(".fasta"):
        lines = []
        for row in rows:
            fields = dict(zip(header, row, strict=True))
            keys = [f"{k}={_quoted(v)}" for k, v in fields.items() if k not in ("id", "sequence")]
            lines += [f">{fields['id']} {' '.join(keys)}", fields["sequence"]]
        text = "\n".join(lines) + "\n"
    else:
        buffer = io.StringIO()
        writer = csv.writer(buffer, delimiter="\t" if name.endswith(".tsv") else ",")
        writer.writerows([header, *rows])
        text = buffer.getvalue()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wt") as handle:
            handle.write(text)
    else:
        path.write_text(text)
    return path


# One small dataset per task: eight records, four train, two validation, two test.
IDS = [f"P{i}" for i in range(1, 9)]
SEQUENCES = [protein(12 + i, 3 * i) for i in range(8)]
SPLITS = ["train"] * 4 + ["validation"] * 2 + ["test"] * 2
# Per task: the target column (its default name) and each record's target text.
TARGETS: dict[Task, tuple[str, list[str]]] = {
    Task.MULTICLASS: (
        "label",
        ["Alpha", "Beta", "cell projection", "Alpha", "Beta", "cell projection", "Alpha", "Beta"],
    ),
    Task.BINARY: ("label", ["yes", "no", "no", "no", "yes", "no", "no", "yes"]),
    Task.MULTILABEL: ("label", ["a;b", "b", "c;a", "b;c", "a", "b;c", "c", "a;b"]),
    Task.REGRESSION: ("target", ["0.5", "-1.25", "3", "1e-2", "2", "0", "4.5", "-3"]),
    # Per residue: a label (or a number) for each of the 12 + i residues of record i.
    Task.RESIDUE_CLASSIFICATION: (
        "label",
        ["".join("CHE"[(i + j) // 4 % 3] for j in range(12 + i)) for i in range(8)],
    ),
    Task.RESIDUE_REGRESSION: (
        "target",
        [";".join(f"{(i - j) / 4:g}" for j in range(12 + i)) for i in range(8)],
    ),
}
# The label set each task derives (binary: negative, then positive; regression: target names).
LABELS = {
    Task.MULTICLASS: ["Alpha", "Beta", "cell projection"],
    Task.BINARY: ["no", "yes"],
    Task.MULTILABEL: ["a", "b", "c"],
    Task.REGRESSION: ["target"],
    Task.RESIDUE_CLASSIFICATION: ["C", "E", "H"],
    Task.RESIDUE_REGRESSION: ["value"],
}
FORMATS = ["csv", "tsv", "csv.gz", "tsv.gz", "parquet", "fasta", "fasta.gz"]


def parsed(task: Task, text: str) -> Target:
    """What the check should make of one record's target text."""
    if task is Task.MULTILABEL:
        return tuple(sorted(text.split(";")))
    if task is Task.REGRESSION:
        return (float(text),)
    if task is Task.RESIDUE_REGRESSION:
        return tuple(float(value) for value in text.split(";"))
    return text


def expected_records(task: Task) -> dict[str, list[tuple[str, str, Target]]]:
    _, targets = TARGETS[task]
    expected: dict[str, list[tuple[str, str, Target]]] = {}
    for identifier, sequence, text, split in zip(IDS, SEQUENCES, targets, SPLITS, strict=True):
        expected.setdefault(split, []).append((identifier, sequence, parsed(task, text)))
    return expected


def write_one_file(path: Path, task: Task, splits: list[str] = SPLITS) -> Path:
    """The task's dataset in one file with a split column."""
    column, targets = TARGETS[task]
    rows = [
        [identifier, sequence, text, split]
        for identifier, sequence, text, split in zip(IDS, SEQUENCES, targets, splits, strict=True)
    ]
    return write_records(path, ["id", "sequence", column, "split"], rows)


def write_split_files(folder: Path, task: Task, suffix: str, names: dict[str, str]) -> Path:
    """The task's dataset as one file per split, ``names`` mapping split to file stem."""
    column, targets = TARGETS[task]
    for split, stem in names.items():
        rows = [
            [identifier, sequence, text]
            for identifier, sequence, text, row_split in zip(
                IDS, SEQUENCES, targets, SPLITS, strict=True
            )
            if row_split == split
        ]
        write_records(folder / f"{stem}.{suffix}", ["id", "sequence", column], rows)
    return folder


def labelled_csv(path: Path, rows: list[tuple[str, str]], column: str = "label") -> Path:
    """A CSV of (split, target text) rows: row k is on line k + 2 with id P<k+1>."""
    body = [
        [f"P{k + 1}", protein(10 + k, k), target, split] for k, (split, target) in enumerate(rows)
    ]
    return write_records(path, ["id", "sequence", column, "split"], body)


# --- the same data in every layout and format gives the same records ----------------------


@pytest.mark.parametrize("fmt", FORMATS)
@pytest.mark.parametrize("task", list(Task))
def test_one_file_with_a_split_column_reads_the_same_in_every_format(
    tmp_path: Path, task: Task, fmt: str
) -> None:
    path = write_one_file(tmp_path / f"data.{fmt}", task)
    report = check_dataset(path, task)
    assert report.ok, report.errors
    assert records_of(report) == expected_records(task)
    assert report.labels == LABELS[task]


@pytest.mark.parametrize("fmt", ["csv", "tsv", "csv.gz", "parquet", "fasta"])
@pytest.mark.parametrize("task", list(Task))
def test_one_file_per_split_reads_the_same_in_every_format(
    tmp_path: Path, task: Task, fmt: str
) -> None:
    names = {"train": "train", "validation": "validation", "test": "test"}
    folder = write_split_files(tmp_path / "data", task, fmt, names)
    report = check_dataset(folder, task)
    assert report.ok, report.errors
    assert records_of(report) == expected_records(task)
    assert report.layout.startswith("one file per split")


def test_a_quoted_fasta_header_value_keeps_its_space(tmp_path: Path) -> None:
    path = tmp_path / "data.fasta"
    path.write_text(
        f'>P1 label="cell projection" split=train\n{SEQUENCES[0]}\n'
        f">P2 some words label=Nucleus split=train\n{SEQUENCES[1]}\n"
        f">P3 split=validation label=Nucleus\n{SEQUENCES[2]}\n"
    )
    report = check_dataset(path)
    assert report.ok, report.errors
    assert [r.target for r in report.splits["train"]] == ["cell projection", "Nucleus"]
    assert report.labels == ["Nucleus", "cell projection"]


@pytest.mark.parametrize(
    "names",
    [
        ["training", "val", "val", "testing"],
        ["TRAIN", "dev", "Valid", "Test"],
        ["train", "validation", "dev", "test"],
    ],
    ids=["training-val-testing", "case-and-dev", "mixed"],
)
def test_split_synonyms_are_accepted_in_a_split_column(tmp_path: Path, names: list[str]) -> None:
    train, validation_a, validation_b, test = names
    splits = [train] * 4 + [validation_a, validation_b] + [test] * 2
    path = write_one_file(tmp_path / "data.csv", Task.MULTICLASS, splits)
    report = check_dataset(path)
    assert report.ok, report.errors
    assert records_of(report) == expected_records(Task.MULTICLASS)


@pytest.mark.parametrize("stems", [("train", "val", "test"), ("training", "dev", "testing")])
def test_split_synonyms_are_accepted_as_file_names(
    tmp_path: Path, stems: tuple[str, str, str]
) -> None:
    names = dict(zip(["train", "validation", "test"], stems, strict=True))
    folder = write_split_files(tmp_path / "data", Task.MULTICLASS, "csv", names)
    report = check_dataset(folder)
    assert report.ok, report.errors
    assert records_of(report) == expected_records(Task.MULTICLASS)


def test_a_table_with_other_column_names_is_read_through_the_config(tmp_path: Path) -> None:
    rows = [
        [split, sequence, text, identifier]
        for identifier, sequence, text, split in zip(
            IDS, SEQUENCES, TARGETS[Task.MULTICLASS][1], SPLITS, strict=True
        )
    ]
    path = write_records(tmp_path / "data.tsv", ["fold", "seq", "location", "accession"], rows)
    data = DataConfig(
        path=path,
        id_column="accession",
        sequence_column="seq",
        target_columns=["location"],
        split_column="fold",
    )
    report = check_dataset(data)
    assert report.ok, report.errors
    assert records_of(report) == expected_records(Task.MULTICLASS)


def typed_parquet(tmp_path: Path) -> Path:
    """Parquet as written by pandas or polars: numbers, nulls and lists, not text."""
    path = tmp_path / "data.parquet"
    table = pa.table(
        {
            "id": IDS[:6],
            "sequence": SEQUENCES[:6],
            "target": pa.array([0.5, -1.0, 2.0, 3.0, 1.5, None], pa.float64()),
            "label": pa.array([1, 0, 0, 1, 1, 0], pa.int64()),
            "terms": [["b", "a"], ["b"], ["a"], ["a", "b"], ["a"], ["b"]],
            "split": ["train"] * 4 + ["validation", "test"],
        }
    )
    pq.write_table(table, path)
    return path


def test_parquet_number_columns_are_labels_or_targets(tmp_path: Path) -> None:
    path = typed_parquet(tmp_path)
    binary = check_dataset(path, Task.BINARY)
    assert binary.ok, binary.errors
    assert binary.labels == ["0", "1"]
    regression = check_dataset(path, Task.REGRESSION)
    assert [r.target for r in regression.splits["train"]] == [(0.5,), (-1.0,), (2.0,), (3.0,)]


def test_a_parquet_list_column_is_a_set_of_labels(tmp_path: Path) -> None:
    data = DataConfig(path=typed_parquet(tmp_path), target_columns=["terms"])
    report = check_dataset(data, Task.MULTILABEL)
    assert report.ok, report.errors
    assert [r.target for r in report.splits["train"]] == [("a", "b"), ("b",), ("a",), ("a", "b")]


def test_a_parquet_null_is_an_empty_value(tmp_path: Path) -> None:
    path = typed_parquet(tmp_path)
    error = only_error_with(check_dataset(path, Task.REGRESSION), "row 6")
    assert error.startswith(f"{path}, row 6, record 'P6': column 'target' is empty;")


# --- where records come from ---------------------------------------------------------------


def test_csv_lines_count_blank_lines_and_quoted_newlines(tmp_path: Path) -> None:
    first, second = protein(10, 0), protein(12, 5)
    path = tmp_path / "data.csv"
    path.write_text(
        "id,sequence,label,split\n"  # line 1
        f"P1,{first},Alpha,train\n"  # line 2
        "\n"  # line 3
        f'P2,"{second[:6]}\n{second[6:]}",Beta,train\n'  # lines 4-5
        f"P3,{protein(11, 9)},Alpha,validation\n"  # line 6
        f"P4,{protein(13, 13)},Beta,validation\n"  # line 7
    )
    report = check_dataset(path)
    assert report.ok, report.errors
    records = [r for split in ("train", "validation") for r in report.splits[split]]
    assert [r.where for r in records] == [
        f"{path}, line 2, record 'P1'",
        f"{path}, line 4, record 'P2'",
        f"{path}, line 6, record 'P3'",
        f"{path}, line 7, record 'P4'",
    ]
    assert records[1].sequence == second  # the line break inside the quotes is not a residue


def test_parquet_records_are_placed_by_row(tmp_path: Path) -> None:
    path = write_one_file(tmp_path / "data.parquet", Task.MULTICLASS)
    report = check_dataset(path)
    assert [r.where for r in report.splits["validation"]] == [
        f"{path}, row 5, record 'P5'",
        f"{path}, row 6, record 'P6'",
    ]


def test_fasta_records_are_placed_by_header_line(tmp_path: Path) -> None:
    path = write_one_file(tmp_path / "data.fasta", Task.MULTICLASS)
    report = check_dataset(path)
    assert [r.where for r in report.splits["test"]] == [
        f"{path}, line 13, record 'P7'",
        f"{path}, line 15, record 'P8'",
    ]


@pytest.mark.parametrize(("suffix", "unit", "first"), [("csv", "line", 2), ("parquet", "row", 1)])
def test_without_an_id_column_records_are_named_by_line_with_a_note(
    tmp_path: Path, suffix: str, unit: str, first: int
) -> None:
    column, targets = TARGETS[Task.MULTICLASS]
    rows = [[s, t, split] for s, t, split in zip(SEQUENCES, targets, SPLITS, strict=True)]
    path = write_records(tmp_path / f"data.{suffix}", ["sequence", column, "split"], rows)
    report = check_dataset(path)
    assert report.ok, report.errors
    ids = [r.id for records in report.splits.values() for r in records]
    assert ids == [f"data:{first + k}" for k in range(8)]
    assert report.splits["train"][0].where == f"{path}, {unit} {first}, record 'data:{first}'"
    [note] = [note for note in report.notes if "'id'" in note]
    assert note == f"{path}: no 'id' column; records are named by line"


# --- errors: each names the file, the line (or row) and the record, and what to do ---------


@pytest.mark.parametrize(
    ("header", "missing", "hint", "key"),
    [
        (["id", "sequence", "lable", "split"], "'label'", "lable", "data.target_columns"),
        (["id", "sequences", "label", "split"], "'sequence'", "sequences", "data.sequence_column"),
        (["id", "sequence", "label", "splits"], "'split'", "splits", "data.split_column"),
    ],
    ids=["target", "sequence", "split"],
)
def test_a_missing_column_lists_the_columns_and_suggests_a_close_name(
    tmp_path: Path, header: list[str], missing: str, hint: str, key: str
) -> None:
    rows = [["P1", protein(10, 0), "Alpha", "train"], ["P2", protein(11, 1), "Beta", "validation"]]
    path = write_records(tmp_path / "data.csv", header, rows)
    report = check_dataset(path)
    [error] = report.errors  # and no "no train rows" on top: the rows could not be read
    assert error.startswith(f"{path}: no ")
    assert f"{missing} (did you mean '{hint}'?)" in error
    assert f"the file has {', '.join(header)}" in error
    assert key in error


def test_a_missing_target_column_in_one_split_file_leaves_other_splits_checked(
    tmp_path: Path,
) -> None:
    folder = tmp_path / "data"
    write_records(folder / "train.csv", ["id", "sequence", "lable"], [["P1", "MKV", "Alpha"]])
    report = check_dataset(folder)
    only_error_with(report, str(folder / "train.csv"), "'label'")
    only_error_with(report, "no validation file", str(folder / "validation.csv"))
    assert len(report.errors) == 2, report.errors


def test_a_non_numeric_regression_target_is_an_error(tmp_path: Path) -> None:
    rows = [("train", "1.5"), ("train", "high"), ("validation", "2")]
    path = labelled_csv(tmp_path / "data.csv", rows, column="target")
    error = only_error_with(check_dataset(path, Task.REGRESSION), "'high'")
    assert error.startswith(f"{path}, line 3, record 'P2': ")
    assert "not a number" in error
    assert "must be numeric" in error


@pytest.mark.parametrize("value", ["", "  ", "nan", "inf"])
def test_an_empty_or_infinite_regression_target_is_an_error(tmp_path: Path, value: str) -> None:
    rows = [("train", "1.5"), ("train", "0.5"), ("validation", value)]
    path = labelled_csv(tmp_path / "data.csv", rows, column="target")
    error = only_error_with(check_dataset(path, Task.REGRESSION), "record 'P3'")
    assert error.startswith(f"{path}, line 4, record 'P3': column 'target' is ")
    shown = "empty" if not value.strip() else repr(value)
    assert f"column 'target' is {shown};" in error
    assert "fill it in or drop the row" in error


@pytest.mark.parametrize("value", ["", ";", " ; "])
def test_a_multilabel_row_without_labels_is_an_error(tmp_path: Path, value: str) -> None:
    rows = [("train", "a;b"), ("train", value), ("validation", "a")]
    path = labelled_csv(tmp_path / "data.csv", rows)
    error = only_error_with(check_dataset(path, Task.MULTILABEL), "record 'P2'")
    assert error.startswith(f"{path}, line 3, record 'P2': no label in column 'label'")
    assert "drop unlabelled records" in error


def test_a_multilabel_indicator_column_holding_other_text_is_an_error(tmp_path: Path) -> None:
    header = ["id", "sequence", "nucleus", "cytoplasm", "split"]
    rows = [
        ["P1", protein(10, 0), "1", "0", "train"],
        ["P2", protein(11, 1), "0", "maybe", "train"],
        ["P3", protein(12, 2), "1", "1", "validation"],
    ]
    path = write_records(tmp_path / "data.csv", header, rows)
    data = DataConfig(path=path, target_columns=["nucleus", "cytoplasm"])
    error = only_error_with(check_dataset(data, Task.MULTILABEL), "'maybe'")
    assert error.startswith(f"{path}, line 3, record 'P2': column 'cytoplasm' holds 'maybe'")
    assert "1/0" in error


@pytest.mark.parametrize(
    ("task", "test_target", "shown"),
    [
        (Task.MULTICLASS, "Gamma", "test: label(s) Gamma never occur in train"),
        (Task.MULTILABEL, "a;z", "test: 1 label(s) never occur in train: z"),
    ],
)
def test_a_label_only_in_test_is_an_error(
    tmp_path: Path, task: Task, test_target: str, shown: str
) -> None:
    rows = [("train", "a"), ("train", "b"), ("validation", "a"), ("test", test_target)]
    path = labelled_csv(tmp_path / "data.csv", rows)
    error = only_error_with(check_dataset(path, task), "never occur in train")
    assert error.startswith(shown)
    assert f"{path}, line 5, record 'P4'" in error
    assert "add training examples of each, or remove them from test" in error


def test_an_unknown_split_value_is_an_error(tmp_path: Path) -> None:
    rows = [("train", "Alpha"), ("train", "Beta"), ("holdout", "Alpha"), ("validation", "Beta")]
    path = labelled_csv(tmp_path / "data.csv", rows)
    error = only_error_with(check_dataset(path), "'holdout'")
    assert error.startswith(f"{path}, line 4, record 'P3': split is 'holdout'")
    assert "use train, validation or test" in error


@pytest.mark.parametrize("fields", ["P2,MKV,Alpha", "P2,MKV,Alpha,train,extra"])
def test_a_row_with_the_wrong_number_of_fields_is_an_error(tmp_path: Path, fields: str) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        "id,sequence,label,split\n"
        f"P1,{protein(10, 0)},Alpha,train\n"
        f"{fields}\n"
        f"P3,{protein(11, 1)},Beta,train\n"
        f"P4,{protein(12, 2)},Beta,validation\n"
    )
    report = check_dataset(path)
    error = only_error_with(report, "field(s)")
    assert error.startswith(f"{path}, line 3: {fields.count(',') + 1} field(s)")
    assert "the header has 4" in error
    assert "quoted" in error
    assert [r.id for r in report.splits["train"]] == ["P1", "P3"]  # the rest is still read


def test_duplicate_column_names_are_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("id,sequence,label,label,split\nP1,MKV,Alpha,Beta,train\n")
    with pytest.raises(DataError) as caught:
        check_dataset(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: ")
    assert "label occur twice in the header" in message
    assert "rename" in message


@pytest.mark.parametrize(
    ("header", "missing", "example"),
    [
        ("P2 split=train", "label=", "'>P2 label=... split=...'"),
        ("P2 label=Beta", "split=", "'>P2 label=... split=...'"),
        ("P2 description only", "label=, split=", "'>P2 label=... split=...'"),
    ],
)
def test_a_fasta_header_without_a_key_is_an_error(
    tmp_path: Path, header: str, missing: str, example: str
) -> None:
    path = tmp_path / "data.fasta"
    path.write_text(
        f">P1 label=Alpha split=train\n{protein(10, 0)}\n"
        f">{header}\n{protein(11, 1)}\n"
        f">P3 label=Beta split=validation\n{protein(12, 2)}\n"
    )
    error = only_error_with(check_dataset(path), "header has no")
    assert error.startswith(f"{path}, line 3, record 'P2': header has no {missing};")
    assert f"write {example}" in error


def test_a_per_split_fasta_header_needs_only_the_target_key(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    folder.mkdir()
    (folder / "train.fasta").write_text(f">P1 label=Alpha\n{protein(10, 0)}\n>P2\nMKV\n")
    (folder / "validation.fasta").write_text(f">P3 label=Alpha\n{protein(12, 2)}\n")
    error = only_error_with(check_dataset(folder), "header has no")
    assert error.startswith(f"{folder / 'train.fasta'}, line 3, record 'P2': header has no label=;")
    assert "'>P2 label=...'" in error


@pytest.mark.parametrize("task", [Task.MULTILABEL, Task.REGRESSION])
def test_per_label_fasta_folders_are_refused_for_multilabel_and_regression(
    tmp_path: Path, task: Task
) -> None:
    for split in ("train", "validation"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "Alpha.fasta").write_text(f">{split}1\n{protein(10, 0)}\n")
    with pytest.raises(DataError) as caught:
        check_dataset(tmp_path, task)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}: one FASTA file per class")
    assert f"not {task.value}" in message
    assert "give a table" in message


def test_an_ontology_that_does_not_parse_is_an_error_naming_it(tmp_path: Path) -> None:
    obo = tmp_path / "broken.obo"
    obo.write_text("format-version: 1.2\n\n[Term]\nid: GO:0000002\nname: a\nis_a GO:0005575\n")
    path = labelled_csv(tmp_path / "data.csv", [("train", "a;b"), ("validation", "a")])
    report = check_dataset(DataConfig(path=path, ontology=obo), Task.MULTILABEL)
    error = only_error_with(report, "broken.obo")
    assert error.startswith(f"{obo}, line 6: cannot parse")


@pytest.mark.parametrize(
    ("first", "second", "split"),
    [("train.csv", "train.tsv", "train"), ("val.csv", "validation.parquet", "validation")],
)
def test_two_files_for_one_split_are_a_data_error(
    tmp_path: Path, first: str, second: str, split: str
) -> None:
    for name in (first, second, "test.csv"):
        write_records(tmp_path / name, ["id", "sequence", "label"], [["P1", "MKV", "Alpha"]])
    with pytest.raises(DataError) as caught:
        check_dataset(tmp_path)
    message = str(caught.value)
    assert message.startswith(f"{tmp_path}: ")
    assert f"are both the {split} split; keep one" in message
    assert first in message
    assert second in message


def test_several_problems_are_collected_and_raised_once(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        "id,sequence,target,split\n"
        f"P1,{protein(10, 0)},1.5,train\n"
        f"P2,{protein(11, 1)},high,train\n"  # not a number
        f"P3,{protein(12, 2)},,train\n"  # empty
        f"P4,{protein(13, 3)},2.5,holdout\n"  # unknown split
        f"P5,{protein(14, 4)},2.5\n"  # a field short
        f"P6,{protein(15, 5)},0.5,validation\n"
        f"P7,{protein(16, 6)}J,0.5,validation\n"  # invalid residue
    )
    report = check_dataset(path, Task.REGRESSION)
    assert len(report.errors) == 5, report.errors
    for line, part in [(3, "'P2'"), (4, "'P3'"), (5, "'P4'"), (6, "field(s)"), (8, "'P7'")]:
        only_error_with(report, f"line {line}", part)
    with pytest.raises(DataError) as caught:
        report.raise_if_errors()
    message = str(caught.value)
    assert message.startswith(f"{path}: 5 problem(s) in the data:")
    assert message.count("\n  - ") == 5


def test_a_flood_of_bad_rows_is_listed_briefly(tmp_path: Path) -> None:
    rows = [("train", "1"), ("validation", "2")] + [("train", "n/a")] * 30
    path = labelled_csv(tmp_path / "data.csv", rows, column="target")
    report = check_dataset(path, Task.REGRESSION)
    assert sum("'n/a'" in error for error in report.errors) == 10
    only_error_with(report, "and 20 more")


# --- binary: which class is positive --------------------------------------------------------


@pytest.mark.parametrize(
    ("train", "configured", "labels"),
    [
        (["Nucleus", "Cytoplasm", "Cytoplasm"], "nucleus", ["Cytoplasm", "Nucleus"]),
        (["Nucleus", "Cytoplasm", "Cytoplasm"], "CYTOPLASM", ["Nucleus", "Cytoplasm"]),
        (["yes", "no", "yes", "yes"], None, ["no", "yes"]),
        (["0", "1", "1", "1"], None, ["0", "1"]),
        (["False", "True", "True"], None, ["False", "True"]),
        (["Nucleus", "Cytoplasm", "Cytoplasm"], None, ["Cytoplasm", "Nucleus"]),
        (["Nucleus", "Nucleus", "Cytoplasm"], None, ["Nucleus", "Cytoplasm"]),
    ],
    ids=[
        "configured",
        "configured-upper-case",
        "yes-no",
        "one-zero",
        "true-false",
        "rarer-is-second",
        "rarer-is-first",
    ],
)
def test_binary_positive_label_is_configured_conventional_or_rarer(
    tmp_path: Path, train: list[str], configured: str | None, labels: list[str]
) -> None:
    rows = [("train", label) for label in train] + [("validation", train[0])]
    path = labelled_csv(tmp_path / "data.csv", rows)
    report = check_dataset(DataConfig(path=path, positive_label=configured), Task.BINARY)
    assert report.ok, report.errors
    assert report.labels == labels
    assert f"binary: positive class is '{labels[1]}'" in report.notes[0]


def test_binary_positive_label_written_as_yaml_yes_matches_yes(tmp_path: Path) -> None:
    rows = [("train", "yes"), ("train", "no"), ("train", "no"), ("validation", "no")]
    path = labelled_csv(tmp_path / "data.csv", rows)
    data = DataConfig.model_validate({"path": path, **yaml.safe_load("positive_label: yes")})
    report = check_dataset(data, Task.BINARY)
    assert report.ok, report.errors
    assert report.labels == ["no", "yes"]


def test_binary_positive_label_that_is_no_label_is_an_error(tmp_path: Path) -> None:
    rows = [("train", "Nucleus"), ("train", "Cytoplasm"), ("validation", "Nucleus")]
    path = labelled_csv(tmp_path / "data.csv", rows)
    report = check_dataset(DataConfig(path=path, positive_label="Membrane"), Task.BINARY)
    error = only_error_with(report, "data.positive_label 'Membrane'")
    assert "is not a label of train (Cytoplasm, Nucleus)" in error


def test_binary_with_three_labels_suggests_multiclass(tmp_path: Path) -> None:
    rows = [("train", "a"), ("train", "b"), ("train", "c"), ("validation", "a")]
    path = labelled_csv(tmp_path / "data.csv", rows)
    error = only_error_with(check_dataset(path, Task.BINARY), "task=binary")
    assert "exactly two labels; train has 3 (a, b, c)" in error
    assert "use task=multiclass" in error


# --- multilabel: rare labels, ontology, one column per label --------------------------------


def test_min_label_count_drops_rare_labels_and_records_left_without_labels(
    tmp_path: Path,
) -> None:
    rows = [
        ("train", "a;b"),
        ("train", "a;c"),  # c occurs once in train: dropped, the record keeps a
        ("train", "b"),
        ("train", "d"),  # d occurs once in train: the record is left without labels
        ("validation", "a"),
        ("test", "c"),  # left without labels
        ("test", "b;c"),
    ]
    path = labelled_csv(tmp_path / "data.csv", rows)
    report = check_dataset(DataConfig(path=path, min_label_count=3), Task.MULTILABEL)
    error = only_error_with(report, "multilabel needs at least two labels")
    assert "with 3+ training sequences; found 0 (lower data.min_label_count" in error
    report = check_dataset(DataConfig(path=path, min_label_count=2), Task.MULTILABEL)
    assert report.ok, report.errors
    assert report.labels == ["a", "b"]
    assert records_of(report) == {
        "train": [
            ("P1", protein(10, 0), ("a", "b")),
            ("P2", protein(11, 1), ("a",)),
            ("P3", protein(12, 2), ("b",)),
        ],
        "validation": [("P5", protein(14, 4), ("a",))],
        "test": [("P7", protein(16, 6), ("b",))],
    }
    assert any("2 label(s) with fewer than 2 training sequences dropped" in n for n in report.notes)
    assert any(n.startswith("train: 1 record(s) had only dropped labels") for n in report.notes)
    assert any(n.startswith("test: 1 record(s) had only dropped labels") for n in report.notes)


ROOT, ENTITY, ORGANELLE, NUCLEUS, CYTOPLASM = (
    "GO:0005575",
    "GO:0110165",
    "GO:0043226",
    "GO:0005634",
    "GO:0005737",
)
OBO = f"""\
format-version: 1.2
ontology: go

[Term]
id: {ROOT}
name: cellular_component

[Term]
id: {ENTITY}
name: cellular anatomical entity
is_a: {ROOT} ! cellular_component

[Term]
id: {ORGANELLE}
name: organelle
is_a: {ENTITY} ! cellular anatomical entity

[Term]
id: {NUCLEUS}
name: nucleus
is_a: {ORGANELLE} ! organelle

[Term]
id: {CYTOPLASM}
name: cytoplasm
relationship: part_of {ENTITY} ! cellular anatomical entity

[Typedef]
id: part_of
name: part of
is_transitive: true
"""


def test_an_ontology_propagates_annotations_and_names_the_labels(tmp_path: Path) -> None:
    obo = tmp_path / "go.obo"
    obo.write_text(OBO)
    rows = [
        ("train", NUCLEUS),
        ("train", CYTOPLASM),
        ("train", f"{NUCLEUS};{CYTOPLASM}"),
        ("validation", ORGANELLE),
    ]
    path = labelled_csv(tmp_path / "data.csv", rows)
    report = check_dataset(DataConfig(path=path, ontology=obo), Task.MULTILABEL)
    assert report.ok, report.errors
    assert [r.target for r in report.splits["train"]] == [
        tuple(sorted({NUCLEUS, ORGANELLE, ENTITY, ROOT})),  # is_a, transitively
        tuple(sorted({CYTOPLASM, ENTITY, ROOT})),  # part_of
        tuple(sorted({NUCLEUS, ORGANELLE, CYTOPLASM, ENTITY, ROOT})),
    ]
    assert report.splits["validation"][0].target == tuple(sorted({ORGANELLE, ENTITY, ROOT}))
    assert report.labels == sorted({ROOT, ENTITY, ORGANELLE, NUCLEUS, CYTOPLASM})
    assert report.label_names[NUCLEUS] == "nucleus"
    assert report.label_names[ENTITY] == "cellular anatomical entity"
    assert report.ancestors[NUCLEUS] == sorted([ORGANELLE, ENTITY, ROOT])
    assert report.ancestors[CYTOPLASM] == sorted([ENTITY, ROOT])
    assert report.ancestors[ROOT] == []
    assert any("propagated to their ancestors" in note for note in report.notes)
    assert f"{NUCLEUS} nucleus" in report.table()


def test_ancestors_stay_within_the_label_set(tmp_path: Path) -> None:
    obo = tmp_path / "go.obo"
    obo.write_text(OBO)
    # Every train record carries the root; min_label_count=3 keeps only the root and entity.
    rows = [("train", NUCLEUS), ("train", CYTOPLASM), ("train", ENTITY), ("validation", NUCLEUS)]
    path = labelled_csv(tmp_path / "data.csv", rows)
    data = DataConfig(path=path, ontology=obo, min_label_count=3)
    report = check_dataset(data, Task.MULTILABEL)
    assert report.ok, report.errors
    assert report.labels == [ROOT, ENTITY]
    assert report.ancestors == {ROOT: [], ENTITY: [ROOT]}
    assert set(report.label_names) == {ROOT, ENTITY}


def test_multilabel_from_one_indicator_column_per_label(tmp_path: Path) -> None:
    header = ["id", "sequence", "nucleus", "cytoplasm", "membrane", "split"]
    rows = [
        ["P1", protein(10, 0), "1", "0", "0", "train"],
        ["P2", protein(11, 1), "0", "true", "yes", "train"],
        ["P3", protein(12, 2), "1", "1", "0", "train"],
        ["P4", protein(13, 3), "1.0", "0.0", "False", "validation"],
    ]
    path = write_records(tmp_path / "data.csv", header, rows)
    data = DataConfig(path=path, target_columns=["nucleus", "cytoplasm", "membrane"])
    report = check_dataset(data, Task.MULTILABEL)
    assert report.ok, report.errors
    assert [r.target for r in report.splits["train"]] == [
        ("nucleus",),
        ("cytoplasm", "membrane"),
        ("cytoplasm", "nucleus"),
    ]
    assert report.splits["validation"][0].target == ("nucleus",)
    assert report.labels == ["cytoplasm", "membrane", "nucleus"]


def test_a_multilabel_row_with_every_indicator_zero_is_an_error(tmp_path: Path) -> None:
    header = ["id", "sequence", "nucleus", "cytoplasm", "split"]
    rows = [
        ["P1", protein(10, 0), "1", "1", "train"],
        ["P2", protein(11, 1), "0", "0", "train"],
        ["P3", protein(12, 2), "1", "0", "validation"],
    ]
    path = write_records(tmp_path / "data.csv", header, rows)
    data = DataConfig(path=path, target_columns=["nucleus", "cytoplasm"])
    error = only_error_with(check_dataset(data, Task.MULTILABEL), "record 'P2'")
    assert "no label in any label column" in error


def test_a_custom_label_separator(tmp_path: Path) -> None:
    rows = [("train", "a|b"), ("train", "b"), ("validation", "a|b")]
    path = labelled_csv(tmp_path / "data.csv", rows)
    report = check_dataset(DataConfig(path=path, label_separator="|"), Task.MULTILABEL)
    assert report.ok, report.errors
    assert [r.target for r in report.splits["train"]] == [("a", "b"), ("b",)]


# --- regression: several targets and their statistics ---------------------------------------


def regression_with_two_targets(tmp_path: Path) -> DataReport:
    header = ["id", "sequence", "stability", "solubility", "split"]
    rows = [
        ["P1", protein(10, 0), "1", "10", "train"],
        ["P2", protein(20, 1), "2", "20", "train"],
        ["P3", protein(30, 2), "3", "60", "train"],
        ["P4", protein(12, 3), "4", "-1", "validation"],
        ["P5", protein(14, 4), "6", "-3", "validation"],
    ]
    path = write_records(tmp_path / "data.csv", header, rows)
    data = DataConfig(path=path, target_columns=["stability", "solubility"])
    return check_dataset(data, Task.REGRESSION)


def test_regression_reads_one_number_per_target_column(tmp_path: Path) -> None:
    report = regression_with_two_targets(tmp_path)
    assert report.ok, report.errors
    assert report.labels == ["stability", "solubility"]
    assert [r.target for r in report.splits["train"]] == [(1.0, 10.0), (2.0, 20.0), (3.0, 60.0)]


def test_regression_table_shows_statistics_per_target_and_split(tmp_path: Path) -> None:
    lines = regression_with_two_targets(tmp_path).table().splitlines()
    assert re.split(r"\s+", lines[0].strip()) == [
        "target",
        "split",
        "n",
        "mean",
        "std",
        "min",
        "max",
    ]
    rows = [line.split() for line in lines[1:] if not line.startswith("-")]
    # std is the population standard deviation, as in summary() and target standardisation.
    assert rows == [
        ["stability", "train", "3", "2", "0.8165", "1", "3"],
        ["stability", "validation", "2", "5", "1", "4", "6"],
        ["solubility", "train", "3", "30", "21.6", "10", "60"],
        ["solubility", "validation", "2", "-2", "1", "-3", "-1"],
        ["length", "all", "5", "14", "10", "30"],
    ]


def test_regression_summary_gives_count_mean_and_std_per_target(tmp_path: Path) -> None:
    summary = regression_with_two_targets(tmp_path).summary()
    assert summary == {
        "train": {
            "n": 3,
            "stability": {"mean": 2.0, "std": pytest.approx(math.sqrt(2 / 3))},
            "solubility": {"mean": 30.0, "std": pytest.approx(math.sqrt(1400 / 3))},
        },
        "validation": {
            "n": 2,
            "stability": {"mean": 5.0, "std": 1.0},
            "solubility": {"mean": -2.0, "std": 1.0},
        },
    }
    json.dumps(summary)  # goes into the run manifest as it is


# --- conflicts: one sequence, two targets ----------------------------------------------------


def shared_sequence_csv(tmp_path: Path, column: str, first: str, second: str) -> Path:
    shared = protein(25, 11)
    header = ["id", "sequence", column, "split"]
    rows = [
        ["P1", protein(10, 0), first, "train"],
        ["P2", shared, first, "train"],
        ["P3", protein(12, 2), second, "train"],
        ["P4", shared, second, "test"],
        ["P5", protein(14, 4), second, "validation"],
    ]
    return write_records(tmp_path / "data.csv", header, rows)


CONFLICTS = [
    (Task.MULTILABEL, "label", "a;b", "b", "labelled a;b and b"),
    (Task.REGRESSION, "target", "1.5", "2", "labelled 1.5 and 2"),
]


@pytest.mark.parametrize(("task", "column", "first", "second", "shown"), CONFLICTS)
def test_one_sequence_with_two_targets_is_an_error(
    tmp_path: Path, task: Task, column: str, first: str, second: str, shown: str
) -> None:
    path = shared_sequence_csv(tmp_path, column, first, second)
    report = check_dataset(path, task)
    error = only_error_with(report, "the same sequence")
    assert error.startswith(f"{path}, line 3, record 'P2': ")
    assert shown in error
    summary = only_error_with(report, "1 sequence(s) occur with two or more different targets")
    assert "data.drop_conflicts=true" in summary


@pytest.mark.parametrize(("task", "column", "first", "second", "shown"), CONFLICTS)
def test_drop_conflicts_drops_every_copy(
    tmp_path: Path, task: Task, column: str, first: str, second: str, shown: str
) -> None:
    path = shared_sequence_csv(tmp_path, column, first, second)
    report = check_dataset(DataConfig(path=path, drop_conflicts=True), task)
    assert report.ok, report.errors
    assert [r.id for r in report.splits["train"]] == ["P1", "P3"]
    assert "test" not in report.splits  # its one record was the conflict
    assert "test: every record was dropped (see the notes)" in report.warnings[0]
    assert any("dropped 2 record(s) of 1 sequence(s)" in note for note in report.notes)


# --- esmtune data check on tables -------------------------------------------------------------


def test_cli_passes_a_good_regression_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write_one_file(tmp_path / "data.csv", Task.REGRESSION)
    assert main(["data", "check", str(path), "--task", "regression"]) == 0
    out, err = capsys.readouterr()
    assert f"regression data, one file with a 'split' column: {path}" in out
    assert check_dataset(path, Task.REGRESSION).table() in out
    assert f"OK: {path} can be trained on (1 target(s))" in out
    assert err == ""


def test_cli_fails_a_csv_with_a_bad_value_naming_file_and_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [("train", "1.5"), ("train", "0.5"), ("validation", "lots"), ("test", "2")]
    path = labelled_csv(tmp_path / "data.csv", rows, column="score")
    argv = ["data", "check", str(path), "--task", "regression", "--target-column", "score"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ")
    assert f"{path}, line 4, record 'P3': column 'score' holds 'lots'" in err
    assert "Traceback" not in err
    assert "OK:" not in out


def test_cli_reads_task_and_data_settings_from_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    header = ["accession", "seq", "nucleus", "cytoplasm", "fold"]
    rows = [
        ["P1", protein(10, 0), "1", "0", "train"],
        ["P2", protein(11, 1), "0", "1", "train"],
        ["P3", protein(12, 2), "1", "1", "train"],
        ["P4", protein(13, 3), "1", "0", "dev"],
    ]
    path = write_records(tmp_path / "data.tsv", header, rows)
    config = tmp_path / "train.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "task": "multilabel",
                "data": {
                    "path": str(path),
                    "id_column": "accession",
                    "sequence_column": "seq",
                    "target_columns": ["nucleus", "cytoplasm"],
                    "split_column": "fold",
                },
            }
        )
    )
    assert main(["data", "check", "--config", str(config)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("multilabel data, one file with a 'fold' column")
    assert f"OK: {path} can be trained on (2 labels)" in out
    assert err == ""
    # A key=value override on top of the config reaches the check: no label has 3 sequences.
    # (PATH is given too: argparse would otherwise take the override for PATH.)
    argv = ["data", "check", str(path), "--config", str(config), "data.min_label_count=3"]
    assert main(argv) == 2
    assert "found 0" in capsys.readouterr().err


def test_cli_binary_positive_label_from_an_override(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rows = [("train", "Nucleus"), ("train", "Cytoplasm"), ("validation", "Nucleus")]
    path = labelled_csv(tmp_path / "data.csv", rows)
    argv = ["data", "check", str(path), "--task", "binary", "data.positive_label=cytoplasm"]
    assert main(argv) == 0
    assert "note: binary: positive class is 'Cytoplasm'" in capsys.readouterr().out


def test_an_empty_id_is_an_error_and_an_all_zero_label_column_is_noted(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text(
        "id,sequence,a,b,never,split\n"
        "p1,MKVL,1,0,0,train\n"
        ",MKVA,0,1,0,train\n"
        "p3,MKVG,1,1,0,train\n"
        "p4,MKVW,1,0,0,validation\n"
    )
    data = DataConfig(path=path, target_columns=["a", "b", "never"])
    report = check_dataset(data, Task.MULTILABEL)
    error = only_error_with(report, "empty id")
    assert f"{path}, line 3" in error
    assert any("column(s) never are never 1 in train" in note for note in report.notes)
    assert report.labels == ["a", "b"]
