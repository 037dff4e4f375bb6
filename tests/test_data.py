"""FASTA reading, the dataset check and `esmtune data check`, on small hand-written folders."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import pytest

from esmtune.cli import main
from esmtune.config import DataConfig
from esmtune.data.check import DataReport, check_dataset
from esmtune.data.fasta import label_from_path, parse_fasta, read_fasta
from esmtune.data.layout import find_label_files, read_split
from esmtune.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
_ALPHABET = "ACDEFGHIKLMNPQRSTVWY"


def protein(length: int, start: int) -> str:
    """A valid sequence; different ``start`` (mod 20) gives a different sequence."""
    return "".join(_ALPHABET[(start + i) % len(_ALPHABET)] for i in range(length))


def fasta(*records: tuple[str, str]) -> str:
    """FASTA text, one line per sequence (so record k's header is on line 2k - 1)."""
    return "".join(f">{name}\n{sequence}\n" for name, sequence in records)


def write_files(root: Path, files: dict[str, str]) -> Path:
    """Write ``{"train/Alpha.fasta": text, ...}`` under root; return root."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


# Per label: lengths in train, validation, test. Alpha: [10, 20, 30, 12, 14] -> 10 / 14 / 30;
# Beta: [8, 9, 12, 16] -> 8 / 10.5 / 16 (an even count, so the median is a mean of two).
GOOD = {
    "train/Alpha.fasta": fasta(
        ("a1", protein(10, 0)), ("a2", protein(20, 1)), ("a3", protein(30, 2))
    ),
    "train/Beta.fasta": fasta(("b1", protein(8, 3)), ("b2", protein(9, 4))),
    "validation/Alpha.fasta": fasta(("va1", protein(12, 5))),
    "validation/Beta.fasta": fasta(("vb1", protein(12, 6))),
    "test/Alpha.fasta": fasta(("ta1", protein(14, 7))),
    "test/Beta.fasta": fasta(("tb1", protein(16, 8))),
}
GOOD_TABLE_ROWS = {
    "Alpha": ["Alpha", "3", "1", "1", "10", "14", "30"],
    "Beta": ["Beta", "2", "1", "1", "8", "10.5", "16"],
    "TOTAL": ["TOTAL", "5", "2", "2", "8", "12", "30"],
}


def good_dataset(root: Path, changes: dict[str, str | None] | None = None) -> Path:
    """The GOOD folder under ``root/data`` with files replaced (text) or left out (None)."""
    files = dict(GOOD)
    for relative, text in (changes or {}).items():
        if text is None:
            files.pop(relative, None)
        else:
            files[relative] = text
    return write_files(root / "data", files)


def only_error_with(report: DataReport, *parts: str) -> str:
    """The one error that contains every part; fails with the full list otherwise."""
    found = [error for error in report.errors if all(part in error for part in parts)]
    assert len(found) == 1, f"expected one error with {parts}, got:\n" + "\n".join(report.errors)
    return found[0]


# --- FASTA reading -----------------------------------------------------------------------


def test_wrapped_lines_are_joined_and_the_id_is_the_first_word() -> None:
    text = ">P1 some description\nMKV\nLLA\nGG\n>P2\nWW\n"
    records = list(parse_fasta(text.splitlines(), "x.fasta", label="L"))
    assert [(r.id, r.sequence, r.target, r.source) for r in records] == [
        ("P1", "MKVLLAGG", "L", "x.fasta"),
        ("P2", "WW", "L", "x.fasta"),
    ]


def test_lowercase_is_upper_cased_and_a_trailing_stop_removed() -> None:
    records = list(parse_fasta([">a", "mkv", "lla*", ">b", "mk", "*", ">c", "MK*V"]))
    assert [r.sequence for r in records] == ["MKVLLA", "MK", "MK*V"]


def test_blank_lines_are_ignored_and_header_lines_recorded() -> None:
    text = "\n>a\nMK\n\nVL\n\n>b\n\n  GG  \n"
    records = list(parse_fasta(text.splitlines()))
    assert [(r.id, r.sequence, r.line) for r in records] == [("a", "MKVL", 2), ("b", "GG", 7)]


@pytest.mark.parametrize(
    ("name", "label"),
    [("Nucleus.fasta", "Nucleus"), ("Cell_wall.fa", "Cell_wall"), ("Plastid.faa", "Plastid")],
)
def test_plain_suffixes_are_read_and_labelled_by_file_name(
    tmp_path: Path, name: str, label: str
) -> None:
    path = tmp_path / name
    path.write_text(">x\nmk\nv*\n")
    assert label_from_path(path) == label
    [record] = read_fasta(path, label=label_from_path(path))
    assert (record.id, record.sequence, record.target) == ("x", "MKV", label)


def test_gzipped_fasta_is_read_and_labelled_without_both_extensions(tmp_path: Path) -> None:
    path = tmp_path / "Secreted.fasta.gz"
    with gzip.open(path, "wt") as handle:
        handle.write(">s1\nMKV\nLL\n>s2\nGG\n")
    assert label_from_path(path) == "Secreted"
    records = read_fasta(path, label="Secreted")
    assert [(r.id, r.sequence, r.target) for r in records] == [
        ("s1", "MKVLL", "Secreted"),
        ("s2", "GG", "Secreted"),
    ]


def test_a_split_folder_reads_every_fasta_kind_and_ignores_other_files(tmp_path: Path) -> None:
    split = tmp_path / "train"
    write_files(split, {"Beta.fa": ">b\nMK\n", "Gamma.faa": ">c\nVL\n", "notes.txt": "not FASTA"})
    with gzip.open(split / "Alpha.fasta.gz", "wt") as handle:
        handle.write(">a\nGG\n")
    assert sorted(find_label_files(split)) == ["Alpha", "Beta", "Gamma"]
    files, records = read_split(tmp_path, "train")
    assert sorted(files) == ["Alpha", "Beta", "Gamma"]
    assert sorted((r.target, r.id, r.sequence) for r in records) == [
        ("Alpha", "a", "GG"),
        ("Beta", "b", "MK"),
        ("Gamma", "c", "VL"),
    ]


def test_two_files_for_one_label_are_rejected(tmp_path: Path) -> None:
    write_files(tmp_path, {"Alpha.fasta": ">a\nMK\n", "Alpha.fa": ">b\nVL\n"})
    with pytest.raises(DataError, match="both give label 'Alpha'"):
        find_label_files(tmp_path)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("\nMKVLL\n>a\nMK\n", "line 2", "before the first '>'"),
        (">a\nMK\n>  \nVL\n", "line 3", "no sequence id"),
    ],
    ids=["text-before-first-header", "header-without-id"],
)
def test_unreadable_fasta_names_file_and_line(
    tmp_path: Path, text: str, line: str, problem: str
) -> None:
    path = tmp_path / "Alpha.fasta"
    path.write_text(text)
    with pytest.raises(DataError) as caught:
        read_fasta(path)
    message = str(caught.value)
    assert str(path) in message
    assert line in message
    assert problem in message


def test_a_missing_or_corrupt_file_is_a_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        read_fasta(tmp_path / "absent.fasta")
    fake = tmp_path / "Alpha.fasta.gz"
    fake.write_text(">a\nMK\n")  # named .gz but not gzipped
    with pytest.raises(DataError, match="cannot be read"):
        read_fasta(fake)


def test_a_byte_order_mark_is_ignored(tmp_path: Path) -> None:
    path = tmp_path / "Alpha.fasta"
    path.write_text(">a\nMK\n", encoding="utf-8-sig")
    assert [r.sequence for r in read_fasta(path)] == ["MK"]


# --- check_dataset on a good folder ------------------------------------------------------


def test_a_good_folder_has_no_errors_and_sorted_labels(tmp_path: Path) -> None:
    data = good_dataset(tmp_path)
    report = check_dataset(data)
    assert report.ok
    assert report.errors == []
    assert report.warnings == []
    assert report.notes == []
    assert report.labels == ["Alpha", "Beta"]
    assert {split: len(records) for split, records in report.splits.items()} == {
        "train": 5,
        "validation": 2,
        "test": 2,
    }
    report.raise_if_errors()  # does not raise


def test_labels_are_sorted_whatever_the_file_order(tmp_path: Path) -> None:
    names = ["zeta", "Mito", "Alpha", "beta"]
    files = {f"train/{name}.fasta": fasta((name, protein(10, i))) for i, name in enumerate(names)}
    files |= {
        f"validation/{name}.fasta": fasta((f"v{name}", protein(11, i)))
        for i, name in enumerate(names)
    }
    report = check_dataset(write_files(tmp_path, files))
    assert report.ok, report.errors
    assert report.labels == sorted(names)


def test_table_lists_counts_per_split_and_length_statistics(tmp_path: Path) -> None:
    table = check_dataset(good_dataset(tmp_path)).table()
    lines = table.splitlines()
    columns = re.split(r"\s{2,}", lines[0].strip())
    assert columns == ["label", "train", "validation", "test", "len min", "len median", "len max"]
    rows = {line.split()[0]: line.split() for line in lines[1:] if not line.startswith("-")}
    assert rows == GOOD_TABLE_ROWS


def test_table_leaves_out_an_absent_test_split(tmp_path: Path) -> None:
    data = good_dataset(tmp_path, {"test/Alpha.fasta": None, "test/Beta.fasta": None})
    report = check_dataset(data)
    assert report.ok, report.errors
    assert any("test: absent" in warning for warning in report.warnings)
    header = report.table().splitlines()[0].split()
    assert header[:3] == ["label", "train", "validation"]
    assert "test" not in header


# --- check_dataset on bad folders: every error names where and what to do ----------------


@pytest.mark.parametrize(
    ("char", "shown"), [("J", "'J'"), ("-", "'-'"), ("7", "'7'"), ("j", "'J'")]
)
def test_an_invalid_residue_is_named_with_file_line_id_and_position(
    tmp_path: Path, char: str, shown: str
) -> None:
    bad = fasta(("a1", protein(10, 0)), ("weird", f"MKV{char}LLAG"))
    data = good_dataset(tmp_path, {"train/Alpha.fasta": bad})
    report = check_dataset(data)
    error = only_error_with(report, "invalid residue")
    path = data / "train" / "Alpha.fasta"
    for part in (str(path), "line 3", "'weird'", shown, "position 4", "replace it", "remove"):
        assert part in error


def test_an_empty_sequence_is_named_with_file_line_and_id(tmp_path: Path) -> None:
    bad = ">a1\n" + protein(10, 0) + "\n>hollow description\n>a3\n" + protein(12, 1) + "\n"
    data = good_dataset(tmp_path, {"train/Alpha.fasta": bad})
    error = only_error_with(check_dataset(data), "empty sequence")
    for part in (str(data / "train" / "Alpha.fasta"), "line 3", "'hollow'", "remove the record"):
        assert part in error


def test_an_empty_file_is_named(tmp_path: Path) -> None:
    data = good_dataset(tmp_path, {"validation/Beta.fasta": ""})
    report = check_dataset(data)
    error = only_error_with(report, "no sequences")
    assert str(data / "validation" / "Beta.fasta") in error
    assert "remove it or add records" in error


def test_duplicate_ids_within_a_split_are_errors(tmp_path: Path) -> None:
    alpha = fasta(("a1", protein(10, 0)), ("twin", protein(20, 1)))
    beta = fasta(("b1", protein(8, 3)), ("twin", protein(9, 4)))
    data = good_dataset(tmp_path, {"train/Alpha.fasta": alpha, "train/Beta.fasta": beta})
    report = check_dataset(data)
    error = only_error_with(report, "duplicate id 'twin'")
    assert f"at {data / 'train' / 'Beta.fasta'}, line 3" in error
    assert f"first at {data / 'train' / 'Alpha.fasta'}, line 3" in error
    summary = only_error_with(report, "1 duplicate id(s)")
    assert "data.drop_duplicates=true" in summary


def test_the_same_id_in_different_splits_is_not_a_duplicate(tmp_path: Path) -> None:
    data = good_dataset(tmp_path, {"validation/Alpha.fasta": fasta(("a1", protein(12, 5)))})
    assert check_dataset(data).ok


def test_drop_duplicates_keeps_the_first_and_says_so(tmp_path: Path) -> None:
    alpha = fasta(("a1", protein(10, 0)), ("twin", protein(20, 1)))
    beta = fasta(("b1", protein(8, 3)), ("twin", protein(9, 4)))
    data = good_dataset(tmp_path, {"train/Alpha.fasta": alpha, "train/Beta.fasta": beta})
    report = check_dataset(DataConfig(path=data, drop_duplicates=True))
    assert report.ok, report.errors
    twins = [r for r in report.splits["train"] if r.id == "twin"]
    assert [(r.target, r.sequence) for r in twins] == [("Alpha", protein(20, 1))]
    assert len(report.splits["train"]) == 3
    assert any("train: dropped 1 record(s)" in note for note in report.notes)


@pytest.mark.parametrize("split", ["validation", "test"])
def test_a_label_without_training_file_is_an_error(tmp_path: Path, split: str) -> None:
    data = good_dataset(tmp_path, {f"{split}/Gamma.fasta": fasta(("g1", protein(11, 9)))})
    error = only_error_with(check_dataset(data), "Gamma")
    assert str(data / split / "Gamma.fasta") in error
    assert "never occur in train" in error
    assert f"remove them from {split}" in error


def test_one_sequence_under_two_labels_is_an_error(tmp_path: Path) -> None:
    shared = protein(25, 11)
    alpha = fasta(("a1", protein(10, 0)), ("a2", protein(20, 1)), ("a-shared", shared))
    beta = fasta(("b1", protein(8, 3)), ("b-shared", shared))
    data = good_dataset(tmp_path, {"train/Alpha.fasta": alpha, "train/Beta.fasta": beta})
    report = check_dataset(data)
    error = only_error_with(report, "labelled Alpha and Beta")
    assert f"{data / 'train' / 'Alpha.fasta'}, line 5, record 'a-shared'" in error
    summary = only_error_with(report, "1 sequence(s) occur with two or more different targets")
    assert "data.drop_conflicts=true" in summary


def test_drop_conflicts_drops_every_copy_and_counts_them(tmp_path: Path) -> None:
    shared = protein(25, 11)
    alpha = fasta(("a1", protein(10, 0)), ("a2", protein(20, 1)), ("a-shared", shared))
    beta = fasta(("b1", protein(8, 3)), ("b-shared", shared))
    test_beta = fasta(("tb1", protein(16, 8)), ("tb-shared", shared))
    data = good_dataset(
        tmp_path,
        {"train/Alpha.fasta": alpha, "train/Beta.fasta": beta, "test/Beta.fasta": test_beta},
    )
    report = check_dataset(DataConfig(path=data, drop_conflicts=True))
    assert report.ok, report.errors
    kept = {r.id for records in report.splits.values() for r in records}
    assert kept.isdisjoint({"a-shared", "b-shared", "tb-shared"})
    assert any("dropped 3 record(s) of 1 sequence(s)" in note for note in report.notes)


def test_empty_sequences_are_not_reported_as_label_conflicts(tmp_path: Path) -> None:
    alpha = fasta(("a1", protein(10, 0))) + ">a-empty\n"
    beta = fasta(("b1", protein(8, 3))) + ">b-empty\n"
    data = good_dataset(tmp_path, {"train/Alpha.fasta": alpha, "train/Beta.fasta": beta})
    report = check_dataset(data)
    assert not any("labelled" in error for error in report.errors), report.errors


def test_a_train_sequence_in_test_is_a_counted_warning(tmp_path: Path) -> None:
    leaked = fasta(("ta1", protein(14, 7)), ("copy-of-a2", protein(20, 1)))
    data = good_dataset(tmp_path, {"test/Alpha.fasta": leaked})
    report = check_dataset(data)
    assert report.ok, report.errors
    [warning] = [w for w in report.warnings if "leakage" in w]
    assert "1 sequence(s) of train" in warning
    assert "1 in test" in warning
    assert f"{data / 'test' / 'Alpha.fasta'}, line 3, record 'copy-of-a2'" in warning
    assert "data.fail_on_leakage=true" in warning


def test_fail_on_leakage_makes_it_an_error(tmp_path: Path) -> None:
    leaked = fasta(("ta1", protein(14, 7)), ("copy-of-a2", protein(20, 1)))
    data = good_dataset(tmp_path, {"test/Alpha.fasta": leaked})
    report = check_dataset(DataConfig(path=data, fail_on_leakage=True))
    error = only_error_with(report, "leakage")
    assert "1 in test" in error
    assert "remove them from one side" in error
    assert not any("leakage" in warning for warning in report.warnings)


@pytest.mark.parametrize("split", ["train", "validation"])
def test_a_missing_required_split_is_an_error(tmp_path: Path, split: str) -> None:
    data = good_dataset(tmp_path, {f"{split}/Alpha.fasta": None, f"{split}/Beta.fasta": None})
    error = only_error_with(check_dataset(data), "no FASTA files")
    assert str(data / split) in error
    assert f"{data / split}/<Label>.fasta" in error


def test_a_missing_test_split_is_an_error_only_when_required(tmp_path: Path) -> None:
    data = good_dataset(tmp_path, {"test/Alpha.fasta": None, "test/Beta.fasta": None})
    assert check_dataset(data).ok
    error = only_error_with(check_dataset(data, require_test=True), "no FASTA")
    assert str(data / "test") in error


def test_a_missing_data_dir_raises_with_the_expected_layout(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as caught:
        check_dataset(missing)
    message = str(caught.value)
    assert str(missing) in message
    assert "no such file or folder" in message
    assert f"{missing}/{{train,validation,test}}/<Label>.fasta" in message
    assert f"{missing}/train.csv" in message


def test_sequences_over_max_length_are_noted_with_a_count(tmp_path: Path) -> None:
    report = check_dataset(DataConfig(path=good_dataset(tmp_path), max_length=14))
    assert report.ok, report.errors
    # Longer than 14: a2 (20), a3 (30), tb1 (16).
    [note] = report.notes
    assert "3 sequence(s) longer than 14 residues will be truncated" in note


def test_several_problems_are_reported_in_one_message(tmp_path: Path) -> None:
    alpha = fasta(("a1", protein(10, 0)), ("weird", "MKVJLL")) + ">hollow\n"
    data = good_dataset(
        tmp_path,
        {
            "train/Alpha.fasta": alpha,
            "validation/Alpha.fasta": None,
            "validation/Beta.fasta": None,
            "test/Gamma.fasta": fasta(("g1", protein(11, 9))),
        },
    )
    report = check_dataset(data)
    assert len(report.errors) == 4, report.errors
    with pytest.raises(DataError) as caught:
        report.raise_if_errors()
    message = str(caught.value)
    assert message.startswith(f"{data}: 4 problem(s) in the data:")
    for part in ("'weird'", "'hollow'", str(data / "validation"), "Gamma"):
        assert part in message


# --- esmtune data check ------------------------------------------------------------------


def test_cli_data_check_passes_a_good_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = good_dataset(tmp_path)
    assert main(["data", "check", str(data)]) == 0
    out, err = capsys.readouterr()
    assert check_dataset(data).table() in out
    assert f"OK: {data} can be trained on (2 labels)" in out
    assert err == ""


def test_cli_data_check_fails_a_bad_folder_with_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = fasta(("a1", protein(10, 0)), ("weird", "MKV-LL"))
    data = good_dataset(tmp_path, {"train/Alpha.fasta": bad})
    assert main(["data", "check", str(data)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ")
    assert f"{data / 'train' / 'Alpha.fasta'}, line 3, record 'weird'" in err
    assert "invalid residue '-' at position 4" in err
    assert "Traceback" not in err
    assert "OK:" not in out


def test_cli_data_check_on_a_missing_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    _, err = capsys.readouterr()
    assert err.startswith(f"error: {tmp_path / 'nowhere'}: no such file or folder")


def test_cli_data_check_options_reach_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    leaked = fasta(("ta1", protein(14, 7)), ("copy-of-a2", protein(20, 1)))
    data = good_dataset(tmp_path, {"test/Alpha.fasta": leaked})
    assert main(["data", "check", str(data), "--max-length", "14"]) == 0
    out, _ = capsys.readouterr()
    assert "warning: leakage: 1 sequence(s)" in out
    assert "note: 4 sequence(s) longer than 14 residues" in out
    assert main(["data", "check", str(data), "--fail-on-leakage"]) == 2
    assert "leakage" in capsys.readouterr().err


TWIN_IDS = {
    "train/Alpha.fasta": fasta(("a1", protein(10, 0)), ("twin", protein(20, 1))),
    "train/Beta.fasta": fasta(("b1", protein(8, 3)), ("twin", protein(9, 4))),
}
SHARED_SEQUENCE = {
    "train/Alpha.fasta": fasta(("a1", protein(10, 0)), ("a-shared", protein(25, 11))),
    "train/Beta.fasta": fasta(("b1", protein(8, 3)), ("b-shared", protein(25, 11))),
}


@pytest.mark.parametrize(
    ("flag", "changes"),
    [("--drop-duplicates", TWIN_IDS), ("--drop-conflicts", SHARED_SEQUENCE)],
    ids=["duplicates", "conflicts"],
)
def test_cli_repair_flags_turn_a_failure_into_a_pass(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flag: str, changes: dict[str, str]
) -> None:
    data = good_dataset(tmp_path, changes)
    assert main(["data", "check", str(data)]) == 2
    capsys.readouterr()
    assert main(["data", "check", str(data), flag]) == 0
    assert "note: " in capsys.readouterr().out


def test_cli_require_test(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = good_dataset(tmp_path, {"test/Alpha.fasta": None, "test/Beta.fasta": None})
    assert main(["data", "check", str(data)]) == 0
    assert "warning: " in capsys.readouterr().out
    assert main(["data", "check", str(data), "--require-test"]) == 2
    assert str(data / "test") in capsys.readouterr().err


def test_cli_data_check_passes_the_bundled_example(capsys: pytest.CaptureFixture[str]) -> None:
    example = ROOT / "examples" / "scl3"
    assert main(["data", "check", str(example)]) == 0
    out, err = capsys.readouterr()
    assert "OK:" in out
    assert err == ""
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.strip()}
    for label in ("Mitochondrion", "Nucleus", "Secreted"):
        counts = [
            (example / split / f"{label}.fasta").read_text().count(">")
            for split in ("train", "validation", "test")
        ]
        assert rows[label][1:4] == [str(n) for n in counts]
