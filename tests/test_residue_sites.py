"""Two-class residue classification (site / not site), decided like binary; loss weights.

Sites are rare (about 4% of residues): K or R right after an acidic residue. The run learns them
with a positive weight, tunes its threshold on validation, and reports the positive class's
precision, recall, F1, ROC-AUC and PR-AUC; predictions are decided at that threshold everywhere.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
)
from tests.helpers import tiny_overrides, write_flip

from esmtune.cli import main
from esmtune.config import ObjectiveConfig, load_config
from esmtune.data.batching import IGNORED_CLASS
from esmtune.errors import ConfigError
from esmtune.metrics import residue_classification_metrics
from esmtune.predict import Predictor
from esmtune.tasks import ResidueClassificationTask, ResidueRegressionTask

COUNTS = {"train": 120, "validation": 40, "test": 40}


def site(sequence: str, i: int) -> str:
    """1 on K/R right after D/E (about 4% of residues), else 0."""
    return "1" if sequence[i] in "KR" and i > 0 and sequence[i - 1] in "DE" else "0"


def _ragged(rows: list[np.ndarray]) -> np.ndarray:
    array = np.empty(len(rows), dtype=object)
    array[:] = rows
    return array


@pytest.fixture(scope="module")
def site_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_flip(tmp_path_factory.mktemp("sites") / "data", COUNTS, site, regression=False)


@pytest.fixture(scope="module")
def site_run(
    tiny_model_dir: Path, site_data: Path, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("site_runs")
    overrides = tiny_overrides(tiny_model_dir, site_data, out, "sites")
    settings = [
        "task=residue_classification", "finetune.mode=full", "training.epochs=3", "model.head=cnn",
        "model.head_kernel_size=3",
        "objective.pos_weight=balanced", "training.early_stopping.metric=pr_auc",
    ]  # fmt: skip
    assert main(["train", *overrides, *settings]) == 0
    return out / "sites"


def test_two_class_residues_learn_rare_sites_at_a_tuned_threshold(
    site_run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    state = json.loads((site_run / "labels.json").read_text())
    assert state["labels"] == ["0", "1"]  # the conventional positive name comes second
    assert state["weights"][0] == 1.0 and state["weights"][1] > 10  # balanced: ~24 to 1
    summary = json.loads((site_run / "metrics.json").read_text())
    assert summary["selection_metric"] == "pr_auc"
    (threshold,) = summary["thresholds"]  # tuned on validation, saved with the best weights

    capsys.readouterr()
    assert main(["evaluate", str(site_run), "--split", "test"]) == 0
    printed = capsys.readouterr().out
    assert f"positive '1' at threshold {threshold:.3f}" in printed
    out = site_run / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["threshold"] == pytest.approx(threshold)
    share = metrics["positives"] / metrics["n"]
    assert 0.02 < share < 0.08, share
    assert metrics["roc_auc"] > 0.9 and metrics["pr_auc"] > 0.5, metrics
    assert metrics["f1"] > 0.5, metrics  # always-positive would score 2 * share / (1 + share)
    assert (out / "roc_pr_curves.png").is_file() and (out / "residue_tracks.png").is_file()

    # Every prediction is decided at the threshold, not by the larger probability.
    sequence = "MKDKLEESVRAADRGNEKLV" * 2
    predictor = Predictor.from_run(site_run)
    (result,) = predictor.predict({"q": sequence})
    assert result["threshold"] == pytest.approx(threshold)
    decided = "".join("1" if p[1] >= threshold else "0" for p in result["probabilities"])
    assert result["prediction"] == decided
    fasta = tmp_path / "q.fasta"
    fasta.write_text(f">q\n{sequence}\n")
    capsys.readouterr()
    assert main(["predict", str(site_run), str(fasta), "--format", "text"]) == 0
    assert f"1 where P(1) >= {threshold:.3f}" in capsys.readouterr().out


def test_positive_class_metrics_match_sklearn_at_the_threshold() -> None:
    rng = np.random.default_rng(3)
    targets, outputs = [], []
    for length in (40, 25, 60):
        target = (rng.random(length) < 0.15).astype(np.int64)
        target[rng.random(length) < 0.1] = IGNORED_CLASS
        positive = np.clip(0.3 * (target == 1) + rng.random(length) * 0.6, 0, 1)
        outputs.append(np.stack([1 - positive, positive], axis=1))
        targets.append(target)
    metrics = residue_classification_metrics(
        _ragged(targets), _ragged(outputs), ["0", "1"], IGNORED_CLASS, threshold=0.4
    )
    true = np.concatenate(targets)
    scores = np.concatenate([o[:, 1] for o in outputs])
    counted = true != IGNORED_CLASS
    true, scores = true[counted], scores[counted]
    decided = (scores >= 0.4).astype(int)
    assert (decided != (scores >= 0.5)).any()  # the threshold changes decisions here
    assert metrics["precision"] == pytest.approx(precision_score(true, decided))
    assert metrics["recall"] == pytest.approx(recall_score(true, decided))
    assert metrics["f1"] == pytest.approx(f1_score(true, decided))
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(true, decided))
    assert metrics["accuracy"] == pytest.approx(np.mean(true == decided))
    assert metrics["roc_auc"] == pytest.approx(roc_auc_score(true, scores))
    assert metrics["pr_auc"] == pytest.approx(average_precision_score(true, scores))
    assert metrics["positives"] == int(true.sum()) and metrics["threshold"] == 0.4
    assert metrics["protein_accuracy"] == pytest.approx(metrics["per_protein_accuracy"]["mean"])


def test_positive_label_is_configurable_and_checked(site_data: Path) -> None:
    from esmtune.data.check import check_dataset

    config = load_config(None, ["task=residue_classification", f"data.path={site_data}",
                                "data.positive_label=0"])  # fmt: skip
    report = check_dataset(config.data, config.task)
    assert report.labels == ["1", "0"]
    assert any("positive class '0'" in note for note in report.notes)

    config = load_config(None, ["task=residue_classification", f"data.path={site_data}",
                                "data.positive_label=B"])  # fmt: skip
    report = check_dataset(config.data, config.task)
    assert any("data.positive_label 'B' is not a label of train (0, 1)" in e for e in report.errors)


def test_positive_class_options_on_three_classes_are_refused(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    three = write_flip(tmp_path / "three", {"train": 12, "validation": 4}, _three_classes, False)
    overrides = tiny_overrides(tiny_model_dir, three, tmp_path / "runs", "x")
    for setting, expected in (
        ("training.early_stopping.metric=pr_auc", "pr_auc scores a positive class"),
        ("objective.pos_weight=3", "use objective.class_weights"),
        ("data.positive_label=H", "data.positive_label applies to two classes"),
    ):
        assert main(["train", *overrides, "task=residue_classification", setting]) == 2
        assert expected in capsys.readouterr().err, setting
    assert not (tmp_path / "runs" / "x").exists()  # refused before a run directory was made


def _three_classes(sequence: str, i: int) -> str:
    return {"L": "H", "V": "E"}.get(sequence[i], "C")


def test_class_weights_weigh_each_residue_class() -> None:
    targets = _ragged([np.array([0, 0, 0, 1, IGNORED_CLASS]), np.array([2, 0, IGNORED_CLASS])])
    task = ResidueClassificationTask(
        labels=["C", "E", "H"], objective=ObjectiveConfig(class_weights="balanced")
    )
    task.fit(targets)
    assert task.weights == pytest.approx([6 / (3 * 4), 6 / 3, 6 / 3])

    task = ResidueClassificationTask(
        labels=["C", "E", "H"], objective=ObjectiveConfig(class_weights={"E": 4.0})
    )
    task.fit(targets)
    assert task.weights == [1.0, 4.0, 1.0]
    logits = torch.randn(1, 4, 3)
    batch = torch.tensor([[IGNORED_CLASS, 1, 0, IGNORED_CLASS]])
    per_residue = torch.nn.functional.cross_entropy(logits[0, 1:3], batch[0, 1:3], reduction="none")
    expected = (4.0 * per_residue[0] + per_residue[1]) / 2  # weighted sum / residues counted
    assert torch.allclose(task.loss(logits, batch), expected)

    bad = ResidueClassificationTask(
        labels=["C", "H"], objective=ObjectiveConfig(class_weights={"X": 2.0})
    )
    with pytest.raises(ConfigError, match="names X, which are not residue classes"):
        bad.fit(targets)


def test_huber_loss_for_residue_values_ignores_masked_residues() -> None:
    task = ResidueRegressionTask(
        labels=["value"], objective=ObjectiveConfig(regression_loss="huber", huber_delta=0.5),
        target_mean=[0.0], target_std=[1.0],
    )  # fmt: skip
    logits = torch.tensor([[[0.0], [3.0], [0.2], [9.0]]], requires_grad=True)
    targets = torch.tensor([[math.nan, 0.0, 0.0, math.nan]])
    loss = task.loss(logits, targets)
    expected = (0.5 * (3.0 - 0.25) + 0.5 * 0.2**2) / 2  # linear beyond delta, quadratic within
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    assert logits.grad is not None and logits.grad[0, [0, 3]].abs().sum() == 0
    config = load_config(None, ["task=residue_regression", "objective.regression_loss=huber",
                                "training.early_stopping.metric=protein_spearman"])  # fmt: skip
    assert config.selection_metric == "protein_spearman"
