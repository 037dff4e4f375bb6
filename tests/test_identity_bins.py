"""Metrics by identity to train: each evaluated protein lands in its bin, scored on its own.

Planted point mutants of training proteins (98%, 85%, 60%) are predicted right and unrelated
proteins wrong, so each bin's accuracy is known exactly; evaluate adds the table to metrics.json,
the terminal and the report page.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from tests.helpers import STANDARD_RESIDUES, point_mutant, random_protein, requires_mmseqs

from esmtune.cli import main
from esmtune.data.fasta import SequenceRecord
from esmtune.data.homology import MMSEQS_ENV
from esmtune.identity_bins import identity_bin_lines, metrics_by_identity
from esmtune.tasks import MulticlassTask


def _record(name: str, sequence: str, label: str = "A") -> SequenceRecord:
    return SequenceRecord(id=name, sequence=sequence, target=label, source=f"{name}.fasta")


@requires_mmseqs
def test_each_bin_is_scored_on_its_own_proteins() -> None:
    rng = random.Random(3)
    train = [_record(f"t{i}", random_protein(rng, 150, STANDARD_RESIDUES)) for i in range(8)]
    planted = [(0.98, 3), (0.85, 2), (0.60, 2)]  # identity, how many copies
    tested, right = [], []
    for identity, count in planted:
        for k in range(count):
            source = train[len(tested) % len(train)].sequence
            tested.append(_record(f"c{identity}-{k}", point_mutant(source, identity, rng)))
            right.append(True)
    for k in range(4):  # unrelated: predicted wrong
        tested.append(_record(f"new{k}", random_protein(rng, 150, STANDARD_RESIDUES)))
        right.append(False)
    task = MulticlassTask(labels=["A", "B"])
    targets = np.zeros(len(tested), dtype=np.int64)
    outputs = np.array([[0.9, 0.1] if ok else [0.2, 0.8] for ok in right])

    found = metrics_by_identity(task, tested, targets, outputs, train, coverage=0.8)
    rows = {row[0]: row for row in found["rows"]}
    assert found["columns"][:3] == ["identity to train", "proteins", "accuracy"]
    assert rows["≥95%"][1:3] == [3, 1.0]
    assert rows["80–95%"][1:3] == [2, 1.0]
    assert rows["50–80%"][1:3] == [2, 1.0]
    assert rows["no hit"][1:3] == [4, 0.0]
    assert "<30%" not in rows  # empty bins are left out
    text = "\n".join(identity_bin_lines({"by_identity": found}))
    assert "no hit" in text and "fewer than 10 proteins" in text


def test_without_mmseqs_the_bins_are_skipped_with_the_reason(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(MMSEQS_ENV, str(tmp_path / "no-such-mmseqs"))
    task = MulticlassTask(labels=["A", "B"])
    record = _record("q", "MKTAYIAKQRQISFVKSHFSRQ")
    found = metrics_by_identity(task, [record], np.zeros(1, int), np.array([[0.6, 0.4]]),
                                [record], coverage=0.8)  # fmt: skip
    assert "skipped" in found and "mmseqs" in found["skipped"].lower()
    assert identity_bin_lines({"by_identity": found})[0].startswith(
        "metrics by identity to train: not measured"
    )


@requires_mmseqs
def test_evaluate_reports_metrics_by_identity(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    assert main(["evaluate", str(run), "--resamples", "0", "--skip-baseline"]) == 0
    shown = capsys.readouterr().out
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    found = metrics["by_identity"]
    assert sum(row[1] for row in found["rows"]) == metrics["n"]  # every protein in one bin
    assert "metrics by identity to train (MMseqs2" in shown
    assert "identity to train" in (run / "eval" / "test" / "report.html").read_text()

    assert main(["evaluate", str(run), "--resamples", "0", "--skip-identity"]) == 0
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["by_identity"] == {"skipped": "asked not to (--skip-identity)"}
