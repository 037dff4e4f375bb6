"""Per-residue data: the FLIP folder and biotrainer's single FASTA, masks, and the data check.

Small hand-written datasets in the layouts FLIP and biotrainer users have, each problem named
with its file, line and record; and the bundled ``examples/ss3``.
"""

from __future__ import annotations

import math
import shlex
from pathlib import Path

import pytest

from esmtune.cli import main
from esmtune.config import DataConfig, Task, load_config
from esmtune.data.check import DataReport, check_dataset
from esmtune.data.fasta import SequenceRecord, header_fields
from esmtune.data.memory import MemoryDataset
from esmtune.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
CLASSES = Task.RESIDUE_CLASSIFICATION
VALUES = Task.RESIDUE_REGRESSION
TRAIN, VALIDATION, TEST = "SET=train VALIDATION=False", "SET=train VALIDATION=True", "SET=test"

# id, sequence, labels, split header, mask: two train chains, one validation, one test.
CHAINS = [
    ("t1", "MKTAYIAK", "CCHHHHCC", TRAIN, "01111110"),
    ("t2", "GSWEEVLK", "CEEEECCH", TRAIN, "11111111"),
    ("v1", "PLNDRQAV", "CHHHHEEC", VALIDATION, "11111100"),
    ("s1", "AVDKLRSE", "CCEEHHHC", TEST, "00111111"),
]


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def wrapped(text: str, width: int | None) -> str:
    if not width:
        return text
    return "\n".join(text[i : i + width] for i in range(0, len(text), width))


def flip_folder(
    root: Path,
    chains: list[tuple[str, str, str, str, str]] = CHAINS,
    mask: bool = True,
    width: int | None = None,
) -> Path:
    """sequences.fasta, labels.fasta (split in the header) and mask.fasta, as FLIP has them."""
    write(root / "sequences.fasta", "".join(f">{c[0]}\n{wrapped(c[1], width)}\n" for c in chains))
    write(
        root / "labels.fasta",
        "".join(f">{c[0]} {c[3]}\n{wrapped(c[2], width)}\n" for c in chains),
    )
    if mask:
        write(root / "mask.fasta", "".join(f">{c[0]}\n{wrapped(c[4], width)}\n" for c in chains))
    return root


def biotrainer_file(path: Path, lines: list[str]) -> Path:
    return write(path, "\n".join(lines) + "\n")


def ids(report: DataReport) -> dict[str, list[str]]:
    return {split: [r.id for r in records] for split, records in report.splits.items()}


def only_error_with(report: DataReport, text: str) -> str:
    found = [error for error in report.errors if text in error]
    assert len(found) == 1, (text, report.errors)
    return found[0]


# --- the FLIP / biotrainer folder -------------------------------------------------------------


def test_a_flip_folder_reads_labels_masks_and_splits_from_the_headers(tmp_path: Path) -> None:
    data = flip_folder(tmp_path / "ss")
    report = check_dataset(data, CLASSES)
    assert report.ok, report.errors
    assert ids(report) == {"train": ["t1", "t2"], "validation": ["v1"], "test": ["s1"]}
    first = report.splits["train"][0]
    assert (first.sequence, first.residue_labels, first.mask) == (
        "MKTAYIAK",
        "CCHHHHCC",
        "01111110",
    )
    assert first.position == f"{data / 'sequences.fasta'}, line 1"
    assert first.used_residues == (False, True, True, True, True, True, True, False)
    assert report.labels == ["C", "E", "H"]
    assert report.layout.startswith("per-residue FASTA files (FLIP, biotrainer)")
    assert str(data / "mask.fasta") in report.layout


def test_without_a_mask_every_residue_counts(tmp_path: Path) -> None:
    report = check_dataset(flip_folder(tmp_path, mask=False), CLASSES)
    assert report.ok, report.errors
    assert all(r.mask is None for records in report.splits.values() for r in records)
    # t1's masked ends (C, C) count now: 7 C, 4 E, 5 H over 16 train residues.
    assert report.summary()["train"] == {
        "chains": 2, "residues": 16, "masked": 0, "classes": {"C": 7, "E": 4, "H": 5},
    }  # fmt: skip


def test_wrapped_sequences_labels_and_masks_are_joined(tmp_path: Path) -> None:
    plain = check_dataset(flip_folder(tmp_path / "plain"), CLASSES)
    folded = check_dataset(flip_folder(tmp_path / "folded", width=3), CLASSES)
    assert folded.ok, folded.errors
    key = [(r.id, r.sequence, r.target, r.mask) for recs in plain.splits.values() for r in recs]
    assert [
        (r.id, r.sequence, r.target, r.mask) for recs in folded.splits.values() for r in recs
    ] == key


def test_the_table_counts_unmasked_residues_per_class_and_masked_apart(tmp_path: Path) -> None:
    report = check_dataset(flip_folder(tmp_path), CLASSES)
    lines = report.table().splitlines()
    assert lines[0].split() == ["class", "train", "validation", "test"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:]}
    # train: t1 masks its first and last residue (C, C): C 5, E 4, H 5 of 14 unmasked.
    assert rows["C"][:2] == ["5", "(35.7%)"]
    assert rows["E"][:2] == ["4", "(28.6%)"]
    assert rows["unmasked"] == ["14", "6", "6"]
    assert rows["masked"] == ["2", "(12.5%)", "2", "(25.0%)", "2", "(25.0%)"]
    assert rows["chains"] == ["2", "1", "1"]
    assert report.summary()["test"] == {
        "chains": 1, "residues": 6, "masked": 2, "classes": {"C": 1, "E": 2, "H": 3},
    }  # fmt: skip


def test_the_cli_checks_a_flip_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    data = flip_folder(tmp_path)
    assert main(["data", "check", str(data), "--task", "residue_classification"]) == 0
    out = capsys.readouterr().out
    assert "residue_classification data, per-residue FASTA files" in out
    assert "OK: " in out and "(3 residue classes)" in out


# --- biotrainer's single FASTA ----------------------------------------------------------------


def test_a_biotrainer_file_reads_target_set_and_mask_from_the_headers(tmp_path: Path) -> None:
    path = biotrainer_file(
        tmp_path / "data.fasta",
        [
            ">Seq1 TARGET=DVCDVVDD SET=train MASK=01101101",
            "SEQWENCE",
            ">Seq2 TARGET=DDDVVV SET=train",
            "PRTEIN",
            ">Seq3 TARGET=DDDDDDVVEE SET=val MASK=0000001100",
            "PRTEINSQEE",
            ">Seq4 TARGET=DDDDDDFFEEEDDD SET=test MASK=11111111111111",
            "SEQVENCEPRO",
            "TEI",
        ],
    )
    report = check_dataset(path, CLASSES)
    assert ids(report) == {"train": ["Seq1", "Seq2"], "validation": ["Seq3"], "test": ["Seq4"]}
    assert report.splits["train"][0].mask == "01101101"
    assert report.splits["train"][1].mask is None
    assert report.splits["test"][0].sequence == "SEQVENCEPROTEI"  # both lines, not the last
    assert "biotrainer" in report.layout
    # Seq3's unmasked residues are V and E, Seq4 has F: never seen on train's residues.
    error = only_error_with(report, "test: class(es) E, F never occur on train's residues")
    assert f"{path}, line 7, record 'Seq4'" in error
    assert not any(e.startswith("validation") for e in report.errors)  # masked E, V: fine


def test_biotrainer_prediction_sets_and_further_test_sets_are_left_out_with_a_note(
    tmp_path: Path,
) -> None:
    path = biotrainer_file(
        tmp_path / "data.fasta",
        [
            ">a TARGET=CCHH SET=train", "MKVL",
            ">b TARGET=CHHE SET=train", "GSWE",
            ">c TARGET=CHHE SET=val", "PLND",
            ">d TARGET=CHHC SET=test", "AVDK",
            ">e TARGET=CHHC SET=test2", "WWYY",
            ">f SET=pred", "QQRR",
        ],
    )  # fmt: skip
    report = check_dataset(path, CLASSES)
    assert report.ok, report.errors
    assert ids(report) == {"train": ["a", "b"], "validation": ["c"], "test": ["d"]}
    assert any("1 record(s) with SET=pred" in note for note in report.notes)
    assert any("1 record(s) with SET=test2 left out" in note for note in report.notes)


def test_esmtune_key_value_headers_read_the_same(tmp_path: Path) -> None:
    path = biotrainer_file(
        tmp_path / "data.fasta",
        [
            ">a label=CCHH split=train mask=0111", "MKVL",
            ">b label=CHEE split=train", "GSWE",
            ">c label=CHHE split=validation", "PLND",
        ],
    )  # fmt: skip
    report = check_dataset(path, CLASSES)
    assert report.ok, report.errors
    assert report.splits["train"][0].mask == "0111"


def test_one_fasta_per_split_takes_biotrainer_headers(tmp_path: Path) -> None:
    folder = tmp_path / "data"
    write(folder / "train.fasta", ">a TARGET=CCHH MASK=1110\nMKVL\n>b TARGET=CHEE\nGSWE\n")
    write(folder / "validation.fasta", ">c TARGET=CHHE\nPLND\n")
    report = check_dataset(folder, CLASSES)
    assert report.ok, report.errors
    assert report.splits["train"][0].mask == "1110"


# --- residue_regression ----------------------------------------------------------------------


def test_regression_values_are_read_with_any_separator_and_wrapped_lines(tmp_path: Path) -> None:
    chains = [
        ("t1", "MKTA", "0.5;-1;2e-1;3", TRAIN, "1111"),
        ("t2", "GSWE", "1, 2, 3, 4", TRAIN, "1111"),
        ("v1", "PLND", "0.1 0.2\t0.3  nan", VALIDATION, "1110"),
        ("s1", "AVDK", "0.1;;0.3;0.4", TEST, "1011"),
    ]
    data = flip_folder(tmp_path, chains)
    # wrap t1's values over two lines, the first ending with its separator
    labels = (data / "labels.fasta").read_text().replace("0.5;-1;", "0.5;-1;\n")
    write(data / "labels.fasta", labels)
    report = check_dataset(data, VALUES)
    assert report.ok, report.errors
    train = report.splits["train"]
    assert train[0].values == (0.5, -1.0, 0.2, 3.0)
    assert train[1].values == (1.0, 2.0, 3.0, 4.0)
    assert math.isnan(report.splits["validation"][0].values[3])
    assert math.isnan(report.splits["test"][0].values[1])
    assert report.labels == ["value"]
    rows = {line.split()[0]: line.split()[1:] for line in report.table().splitlines()[2:]}
    assert rows["mean"][0] == "1.587"  # (0.5 - 1 + 0.2 + 3 + 1 + 2 + 3 + 4) / 8 = 12.7 / 8
    assert rows["min"] == ["-1", "0.1", "0.1"]
    assert rows["masked"] == ["0", "(0.0%)", "1", "(25.0%)", "1", "(25.0%)"]
    summary = report.summary()["validation"]
    assert summary["residues"] == 3 and summary["max"] == pytest.approx(0.3)


def test_biotrainer_regression_targets_are_semicolon_separated(tmp_path: Path) -> None:
    path = biotrainer_file(
        tmp_path / "data.fasta",
        [
            ">Seq1 TARGET=0.5;0.3;0.1;0.2;0.5;0.1;0.0;-1 SET=train MASK=11111110", "SEQWENCE",
            ">Seq2 TARGET=1;2;3;999.0 SET=train MASK=1110", "PRTE",
            ">Seq3 TARGET=1;2;3;4 SET=val", "PRTI",
        ],
    )  # fmt: skip
    report = check_dataset(path, VALUES)
    assert report.ok, report.errors
    assert report.splits["train"][0].values[-1] == -1.0
    # 999.0, biotrainer users' placeholder, is masked: not in the statistics.
    assert report.summary()["train"]["max"] == 3.0


def test_regression_values_must_be_numbers_and_present_where_unmasked(tmp_path: Path) -> None:
    chains = [
        ("t1", "MKTA", "0.5;abc;1;inf", TRAIN, "1111"),
        ("t2", "GSWE", "1;2;nan;4", TRAIN, "1111"),
        ("t3", "GSWQ", "1;2;nan;4", TRAIN, "1101"),
        ("v1", "PLND", "1;2;;4", VALIDATION, "1111"),
    ]
    data = flip_folder(tmp_path, chains)
    report = check_dataset(data, VALUES)
    labels = data / "labels.fasta"
    error = only_error_with(report, "record 't1'")
    assert error.startswith(f"{labels}, line 1, record 't1': 2 value(s) are not finite numbers")
    assert "value 2, 'abc'" in error
    error = only_error_with(report, "record 't2'")
    assert error.startswith(f"{labels}, line 3, record 't2': 1 residue(s) have no value")
    assert "residue 3" in error and "mask the residue" in error
    assert "record 'v1'" in only_error_with(report, "record 'v1'")
    assert not any("'t3'" in e for e in report.errors)  # its NaN is masked


# --- every problem, named with its file, line and record, in one report -------------------------


def test_every_problem_of_a_flip_folder_is_listed_at_once(tmp_path: Path) -> None:
    chains = [
        ("t1", "MKTAYIAK", "CCHHHHCC", TRAIN, "01111110"),
        ("t2", "GSWEEVLK", "CEEEECCH", TRAIN, "11111111"),
        ("short", "MKTAY", "CCHH", TRAIN, "11111"),  # 4 labels for 5 residues
        ("badmask", "MKTAY", "CCHHE", TRAIN, "11x11"),
        ("shortmask", "MKTAY", "CCHHE", TRAIN, "111"),
        ("badset", "MKTAY", "CCHHE", "SET=training2 VALIDATION=False", "11111"),
        ("badval", "MKTAY", "CCHHE", "SET=train VALIDATION=maybe", "11111"),
        ("testval", "MKTAY", "CCHHE", "SET=test VALIDATION=True", "11111"),
        ("dark", "MKTAY", "CCHHE", TRAIN, "00000"),
        ("v1", "PLNDRQAV", "CHHHHEEC", VALIDATION, "11111100"),
    ]
    data = flip_folder(tmp_path, chains)
    with (data / "sequences.fasta").open("a") as handle:
        handle.write(">nolabels\nMKVL\n")  # line 21
    with (data / "labels.fasta").open("a") as handle:
        handle.write(">nosequence SET=train VALIDATION=False\nCCHH\n")  # line 21
    with (data / "mask.fasta").open("a") as handle:
        handle.write(">ghost\n1111\n")  # line 21
    report = check_dataset(data, CLASSES)
    sequences, labels, masks = (
        data / name for name in ("sequences.fasta", "labels.fasta", "mask.fasta")
    )

    error = only_error_with(report, "'short'")
    assert error.startswith(f"{labels}, line 5, record 'short': 4 labels for the 5 residues")
    assert f"({sequences}, line 5)" in error
    error = only_error_with(report, "'badmask'")
    assert error.startswith(f"{masks}, line 7, record 'badmask': mask character 'x' at position 3")
    error = only_error_with(report, "'shortmask'")
    assert error.startswith(f"{masks}, line 9, record 'shortmask': mask of 3 characters for the 5")
    error = only_error_with(report, "'badset'")
    assert error.startswith(f"{labels}, line 11, record 'badset': SET=training2 is not a split")
    error = only_error_with(report, "'badval'")
    assert error.startswith(f"{labels}, line 13, record 'badval': VALIDATION=maybe")
    assert "True or False" in error
    error = only_error_with(report, "'testval'")
    assert "only train records are held out for validation" in error
    error = only_error_with(report, "'nolabels'")
    assert error.startswith(f"{sequences}, line 21, record 'nolabels': no labels for it")
    error = only_error_with(report, "'nosequence'")
    assert error.startswith(f"{labels}, line 21, record 'nosequence': labels for an id that")
    error = only_error_with(report, "'ghost'")
    assert error.startswith(f"{masks}, line 21, record 'ghost': mask for an id that")
    assert len(report.errors) == 9, report.errors
    # A record with every residue masked is a note, and left out.
    assert any(
        "1 record(s) with every residue masked" in note and "'dark'" in note
        for note in report.notes
    )
    assert "dark" not in ids(report)["train"]
    assert main(["data", "check", str(data), "--task", "residue_classification"]) == 2


def test_a_repeated_id_in_the_labels_file_is_an_error(tmp_path: Path) -> None:
    data = flip_folder(tmp_path)
    with (data / "labels.fasta").open("a") as handle:
        handle.write(">t2 SET=train VALIDATION=False\nCCCCCCCC\n")
    error = only_error_with(check_dataset(data, CLASSES), "the id is repeated")
    assert error.startswith(f"{data / 'labels.fasta'}, line 9, record 't2'")
    assert "first at line 3" in error


def test_sequences_without_a_mask_count_whole_with_a_note(tmp_path: Path) -> None:
    data = flip_folder(tmp_path)
    masks = (data / "mask.fasta").read_text().split("\n")
    write(data / "mask.fasta", "\n".join(masks[2:]))  # t1 has no mask now
    report = check_dataset(data, CLASSES)
    assert report.ok, report.errors
    assert report.splits["train"][0].mask is None
    assert any("no mask for 1 record(s)" in note for note in report.notes)


def test_a_split_only_in_the_sequences_header_is_read_and_disagreement_is_an_error(
    tmp_path: Path,
) -> None:
    data = flip_folder(tmp_path)
    labels, sequences = data / "labels.fasta", data / "sequences.fasta"
    write(labels, labels.read_text().replace(f">t1 {TRAIN}", ">t1"))
    write(sequences, sequences.read_text().replace(">t1", f">t1 {TEST}"))
    report = check_dataset(data, CLASSES)
    assert report.ok, report.errors
    assert ids(report)["test"] == ["t1", "s1"]
    write(labels, labels.read_text().replace(">t1", f">t1 {TRAIN}"))
    error = only_error_with(check_dataset(data, CLASSES), "record 't1'")
    assert error.startswith(f"{labels}, line 1, record 't1': the labels header says train but")
    assert "the sequences header (line 1) says test" in error


def test_a_split_without_records_says_how_to_mark_them(tmp_path: Path) -> None:
    report = check_dataset(flip_folder(tmp_path, [c for c in CHAINS if c[0] != "v1"]), CLASSES)
    error = only_error_with(report, "no validation records")
    assert error.startswith(f"{tmp_path / 'labels.fasta'}: no validation records")
    assert "validation: SET=train VALIDATION=True" in error


@pytest.mark.parametrize(
    "description",
    [
        "TARGET=0.5;0.3;-1 SET=train MASK=110",
        "  free words\tlabel=Nucleus  split=train ",
        'label="cell projection" split=test',
        "Crohn's disease label=a",
    ],
)
def test_header_fields_read_long_headers_as_shlex_does(description: str) -> None:
    words = shlex.split(description) if "Crohn" not in description else description.split()
    expected = {k: v for k, sep, v in (w.partition("=") for w in words) if sep and k}
    assert header_fields(description) == expected


def test_a_header_without_a_split_is_an_error(tmp_path: Path) -> None:
    path = biotrainer_file(tmp_path / "data.fasta", [">a TARGET=CCHH", "MKVL"])
    error = only_error_with(check_dataset(path, CLASSES), "record 'a'")
    assert error.startswith(f"{path}, line 1, record 'a': the header names no split")


def test_a_biotrainer_header_without_a_target_is_an_error(tmp_path: Path) -> None:
    path = biotrainer_file(tmp_path / "data.fasta", [">a SET=train MASK=1111", "MKVL"])
    error = only_error_with(check_dataset(path, CLASSES), "record 'a'")
    assert "the header has no label= or TARGET=" in error


def test_train_with_one_class_and_unseen_classes_elsewhere_are_errors(tmp_path: Path) -> None:
    chains = [
        ("t1", "MKTA", "HHHH", TRAIN, "1111"),
        ("t2", "GSWE", "HHHX", TRAIN, "1110"),  # X is masked: no class
        ("v1", "PLND", "HEEH", VALIDATION, "1111"),
        ("v2", "PLNQ", "HECX", VALIDATION, "1110"),
    ]
    report = check_dataset(flip_folder(tmp_path, chains), CLASSES)
    assert report.labels == ["H"]
    only_error_with(report, "train: every unmasked residue has the class H")
    error = only_error_with(report, "validation: class(es) C, E never occur on train's residues")
    assert "(4 residue(s) in 2 record(s):" in error
    assert "record 'v1'" in error and "record 'v2'" in error


def test_a_sequence_with_two_different_residue_targets_is_a_conflict(tmp_path: Path) -> None:
    chains = [
        ("t1", "MKTAYIAK", "CCHHHHCC", TRAIN, "01111110"),
        ("t2", "GSWEEVLK", "CEEEECCH", TRAIN, "11111111"),
        # t1's sequence again: differing only where t1 is masked is the same knowledge
        ("t1-copy", "MKTAYIAK", "ECHHHHCE", TRAIN, "11111111"),
        ("v1", "MKTAYIAK", "CCHHEHCC", VALIDATION, "11111111"),
    ]
    report = check_dataset(flip_folder(tmp_path, chains), CLASSES)
    error = only_error_with(report, "different per-residue targets")
    assert "has 3 different per-residue targets, e.g. residue 1 is masked here" in error
    assert f"{tmp_path / 'sequences.fasta'}, line 1, record 't1'" in error
    # and v1 repeats a training sequence: leakage
    assert any("leakage" in warning for warning in report.warnings)
    same = [chains[0], chains[1], ("t1-copy", "MKTAYIAK", "ECHHHHCE", TRAIN, "01111110")]
    same.append(("v1", "PLNDRQAV", "CCHHEHCC", VALIDATION, "11111111"))
    report = check_dataset(flip_folder(tmp_path / "same", same), CLASSES)
    assert not any("per-residue targets" in e for e in report.errors), report.errors


def test_repeated_ids_in_sequences_fasta_are_the_checks_duplicates(tmp_path: Path) -> None:
    data = flip_folder(tmp_path)
    with (data / "sequences.fasta").open("a") as handle:
        handle.write(">t2\nGSWEEVLK\n")
    report = check_dataset(data, CLASSES)
    only_error_with(report, "train: duplicate id 't2'")
    assert check_dataset(DataConfig(path=data, drop_duplicates=True), CLASSES).ok


def test_long_sequences_note_the_residues_that_get_no_prediction(tmp_path: Path) -> None:
    chains = [(*c[:1], c[1] * 2, c[2] * 2, c[3], c[4] * 2) for c in CHAINS]  # 16 residues
    data = flip_folder(tmp_path, chains)
    report = check_dataset(DataConfig(path=data, max_length=10), CLASSES)
    (note,) = [n for n in report.notes if "longer than 10" in n]
    assert "their 24 residue(s) beyond it would get no prediction unless" in note
    assert "data.long_sequences is window" in note
    windows = check_dataset(DataConfig(path=data, max_length=10, long_sequences="window"), CLASSES)
    assert any("every residue gets a prediction" in n for n in windows.notes)


# --- other layouts and tasks ------------------------------------------------------------------


def test_a_sequence_level_task_is_told_what_a_flip_folder_is_for(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="per-residue layout of FLIP and biotrainer"):
        check_dataset(flip_folder(tmp_path), Task.MULTICLASS)


def test_a_table_with_one_label_per_residue_has_its_lengths_checked(tmp_path: Path) -> None:
    path = write(
        tmp_path / "data.csv",
        "id,sequence,label,split\nt1,MKVL,CCHH,train\nt2,GSWE,CEE,train\nv1,PLND,CHHC,val\n",
    )
    report = check_dataset(path, CLASSES)
    (error,) = report.errors
    assert error.startswith(f"{path}, line 3, record 't2': 3 labels for the 4 residues")


def test_records_in_memory_keep_their_masks(tmp_path: Path) -> None:
    data = MemoryDataset(
        {
            "train": [
                SequenceRecord("t1", "MKVL", "XCHH", mask="0111"),
                SequenceRecord("t2", "GSWE", "CEEH"),
            ],
            "validation": [{"id": "v1", "sequence": "PLND", "target": [0.5, None, 1, 2]}],
        }
    )
    with data.active() as path:
        report = check_dataset(path, CLASSES)
        assert report.labels == ["C", "E", "H"]  # the masked X is no class
        assert report.splits["train"][0].mask == "0111"
        regression = MemoryDataset(
            {
                "train": [SequenceRecord("t1", "MKVL", (1.0, math.nan, 2.0, 3.0), mask="1011")],
                "validation": [{"id": "v1", "sequence": "PLND", "target": [0.5, None, 1, 2]}],
            }
        )
    with regression.active() as path:
        report = check_dataset(path, VALUES)
        assert report.splits["train"][0].mask == "1011"
        # v1 has no mask for its missing value
        only_error_with(report, "validation[0], record 'v1': 1 residue(s) have no value")


def test_the_residue_tasks_are_config_literals_with_their_metrics() -> None:
    config = load_config(None, ["task=residue_classification", "data.path=examples/ss3"])
    assert config.selection_metric == "mcc"  # balanced for two classes and for many
    assert load_config(None, ["task=residue_regression"]).selection_metric == "spearman"


# --- the bundled example ----------------------------------------------------------------------


def test_the_bundled_ss3_example_passes_the_check_with_its_counts() -> None:
    example = ROOT / "examples" / "ss3"
    report = check_dataset(example, CLASSES)
    assert report.ok, report.errors
    assert {split: len(records) for split, records in report.splits.items()} == {
        "train": 800, "validation": 150, "test": 150,
    }  # fmt: skip
    assert report.labels == ["C", "E", "H"]
    assert max(len(r.sequence) for recs in report.splits.values() for r in recs) <= 300
    summary = report.summary()
    assert {split: summary[split]["residues"] for split in summary} == {  # type: ignore[index]
        "train": 127884, "validation": 23157, "test": 20110,
    }  # fmt: skip
    assert summary["test"]["masked"] == 2386  # type: ignore[index]
    assert not report.warnings and not report.notes
    assert (example / "LICENSE").read_text().startswith("Academic Free License")
