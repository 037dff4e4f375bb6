"""Binary, multilabel and regression, each trained end to end through the CLI on data that a
2-layer model can learn, then evaluated and used for prediction in every output format."""

from __future__ import annotations

import csv
import io
import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
from tests.helpers import ROOT, readme_commands, tiny_overrides

from esmtune.cli import main
from esmtune.config import load_config

_RESIDUES = {"acidic": "DEDEEDQN", "basic": "KRKRRKQN", "hydrophobic": "LIVLFVMW"}
_NEUTRAL = "STGANQ"


def _segment(rng: random.Random, residues: str, length: int) -> str:
    return "".join(rng.choice(residues) for _ in range(length))


def _train_cli(model_dir: Path, data: Path, out: Path, name: str, *extra: str) -> Path:
    overrides = tiny_overrides(model_dir, data, out, name)
    assert main(["train", *overrides, "training.epochs=5", *extra]) == 0
    return out / name


def _task_run(
    task: str, data: Path, model_dir: Path, runs: pytest.TempPathFactory, *settings: str
) -> Path:
    """A run of ``task`` on ``data``, named after the task; ``settings`` set the task up."""
    return _train_cli(model_dir, data, runs.mktemp("runs"), task, f"task={task}", *settings)


def _predict(run: Path, fmt: str, *args: str, capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert main(["predict", str(run), *args, "--format", fmt]) == 0
    return capsys.readouterr().out


# --- binary: one FASTA file with key=value headers ----------------------------------------


@pytest.fixture(scope="module")
def binary_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Basic-rich proteins are 'yes' (a third of them), acidic-rich ones 'no'."""
    rng = random.Random(1)
    lines = []
    for split, count in {"train": 90, "validation": 30, "test": 45}.items():
        for i in range(count):
            positive = i % 3 == 0
            body = _segment(rng, _RESIDUES["basic" if positive else "acidic"], rng.randint(20, 50))
            body += _segment(rng, _NEUTRAL, rng.randint(5, 20))
            answer = "yes" if positive else "no"
            lines += [f">{split}{i} secreted={answer} split={split}", "M" + body]
    path = tmp_path_factory.mktemp("binary") / "secreted.fasta"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def binary_run(binary_data: Path, tiny_model_dir: Path, tmp_path_factory) -> Path:
    settings = ["data.target_columns=[secreted]", "objective.pos_weight=balanced"]
    settings += ["objective.threshold_metric=mcc"]
    return _task_run("binary", binary_data, tiny_model_dir, tmp_path_factory, *settings)


def test_binary_saves_its_class_weight_and_tuned_threshold(binary_run: Path) -> None:
    state = json.loads((binary_run / "labels.json").read_text())
    assert state["weights"] == pytest.approx([2.0])  # 60 negatives / 30 positives
    metrics = json.loads((binary_run / "metrics.json").read_text())
    (threshold,) = metrics["thresholds"]
    assert 0.0 < threshold < 1.0
    best = json.loads((binary_run / "model" / "best_validation_metrics.json").read_text())
    assert best["threshold"] == threshold


def test_binary_prediction_formats(binary_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    basic, acidic = "MKRKRRKKRKRKRRKSTGAKRKRK", "MDEDEEDDEDEEDSTGADEDEDE"
    args = ("--sequence", basic, "--sequence", acidic)
    results = json.loads(_predict(binary_run, "json", *args, capsys=capsys))
    assert [r["label"] for r in results] == ["yes", "no"]
    for result in results:
        assert set(result) >= {"id", "label", "probability", "threshold", "probabilities"}
        assert (result["probability"] >= result["threshold"]) == (result["label"] == "yes")
        assert sum(result["probabilities"].values()) == pytest.approx(1.0)
    rows = list(csv.DictReader(io.StringIO(_predict(binary_run, "tsv", *args, capsys=capsys)),
                               delimiter="\t"))  # fmt: skip
    assert list(rows[0]) == ["id", "label", "probability", "threshold", "p_no", "p_yes"]
    text = _predict(binary_run, "text", *args, capsys=capsys)
    assert "P(yes)" in text and "threshold" in text


# --- multilabel: per-split CSV files, GO-like ids with an ontology ------------------------

_OBO = """format-version: 1.2

[Term]
id: GO:0000001
name: charged region

[Term]
id: GO:0000002
name: acidic patch
is_a: GO:0000001 ! charged region

[Term]
id: GO:0000003
name: basic patch
relationship: part_of GO:0000001 ! charged region

[Term]
id: GO:0000004
name: hydrophobic core

[Typedef]
id: part_of
name: part of
"""
_TERMS = {"acidic": "GO:0000002", "basic": "GO:0000003", "hydrophobic": "GO:0000004"}


@pytest.fixture(scope="module")
def multilabel_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Each protein carries one segment per label it has; the parent term is never written."""
    rng = random.Random(2)
    root = tmp_path_factory.mktemp("multilabel")
    for split, count in {"train": 120, "validation": 36, "test": 48}.items():
        with (root / f"{split}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "sequence", "go_terms"])
            for i in range(count):
                kinds = [k for k in _TERMS if rng.random() < 0.45] or [rng.choice(list(_TERMS))]
                body = "".join(
                    _segment(rng, _RESIDUES[k], 15) + _segment(rng, _NEUTRAL, 8) for k in kinds
                )
                writer.writerow([f"{split}{i}", "M" + body, ";".join(_TERMS[k] for k in kinds)])
    (root / "mini.obo").write_text(_OBO)
    return root


@pytest.fixture(scope="module")
def multilabel_run(multilabel_data: Path, tiny_model_dir: Path, tmp_path_factory) -> Path:
    ontology = multilabel_data / "mini.obo"
    settings = ["data.target_columns=[go_terms]", f"data.ontology={ontology}", "training.epochs=8"]
    return _task_run("multilabel", multilabel_data, tiny_model_dir, tmp_path_factory, *settings)


def test_multilabel_saves_the_ontology_it_propagated(multilabel_run: Path) -> None:
    state = json.loads((multilabel_run / "labels.json").read_text())
    assert state["ancestors"]["GO:0000002"] == ["GO:0000001"]
    assert state["ancestors"]["GO:0000003"] == ["GO:0000001"]
    assert state["label_names"]["GO:0000004"] == "hydrophobic core"
    metrics = json.loads((multilabel_run / "metrics.json").read_text())
    assert len(metrics["thresholds"]) == 4


def test_multilabel_predictions_are_consistent_and_ranked(
    multilabel_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rng = random.Random(9)
    acidic = "M" + _segment(rng, _RESIDUES["acidic"], 15) + _segment(rng, _NEUTRAL, 8)
    hydrophobic = "M" + _segment(rng, _RESIDUES["hydrophobic"], 15) + _segment(rng, _NEUTRAL, 8)
    args = ("--sequence", acidic, "--sequence", hydrophobic, "--top-k", "2")
    first, second = json.loads(_predict(multilabel_run, "json", *args, capsys=capsys))
    assert "GO:0000002" in first["labels"] and "GO:0000001" in first["labels"]
    assert "GO:0000004" in second["labels"]
    for result in (first, second):
        p = result["probabilities"]
        assert p["GO:0000001"] >= max(p["GO:0000002"], p["GO:0000003"])  # parent >= child
        assert len(result["top_k"]) == 2
        assert result["top_k"][0][1] >= result["top_k"][1][1]
        assert all(label in result["names"] for label, _ in result["top_k"])
    text = _predict(multilabel_run, "text", *args, capsys=capsys)
    assert "top 2:" in text and "charged region (GO:0000001)" in text
    table = _predict(multilabel_run, "tsv", *args, capsys=capsys).splitlines()
    assert table[0].split("\t")[:3] == ["id", "labels", "top_k"]
    assert "acidic patch" in table[1]


# --- regression: one CSV with a split column, two targets ---------------------------------


def _regression_rows(rng: random.Random, count: int) -> list[tuple[str, float, float]]:
    rows = []
    for _ in range(count):
        basic, acidic = rng.randint(0, 24), rng.randint(0, 24)
        body = list(
            _segment(rng, "KR", basic) + _segment(rng, "DE", acidic)
            + _segment(rng, _NEUTRAL, 50 - basic - acidic)
        )  # fmt: skip
        rng.shuffle(body)
        rows.append(("M" + "".join(body), 10 * basic / 50, acidic / 50 - 3.0))
    return rows


@pytest.fixture(scope="module")
def regression_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Targets: share of basic residues (scaled by 10), share of acidic ones (shifted)."""
    rng = random.Random(3)
    path = tmp_path_factory.mktemp("regression") / "fitness.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", "sequence", "charge_plus", "charge_minus", "split"])
        for split, count in {"train": 160, "validation": 40, "test": 60}.items():
            for i, (sequence, plus, minus) in enumerate(_regression_rows(rng, count)):
                writer.writerow([f"{split}{i}", sequence, f"{plus:.4f}", f"{minus:.4f}", split])
    return path


@pytest.fixture(scope="module")
def regression_run(regression_data: Path, tiny_model_dir: Path, tmp_path_factory) -> Path:
    settings = ["data.id_column=name", "data.target_columns=[charge_plus,charge_minus]"]
    settings += ["objective.regression_loss=huber", "training.epochs=8"]
    return _task_run("regression", regression_data, tiny_model_dir, tmp_path_factory, *settings)


def test_regression_standardises_on_train(regression_run: Path, regression_data: Path) -> None:
    state = json.loads((regression_run / "labels.json").read_text())
    with regression_data.open() as handle:
        train = [r for r in csv.DictReader(handle) if r["split"] == "train"]
    plus = np.asarray([float(r["charge_plus"]) for r in train])
    assert state["target_mean"][0] == pytest.approx(plus.mean(), rel=1e-4)
    assert state["target_std"][0] == pytest.approx(plus.std(), rel=1e-4)


def test_regression_predictions_are_on_the_original_scale(
    regression_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    high = "M" + "KR" * 12 + "STGANQ" * 4 + "G"
    low = "M" + "DE" * 12 + "STGANQ" * 4 + "G"
    args = ("--sequence", high, "--sequence", low)
    first, second = json.loads(_predict(regression_run, "json", *args, capsys=capsys))
    assert set(first["values"]) == {"charge_plus", "charge_minus"}
    assert first["values"]["charge_plus"] > second["values"]["charge_plus"] + 1.0
    assert second["values"]["charge_minus"] > first["values"]["charge_minus"]
    assert -3.5 < second["values"]["charge_minus"] < -2.0  # shifted scale restored
    rows = _predict(regression_run, "csv", *args, capsys=capsys).splitlines()
    assert rows[0] == "id,charge_plus,charge_minus"


# --- what every task shows: it learns, and evaluation reports its metrics and plots -------

# Per task: the labels its run saves, the metric that picks the best epoch, and the validation
# value that metric must beat.
LEARNED = {
    "binary": (["no", "yes"], "mcc", 0.8),  # the conventional positive name; chance: MCC 0
    # The parent term comes from propagation (is_a and part_of), not from the data.
    "multilabel": (["GO:0000001", *_TERMS.values()], "fmax", 0.85),
    "regression": (["charge_plus", "charge_minus"], "spearman", 0.6),
}


@pytest.mark.parametrize("task", sorted(LEARNED))
def test_each_task_learns_and_selects_on_its_metric(task: str, request) -> None:
    run: Path = request.getfixturevalue(f"{task}_run")
    labels, selection_metric, floor = LEARNED[task]
    assert json.loads((run / "labels.json").read_text())["labels"] == labels
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["selection_metric"] == selection_metric
    assert metrics["best_value"] > floor


def _binary_report(run: Path, out: Path, metrics: dict) -> None:
    for name in ("accuracy", "precision", "recall", "f1", "mcc", "roc_auc", "pr_auc"):
        assert metrics[name] is not None
    saved = json.loads((run / "metrics.json").read_text())["thresholds"][0]
    assert metrics["threshold"] == pytest.approx(saved)  # test uses the validation threshold


def _multilabel_report(run: Path, out: Path, metrics: dict) -> None:
    assert set(metrics["per_label"]) == {"GO:0000001", *_TERMS.values()}
    with (out / "predictions.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 48 and "true_labels" in rows[0] and "predicted_labels" in rows[0]


def _regression_report(run: Path, out: Path, metrics: dict) -> None:
    assert set(metrics["per_target"]) == {"charge_plus", "charge_minus"}
    assert metrics["per_target"]["charge_plus"]["rmse"] < 1.5  # std of the target: ~1.4


class _Evaluation(NamedTuple):
    printed: str  # a word of the report `esmtune evaluate` prints
    floors: dict[str, float]  # test metrics and the value each must beat
    plots: tuple[str, ...]
    report: Callable[[Path, Path, dict], None]  # what else the task's report holds


EVALUATED = {
    "binary": _Evaluation(
        "PR-AUC", {"mcc": 0.7, "roc_auc": 0.9}, ("confusion_matrix.png", "roc_pr_curves.png"),
        _binary_report,
    ),
    # Frequencies alone (the trivial predictor) stay far below micro-F1 and macro-AP 0.8.
    "multilabel": _Evaluation(
        "Fmax", {"fmax": 0.85, "coverage": 0.9, "micro_f1": 0.8, "macro_ap": 0.8},
        ("roc_pr_curves.png",), _multilabel_report,
    ),
    # The mean predictor has R² 0 (or below) and no correlation.
    "regression": _Evaluation(
        "Spearman", {"r2": 0.3, "spearman": 0.6}, ("scatter.png",), _regression_report
    ),
}  # fmt: skip


@pytest.mark.parametrize("task", sorted(EVALUATED))
def test_each_task_evaluates_with_its_metrics_and_plots(
    task: str, request, capsys: pytest.CaptureFixture[str]
) -> None:
    run: Path = request.getfixturevalue(f"{task}_run")
    expected = EVALUATED[task]
    assert main(["evaluate", str(run)]) == 0
    assert expected.printed in capsys.readouterr().out
    out = run / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    for name, floor in expected.floors.items():
        assert metrics[name] > floor, name
    for plot in expected.plots:
        assert (out / plot).stat().st_size > 1000
    expected.report(run, out, metrics)


# --- the README's command for each task, on its bundled example -----------------------------


def _task_commands() -> dict[str, list[str]]:
    commands = [argv for argv in readme_commands() if argv[:2] == ["train", "--config"]]
    by_task = {}
    for argv in commands:
        config = load_config(ROOT / argv[2], [a for a in argv[3:] if "=" in a])
        # Trains on bundled data, not the user's data/ nor embeddings the reader computes first.
        if (ROOT / config.data.path).exists() and config.data.embeddings is None:
            by_task.setdefault(config.task.value, argv)
    return by_task


def test_the_readme_shows_one_train_command_per_task() -> None:
    assert set(_task_commands()) == {
        "multiclass",
        "binary",
        "multilabel",
        "regression",
        "residue_classification",
    }


@pytest.mark.end_to_end
@pytest.mark.parametrize(
    "task", ["multiclass", "binary", "multilabel", "regression", "residue_classification"]
)
def test_each_readme_task_command_trains_on_its_bundled_example(
    task: str, tiny_model_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command as written, pointed at the tiny model for one short epoch."""
    monkeypatch.chdir(ROOT)
    argv = _task_commands()[task]
    quick = [
        f"model.name={tiny_model_dir}", "model.head_hidden=[16]", "data.max_length=48",
        "training.epochs=1", "training.batch_size=32", f"output.dir={tmp_path}",
        "output.name=run",
    ]  # fmt: skip
    assert main([*argv, *quick]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["history"]


# --- selection on a lower-is-better metric ------------------------------------------------


def test_a_lower_is_better_metric_selects_the_minimum(
    learnable_data: Path, tiny_model_dir: Path, tmp_path: Path
) -> None:
    run = _train_cli(
        tiny_model_dir, learnable_data, tmp_path, "by-loss",
        "training.early_stopping.metric=loss", "training.learning_rate=0.03",
    )  # fmt: skip
    metrics = json.loads((run / "metrics.json").read_text())
    losses = [entry["loss"] for entry in metrics["history"]]
    assert metrics["selection_metric"] == "loss"
    assert metrics["best_value"] == min(losses)
    assert metrics["best_epoch"] == 1 + losses.index(min(losses))
    best = json.loads((run / "model" / "best_validation_metrics.json").read_text())
    assert best["epoch"] == metrics["best_epoch"]


def test_regression_dataframe_has_a_column_per_target(regression_run: Path) -> None:
    from esmtune.predict import Predictor

    frame = Predictor.from_run(regression_run).predict_frame(["MKRKRKSTGANQ", "MDEDESTGANQ"])
    assert list(frame.columns)[:3] == ["id", "charge_plus", "charge_minus"]
    assert frame["charge_plus"][0] > frame["charge_plus"][1]
