"""The per-residue baseline: a linear model on one-hot windows of residues.

On chains whose residue classes (values) depend on a residue and its left neighbour, the window
model beats the commonest class (the train mean), a window of 3 beats a window of 1, masked
residues never reach the fit, and `esmtune baseline` prints it beside the trivial predictor.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from tests.helpers import write_flip as flip_folder

from esmtune.baseline import composition_baseline, window_baseline, window_features
from esmtune.cli import main
from esmtune.config import DataConfig
from esmtune.errors import EsmtuneError

COUNTS = {"train": 150, "validation": 20, "test": 40}
ROOT = Path(__file__).resolve().parents[1]


def residue_class(sequence: str, i: int) -> str:
    """H on L/V, E on K/R after D/E (the neighbour decides), else C."""
    if sequence[i] in "LV":
        return "H"
    if sequence[i] in "KR" and i > 0 and sequence[i - 1] in "DE":
        return "E"
    return "C"


def residue_value(sequence: str, i: int) -> float:
    """1 on L/V, plus 2 after D/E (the neighbour decides)."""
    return float(sequence[i] in "LV") + 2.0 * (i > 0 and sequence[i - 1] in "DE")


def write_flip(root: Path, regression: bool, garbage: int = 0) -> Path:
    """A FLIP folder of :data:`COUNTS` random chains whose targets follow this file's rules."""
    rule = residue_value if regression else residue_class
    return flip_folder(root, COUNTS, rule, regression, garbage=garbage)


def test_window_features_one_hot_each_position() -> None:
    features = window_features(["ACX", "W"], window=3).toarray()
    assert features.shape == (4, 3 * 22)
    assert (features.sum(axis=1) == 3).all()  # one column per window position
    first = features[0].reshape(3, 22)
    assert first[0, 21] == 1  # before the chain
    assert first[1, 0] == 1 and first[2, 1] == 1  # A, then C
    assert features[2].reshape(3, 22)[1, 20] == 1  # X: another residue
    assert features[3].reshape(3, 22)[[0, 2], 21].tolist() == [1, 1]  # W alone: beyond both ends
    with pytest.raises(ValueError, match="odd"):
        window_features(["ACD"], window=4)


def test_the_window_beats_the_commonest_class_and_needs_the_neighbour(tmp_path: Path) -> None:
    data = write_flip(tmp_path / "data", regression=False)
    wide = window_baseline(data, "residue_classification", window=3)
    alone = window_baseline(data, "residue_classification", window=1)
    assert wide["trivial_name"] == "always 'C'"
    assert wide["n"] == wide["model"]["n"] > 1000  # residues, the masked ones left out
    assert wide["model"]["accuracy"] > 0.95 and wide["model"]["mcc"] > 0.9
    assert wide["trivial"]["mcc"] == 0 and wide["trivial"]["accuracy"] < 0.8
    # Alone, a K/R residue cannot tell whether an acidic one precedes it.
    assert alone["model"]["macro_f1"] < wide["model"]["macro_f1"] - 0.1
    assert wide["features"] == "one-hot windows of 3 residues"


def test_regression_ranks_residues(tmp_path: Path) -> None:
    data = write_flip(tmp_path / "data", regression=True)
    result = window_baseline(data, "residue_regression", split="validation", window=3)
    assert result["model_name"] == "ridge regression"
    assert result["trivial_name"] == "the train mean"
    # Most values tie (0 or 1), and near-exact predictions order tied residues at random.
    assert result["model"]["spearman"] > 0.5 and result["model"]["r2"] > 0.99
    assert result["trivial"]["r2"] < 0.01


@pytest.mark.parametrize("task", ["residue_classification", "residue_regression"])
def test_masked_residues_never_enter_the_fit(task: str, tmp_path: Path) -> None:
    regression = task == "residue_regression"
    first = window_baseline(write_flip(tmp_path / "a", regression, garbage=0), task, window=5)
    second = window_baseline(write_flip(tmp_path / "b", regression, garbage=1), task, window=5)
    assert (tmp_path / "a" / "labels.fasta").read_text() != (
        tmp_path / "b" / "labels.fasta"
    ).read_text()
    for key in ("model", "trivial"):
        for metric in first["headline"]:
            assert first[key][metric] == pytest.approx(second[key][metric], abs=1e-12)


def test_a_capped_training_set_is_a_seeded_sample(tmp_path: Path) -> None:
    data = DataConfig(path=write_flip(tmp_path / "data", regression=False))
    once = window_baseline(data, "residue_classification", window=3, max_residues=500)
    again = window_baseline(data, "residue_classification", window=3, max_residues=500)
    assert once["model"]["accuracy"] == again["model"]["accuracy"]
    assert once["notes"] and "sample of 500 of train's" in once["notes"][0]
    whole = window_baseline(data, "residue_classification", window=3)
    assert not whole["notes"]
    assert once["trivial"] == whole["trivial"]  # the commonest class of every train residue


def test_wrong_windows_and_tasks_are_refused(tmp_path: Path, capsys) -> None:
    data = write_flip(tmp_path / "data", regression=False)
    with pytest.raises(EsmtuneError, match="positive odd number"):
        window_baseline(data, "residue_classification", window=2)
    with pytest.raises(EsmtuneError, match="one-hot window"):
        composition_baseline(data, "residue_classification")
    assert main(["baseline", str(data), "--task", "multiclass", "--window", "3"]) == 2
    assert "a window of residues applies to per-residue tasks only" in capsys.readouterr().err


def test_the_cli_prints_the_window_baseline_and_the_trivial_one(tmp_path: Path, capsys) -> None:
    data = write_flip(tmp_path / "data", regression=False)
    result = window_baseline(data, "residue_classification", split="validation", window=5)
    argv = ["baseline", str(data), "--task", "residue_classification", "--split", "validation"]
    assert main([*argv, "--window", "5"]) == 0
    first, second = capsys.readouterr().out.splitlines()[:2]
    assert first.startswith(
        "one-hot window baseline (logistic regression on one-hot windows of 5 residues), "
        f"validation n={result['n']} residues of {COUNTS['validation']} chains: "
        f"accuracy {result['model']['accuracy']:.3f}, macro_f1 "
    )
    assert second == (
        f"always 'C': accuracy {result['trivial']['accuracy']:.3f}, macro_f1 "
        f"{result['trivial']['macro_f1']:.3f}, mcc 0.000"
    )
    assert main(argv) == 0  # the default window
    assert "one-hot windows of 15 residues" in capsys.readouterr().out
    assert np.isfinite(result["model"]["mcc"])


def test_the_bundled_example_gives_the_readme_numbers(monkeypatch, capsys) -> None:
    monkeypatch.chdir(ROOT)
    assert main(["baseline", "examples/ss3", "--task", "residue_classification"]) == 0
    model, trivial = capsys.readouterr().out.splitlines()[:2]
    assert model.endswith("test n=20110 residues of 150 chains: "
                          "accuracy 0.627, macro_f1 0.607, mcc 0.425")  # fmt: skip
    assert trivial == "always 'H': accuracy 0.377, macro_f1 0.183, mcc 0.000"
    row = "one-hot windows of 15 residues: Q3 0.627, macro-F1 0.607, MCC 0.425"
    assert row in (ROOT / "README.md").read_text()
    assert (
        "| test       |     20,110 (150)  | 0.627 |    0.607 | 0.425 |"
        in (ROOT / "examples" / "ss3" / "README.md").read_text()
    )
