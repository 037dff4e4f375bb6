"""Bootstrap intervals over proteins and the baseline beside every evaluation.

The intervals are checked against resamples rebuilt by hand from the documented draw (resample
r is the r-th ``integers(0, n, n)`` of ``default_rng(seed)``); each task's weighted shortcut
against its own ``metrics`` on rebuilt resamples; and ``esmtune evaluate`` on tiny trained runs
for what metrics.json and the terminal then hold.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest
import yaml
from sklearn.metrics import f1_score, matthews_corrcoef
from tests.helpers import tiny_overrides, write_flip

from esmtune.cli import main
from esmtune.intervals import Scored, bootstrap, compare, percentile_interval, verdict
from esmtune.tasks import TaskSpec, task_class
from esmtune.tasks.multiclass import MulticlassTask


def _hand_resamples(proteins: int, resamples: int, seed: int) -> list[np.ndarray]:
    """The proteins each resample draws, as the intervals module documents the draw."""
    generator = np.random.default_rng(seed)
    return [generator.integers(0, proteins, size=proteins) for _ in range(resamples)]


def _ten_proteins() -> tuple[np.ndarray, np.ndarray]:
    """Three classes; 7 of 10 proteins predicted right."""
    targets = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2, 2])
    predicted = np.array([0, 0, 1, 1, 1, 2, 2, 2, 0, 2])
    return targets, np.eye(3)[predicted] * 0.8 + 0.2 / 3


# --- the bootstrap itself ---------------------------------------------------------------------


def test_intervals_match_a_hand_computation_on_ten_proteins() -> None:
    targets, outputs = _ten_proteins()
    task = MulticlassTask(labels=["a", "b", "c"])
    intervals, _ = compare(targets, Scored(task, outputs), None, resamples=1000, seed=7)
    correct = outputs.argmax(axis=1) == targets
    accuracy = [correct[drawn].mean() for drawn in _hand_resamples(10, 1000, seed=7)]
    low, high = np.percentile(accuracy, [2.5, 97.5])
    assert intervals["accuracy"] == {
        "low": pytest.approx(low, abs=1e-12), "high": pytest.approx(high, abs=1e-12),
        "undefined": 0,
    }  # fmt: skip
    assert low < 0.7 < high


def test_macro_f1_and_mcc_intervals_match_scikit_learn_on_the_resamples() -> None:
    targets, outputs = _ten_proteins()
    task = MulticlassTask(labels=["a", "b", "c"])
    intervals, _ = compare(targets, Scored(task, outputs), None, resamples=200, seed=7)
    predicted = outputs.argmax(axis=1)
    macro_f1, mcc = [], []
    for drawn in _hand_resamples(10, 200, seed=7):
        truth, guess = targets[drawn], predicted[drawn]
        macro_f1.append(f1_score(truth, guess, average="macro", labels=[0, 1, 2], zero_division=0))
        mcc.append(matthews_corrcoef(truth, guess))
    for name, values in (("macro_f1", macro_f1), ("mcc", mcc)):
        low, high = np.percentile(values, [2.5, 97.5])
        assert intervals[name]["low"] == pytest.approx(low, abs=1e-12), name
        assert intervals[name]["high"] == pytest.approx(high, abs=1e-12), name


def test_the_same_seed_gives_the_same_intervals_and_another_seed_others() -> None:
    targets, outputs = _ten_proteins()
    model = Scored(MulticlassTask(labels=["a", "b", "c"]), outputs)
    first, _ = compare(targets, model, None, resamples=300, seed=3)
    again, _ = compare(targets, model, None, resamples=300, seed=3)
    other, _ = compare(targets, model, None, resamples=300, seed=4)
    assert first == again
    assert first != other


def test_per_residue_resamples_draw_whole_chains() -> None:
    """One chain of 5 residues all right, one of 15 all wrong: drawing two chains gives a
    residue accuracy of 1, 5/20 or 0 and nothing else; drawing residues would give many more."""
    task = task_class("residue_classification")(labels=["H", "E", "C"])
    targets = np.empty(2, dtype=object)
    outputs = np.empty(2, dtype=object)
    targets[0], outputs[0] = np.zeros(5, dtype=np.int64), np.tile([1.0, 0.0, 0.0], (5, 1))
    targets[1], outputs[1] = np.zeros(15, dtype=np.int64), np.tile([0.0, 1.0, 0.0], (15, 1))
    (values,) = bootstrap(
        [lambda weights: task.resampled_scores(targets, outputs, weights)], 2, 400, seed=0
    )
    assert set(np.round(values["accuracy"], 12)) == {0.0, 0.25, 1.0}
    # And the share of each value is the chance of drawing those chains: 1/4, 1/2, 1/4.
    assert np.mean(values["accuracy"] == 0.25) == pytest.approx(0.5, abs=0.08)


def test_undefined_resamples_are_counted_and_left_out() -> None:
    """One positive among ten: every resample that misses it has no ROC-AUC."""
    task = task_class("binary")(labels=["no", "yes"])
    targets = np.array([1.0, *[0.0] * 9], dtype=np.float32)
    outputs = np.linspace(0.9, 0.0, 10)
    intervals, _ = compare(targets, Scored(task, outputs), None, resamples=500, seed=1)
    missed = sum(0 not in drawn for drawn in _hand_resamples(10, 500, seed=1))
    assert missed > 100  # (9/10)^10: about a third
    assert intervals["roc_auc"]["undefined"] == missed
    assert intervals["pr_auc"]["undefined"] == missed
    assert intervals["roc_auc"]["low"] == intervals["roc_auc"]["high"] == 1.0  # ranked first
    assert intervals["mcc"]["undefined"] == 0  # MCC is 0, not undefined, with one class
    assert percentile_interval(np.full(4, np.nan)) == {"low": None, "high": None, "undefined": 4}


def test_the_verdict_follows_each_metric_direction() -> None:
    assert verdict("macro_f1", 0.02, 0.1) == "better"
    assert verdict("macro_f1", -0.1, -0.02) == "worse"
    assert verdict("macro_f1", -0.01, 0.05) == "inconclusive"
    assert verdict("rmse", -0.3, -0.1) == "better"  # a smaller error
    assert verdict("rmse", 0.1, 0.3) == "worse"
    assert verdict("mcc", None, None) is None


# --- each task's weighted shortcut gives what its metrics give ------------------------------------


def _chains(rng: np.random.Generator, count: int, classes: int | None) -> tuple[np.ndarray, ...]:
    """Per-residue targets and outputs: masked residues, unread (NaN) rows, tied values."""
    targets, outputs = np.empty(count, dtype=object), np.empty(count, dtype=object)
    for chain in range(count):
        length = int(rng.integers(1, 12))
        masked = rng.random(length) < 0.2
        if classes is None:
            targets[chain] = np.where(masked, np.nan, np.round(rng.normal(size=length), 1))
            rows = np.round(rng.normal(size=(length, 1)), 1)
        else:
            targets[chain] = np.where(masked, -100, rng.integers(0, classes, length))
            rows = rng.dirichlet(np.ones(classes), length)
        rows[rng.random(length) < 0.1] = np.nan
        outputs[chain] = rows
    return targets, outputs


def _case(task: str, rng: np.random.Generator, n: int) -> tuple[TaskSpec, np.ndarray, np.ndarray]:
    if task == "multiclass":
        spec = task_class(task)(labels=["a", "b", "c", "d"])
        return spec, rng.integers(0, 4, n), rng.dirichlet(np.ones(4), n)
    if task == "binary":  # rounded scores: ties; few positives: resamples without any
        spec = task_class(task)(labels=["no", "yes"], thresholds=[0.4])
        return spec, (rng.random(n) < 0.15).astype(np.float32), np.round(rng.random(n), 1)
    if task == "multilabel":  # one label never true, some proteins without labels
        spec = task_class(task)(labels=list("abcde"), thresholds=[0.3, 0.5, 0.5, 0.6, 0.5])
        targets = (rng.random((n, 5)) < 0.3).astype(np.float32)
        targets[:, 4] = 0
        return spec, targets, np.round(rng.random((n, 5)), 2)
    if task == "regression":  # the second target has ties
        spec = task_class(task)(labels=["x", "y"])
        targets = rng.normal(size=(n, 2))
        targets[:, 1] = np.round(targets[:, 1])
        return spec, targets, np.round(targets + rng.normal(size=(n, 2)), 1)
    if task == "residue_sites":  # two classes, decided at a tuned threshold
        spec = task_class("residue_classification")(labels=["0", "1"], thresholds=[0.3])
        return spec, *_chains(rng, n, 2)
    classes = 3 if task == "residue_classification" else None
    spec = task_class(task)(labels=["H", "E", "C"] if classes else ["value"])
    return spec, *_chains(rng, n, classes)


@pytest.mark.parametrize(
    "task",
    [
        "multiclass",
        "binary",
        "multilabel",
        "regression",
        "residue_classification",
        "residue_sites",
        "residue_regression",
    ],
)
def test_each_task_resampled_scores_are_its_metrics_on_the_resamples(task: str) -> None:
    rng = np.random.default_rng(5)
    spec, targets, outputs = _case(task, rng, 30)
    weights = np.stack(
        [np.bincount(drawn, minlength=30) for drawn in _hand_resamples(30, 40, seed=2)]
    ).astype(float)
    fast = spec.resampled_scores(targets, outputs, weights)
    with warnings.catch_warnings():  # sklearn on resamples with one class says so
        warnings.simplefilter("ignore")
        rebuilt = TaskSpec.resampled_scores(spec, targets, outputs, weights)
    assert set(fast) >= set(spec.headline_metrics)
    for name in spec.headline_metrics:
        np.testing.assert_allclose(fast[name], rebuilt[name], atol=1e-9, err_msg=name)


# --- esmtune evaluate ---------------------------------------------------------------------------


def test_evaluate_writes_intervals_and_the_baseline_beside_the_score(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    assert main(["evaluate", str(run), "--resamples", "200", "--bootstrap-seed", "5"]) == 0
    shown = capsys.readouterr().out
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())

    bootstrap_info = metrics["intervals"]
    assert {k: bootstrap_info[k] for k in ("level", "resamples", "seed", "proteins")} == {
        "level": 0.95, "resamples": 200, "seed": 5, "proteins": 48,
    }  # fmt: skip
    assert list(bootstrap_info["metrics"]) == ["accuracy", "macro_f1", "mcc"]
    for name, interval in bootstrap_info["metrics"].items():
        assert interval["low"] <= metrics[name] <= interval["high"], name

    baseline = metrics["baseline"]
    assert baseline["name"] == "composition baseline"
    assert baseline["fitted_on"].startswith("the run's train split, 120 proteins")
    assert set(baseline["metrics"]) == set(baseline["intervals"]) == set(baseline["difference"])
    accuracy = baseline["difference"]["accuracy"]
    assert accuracy["value"] == pytest.approx(metrics["accuracy"] - baseline["metrics"]["accuracy"])
    assert accuracy["low"] <= accuracy["value"] <= accuracy["high"]
    assert accuracy["verdict"] in ("better", "worse", "inconclusive")

    assert "95% intervals: 200 bootstrap resamples of the 48 proteins (seed 5)" in shown
    low, high = (
        bootstrap_info["metrics"]["macro_f1"]["low"],
        bootstrap_info["metrics"]["macro_f1"]["high"],
    )
    assert f"macro-F1  {metrics['macro_f1']:.3f} [{low:.3f}, {high:.3f}]" in shown
    assert "model − baseline: " in shown and "baseline: composition baseline, " in shown


def test_evaluate_without_intervals_or_baseline_says_so(
    lora_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    assert main(["evaluate", str(run), "--resamples", "0", "--skip-baseline"]) == 0
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert "intervals" not in metrics
    assert metrics["baseline"] == {"skipped": "asked not to (--skip-baseline)"}
    assert "baseline: skipped (asked not to (--skip-baseline))" in capsys.readouterr().out
    assert main(["evaluate", str(run), "--resamples", "-1"]) == 2  # refused, before any work
    assert "resamples=-1: Input should be greater than or equal to 0" in capsys.readouterr().err


def test_evaluate_per_residue_resamples_chains_beside_the_window_baseline(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    counts = {"train": 24, "validation": 6, "test": 10}
    data = write_flip(tmp_path / "data", counts, lambda s, i: "H" if s[i] in "LV" else "C", False)
    overrides = tiny_overrides(tiny_model_dir, data, tmp_path / "runs", "residues")
    settings = ["task=residue_classification", "training.epochs=1", "data.max_length=32"]
    assert main(["train", *overrides, *settings]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "runs" / "residues"), "--resamples", "100"]) == 0
    metrics = json.loads((tmp_path / "runs/residues/eval/test/metrics.json").read_text())
    assert metrics["intervals"]["proteins"] == 10 < metrics["n"]  # chains, not residues
    assert metrics["baseline"]["name"] == "one-hot window baseline"
    assert "one-hot windows of 15 residues" in metrics["baseline"]["model"]
    assert "resamples of the 10 proteins" in capsys.readouterr().out


def test_evaluate_on_other_data_fits_the_baseline_on_the_runs_own_train_split(
    lora_run: Path, learnable_data: Path, tmp_path: Path
) -> None:
    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    assert main(["evaluate", str(run), "--data", str(learnable_data), "--resamples", "0"]) == 0
    metrics = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert metrics["baseline"]["fitted_on"].startswith("the run's train split, 120 proteins")
    assert metrics["baseline"]["difference"]["mcc"]["verdict"] is None  # no resamples

    config = yaml.safe_load((run / "config.yaml").read_text())
    config["data"]["path"] = str(tmp_path / "moved")  # the training data is gone
    (run / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["evaluate", str(run), "--data", str(learnable_data), "--resamples", "0"]) == 0
    skipped = json.loads((run / "eval" / "test" / "metrics.json").read_text())["baseline"]
    assert skipped["skipped"].startswith("the run's train split could not be read: ")
    assert str(tmp_path / "moved") in skipped["skipped"]
