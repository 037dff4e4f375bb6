"""Per-residue tasks trained, evaluated and predicted: residue_classification, residue_regression.

Each task learns labels that depend on a residue and its neighbours, end to end through the CLI
on a tiny ESM2; masked and padded residues never change the weights; long chains are read in
windows stitched residue by residue; metrics match scikit-learn's on masked data.
"""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import (
    accuracy_score,
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    mean_absolute_error,
    mean_squared_error,
    precision_recall_fscore_support,
    r2_score,
)
from tests.helpers import FLIP_LETTERS as LETTERS
from tests.helpers import tiny_overrides
from tests.helpers import write_flip as flip_folder

from esmtune.cli import main
from esmtune.config import load_config
from esmtune.data.batching import IGNORED_CLASS
from esmtune.errors import ConfigError, EsmtuneError
from esmtune.metrics import residue_classification_metrics, residue_regression_metrics
from esmtune.predict import Predictor

HYDROPHOBIC = set("LV")
ACIDIC = set("DE")


def residue_class(sequence: str, i: int) -> str:
    """H on hydrophobic residues, E on K/R after an acidic residue, else C."""
    if sequence[i] in HYDROPHOBIC:
        return "H"
    if sequence[i] in "KR" and i > 0 and sequence[i - 1] in ACIDIC:
        return "E"
    return "C"


def residue_value(sequence: str, i: int) -> float:
    """The share of hydrophobic residues among the residue and its two neighbours."""
    around = sequence[max(0, i - 1) : i + 2]
    return sum(c in HYDROPHOBIC for c in around) / len(around)


def write_flip(
    root: Path, counts: dict[str, int], regression: bool, seed: int = 0, garbage: int = 0
) -> Path:
    """A FLIP folder of random chains whose targets follow :func:`residue_class` (or
    :func:`residue_value`), ~10% of residues masked with garbage drawn from ``garbage``.
    """
    rule = residue_value if regression else residue_class
    return flip_folder(root, counts, rule, regression, seed, garbage)


COUNTS = {"train": 96, "validation": 24, "test": 24}
# Shorter than some chains, so that training, evaluation and prediction read windows.
MAX_LENGTH = 32


def _train(model_dir: Path, data: Path, out: Path, name: str, *settings: str) -> Path:
    overrides = tiny_overrides(model_dir, data, out, name)
    window = [f"data.max_length={MAX_LENGTH}", "data.long_sequences=window"]
    assert main(["train", *overrides, *window, *settings]) == 0
    return out / name


@pytest.fixture(scope="module")
def classification_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("residue_classes")
    data = write_flip(root / "data", COUNTS, regression=False)
    return _train(
        tiny_model_dir, data, root / "runs", "classes", "task=residue_classification",
        "finetune.mode=full", "training.epochs=6",
    )  # fmt: skip


@pytest.fixture(scope="module")
def regression_run(tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("residue_values")
    data = write_flip(root / "data", COUNTS, regression=True)
    return _train(
        tiny_model_dir, data, root / "runs", "values", "task=residue_regression",
        "model.head=cnn", "model.head_kernel_size=3", "training.epochs=6",
    )  # fmt: skip


# --- end to end through the CLI ----------------------------------------------------------------


def test_residue_classification_trains_evaluates_and_predicts(
    classification_run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    assert main(["evaluate", str(classification_run), "--split", "test"]) == 0
    out = classification_run / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    counts = np.array(metrics["confusion_matrix"]).sum(axis=1)
    majority = counts.max() / counts.sum()
    assert metrics["accuracy"] > majority + 0.15, (metrics["accuracy"], majority)
    assert metrics["unread"] == 0  # windows: every residue has a prediction
    written = {"metrics.json", "predictions.csv", "confusion_matrix.png", "residue_tracks.png"}
    assert {p.name for p in out.iterdir()} >= written
    assert (out / "residue_tracks.png").stat().st_size > 10_000  # four chains drawn
    assert "Q3" in capsys.readouterr().out

    sequence = "MKDKLVVSEERAAGNLKDEL" * 3  # 60 residues: windows of 32
    fasta = tmp_path / "query.fasta"
    fasta.write_text(f">q\n{sequence}\n")
    result_file = tmp_path / "out.json"
    args = ["predict", str(classification_run), str(fasta), "--format", "json"]
    assert main([*args, "--out", str(result_file)]) == 0
    (result,) = json.loads(result_file.read_text())
    assert len(result["prediction"]) == len(sequence) and result["unread"] == 0
    assert len(result["probabilities"]) == len(sequence)
    assert set(result["prediction"]) <= set(result["classes"])

    capsys.readouterr()
    assert main(["predict", str(classification_run), str(fasta), "--format", "text"]) == 0
    text = capsys.readouterr().out
    assert f"1 {sequence}  sequence" in text and f"{result['prediction']}  prediction" in text

    predictor = Predictor.from_run(classification_run)
    assert predictor.predict({"q": sequence})[0]["prediction"] == result["prediction"]


def test_residue_regression_trains_evaluates_and_predicts(
    regression_run: Path, tmp_path: Path
) -> None:
    assert main(["evaluate", str(regression_run), "--split", "test"]) == 0
    out = regression_run / "eval" / "test"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["spearman"] > 0.5, metrics["spearman"]
    assert metrics["per_protein_spearman"]["mean"] > 0.3
    assert (out / "scatter.png").is_file() and (out / "predictions.csv").is_file()

    fasta = tmp_path / "query.fasta"
    fasta.write_text(">q\nADLLVVKEKSGGN\n")
    table = tmp_path / "out.tsv"
    assert main(["predict", str(regression_run), str(fasta), "--out", str(table)]) == 0
    header, row = table.read_text().splitlines()
    assert header == "id\tvalues"
    values = [float(v) for v in row.split("\t")[1].split(";")]
    assert len(values) == 13
    # The hydrophobic stretch (LLVV) scores above the glycines, as the rule says.
    assert np.mean(values[2:6]) > np.mean(values[9:12])


# --- masks and padding never reach the loss -------------------------------------------------------


def test_garbage_under_the_mask_gives_identical_weights(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    counts = {"train": 24, "validation": 6}
    weights = []
    for garbage in (1, 2):
        data = write_flip(tmp_path / f"data{garbage}", counts, regression=False, garbage=garbage)
        run = _train(
            tiny_model_dir, data, tmp_path / "runs", f"run{garbage}",
            "task=residue_classification", "finetune.mode=full", "training.epochs=1",
            "training.batch_size=5", "model.head=cnn",
        )  # fmt: skip
        weights.append(load_file(run / "model" / "weights.safetensors"))
    labels = [(tmp_path / f"data{g}" / "labels.fasta").read_text() for g in (1, 2)]
    assert labels[0] != labels[1]  # the garbage differs ...
    assert weights[0].keys() == weights[1].keys()
    for name, tensor in weights[0].items():  # ... and not one bit of the weights does
        assert torch.equal(tensor, weights[1][name]), name


def test_loss_ignores_positions_outside_residues_that_count() -> None:
    from esmtune.tasks import ResidueClassificationTask, ResidueRegressionTask

    logits = torch.randn(2, 5, 3, requires_grad=True)
    targets = torch.tensor([[IGNORED_CLASS, 0, 2, IGNORED_CLASS, IGNORED_CLASS]] * 2)
    loss = ResidueClassificationTask(labels=["C", "E", "H"]).loss(logits, targets)
    loss.backward()
    assert logits.grad is not None
    assert torch.all(logits.grad[:, [0, 3, 4]] == 0) and torch.all(logits.grad[:, 1:3] != 0)
    expected = torch.nn.functional.cross_entropy(logits[:, 1:3].reshape(-1, 3),
                                                 targets[:, 1:3].reshape(-1))  # fmt: skip
    assert torch.allclose(loss, expected)

    values = torch.randn(1, 4, 1, requires_grad=True)
    regression = ResidueRegressionTask(labels=["value"], target_mean=[0.0], target_std=[1.0])
    regression.loss(values, torch.tensor([[math.nan, 0.5, -1.0, math.nan]])).backward()
    assert values.grad is not None and torch.all(values.grad[0, [0, 3]] == 0)


# --- long chains: windows stitched residue by residue --------------------------------------------


def test_long_chain_is_read_in_windows_stitched_per_residue(classification_run: Path) -> None:
    predictor = Predictor.from_run(classification_run, device="cpu")
    model = predictor.model
    rng = random.Random(5)
    sequence = "".join(rng.choice(LETTERS) for _ in range(90))  # 90 > 32: five windows
    (result,) = predictor.predict([sequence])
    got = np.array(result["probabilities"])

    # By hand: each window alone through the backbone, states averaged where windows overlap.
    tokenizer = predictor.run.tokenizer
    states = torch.zeros(len(sequence), model.backbone_config.hidden_size)
    count = torch.zeros(len(sequence), 1)
    starts = [*range(0, len(sequence) - MAX_LENGTH, MAX_LENGTH // 2), len(sequence) - MAX_LENGTH]
    with torch.no_grad():
        for start in starts:
            ids = tokenizer(sequence[start : start + MAX_LENGTH], return_tensors="pt")
            hidden = model.window_states(ids["input_ids"], ids["attention_mask"])[0, 1:-1]
            states[start : start + MAX_LENGTH] += hidden
            count[start : start + MAX_LENGTH] += 1
        stitched = (states / count).unsqueeze(0)
        mask = torch.ones(stitched.shape[:2], dtype=torch.bool)
        logits = model.residue_logits(stitched, mask)
        expected = predictor.run.task.activation(logits)[0].numpy()  # calibrated, as predict
    np.testing.assert_allclose(got, expected, atol=1e-5)

    # Streamed a window per pass (a budget below the windows), the same numbers.
    streaming = Predictor.from_run(classification_run, device="cpu", max_tokens=40)
    streamed = np.array(streaming.predict([sequence])[0]["probabilities"])
    np.testing.assert_allclose(streamed, expected, atol=1e-5)


@pytest.mark.parametrize("cut", ["truncate", "centre"])
def test_cut_chains_leave_unread_residues_without_prediction(
    classification_run: Path, cut: str
) -> None:
    predictor = Predictor.from_run(classification_run, device="cpu", long_sequences=cut)
    sequence = "".join(random.Random(7).choice(LETTERS) for _ in range(50))
    (result,) = predictor.predict([sequence])
    start = 0 if cut == "truncate" else (len(sequence) - MAX_LENGTH) // 2
    read = range(start, start + MAX_LENGTH)
    assert result["unread"] == len(sequence) - MAX_LENGTH
    assert [i for i, c in enumerate(result["prediction"]) if c != "?"] == list(read)
    assert all(result["probabilities"][i] is None for i in range(len(sequence)) if i not in read)
    # The residues read carry their own predictions: those of that piece predicted alone.
    (piece,) = predictor.predict([sequence[start : start + MAX_LENGTH]])
    np.testing.assert_allclose(
        np.array(result["probabilities"][start : start + MAX_LENGTH]),
        np.array(piece["probabilities"]),
        atol=1e-6,
    )


# --- metrics -------------------------------------------------------------------------------------


def _ragged(rows: list[np.ndarray]) -> np.ndarray:
    array = np.empty(len(rows), dtype=object)
    for i, row in enumerate(rows):
        array[i] = row
    return array


def test_residue_classification_metrics_match_sklearn_on_masked_data() -> None:
    rng = np.random.default_rng(0)
    targets, outputs = [], []
    for length in (30, 12, 50, 7):
        target = rng.integers(0, 3, length)
        target[rng.random(length) < 0.2] = IGNORED_CLASS
        probabilities = rng.dirichlet(np.ones(3), length)
        probabilities[target == 1] += [0, 0.5, 0]  # better than chance on class 1
        probabilities /= probabilities.sum(axis=1, keepdims=True)
        probabilities[-2:] = np.nan  # two residues of each chain not read
        targets.append(target)
        outputs.append(probabilities)
    metrics = residue_classification_metrics(
        _ragged(targets), _ragged(outputs), ["C", "E", "H"], IGNORED_CLASS
    )
    true = np.concatenate([t[:-2] for t in targets])
    predicted = np.concatenate([o[:-2].argmax(axis=1) for o in outputs])
    counted = true != IGNORED_CLASS
    true, predicted = true[counted], predicted[counted]
    assert metrics["n"] == len(true)
    assert metrics["unread"] == sum(int((t[-2:] != IGNORED_CLASS).sum()) for t in targets)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(true, predicted))
    assert metrics["macro_f1"] == pytest.approx(f1_score(true, predicted, average="macro"))
    assert metrics["mcc"] == pytest.approx(matthews_corrcoef(true, predicted))
    assert metrics["confusion_matrix"] == confusion_matrix(true, predicted).tolist()
    _, recall, _, support = precision_recall_fscore_support(true, predicted)
    assert [metrics["per_class"][c]["recall"] for c in "CEH"] == pytest.approx(recall)
    assert [metrics["per_class"][c]["support"] for c in "CEH"] == support.tolist()
    per_protein = [
        accuracy_score(t[:-2][t[:-2] != IGNORED_CLASS],
                       o[:-2].argmax(1)[t[:-2] != IGNORED_CLASS])
        for t, o in zip(targets, outputs, strict=True)
    ]  # fmt: skip
    spread = metrics["per_protein_accuracy"]
    assert spread["mean"] == pytest.approx(np.mean(per_protein))
    assert [spread["q1"], spread["median"], spread["q3"]] == pytest.approx(
        np.percentile(per_protein, [25, 50, 75])
    )


def test_residue_regression_metrics_match_sklearn_on_masked_data() -> None:
    rng = np.random.default_rng(1)
    targets, outputs = [], []
    for length in (40, 25, 60):
        target = rng.normal(size=length)
        prediction = (target + rng.normal(scale=0.5, size=length))[:, None]
        target[rng.random(length) < 0.2] = np.nan
        prediction[:3] = np.nan  # not read
        targets.append(target.astype(np.float32))
        outputs.append(prediction)
    metrics = residue_regression_metrics(_ragged(targets), _ragged(outputs), "value")
    keep = [np.isfinite(t) & np.isfinite(o[:, 0]) for t, o in zip(targets, outputs, strict=True)]
    true = np.concatenate([t[k] for t, k in zip(targets, keep, strict=True)]).astype(float)
    predicted = np.concatenate([o[k, 0] for o, k in zip(outputs, keep, strict=True)])
    assert metrics["n"] == len(true)
    assert metrics["spearman"] == pytest.approx(spearmanr(true, predicted).statistic)
    assert metrics["pearson"] == pytest.approx(pearsonr(true, predicted).statistic)
    assert metrics["rmse"] == pytest.approx(math.sqrt(mean_squared_error(true, predicted)))
    assert metrics["mae"] == pytest.approx(mean_absolute_error(true, predicted))
    assert metrics["r2"] == pytest.approx(r2_score(true, predicted))
    per_protein = [
        spearmanr(t[k], o[k, 0]).statistic for t, o, k in zip(targets, outputs, keep, strict=True)
    ]
    assert metrics["per_protein_spearman"]["mean"] == pytest.approx(np.mean(per_protein))


# --- every tuning mode, the heads, and what is not supported yet ----------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        ["finetune.mode=lora"],
        ["finetune.mode=frozen"],
        ["finetune.mode=partial", "finetune.unfreeze_last_layers=1"],
        ["finetune.mode=partial", "finetune.unfreeze_every_epochs=1", "training.epochs=2"],
    ],
    ids=["lora", "frozen", "partial", "progressive"],
)
def test_every_tuning_mode_trains_per_residue(
    tiny_model_dir: Path, tmp_path: Path, settings: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_flip(tmp_path / "data", {"train": 16, "validation": 4}, regression=True)
    run = _train(
        tiny_model_dir, data, tmp_path / "runs", "run", "task=residue_regression",
        "training.epochs=1", "training.early_stopping.metric=rmse", *settings,
    )  # fmt: skip
    summary = json.loads((run / "metrics.json").read_text())
    assert summary["selection_metric"] == "rmse" and summary["best_value"] is not None
    if "finetune.mode=frozen" in settings:  # residue states cached (tests/test_residue_cache.py)
        assert "float16" in capsys.readouterr().out


def test_heads_fit_their_tasks(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"model\.head=cnn convolves over residue states"):
        load_config(None, ["task=multiclass", "model.head=cnn"])
    with pytest.raises(ConfigError, match=r"model\.head=esm reads the <cls> state"):
        load_config(None, ["task=residue_classification", "model.head=esm", "model.pooling=cls"])
    with pytest.raises(ConfigError, match="head_kernel_size must be odd"):
        load_config(None, ["task=residue_regression", "model.head=cnn", "model.head_kernel_size=4"])


def test_sequence_baselines_refuse_per_residue_runs(tmp_path: Path) -> None:
    from esmtune.baseline import composition_baseline

    # Their baseline is the one-hot window (tests/test_residue_baseline.py), not composition.
    with pytest.raises(EsmtuneError, match="one-hot window"):
        composition_baseline(tmp_path, "residue_regression")
