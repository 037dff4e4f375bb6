"""Calibration: the ECE by hand, fits that make over-confident probabilities honest, folding.

A model that is right 60% of the time when it says 0.95 misleads; temperature (softmax) and Platt
scaling (sigmoid) fitted on validation must lower the ECE on held-out data without changing a
single ranking, and the hf export (whose layer has the calibration folded in) must give the
same calibrated probabilities.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from scipy.special import softmax
from sklearn.metrics import roc_auc_score
from tests.helpers import tiny_overrides

from esmtune.calibration import fit_platt, fit_temperature, reliability
from esmtune.cli import main
from esmtune.config import ObjectiveConfig
from esmtune.data.batching import IGNORED_CLASS
from esmtune.predict import Predictor
from esmtune.tasks import (
    BinaryTask,
    MulticlassTask,
    MultilabelTask,
    ResidueClassificationTask,
    TaskSpec,
)


def test_reliability_matches_a_hand_computation() -> None:
    probabilities = np.array([0.05, 0.1, 0.5, 0.55, 0.9, 1.0])
    outcomes = np.array([0, 1, 0, 1, 1, 1])
    result = reliability(probabilities, outcomes, bins=2)
    # Bin [0, 0.5]: 0.05, 0.1, 0.5 (mean 0.2167, 1 of 3 happened); (0.5, 1]: 0.55, 0.9, 1.0
    # (mean 0.8167, 3 of 3).
    low, high = result["bins"]
    assert (low["count"], high["count"]) == (3, 3)
    assert low["confidence"] == pytest.approx(0.65 / 3) and low["frequency"] == pytest.approx(1 / 3)
    expected = 0.5 * abs(1 / 3 - 0.65 / 3) + 0.5 * abs(1 - 2.45 / 3)
    assert result["ece"] == pytest.approx(expected)
    assert reliability(np.zeros(0), np.zeros(0))["ece"] is None


def _overconfident(seed: int, n: int = 3000) -> tuple[np.ndarray, np.ndarray]:
    """Logits 3x sharper than the truth: classes drawn from softmax(z), reported softmax(3z)."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, 4)) * 1.5
    truth = softmax(z, axis=1)
    targets = np.array([rng.choice(4, p=p) for p in truth])
    return softmax(3 * z, axis=1), targets


def test_temperature_recovers_the_sharpening_and_lowers_ece() -> None:
    outputs, targets = _overconfident(0)
    assert fit_temperature(np.log(outputs), targets) == pytest.approx(3.0, rel=0.15)

    task = MulticlassTask(labels=["a", "b", "c", "d"])
    calibration = task.fit_calibration(targets, outputs)  # fitted on "validation"
    held_out, held_targets = _overconfident(1)
    calibrated = task.calibrated(held_out, calibration)
    before = reliability(*task.reliability_pairs(held_targets, held_out))["ece"]
    after = reliability(*task.reliability_pairs(held_targets, calibrated))["ece"]
    assert before > 0.1 and after < before / 3, (before, after)
    assert (calibrated.argmax(1) == held_out.argmax(1)).all()  # no decision changes


def test_platt_scaling_lowers_ece_and_keeps_the_ranking() -> None:
    rng = np.random.default_rng(2)
    z = rng.normal(size=4000) * 2
    targets = (rng.random(4000) < 1 / (1 + np.exp(-z))).astype(np.float32)
    outputs = 1 / (1 + np.exp(-(4 * z + 1)))  # over-confident and shifted
    task = BinaryTask(labels=["no", "yes"])
    calibration = task.fit_calibration(targets[:2000], outputs[:2000])
    assert calibration["slope"][0] == pytest.approx(0.25, rel=0.2)
    calibrated = task.calibrated(outputs[2000:], calibration)
    pairs = task.reliability_pairs(targets[2000:], outputs[2000:])
    before = reliability(*pairs)["ece"]
    after = reliability(*task.reliability_pairs(targets[2000:], calibrated))["ece"]
    assert after < before / 3, (before, after)
    assert roc_auc_score(targets[2000:], calibrated) == pytest.approx(
        roc_auc_score(targets[2000:], outputs[2000:])
    )
    assert fit_platt(z, np.ones_like(z)) == (1.0, 0.0)  # one class: nothing to fit
    assert fit_platt(z, z < 0) == (1.0, 0.0)  # a reversed ranking is never learned
    assert fit_platt(z, z > 0.5) == (1.0, 0.0)  # separable: no finite slope fits
    separable = np.eye(3)[[0, 1, 2, 0]] * 4  # every validation prediction right
    assert fit_temperature(separable, np.array([0, 1, 2, 0])) == 1.0


def test_multilabel_labels_with_few_examples_share_one_fit() -> None:
    rng = np.random.default_rng(4)
    targets = np.zeros((200, 2), dtype=np.float32)
    targets[:100, 0] = 1  # label a: 100 positives; label b: 3
    targets[:3, 1] = 1
    outputs = np.clip(targets * 0.6 + rng.random((200, 2)) * 0.4, 0.01, 0.99)
    task = MultilabelTask(labels=["a", "b"])
    calibration = task.fit_calibration(targets, outputs)
    shared = fit_platt(task.logits_of(outputs).ravel(), targets.ravel())
    own = fit_platt(task.logits_of(outputs)[:, 0], targets[:, 0])
    assert calibration["slope"] == pytest.approx([own[0], shared[0]])


@pytest.mark.parametrize(
    ("task", "calibration"),
    [
        (MulticlassTask(labels=["a", "b", "c"]), {"temperature": 2.5}),
        (BinaryTask(labels=["n", "p"]), {"slope": [0.4], "intercept": [-0.7]}),
        (MultilabelTask(labels=["a", "b", "c"]), {"slope": [0.5, 2, 1], "intercept": [1, 0, -1]}),
        (ResidueClassificationTask(labels=["0", "1"]), {"slope": [0.3], "intercept": [0.2]}),
        (ResidueClassificationTask(labels=["C", "E", "H"]), {"temperature": 0.7}),
    ],
    ids=["temperature", "platt", "per-label", "residue-sites", "residue-temperature"],
)
def test_calibration_folds_into_the_hf_output_layer(task: TaskSpec, calibration: dict) -> None:
    """What plain transformers computes from the exported layer is esmtune's calibrated output."""
    task.calibration = calibration
    outputs = 1 if isinstance(task, BinaryTask) else len(task.labels)
    weight, bias = torch.randn(outputs, 8, dtype=torch.float64), torch.randn(outputs).double()
    hidden = torch.randn(5, 8, dtype=torch.float64)
    expected = task.activation(hidden @ weight.T + bias)
    folded_weight, folded_bias = task.hf_output_layer(weight, bias)
    folded = hidden @ folded_weight.T + folded_bias
    if task.hf_problem_type == "multi_label_classification":
        got = torch.sigmoid(folded)
    else:
        got = torch.softmax(folded, dim=-1)
        if isinstance(task, BinaryTask):
            got = got[:, 1]
    assert torch.allclose(got.double(), expected.double(), atol=1e-6)


def test_residue_calibration_keeps_unread_residues_unread() -> None:
    task = ResidueClassificationTask(labels=["C", "E", "H"])
    chain = np.array([[0.7, 0.2, 0.1], [np.nan] * 3, [0.1, 0.1, 0.8]])
    outputs = np.empty(1, dtype=object)
    outputs[:] = [chain]
    (calibrated,) = task.calibrated(outputs, {"temperature": 2.0})
    assert np.isnan(calibrated[1]).all()
    assert calibrated[0].argmax() == 0 and calibrated[0, 0] < 0.7  # softer, same class
    targets = np.empty(1, dtype=object)
    targets[:] = [np.array([0, 2, IGNORED_CLASS])]
    probabilities, happened = task.reliability_pairs(targets, outputs)
    assert probabilities.tolist() == [0.7] and happened.tolist() == [True]  # read and counted


def test_a_run_saves_its_calibration_and_predicts_with_it(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "calibrated")
    assert main(["train", *overrides, "training.epochs=2"]) == 0
    run = tmp_path / "calibrated"
    with safe_open(str(run / "model" / "weights.safetensors"), framework="pt") as handle:
        saved = json.loads((handle.metadata() or {})["calibration"])
    temperature = saved["temperature"]
    assert 0.05 <= temperature <= 20
    assert json.loads((run / "metrics.json").read_text())["calibration"] == saved

    calibrated = Predictor.from_run(run)
    raw = Predictor.from_run(run)
    raw.run.task.calibration = None
    sequences = {"a": "MKTAYIAKQRQISFVKSHFSRQ", "b": "GGSGGSGGSLLLLVVVV"}
    for got, plain in zip(calibrated.predict(sequences), raw.predict(sequences), strict=True):
        logits = np.log([plain["probabilities"][x] for x in calibrated.run.task.labels])
        expected = softmax(logits / temperature)
        assert [got["probabilities"][x] for x in calibrated.run.task.labels] == pytest.approx(
            expected, abs=1e-5
        )

    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    report = json.loads((run / "eval" / "test" / "metrics.json").read_text())["calibration"]
    assert report["method"] == "temperature" and report["fitted"] == saved
    before, after = report["before"]["ece"], report["after"]["ece"]
    assert f"calibration: ECE {before:.3f} before, {after:.3f} after temperature" in printed
    assert sum(b["count"] for b in report["after"]["bins"]) == report["after"]["n"] > 0
    assert (run / "eval" / "test" / "reliability.png").stat().st_size > 5_000
    page = (run / "eval" / "test" / "report.html").read_text()
    assert f"{before:.3f} before" in page and "reliability.png" in page


def test_calibration_can_be_switched_off(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "plain")
    assert main(["train", *overrides, "training.epochs=1", "objective.calibrate=false"]) == 0
    assert json.loads((tmp_path / "plain" / "metrics.json").read_text())["calibration"] is None
    assert ObjectiveConfig().calibrate is True
