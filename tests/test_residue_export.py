"""Exports of per-residue runs: hf and ONNX (fp32, int8) give the run's per-residue outputs.

The runs read 32 residues at a time, so the longer chains go through windows stitched residue
by residue: between the two ONNX graphs exactly as in torch, and, beyond the token budget, in
passes whose states the head reads whole.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from tests.test_residue_tasks import MAX_LENGTH, _train, write_flip

from esmtune.export import export_run
from esmtune.predict import Predictor
from esmtune.tasks.base import residue_rows

pytestmark = pytest.mark.export

pytest.importorskip("onnxruntime")

COUNTS = {"train": 32, "validation": 8, "test": 8}
# Chains of 20 to 45 residues, and three longer ones read in two to four windows.
SEQUENCES = [
    "MKVLLDEKRAVLS", "ADEKLRSVGNLLVDEKRGS", "VLDEKRSNGAVLLKDERAGSVNLKE" * 2,
    "GNADEKLRSV" * 9, "LVDEKRSNGA" * 12,
]  # fmt: skip
INT8_TOLERANCE = 0.05  # as tests/test_export.py: dynamic int8 of the tiny model moves ~0.002


@pytest.fixture(scope="module", params=["residue_classification", "residue_regression"])
def exported(request, tiny_model_dir: Path, tmp_path_factory) -> dict:
    """A per-residue run (classification: mlp head, LoRA; regression: cnn head, full), exported."""
    task = request.param
    root = tmp_path_factory.mktemp(task)
    data = write_flip(root / "data", COUNTS, regression=task == "residue_regression")
    settings = (
        ["model.head=cnn", "model.head_kernel_size=3", "finetune.mode=full"]
        if task == "residue_regression"
        else []
    )
    run = _train(
        tiny_model_dir, data, root / "runs", "run", f"task={task}", "training.epochs=2", *settings
    )
    return {
        "task": task,
        "run": run,
        "hf": export_run(run, root / "hf", "hf"),
        "onnx": export_run(run, root / "onnx", "onnx", "int8"),
    }


def _field(task: str) -> str:
    return "probabilities" if task == "residue_classification" else "values"


def _per_residue(results: list[dict], field: str) -> np.ndarray:
    """Every residue's numbers of ``Predictor.predict`` results, as one block."""
    rows = [np.asarray(r[field], dtype=np.float64).reshape(len(r[field]), -1) for r in results]
    return np.concatenate(rows)


def test_exports_predict_as_the_run_residue_by_residue(exported: dict) -> None:
    field = _field(exported["task"])
    expected = Predictor.from_run(exported["run"], device="cpu").predict(SEQUENCES)
    assert max(r["windows"] for r in expected) > 1
    assert max(len(s) for s in SEQUENCES) > MAX_LENGTH
    reference = _per_residue(expected, field)
    for folder, runtime, tolerance in (
        ("hf", "torch", 1e-5),
        ("onnx", "onnx", 1e-4),
        ("onnx", "onnx-int8", INT8_TOLERANCE),
    ):
        predictor = Predictor.from_export(exported[folder], runtime=runtime, device="cpu")
        got = predictor.predict(SEQUENCES)
        assert [r["windows"] for r in got] == [r["windows"] for r in expected]
        assert [len(r[field]) for r in got] == [len(s) for s in SEQUENCES]
        assert np.abs(_per_residue(got, field) - reference).max() < tolerance, runtime
        if runtime != "onnx-int8" and field == "probabilities":
            assert [r["prediction"] for r in got] == [r["prediction"] for r in expected]


def test_onnx_reads_long_chains_in_passes_as_the_run(exported: dict) -> None:
    """Beyond the token budget, windows go through model.onnx a few at a time, then head.onnx."""
    long = ["".join(SEQUENCES[2:]) * 2]  # 620 residues: far more than two windows at a time
    expected = Predictor.from_run(exported["run"], device="cpu", max_tokens=100_000).outputs(long)
    onnx = Predictor.from_export(exported["onnx"], runtime="onnx", max_tokens=2 * (MAX_LENGTH + 2))
    got = onnx.outputs(long)
    assert residue_rows(got).shape == (len(long[0]), residue_rows(expected).shape[1])
    assert np.abs(residue_rows(got) - residue_rows(expected)).max() < 1e-4


def test_the_export_check_compares_residues(exported: dict) -> None:
    for form, names in (("onnx", {"run", "onnx", "onnx-int8"}), ("hf", {"run", "torch"})):
        info = json.loads((exported[form] / "export.json").read_text())
        runtimes = info["check"]["runtimes"]
        assert set(runtimes) == names
        exact = "onnx" if form == "onnx" else "torch"
        assert runtimes[exact]["max_abs_difference"] < 1e-4
        assert runtimes[exact]["label_agreement"] == 1.0
        if form == "onnx":
            assert runtimes["onnx-int8"]["max_abs_difference"] < INT8_TOLERANCE
    card = (exported["hf"] / "README.md").read_text()
    assert "per residue" in card


def test_serve_answers_from_a_per_residue_onnx_export(exported: dict) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from esmtune.serve import create_app

    field = _field(exported["task"])
    expected = Predictor.from_export(exported["onnx"], runtime="onnx").predict(SEQUENCES[:2])
    app = create_app(exported["onnx"], runtime="onnx", batch_wait_ms=0)
    with TestClient(app) as client:
        answer = client.post("/predict", json={"sequences": SEQUENCES[:2]}).json()
    got = _per_residue(answer["predictions"], field)
    assert np.abs(got - _per_residue(expected, field)).max() < 1e-5


@pytest.mark.parametrize("task", ["residue_classification", "residue_regression"])
def test_a_linear_head_exports_as_transformers_token_classification(
    task: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    """With head_hidden=[] the hf folder is an EsmForTokenClassification plain transformers runs."""
    import torch
    from transformers import AutoModelForTokenClassification, AutoTokenizer

    data = write_flip(tmp_path / "data", COUNTS, regression=task == "residue_regression")
    run = _train(
        tiny_model_dir, data, tmp_path / "runs", "linear", f"task={task}", "training.epochs=2",
        "model.head_hidden=[]",
    )  # fmt: skip
    folder = export_run(run, tmp_path / "hf", "hf")
    short = SEQUENCES[:2]
    expected = Predictor.from_run(run, device="cpu").predict(short)
    model = AutoModelForTokenClassification.from_pretrained(folder).eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    field = _field(task)
    for sequence, result in zip(short, expected, strict=True):
        with torch.no_grad():
            logits = model(**tokenizer([sequence], return_tensors="pt")).logits[0, 1:-1]
        got = logits.softmax(-1) if field == "probabilities" else logits[:, 0]
        want = np.asarray(result[field], dtype=np.float64).reshape(got.shape)
        assert np.abs(got.numpy() - want).max() < 1e-5
    got_export = Predictor.from_export(folder, device="cpu").predict(short)
    assert np.abs(_per_residue(got_export, field) - _per_residue(expected, field)).max() < 1e-5
    card = (folder / "README.md").read_text()
    assert "AutoModelForTokenClassification" in card and "token-classification" in card
