"""esmtune data split: whole families in one split, checked independently, reproducible, every
layout written as it was read.

The tests with MMseqs2 split small sets of planted families (point mutants of one ancestor)
and check the result with their own easy-search; the layout and balance tests put a stand-in
for MMseqs2 in its place (every sequence its own cluster, nothing similar), since what they test
is reading and writing files, and placing clusters.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
from collections import Counter
from pathlib import Path

import pytest
from tests.helpers import (
    FLIP_SPLITS,
    STANDARD_RESIDUES,
    families,
    point_mutant,
    random_protein,
    requires_mmseqs,
    write_fasta,
    write_flip,
)

from esmtune.cli import main
from esmtune.config import DataConfig, Task
from esmtune.data import split as split_module
from esmtune.data.check import check_dataset
from esmtune.data.fasta import read_fasta
from esmtune.data.homology import MMSEQS_ENV, Alignment
from esmtune.data.layout import SPLITS, UNSPLIT, Layout
from esmtune.data.sources import SplitRecords, read_splits
from esmtune.data.split import CLUSTERS_FILE, DROPPED_FILE, SUMMARY_FILE, SUMMARY_TEXT_FILE
from esmtune.data.tables import read_table
from esmtune.tasks import task_class

IDENTITY = 0.3
LABELS = ("Alpha", "Beta", "Gamma")


def _write_families(root: Path, seed: int) -> dict[str, str]:
    """``root/<Label>.fasta``, not split: 10 families of 4 (75% to their ancestor) + 16 loners.

    Returns each id's family (loners are their own).
    """
    rng = random.Random(seed)
    family_of, by_label = {}, {label: [] for label in LABELS}
    for number, members in enumerate(families(rng, 10, 4, 0.75)):
        label = LABELS[number % 3]
        for index, sequence in enumerate(members):
            name = f"fam{number}_{index}"
            family_of[name] = f"fam{number}"
            by_label[label].append((name, sequence))
    for number in range(16):
        name = f"lone{number}"
        family_of[name] = name
        by_label[LABELS[number % 3]].append((name, random_protein(rng, 150, STANDARD_RESIDUES)))
    for label, records in by_label.items():
        write_fasta(root / f"{label}.fasta", records)
    return family_of


def _split(*args: str) -> None:
    assert main(["data", "split", *args, "--threads", "1"]) == 0


def _records(folder: Path) -> dict[str, dict[str, str]]:
    """Per split, id -> sequence of a per-label folder."""
    found: dict[str, dict[str, str]] = {}
    for split in SPLITS:
        files = sorted((folder / split).glob("*.fasta"))
        found[split] = {r.id: r.sequence for path in files for r in read_fasta(path)}
    return found


def _independent_hits(queries: dict[str, str], targets: dict[str, str], work: Path) -> list[str]:
    """MMseqs2's own easy-search, as a person would run it: pairs at or above IDENTITY."""
    work.mkdir(parents=True, exist_ok=True)
    for name, records in (("q", queries), ("t", targets)):
        write_fasta(work / f"{name}.fasta", list(records.items()))
    subprocess.run(
        ["mmseqs", "easy-search", "q.fasta", "t.fasta", "hits.m8", "tmp", "--min-seq-id",
         str(IDENTITY), "-c", "0.8", "--cov-mode", "0", "--threads", "1", "-v", "1"],
        cwd=work, check=True,
    )  # fmt: skip
    return (work / "hits.m8").read_text().splitlines()


@pytest.fixture(scope="module")
def family_split(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """The planted families split twice with one seed: (first out, second out, families)."""
    root = tmp_path_factory.mktemp("families")
    family_of = _write_families(root / "data", seed=11)
    outs = root / "first", root / "second"
    for out in outs:
        _split(str(root / "data"), "--identity", str(IDENTITY), "--fractions", "0.6", "0.2",
               "0.2", "--seed", "5", "--out", str(out))  # fmt: skip
    return outs[0], outs[1], family_of


@requires_mmseqs
def test_no_validation_or_test_sequence_is_within_the_identity_of_train(
    family_split: tuple[Path, Path, dict[str, str]], tmp_path: Path
) -> None:
    out, _, family_of = family_split
    found = _records(out)
    assert {name for records in found.values() for name in records} == set(family_of)
    held_out = found["validation"] | found["test"]
    assert _independent_hits(held_out, found["train"], tmp_path) == []
    # Each planted family is whole in one split.
    split_of = {name: split for split, records in found.items() for name in records}
    for family in set(family_of.values()):
        assert len({split_of[n] for n, f in family_of.items() if f == family}) == 1, family


@requires_mmseqs
def test_the_same_seed_gives_the_same_split(
    family_split: tuple[Path, Path, dict[str, str]],
) -> None:
    first, second, _ = family_split
    names = sorted(str(p.relative_to(first)) for p in first.rglob("*") if p.is_file())
    assert names == sorted(str(p.relative_to(second)) for p in second.rglob("*") if p.is_file())
    for name in names:
        if name not in (SUMMARY_FILE, SUMMARY_TEXT_FILE):  # they name the folder and the time
            assert (first / name).read_bytes() == (second / name).read_bytes(), name
    summaries = [json.loads((out / SUMMARY_FILE).read_text()) for out in (first, second)]
    for summary in summaries:
        del summary["seconds"], summary["data_path"]
    assert summaries[0] == summaries[1]


@requires_mmseqs
def test_clusters_and_summary_describe_what_was_written(
    family_split: tuple[Path, Path, dict[str, str]],
) -> None:
    out, _, family_of = family_split
    found = _records(out)
    split_of = {name: split for split, records in found.items() for name in records}
    with (out / CLUSTERS_FILE).open() as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert list(rows[0]) == ["id", "cluster", "group", "split"]
    assert sorted(row["id"] for row in rows) == sorted(family_of)
    assert all(row["split"] == split_of[row["id"]] for row in rows)
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["sequences"] == 56 and summary["options"]["identity"] == IDENTITY
    assert summary["data_path"] == str(out)
    for split, target in zip(SPLITS, (0.6, 0.2, 0.2), strict=True):
        row = summary["splits"][split]
        assert row["sequences"] == len(found[split]) and row["target"] == target
        assert abs(row["share"] - target) <= 0.08  # families of 4 make the steps
        assert set(row["label_shares_off_by"]) == {"max", "label", "mean"}
    text = (out / SUMMARY_TEXT_FILE).read_text()
    assert "label shares" in text and f"train on it with data.path={out}" in text
    assert check_dataset(out).ok  # the per-label folders training reads


@requires_mmseqs
def test_keep_test_keeps_the_test_set_and_leaves_out_what_is_close_to_it(tmp_path: Path) -> None:
    rng = random.Random(12)
    test = {f"test{i}": random_protein(rng, 150, STANDARD_RESIDUES) for i in range(6)}
    near = {"near0": point_mutant(test["test0"], 0.9, rng),
            "near3": point_mutant(test["test3"], 0.6, rng)}  # fmt: skip
    pool = {f"pool{i}": random_protein(rng, 150, STANDARD_RESIDUES) for i in range(20)}
    for number, members in enumerate(families(rng, 3, 3, 0.75)):
        pool |= {f"fam{number}_{i}": sequence for i, sequence in enumerate(members)}
    items = list((pool | near).items())
    write_fasta(tmp_path / "data/train/Alpha.fasta", items[: len(items) * 3 // 4])
    write_fasta(tmp_path / "data/validation/Alpha.fasta", items[len(items) * 3 // 4 :])
    write_fasta(tmp_path / "data/test/Alpha.fasta", list(test.items()))
    out = tmp_path / "out"
    _split(str(tmp_path / "data"), "--keep-test", "--identity", str(IDENTITY), "--out", str(out))
    found = _records(out)
    assert found["test"] == test  # untouched
    kept = (out / "test/Alpha.fasta").read_text()
    assert kept == (tmp_path / "data/test/Alpha.fasta").read_text()
    with (out / DROPPED_FILE).open() as handle:
        dropped = {row["id"]: row for row in csv.DictReader(handle, delimiter="\t")}
    assert set(dropped) == set(near)
    assert dropped["near0"]["nearest_test_id"] == "test0"
    assert float(dropped["near0"]["identity"]) == pytest.approx(0.9, abs=0.02)
    assert set(found["train"]) | set(found["validation"]) == set(pool)
    assert _independent_hits(test, found["train"] | found["validation"], tmp_path / "check") == []
    summary = json.loads((out / SUMMARY_FILE).read_text())
    assert summary["dropped"] == 2 and summary["splits"]["test"]["clusters"] is None


def test_without_mmseqs_data_split_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_families(tmp_path / "data", seed=1)
    monkeypatch.setenv(MMSEQS_ENV, str(tmp_path / "nowhere" / "mmseqs"))
    assert main(["data", "split", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.count("error:") == 1 and "apt install mmseqs2" in error
    assert "brew install mmseqs2" in error and "conda install -c bioconda mmseqs2" in error
    assert not (tmp_path / "out").exists()


def test_an_existing_output_is_never_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_families(tmp_path / "data", seed=1)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "mine.txt").write_text("keep me")
    assert main(["data", "split", str(tmp_path / "data"), "--out", str(tmp_path / "out")]) == 2
    assert "already exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "out" / "mine.txt").read_text() == "keep me"


def test_bad_fractions_are_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["data", "split", str(tmp_path), "--out", str(tmp_path / "out"), "--fractions"]
    assert main([*args, "0.8", "0.3", "0.1"]) == 2
    error = capsys.readouterr().err
    assert "--fractions 0.8 0.3 0.1: give three shares >= 0 that sum to 1" in error


# --- without MMseqs2: layouts and balance ------------------------------------------------------


class _EveryoneAlone:
    """A stand-in for MMseqs2: each sequence its own cluster, no pair similar."""

    threads = 1

    def __init__(self, threads: int | None = None) -> None:
        pass

    def version(self) -> str:
        return "stand-in"

    def cluster(self, sequences: list[str], identity: float, coverage: float) -> list[int]:
        return list(range(len(sequences)))

    def search(self, *args: object, **kwargs: object) -> list[object]:
        return []


@pytest.fixture
def alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(split_module, "MMseqs", _EveryoneAlone)


def _proteins(count: int, seed: int = 0) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    return [(f"P{i}", random_protein(rng, rng.randint(30, 60), STANDARD_RESIDUES))
            for i in range(count)]  # fmt: skip


def _write_table(path: Path, rows: list[dict[str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    with path.open("w", newline="") as handle:
        delimiter = "\t" if ".tsv" in path.name else ","
        writer = csv.DictWriter(handle, list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


def _layout(kind: str, root: Path) -> tuple[Path, Task]:
    """A small dataset in one layout: 30 records with 3 labels (or per-residue targets)."""
    proteins = _proteins(30)
    splits = [SPLITS[i % 3] for i in range(30)]
    labels = [LABELS[i % 3] for i in range(30)]
    rows = [
        {"id": name, "sequence": sequence, "label": label, "note": f"n{name}", "split": split}
        for (name, sequence), split, label in zip(proteins, splits, labels, strict=True)
    ]
    if kind in ("label folders", "label files"):
        files: dict[Path, list[tuple[str, str]]] = {}
        for row in rows:
            folder = root / row["split"] if kind == "label folders" else root
            files.setdefault(folder / f"{row['label']}.fasta", []).append(
                (row["id"], row["sequence"])
            )
        for path, records in files.items():
            write_fasta(path, records)  # headers: '>id synthetic'
        return root, Task.MULTICLASS
    if kind in ("csv with split", "parquet with split", "tsv without split"):
        suffix = {"csv with split": "csv", "parquet with split": "parquet"}.get(kind, "tsv")
        if kind == "tsv without split":
            rows = [{k: v for k, v in row.items() if k != "split"} for row in rows]
        return _write_table(root / f"proteins.{suffix}", rows), Task.MULTICLASS
    if kind == "tsv per split":
        for split in SPLITS:
            chosen = [{k: v for k, v in r.items() if k != "split"} for r in rows
                      if r["split"] == split]  # fmt: skip
            _write_table(root / f"{split}.tsv", chosen)
        return root, Task.MULTICLASS
    root.mkdir(parents=True)
    if kind.startswith("fasta key=value"):
        with_split = kind == "fasta key=value"
        lines = []
        for r in rows:
            split = f" split={r['split']}" if with_split else ""
            lines.append(f">{r['id']} label={r['label']}{split} x=1\n{r['sequence']}\n")
        text = "".join(lines)
        (root / "proteins.fasta").write_text(text)
        return root / "proteins.fasta", Task.MULTICLASS
    if kind == "flip folder":
        counts = {"train": 12, "validation": 9, "test": 9}
        write_flip(root, counts, lambda sequence, i: "CHE"[i % 3], regression=False)
        return root, Task.RESIDUE_CLASSIFICATION
    assert kind == "biotrainer fasta"
    text = "".join(
        f">{r['id']} TARGET={';'.join(f'{i % 5}.5' for i in range(len(r['sequence'])))} "
        f"SET={r['split']}\n{r['sequence']}\n"
        for r in rows
    )
    (root / "residues.fasta").write_text(text)
    return root / "residues.fasta", Task.RESIDUE_REGRESSION


LAYOUTS = [
    "label folders", "label files", "csv with split", "parquet with split", "tsv without split",
    "tsv per split", "fasta key=value", "fasta key=value without split", "flip folder",
    "biotrainer fasta",
]  # fmt: skip


def _read(path: Path, task: Task) -> SplitRecords:
    """Every record of a dataset, split or not (what data split reads)."""
    kind = task_class(task)
    return read_splits(DataConfig(path=path), kind, kind.default_target_columns(), UNSPLIT)


def _content(found: SplitRecords) -> Counter[tuple[str, str, str, str | None]]:
    return Counter(
        (r.id, r.sequence, str(r.target), r.mask) for recs in found.splits.values() for r in recs
    )


@pytest.mark.parametrize("kind", LAYOUTS)
def test_each_layout_is_written_as_it_was_read(
    kind: str, tmp_path: Path, alone: None, capsys: pytest.CaptureFixture[str]
) -> None:
    path, task = _layout(kind, tmp_path / "in")
    _split(str(path), "--task", task.value, "--fractions", "0.5", "0.25", "0.25", "--out",
           str(tmp_path / "out"))  # fmt: skip
    written = Path(json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())["data_path"])
    assert f"data.path={written}" in capsys.readouterr().out
    before, after = _read(path, task), _read(written, task)
    # The same layout (a folder of label files gains its split folders), every record once
    # with its target and mask, and every split there.
    expected = Layout.LABEL_FOLDERS if before.form is Layout.LABEL_FILES else before.form
    assert after.form is expected
    assert _content(after) == _content(before)
    assert sorted(after.splits) == sorted(SPLITS)
    assert sorted(len(records) for records in after.splits.values()) == [7, 8, 15]
    report = check_dataset(written, task)
    assert report.ok, report.errors
    if kind.startswith(("csv", "parquet", "tsv")):
        _assert_columns_kept(path, written)
    if kind == "label folders":  # headers as they were
        assert ">P0 synthetic" in "".join(p.read_text() for p in written.rglob("*.fasta"))
    if kind.startswith("fasta key=value"):
        text = written.read_text()
        assert text.count(" x=1") == 30 and text.count(" split=") == 30


def _assert_columns_kept(before: Path, written: Path) -> None:
    """Every column of the input (and its values) is in the output, with a split column."""
    sources = [before] if before.is_file() else sorted(before.iterdir())
    outputs = [written] if written.is_file() else sorted(written.glob("*.tsv"))
    rows_in = {r["id"]: r for s in sources for r in read_table(s).rows}
    rows_out = {r["id"]: r for s in outputs for r in read_table(s).rows}
    assert set(rows_in) == set(rows_out)
    for name, row in rows_in.items():
        assert {k: v for k, v in rows_out[name].items() if k != "split"} == {
            k: v for k, v in row.items() if k != "split"
        }
    if written.is_file():
        assert "split" in read_table(written).columns


def test_labels_are_balanced_as_well_as_clusters_allow(tmp_path: Path, alone: None) -> None:
    """300 loners, labels 60/30/10%: every split's label shares within 1 point of the whole."""
    rng = random.Random(2)
    for label, count in (("Common", 180), ("Middling", 90), ("Rare", 30)):
        write_fasta(tmp_path / "data" / f"{label}.fasta",
                    [(f"{label}{i}", random_protein(rng, 40, STANDARD_RESIDUES))
                     for i in range(count)])  # fmt: skip
    _split(str(tmp_path / "data"), "--out", str(tmp_path / "out"))
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    for split, share in zip(SPLITS, (0.8, 0.1, 0.1), strict=True):
        row = summary["splits"][split]
        assert row["sequences"] == round(300 * share)
        assert row["label_shares_off_by"]["max"] <= 0.01, (split, row)


def test_flip_headers_name_the_new_split(tmp_path: Path, alone: None) -> None:
    write_flip(tmp_path / "in", {"train": 12, "validation": 9, "test": 9}, lambda s, i: "C", False)
    _split(str(tmp_path / "in"), "--task", "residue_classification", "--out", str(tmp_path / "o"))
    headers = [line for line in (tmp_path / "o/labels.fasta").read_text().splitlines()
               if line.startswith(">")]  # fmt: skip
    allowed = {f" {value}" for value in FLIP_SPLITS.values()}
    assert all(any(h.endswith(a) for a in allowed) for h in headers), headers


class _SamePrefix(_EveryoneAlone):
    """A stand-in for MMseqs2 that clusters nothing but finds every pair sharing a prefix.

    What greedy set cover leaves behind, at its worst: similar pairs in different clusters.
    """

    def search(
        self, queries: list[str], targets: list[str], coverage: float, min_identity: float = 0.0
    ) -> list[Alignment]:
        return [
            Alignment(q, t, 0.9, 1.0, 1.0, 1e-30, 100.0)
            for q, query in enumerate(queries)
            for t, target in enumerate(targets)
            if query[:8] == target[:8]
        ]


def test_pairs_the_check_finds_are_merged_until_none_straddles_the_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(split_module, "MMseqs", _SamePrefix)
    rng = random.Random(5)
    records = []
    for family in range(20):
        prefix = random_protein(rng, 8, STANDARD_RESIDUES)
        records += [(f"f{family}_{i}", prefix + random_protein(rng, 30, STANDARD_RESIDUES))
                    for i in range(5)]  # fmt: skip
    records += [(f"lone{i}", random_protein(rng, 38, STANDARD_RESIDUES)) for i in range(40)]
    write_fasta(tmp_path / "data" / "Alpha.fasta", records)
    _split(str(tmp_path / "data"), "--out", str(tmp_path / "out"))
    found = _records(tmp_path / "out")
    train_prefixes = {sequence[:8] for sequence in found["train"].values()}
    held_out = found["validation"] | found["test"]
    assert not any(sequence[:8] in train_prefixes for sequence in held_out.values())
    assert len(held_out) >= 20  # families moved whole, the held-out splits not emptied
    summary = json.loads((tmp_path / "out" / SUMMARY_FILE).read_text())
    assert summary["rounds"] >= 2 and summary["groups"] < summary["clusters"]
