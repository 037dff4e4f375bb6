"""Exports give the run's own probabilities: merged hf backbone, ONNX fp32; int8 within bounds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import make_learnable_dataset, tiny_overrides
from esmtune.cli import main
from esmtune.data.fasta import read_fasta
from esmtune.errors import EsmtuneError
from esmtune.export import INT8_FILE, ONNX_FILE, OnnxClassifier, export_run, load_export
from esmtune.predict import Predictor

pytest.importorskip("onnxruntime")

LABELS = ["Acidic", "Basic", "Hydrophobic"]
# Dynamic int8 moved probabilities of the tiny LoRA run by at most ~0.002 (measured); 0.05
# leaves room for other seeds and onnxruntime versions while still catching a broken graph.
INT8_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, learnable_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_runs")
    overrides = tiny_overrides(tiny_model_dir, learnable_data, out, "lora")
    assert main(["train", *overrides, "finetune.mode=lora", "training.epochs=2"]) == 0
    return out / "lora"


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> list[str]:
    """60 unseen sequences (20 per class), lengths 21 to 71."""
    root = make_learnable_dataset(tmp_path_factory.mktemp("unseen"), {"test": 20}, seed=7)
    return [r.sequence for path in sorted(root.glob("test/*.fasta")) for r in read_fasta(path)]


@pytest.fixture(scope="module")
def hf_dir(run_dir: Path, tmp_path_factory) -> Path:
    return export_run(run_dir, tmp_path_factory.mktemp("exports") / "hf", "hf")


@pytest.fixture(scope="module")
def onnx_dir(run_dir: Path, tmp_path_factory) -> Path:
    return export_run(run_dir, tmp_path_factory.mktemp("exports") / "onnx", "onnx", "int8")


@pytest.fixture(scope="module")
def run_probabilities(run_dir: Path, sequences: list[str]) -> np.ndarray:
    """What esmtune's Predictor reports for the run itself, per label."""
    predictor = Predictor.from_run(run_dir, device="cpu")
    results = predictor.predict(sequences)
    return np.array([[r["probabilities"][label] for label in LABELS] for r in results])


def _batch(tokenizer, sequences: list[str]) -> dict[str, torch.Tensor]:
    encoded = tokenizer(sequences, return_tensors="pt", padding=True)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def test_hf_export_rebuilds_the_same_classifier(
    run_dir: Path, hf_dir: Path, sequences: list[str]
) -> None:
    run = Predictor.from_run(run_dir, device="cpu")
    model, tokenizer, task, config = load_export(hf_dir)
    assert task.labels == LABELS
    assert config.finetune.mode.value == "frozen"
    batch = _batch(tokenizer, sequences)
    with torch.no_grad():
        expected = run.task.outputs(run.model(**batch))
        exported = task.outputs(model(**batch))
    assert np.abs(exported - expected).max() < 1e-5


def test_hf_backbone_loads_with_plain_transformers(hf_dir: Path, sequences: list[str]) -> None:
    from transformers import AutoTokenizer, EsmModel

    backbone = EsmModel.from_pretrained(hf_dir, add_pooling_layer=False).eval()
    assert not [name for name in backbone.state_dict() if "lora" in name]
    assert backbone.config.id2label == dict(enumerate(LABELS))
    assert backbone.config.label2id == {label: i for i, label in enumerate(LABELS)}
    assert (hf_dir / "model.safetensors").is_file()
    model, *_ = load_export(hf_dir)
    batch = _batch(AutoTokenizer.from_pretrained(hf_dir), sequences[:8])
    with torch.no_grad():
        plain = backbone(**batch).last_hidden_state
        rebuilt = model.backbone(**batch).last_hidden_state
    torch.testing.assert_close(plain, rebuilt)


def test_onnx_matches_the_run_at_any_batch_shape(
    run_dir: Path, onnx_dir: Path, sequences: list[str], run_probabilities: np.ndarray
) -> None:
    onnx = OnnxClassifier(onnx_dir)
    run = Predictor.from_run(run_dir, device="cpu")
    # Batches of different sizes and widths, padded and not: the axes are dynamic.
    for chosen in (sequences[:1], sequences[5:10], sequences[20:33]):
        batch = _batch(onnx.tokenizer, chosen)
        with torch.no_grad():
            expected = run.task.outputs(run.model(**batch))
        assert np.abs(onnx.task.outputs(onnx(**batch)) - expected).max() < 1e-4
    probabilities = onnx.outputs(sequences, batch_size=7)
    assert np.abs(probabilities - run_probabilities).max() < 1e-4


def test_int8_keeps_the_labels_and_is_smaller(
    onnx_dir: Path, sequences: list[str], run_probabilities: np.ndarray
) -> None:
    probabilities = OnnxClassifier(onnx_dir, quantized=True).outputs(sequences)
    same_label = (probabilities.argmax(1) == run_probabilities.argmax(1)).mean()
    assert same_label >= 0.99
    assert np.abs(probabilities - run_probabilities).max() < INT8_TOLERANCE
    assert (onnx_dir / INT8_FILE).stat().st_size < (onnx_dir / ONNX_FILE).stat().st_size


@pytest.mark.parametrize("export", ["hf_dir", "onnx_dir"])
def test_every_export_has_a_model_card_and_run_files(export: str, request) -> None:
    folder: Path = request.getfixturevalue(export)
    card = (folder / "README.md").read_text()
    assert "**Task:** multiclass" in card
    assert all(label in card for label in LABELS)
    assert "## Training data" in card and "## Validation metrics" in card
    assert (folder / "config.yaml").is_file() and (folder / "labels.json").is_file()
    assert (folder / "vocab.txt").is_file()


def test_export_refuses_to_overwrite(run_dir: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "keep.txt").write_text("mine")
    with pytest.raises(EsmtuneError, match="refuses to overwrite"):
        export_run(run_dir, taken, "hf")
    assert [p.name for p in taken.iterdir()] == ["keep.txt"]
    with pytest.raises(EsmtuneError, match="onnx only"):
        export_run(run_dir, tmp_path / "new", "hf", quantize="int8")
    assert not (tmp_path / "new").exists()
