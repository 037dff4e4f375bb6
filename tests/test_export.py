"""Exports give the run's own probabilities: merged hf backbone, ONNX fp32; int8 within bounds.

The run reads 48 residues at a time, so the longer test sequences go through windows: the
ONNX path stitches them between its two graphs and must still match the torch run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from tests.helpers import make_learnable_dataset, tiny_overrides

from esmtune.cli import main
from esmtune.config import Pooling
from esmtune.data.fasta import read_fasta
from esmtune.errors import EsmtuneError, RunDirError
from esmtune.export import INT8_FILE, ONNX_FILE, OnnxClassifier, export_run, load_export
from esmtune.predict import PredictOptions, Predictor

pytestmark = pytest.mark.export

pytest.importorskip("onnxruntime")

LABELS = ["Acidic", "Basic", "Hydrophobic"]
MAX_LENGTH = 48
# Dynamic int8 moved probabilities of the tiny LoRA run by at most ~0.002 (measured); 0.05
# leaves room for other seeds and onnxruntime versions while still catching a broken graph.
INT8_TOLERANCE = 0.05


@pytest.fixture(scope="module")
def run_dir(tiny_model_dir: Path, learnable_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export_runs")
    overrides = tiny_overrides(tiny_model_dir, learnable_data, out, "lora")
    overrides += ["finetune.mode=lora", "training.epochs=2", f"data.max_length={MAX_LENGTH}"]
    assert main(["train", *overrides]) == 0
    return out / "lora"


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> list[str]:
    """60 unseen sequences (20 per class), lengths 21 to 71: a third of them need windows."""
    root = make_learnable_dataset(tmp_path_factory.mktemp("unseen"), {"test": 20}, seed=7)
    found = [r.sequence for path in sorted(root.glob("test/*.fasta")) for r in read_fasta(path)]
    assert sum(len(s) > MAX_LENGTH for s in found) >= 10
    return found


@pytest.fixture(scope="module")
def hf_dir(run_dir: Path, tmp_path_factory) -> Path:
    return export_run(run_dir, tmp_path_factory.mktemp("exports") / "hf", "hf")


@pytest.fixture(scope="module")
def onnx_dir(run_dir: Path, tmp_path_factory) -> Path:
    return export_run(run_dir, tmp_path_factory.mktemp("exports") / "onnx", "onnx", "int8")


@pytest.fixture(scope="module")
def run_probabilities(run_dir: Path, sequences: list[str]) -> np.ndarray:
    """What esmtune's Predictor reports for the run itself, per label (windows included)."""
    return Predictor.from_run(run_dir, device="cpu").outputs(sequences)


def _batch(tokenizer, sequences: list[str]) -> dict[str, torch.Tensor]:
    encoded = tokenizer(sequences, return_tensors="pt", padding=True)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


def test_hf_export_predicts_as_the_run(
    hf_dir: Path, sequences: list[str], run_probabilities: np.ndarray
) -> None:
    loaded = load_export(hf_dir)
    assert loaded.task.labels == LABELS
    assert loaded.config.finetune.mode.value == "frozen"  # adapters merged: nothing to add
    predictor = Predictor.from_export(hf_dir, device="cpu")
    assert predictor.runtime == "torch"
    assert np.abs(predictor.outputs(sequences) - run_probabilities).max() < 1e-5


def test_hf_backbone_loads_with_plain_transformers(hf_dir: Path, sequences: list[str]) -> None:
    from transformers import AutoTokenizer, EsmModel

    backbone = EsmModel.from_pretrained(hf_dir, add_pooling_layer=False).eval()
    assert not [name for name in backbone.state_dict() if "lora" in name]
    assert backbone.config.id2label == dict(enumerate(LABELS))
    assert backbone.config.label2id == {label: i for i, label in enumerate(LABELS)}
    assert (hf_dir / "model.safetensors").is_file()
    model = load_export(hf_dir).model
    batch = _batch(AutoTokenizer.from_pretrained(hf_dir), sequences[:8])
    with torch.no_grad():
        plain = backbone(**batch).last_hidden_state
        rebuilt = model.backbone(**batch).last_hidden_state
    torch.testing.assert_close(plain, rebuilt)


def test_onnx_graph_matches_the_run_at_any_batch_shape(
    run_dir: Path, onnx_dir: Path, sequences: list[str]
) -> None:
    onnx = OnnxClassifier(onnx_dir)
    run = Predictor.from_run(run_dir, device="cpu")
    short = [s[:MAX_LENGTH] for s in sequences]
    # Batches of different sizes and widths, padded and not: the axes are dynamic.
    for chosen in (short[:1], short[5:10], short[20:33]):
        batch = _batch(run.run.tokenizer, chosen)
        with torch.no_grad():
            expected = run.task.outputs(run.model(**batch))
        assert np.abs(run.task.outputs(onnx(**batch)) - expected).max() < 1e-4


def test_onnx_export_predicts_as_the_run_windows_included(
    onnx_dir: Path, sequences: list[str], run_probabilities: np.ndarray
) -> None:
    predictor = Predictor.from_export(onnx_dir, runtime="onnx")
    assert predictor.runtime == "onnx"
    results = predictor.predict(sequences)
    assert max(r["windows"] for r in results) > 1
    got = np.array([[r["probabilities"][label] for label in LABELS] for r in results])
    assert np.abs(got - run_probabilities).max() < 1e-4


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_onnx_reads_long_sequences_in_passes_as_the_run(
    run_dir: Path, onnx_dir: Path, sequences: list[str], pooling: str
) -> None:
    """Windows beyond the token budget go through model.onnx a few at a time, then head.onnx.

    Mean pooling streams into one summary residue; the attention path keeps the stitched
    states instead (forced here on the same mean-pooled graph, which must agree all the same).
    """
    long = ["".join(sequences[i : i + 4]) for i in range(0, 40, 4)]  # 150-280 residues
    expected = Predictor.from_run(run_dir, device="cpu", max_tokens=100_000).outputs(long)
    onnx = Predictor.from_export(onnx_dir, runtime="onnx", max_tokens=2 * (MAX_LENGTH + 2))
    onnx.model.pooling = Pooling(pooling)
    assert np.abs(onnx.outputs(long) - expected).max() < 1e-4


def test_int8_keeps_the_labels_and_is_smaller(
    onnx_dir: Path, sequences: list[str], run_probabilities: np.ndarray
) -> None:
    probabilities = Predictor.from_export(onnx_dir, runtime="onnx-int8").outputs(sequences)
    same_label = (probabilities.argmax(1) == run_probabilities.argmax(1)).mean()
    assert same_label >= 0.99
    assert np.abs(probabilities - run_probabilities).max() < INT8_TOLERANCE
    assert (onnx_dir / INT8_FILE).stat().st_size < (onnx_dir / ONNX_FILE).stat().st_size


def test_the_export_check_records_parity_and_picks_a_runtime_that_keeps_labels(
    onnx_dir: Path, hf_dir: Path
) -> None:
    info = json.loads((onnx_dir / "export.json").read_text())
    check = info["check"]
    # The run's data is readable here, so the check used its validation split (36 sequences).
    assert check["sequences"] == 32 and "validation split" in check["source"]
    runtimes = check["runtimes"]
    assert set(runtimes) == {"run", "onnx", "onnx-int8"}
    assert runtimes["onnx"]["max_abs_difference"] < 1e-4
    assert runtimes["onnx"]["label_agreement"] == 1.0
    assert runtimes["onnx-int8"]["file_bytes"] < runtimes["onnx"]["file_bytes"]
    kept = [n for n in ("onnx", "onnx-int8") if runtimes[n]["label_agreement"] >= 0.99]
    fastest = max(kept, key=lambda n: runtimes[n]["residues_per_second"])
    assert info["default_runtime"] == fastest
    assert Predictor.from_export(onnx_dir).runtime == fastest
    assert "## Checked against the run" in (onnx_dir / "README.md").read_text()
    hf_info = json.loads((hf_dir / "export.json").read_text())
    assert hf_info["default_runtime"] == "torch"
    assert hf_info["check"]["runtimes"]["torch"]["max_abs_difference"] < 1e-5


def test_runtime_choices_are_checked(run_dir: Path, hf_dir: Path, onnx_dir: Path) -> None:
    with pytest.raises(EsmtuneError, match="hf export, which runs in torch"):
        Predictor.from_export(hf_dir, runtime="onnx")
    with pytest.raises(EsmtuneError, match="holds no torch weights"):
        Predictor.from_export(onnx_dir, runtime="torch")
    with pytest.raises(EsmtuneError, match="export it first"):
        Predictor.load(run_dir, runtime="onnx")
    with pytest.raises(RunDirError, match="not an esmtune export"):
        Predictor.from_export(run_dir)
    with pytest.raises(EsmtuneError, match="onnxruntime-gpu"):  # CPU-only onnxruntime here
        Predictor.from_export(onnx_dir, device="cuda")
    assert Predictor.load(onnx_dir, runtime="onnx").runtime == "onnx"
    assert Predictor.load(run_dir).runtime == "torch"


def test_each_launched_process_runs_onnx_on_its_own_gpu(onnx_dir: Path, monkeypatch) -> None:
    """Under `accelerate launch`, --device cuda means this process's GPU (here the second)."""
    import onnxruntime

    from esmtune import predict
    from esmtune.export.onnx_runtime import onnx_providers
    from esmtune.processes import Processes

    class Opened(Exception):
        pass

    def session(path: str, options: object, providers: list) -> None:
        raise Opened(providers)

    second = SimpleNamespace(device_for=lambda requested: "cuda:1")
    monkeypatch.setattr(Processes, "current", classmethod(lambda cls: second))
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider"])
    monkeypatch.setattr(onnxruntime, "InferenceSession", session)
    with pytest.raises(Opened) as opened:
        predict.Predictor.from_export(onnx_dir, device="cuda")
    assert opened.value.args[0] == [
        ("CUDAExecutionProvider", {"device_id": "1"}),
        "CPUExecutionProvider",
    ]
    with pytest.raises(EsmtuneError, match="cuda or cuda:N"):
        onnx_providers("cuda:first")


def test_predict_options_are_one_object_checked_at_once(run_dir: Path) -> None:
    options = PredictOptions(device="cpu", max_tokens=512)
    predictor = Predictor.load(run_dir, options=options, long_sequences="truncate")
    assert predictor.options == options.model_copy(update={"long_sequences": "truncate"})
    assert predictor.device == torch.device("cpu") and predictor.runtime == "torch"
    with pytest.raises(EsmtuneError) as raised:
        Predictor.from_run(run_dir, devise="cpu", precision="fp16")
    assert "devise: not a predict option; did you mean device?" in str(raised.value)
    assert "precision='fp16'" in str(raised.value)


def test_an_unknown_export_format_is_refused_with_the_known_ones(tmp_path: Path) -> None:
    from esmtune.export import FORMATS, FormatName, Runtime

    # Every name has its format and every runtime its format: none falls through to another.
    assert list(FORMATS) == list(FormatName)
    assert sorted(r for form in FORMATS.values() for r in form.entry_files) == sorted(Runtime)
    with pytest.raises(EsmtuneError, match="format 'zip' is unknown: choose one of hf, onnx"):
        export_run(tmp_path / "run", tmp_path / "out", "zip")
    assert not (tmp_path / "out").exists()


def test_export_and_predict_names_import_without_torch() -> None:
    code = (
        "import sys, esmtune.export.names, esmtune.predict_options; print('torch' in sys.modules)"
    )
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"


def test_predict_cli_reads_an_export(
    onnx_dir: Path, sequences: list[str], run_probabilities: np.ndarray, tmp_path: Path, capsys
) -> None:
    fasta = tmp_path / "in.fasta"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(sequences[:6])))
    out = tmp_path / "predictions.json"
    assert main(["predict", str(onnx_dir), str(fasta), "--runtime", "onnx", "-o", str(out)]) == 0
    results = json.loads(out.read_text())
    got = np.array([[r["probabilities"][label] for label in LABELS] for r in results])
    assert np.abs(got - run_probabilities[:6]).max() < 1e-4


def test_export_cli_prints_the_check(run_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "cli_export"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out),
                 "--check-sequences", "4"]) == 0  # fmt: skip
    printed = capsys.readouterr().out
    assert "checked against the run on 4 sequences" in printed
    assert "default runtime for predict and serve: onnx" in printed
    assert json.loads((out / "export.json").read_text())["default_runtime"] == "onnx"


@pytest.mark.parametrize("export", ["hf_dir", "onnx_dir"])
def test_every_export_has_a_model_card_and_run_files(export: str, request) -> None:
    folder: Path = request.getfixturevalue(export)
    card = (folder / "README.md").read_text()
    assert "**Task:** multiclass" in card
    assert all(label in card for label in LABELS)
    assert "## Training data" in card and "## Validation metrics" in card
    assert "mean pooling, MLP head" in card  # the run's own head (esm: test_transformers_head)
    assert (folder / "config.yaml").is_file() and (folder / "labels.json").is_file()
    assert (folder / "metrics.json").is_file() and (folder / "manifest.json").is_file()
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


def test_serve_answers_from_an_onnx_export(onnx_dir: Path, sequences: list[str]) -> None:
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from esmtune.serve import create_app

    expected = Predictor.from_export(onnx_dir, runtime="onnx").predict(sequences[:5])
    with TestClient(create_app(onnx_dir, runtime="onnx", batch_wait_ms=0)) as client:
        info = client.get("/info").json()
        assert info["source"] == "onnx" and info["runtime"] == "onnx"
        assert info["labels"] == LABELS and info["metrics"]["best_epoch"] is not None
        body = {"sequences": [{"id": f"s{i}", "sequence": s} for i, s in enumerate(sequences[:5])]}
        answer = client.post("/predict", json=body)
    assert answer.status_code == 200, answer.text
    for got, want in zip(answer.json()["predictions"], expected, strict=True):
        assert got["label"] == want["label"]
        assert got["probabilities"] == pytest.approx(want["probabilities"], abs=1e-6)
