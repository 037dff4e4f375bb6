"""Leakage measured by identity: planted near-copies land in their bins, and the settings act.

The dataset plants point mutants of training sequences at known identities in validation and
test (an exact copy, 98%, 85%, 60%, 40%) beside unrelated random sequences, so every bin of the
report but "<30%" has a sequence whose place is known.
"""

from __future__ import annotations

import csv
import json
import random
import re
from pathlib import Path

import pytest
from tests.helpers import (
    STANDARD_RESIDUES,
    point_mutant,
    random_protein,
    requires_mmseqs,
    tiny_overrides,
    write_fasta,
)

from esmtune.cli import main
from esmtune.config import DataConfig, load_config
from esmtune.data.check import check_dataset
from esmtune.data.fasta import SequenceRecord
from esmtune.data.homology import MMSEQS_ENV
from esmtune.data.leakage import LEAKAGE_COLUMNS, identity_bin, measure_leakage
from esmtune.errors import ConfigError
from esmtune.rundir import LEAKAGE_FILE

# id -> (split, the training sequence it copies or None, identity of the copy, expected bin)
PLANTED = {
    "v98": ("validation", "t0", 0.98, "≥95%"),
    "v60": ("validation", "t2", 0.60, "50–80%"),
    "v_new": ("validation", None, 0.0, "no hit"),
    "x100": ("test", "t4", 1.0, "≥95%"),
    "x85": ("test", "t1", 0.85, "80–95%"),
    "x40": ("test", "t3", 0.40, "30–50%"),
    "x_new": ("test", None, 0.0, "no hit"),
}
ABOVE_HALF = {"v98", "v60", "x100", "x85"}


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``{split}/<Label>.fasta``: 12 random training proteins and the planted copies."""
    rng = random.Random(7)
    train = {f"t{i}": random_protein(rng, 200, STANDARD_RESIDUES) for i in range(12)}
    label = {name: ("Alpha", "Beta")[i % 2] for i, name in enumerate(train)}
    files: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for name, sequence in train.items():
        files.setdefault(("train", label[name]), []).append((name, sequence))
    for name, (split, source, identity, _) in PLANTED.items():
        if source is None:
            sequence, kind = random_protein(rng, 200, STANDARD_RESIDUES), "Beta"
        else:
            sequence, kind = point_mutant(train[source], identity, rng), label[source]
        files.setdefault((split, kind), []).append((name, sequence))
    root = tmp_path_factory.mktemp("planted")
    for (split, kind), records in files.items():
        write_fasta(root / split / f"{kind}.fasta", records)
    return root


def _rows(path: Path) -> dict[str, dict[str, str]]:
    with path.open() as handle:
        return {row["id"]: row for row in csv.DictReader(handle, delimiter="\t")}


@requires_mmseqs
def test_planted_copies_fall_in_their_identity_bins(
    planted: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "nearest.tsv"
    assert main(["data", "check", str(planted), "--leakage-out", str(out)]) == 0
    shown = capsys.readouterr().out
    rows = _rows(out)
    assert list(next(iter(rows.values()))) == list(LEAKAGE_COLUMNS)
    assert set(rows) == set(PLANTED)
    for name, (split, source, identity, expected) in PLANTED.items():
        row = rows[name]
        assert row["split"] == split
        assert row["nearest_train_id"] == (source or "")
        found = float(row["identity"]) if row["identity"] else None
        assert identity_bin(found) == expected, (name, found)
        if source is not None:
            assert found == pytest.approx(identity, abs=0.04)
            assert float(row["coverage"]) >= 0.8
    # The table per split and bin, and the closest examples, the exact copy first.
    assert "leakage by identity" in shown and "alignments covering ≥80% of both" in shown
    assert re.search(r"^identity to train +validation +test$", shown, re.M)
    rows_shown = (r"≥95% +1 \(33%\) +1 \(25%\)", r"80–95% +0 \(0%\) +1 \(25%\)",
                  r"no hit +1 \(33%\) +1 \(25%\)", r"TOTAL +3 +4")  # fmt: skip
    for row in rows_shown:
        assert re.search(f"^{row}$", shown, re.M), row
    closest = shown.split("closest to train:")[1].splitlines()[1]
    assert "record 'x100' is 100.0% identical to train 't4'" in closest
    assert f"nearest training sequence of each: {out}" in shown


@requires_mmseqs
def test_max_identity_stops_the_check_naming_each_sequence_above_it(
    planted: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["data", "check", str(planted), "--max-identity", "0.5"]) == 2
    error = capsys.readouterr().err
    for name in PLANTED:
        assert (f"record '{name}' is " in error) == (name in ABOVE_HALF), name
    assert "4 sequence(s) (2 in validation, 2 in test) are more than 50% identical" in error
    assert "esmtune data split" in error and "data.drop_similar=true" in error


@requires_mmseqs
def test_drop_similar_drops_and_counts_them(planted: Path) -> None:
    data = DataConfig(path=planted, max_identity=0.5, drop_similar=True)
    report = check_dataset(data)  # measured without being asked: max_identity needs it
    assert report.ok, report.errors
    kept = {r.id for split in ("validation", "test") for r in report.splits[split]}
    assert kept == set(PLANTED) - ABOVE_HALF
    assert any(
        "dropped 4 sequence(s) (2 in validation, 2 in test) more than 50% identical" in note
        for note in report.notes
    )
    assert report.leakage is not None and len(report.leakage.rows) == len(PLANTED)


def test_without_mmseqs_the_check_says_so_in_one_note(
    planted: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(MMSEQS_ENV, str(planted / "no-such-mmseqs"))
    report = check_dataset(planted, identity=True)
    assert report.ok and report.leakage is None
    notes = [note for note in report.notes if "leakage by identity not measured" in note]
    assert len(notes) == 1 and "apt install mmseqs2" in notes[0]
    # Asked for a limit, the missing measurement is an error.
    report = check_dataset(DataConfig(path=planted, max_identity=0.5))
    assert not report.ok
    assert "data.max_identity=0.5 needs MMseqs2" in report.errors[-1]
    # Not asked (evaluate, baseline): no search, no note.
    assert not any("leakage by identity" in n for n in check_dataset(planted).notes)


def test_identity_settings_that_contradict_each_other_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"drop_similar drops sequences above data\.max_identity"):
        load_config(None, ["data.drop_similar=true"])
    with pytest.raises(ConfigError, match="max_identity needs the identity search"):
        load_config(None, ["data.max_identity=0.5", "data.measure_identity=false"])


@requires_mmseqs
def test_training_writes_each_sequences_nearest_training_sequence_into_the_run(
    planted: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(tiny_model_dir, planted, tmp_path, "leaky")
    settings = ["training.epochs=1", "data.max_length=64", "data.measure_identity=true"]
    assert main(["train", *overrides, *settings]) == 0
    run = tmp_path / "leaky"
    rows = _rows(run / LEAKAGE_FILE)
    assert {name: identity_bin(float(r["identity"]) if r["identity"] else None)
            for name, r in rows.items()} == {n: p[3] for n, p in PLANTED.items()}  # fmt: skip
    manifest = json.loads((run / "manifest.json").read_text())
    counts = manifest["data"]["leakage_by_identity"]["counts"]
    assert counts["test"]["80–95%"] == 1 and counts["validation"]["no hit"] == 1
    assert "leakage by identity" in (run / "data_check.txt").read_text()


class _FindsNothing:
    """A stand-in for MMseqs2 that aligns nothing (as for sequences too short to search)."""

    def search(self, *args: object, **kwargs: object) -> list[object]:
        return []

    def version(self) -> str:
        return "stand-in"


def test_peptides_too_short_to_search_are_still_found_as_copies() -> None:
    train = [SequenceRecord("t1", "MKVLAGG"), SequenceRecord("t2", "WWPPKK")]
    held = {"validation": [SequenceRecord("copy", "MKVLAGG")],
            "test": [SequenceRecord("other", "MKVLAGA")]}  # fmt: skip
    leakage = measure_leakage({"train": train, **held}, 0.8, _FindsNothing())  # type: ignore[arg-type]
    rows = {row.record.id: row for row in leakage.rows}
    assert rows["copy"].train is train[0] and rows["copy"].identity == 1.0
    assert rows["other"].train is None and rows["other"].bin == "no hit"
    assert leakage.unsearched == 1
    assert "1 validation/test sequence(s) shorter than 14 residues" in "\n".join(
        leakage.report_lines()
    )
