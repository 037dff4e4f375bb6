"""An ONNX export predicts and serves without the training stack, giving the run's predictions.

In a fresh interpreter, ``esmtune predict`` on the export of a calibrated run (long sequences
read in windows), ``Predictor.from_export`` on a per-residue export and the server's start-up
(``/health``, ``/predict``) must import none of torch, transformers, peft, accelerate,
matplotlib, TensorBoard, scikit-learn or SciPy. A second interpreter hides those modules as a
runtime-only install (``pip install esmtune``) lacks them: the export path still works, and a
run directory says which extra to install. The tokeniser the export path uses is a lookup in
the ESM2 alphabet, and each task's numpy activation is its torch one.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import RESIDUES, make_learnable_dataset
from tests.test_residue_tasks import _train, write_flip

from esmtune.architectures import ESM2_VOCAB
from esmtune.data.encoding import Esm2Vocabulary, encode
from esmtune.data.fasta import read_fasta
from esmtune.export import export_run
from esmtune.model.backbone import esm2_tokenizer
from esmtune.predict import Predictor
from esmtune.tasks import (
    BinaryTask,
    MulticlassTask,
    MultilabelTask,
    RegressionTask,
    ResidueClassificationTask,
    ResidueRegressionTask,
    TaskSpec,
)
from esmtune.tasks.base import residue_rows

pytestmark = pytest.mark.export

pytest.importorskip("onnxruntime")
pytest.importorskip("fastapi")

# What the runtime must not import: the training stack (the train extra).
TRAINING_STACK = (
    "torch", "transformers", "peft", "accelerate", "matplotlib", "tensorboard", "sklearn", "scipy",
)  # fmt: skip
# A temperature far from 1, written into the export's metadata: a path that ignored it would
# give probabilities far from the run's (which is given the same one).
TEMPERATURE = 0.4
# Chains of the per-residue run (32 residues per window): the last two need windows.
RESIDUE_CHAINS = ["MKVLLDEKRAVLS", "ADEKLRSVGNLLVDEKRGS", "GNADEKLRSV" * 5, "LVDEKRSNGA" * 9]

# Runs in a fresh interpreter: argv[1] is a JSON object of paths, argv[2] "hide" to make the
# training stack unimportable (None in sys.modules: `import torch` fails, find_spec says absent).
_SCRIPT = """
import contextlib, io, json, sys
paths = json.loads(sys.argv[1])
stack = paths["stack"]
if sys.argv[2] == "hide":
    for name in stack:
        sys.modules[name] = None
from esmtune.cli import main
from esmtune.predict import Predictor
found = {"cli": main(["predict", paths["export"], paths["fasta"], "-o", paths["out"]])}
residue = Predictor.from_export(paths["residue_export"])
found["residue"] = [r["probabilities"] for r in residue.predict(paths["chains"])]
from fastapi.testclient import TestClient
from esmtune.serve import create_app
with TestClient(create_app(paths["export"], batch_wait_ms=0)) as client:
    found["health"] = client.get("/health").status_code
    body = {"sequences": [{"id": "a", "sequence": paths["served"]}]}
    found["served"] = client.post("/predict", json=body).json()["predictions"]
if sys.argv[2] == "hide":
    errors = io.StringIO()
    with contextlib.redirect_stderr(errors):
        found["run_dir"] = main(["predict", paths["run"], "--sequence", "MKTAYIAKQR"])
    found["run_dir_error"] = errors.getvalue()
found["imported"] = sorted(name for name in stack if sys.modules.get(name) is not None)
print(json.dumps(found))
"""


@pytest.fixture(scope="module")
def sequences(tmp_path_factory) -> list[str]:
    """Unseen sequences of 21 to 71 residues, and joined ones of 100 to 200 (windows of 80)."""
    root = make_learnable_dataset(tmp_path_factory.mktemp("lean_unseen"), {"test": 4}, seed=11)
    found = [r.sequence for path in sorted(root.glob("test/*.fasta")) for r in read_fasta(path)]
    return [*found, found[0] + found[1], "".join(found[2:6])]


@pytest.fixture(scope="module")
def sequence_export(lora_run: Path, tmp_path_factory) -> Path:
    """The shared LoRA run (windows of 80) exported to ONNX, its calibration set to TEMPERATURE."""
    folder = export_run(lora_run, tmp_path_factory.mktemp("lean") / "onnx", "onnx",
                        check_sequences=4)  # fmt: skip
    labels = json.loads((folder / "labels.json").read_text())
    labels["calibration"] = {"temperature": TEMPERATURE}
    (folder / "labels.json").write_text(json.dumps(labels))
    return folder


@pytest.fixture(scope="module")
def residue_run(tiny_model_dir: Path, tmp_path_factory) -> Path:
    """A residue_classification run (LoRA, windows of 32 residues), calibrated as trained."""
    root = tmp_path_factory.mktemp("lean_residue")
    data = write_flip(root / "data", {"train": 32, "validation": 8, "test": 8}, regression=False)
    settings = ("task=residue_classification", "training.epochs=2")
    return _train(tiny_model_dir, data, root / "runs", "run", *settings)


@pytest.fixture(scope="module")
def residue_export(residue_run: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("lean_residue_export") / "onnx"
    return export_run(residue_run, out, "onnx", check_sequences=4)


def _run_lean(paths: dict, mode: str) -> dict:
    """The script above in a fresh interpreter; what it found."""
    done = subprocess.run(
        [sys.executable, "-c", _SCRIPT, json.dumps(paths), mode],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def lean_paths(
    lora_run: Path,
    sequence_export: Path,
    residue_export: Path,
    sequences: list[str],
    tmp_path_factory,
) -> dict:
    folder = tmp_path_factory.mktemp("lean_io")
    fasta = folder / "in.fasta"
    fasta.write_text("".join(f">s{i}\n{s}\n" for i, s in enumerate(sequences)))
    return {
        "stack": TRAINING_STACK,
        "export": str(sequence_export),
        "residue_export": str(residue_export),
        "run": str(lora_run),
        "fasta": str(fasta),
        "out": str(folder / "predictions.json"),
        "chains": RESIDUE_CHAINS,
        "served": sequences[-1],
    }


@pytest.fixture(scope="module")
def plain(lean_paths: dict) -> dict:
    """What the export path found in a fresh interpreter, everything installed."""
    return _run_lean(lean_paths, "plain")


def _probabilities(results: list[dict], labels: list[str]) -> np.ndarray:
    return np.array([[r["probabilities"][label] for label in labels] for r in results])


def test_an_onnx_export_predicts_and_serves_without_the_training_stack(
    plain: dict, lean_paths: dict, lora_run: Path, residue_run: Path, sequences: list[str]
) -> None:
    found = plain
    assert found["imported"] == [], f"the export path imported {found['imported']}"
    assert found["cli"] == 0 and found["health"] == 200
    # The run's own predictions, calibrated as the export says (windows included).
    run = Predictor.from_run(lora_run, device="cpu")
    run.task.calibration = {"temperature": TEMPERATURE}
    expected = run.predict(sequences)
    assert max(r["windows"] for r in expected) > 1
    got = json.loads(Path(lean_paths["out"]).read_text())
    labels = run.labels
    assert [r["label"] for r in got] == [r["label"] for r in expected]
    assert np.abs(_probabilities(got, labels) - _probabilities(expected, labels)).max() < 1e-4
    uncalibrated = Predictor.from_run(lora_run, device="cpu").outputs(sequences)
    assert np.abs(_probabilities(got, labels) - uncalibrated).max() > 1e-3  # it was applied
    served = found["served"][0]
    assert served["label"] == got[-1]["label"]
    assert served["probabilities"] == pytest.approx(got[-1]["probabilities"], abs=1e-6)
    # Per residue: the run's probabilities residue by residue, long chains in windows.
    residues = Predictor.from_run(residue_run, device="cpu").outputs(RESIDUE_CHAINS)
    lean = [np.array(chain, dtype=np.float64) for chain in found["residue"]]  # (residues, classes)
    assert np.abs(residue_rows(lean) - residue_rows(residues)).max() < 1e-4


def test_the_export_path_gives_what_the_in_process_predictor_gives(
    plain: dict, lean_paths: dict, sequence_export: Path, sequences: list[str]
) -> None:
    here = Predictor.from_export(sequence_export).predict(sequences)
    got = json.loads(Path(lean_paths["out"]).read_text())
    assert [r["label"] for r in got] == [r["label"] for r in here]
    labels = list(here[0]["probabilities"])
    assert np.abs(_probabilities(got, labels) - _probabilities(here, labels)).max() < 1e-6
    assert plain["imported"] == []


def test_a_runtime_only_install_predicts_exports_and_names_the_extra_for_runs(
    lean_paths: dict,
) -> None:
    """The training stack hidden (as without the train extra): exports work, runs explain."""
    found = _run_lean(lean_paths, "hide")
    assert found["cli"] == 0 and found["health"] == 200 and found["served"]
    assert found["run_dir"] == 2
    assert "pip install 'esmtune[train]'" in found["run_dir_error"]
    assert "Traceback" not in found["run_dir_error"]


def test_the_esm2_alphabet_gives_the_esm_tokenizers_ids() -> None:
    tokenizer = esm2_tokenizer()
    vocabulary = Esm2Vocabulary()
    assert vocabulary.get_vocab() == tokenizer.get_vocab()
    assert tokenizer.convert_tokens_to_ids(list(ESM2_VOCAB)) == list(range(len(ESM2_VOCAB)))
    for name in ("unk", "cls", "eos", "pad"):
        assert getattr(vocabulary, f"{name}_token_id") == getattr(tokenizer, f"{name}_token_id")
    # Every residue letter ESM2 knows, and letters it does not (J, *, a digit): <unk>.
    sequences = [RESIDUES, "MKJTAY*QR1", "A" * 100]
    for sequence in sequences[:2]:
        ids = encode(vocabulary, [sequence], 1022)[0][0].ids
        assert ids == tokenizer(sequence)["input_ids"]
    assert encode(vocabulary, sequences, 40, "window", 20) == encode(
        tokenizer, sequences, 40, "window", 20
    )


def _tasks() -> list[tuple[TaskSpec, tuple[int, ...]]]:
    """Each task with a calibration (or a scale) that changes its outputs, and a logits shape."""
    return [
        (MulticlassTask(["a", "b", "c"], calibration={"temperature": 1.7}), (6, 3)),
        (BinaryTask(["no", "yes"], calibration={"slope": [0.8], "intercept": [0.3]}), (6, 1)),
        (
            MultilabelTask(
                ["x", "y", "z"], calibration={"slope": [0.5, 1, 2], "intercept": [0, 0.1, -1]}
            ),
            (6, 3),
        ),
        (RegressionTask(["u", "v"], target_mean=[1.0, -2.0], target_std=[3.0, 0.5]), (6, 2)),
        (ResidueClassificationTask(["C", "E", "H"], calibration={"temperature": 0.6}), (3, 9, 3)),
        (
            ResidueClassificationTask(
                ["0", "1"], calibration={"slope": [1.3], "intercept": [-0.2]}
            ),
            (3, 9, 2),
        ),
        (ResidueRegressionTask(["value"], target_mean=[0.5], target_std=[2.0]), (3, 9, 1)),
    ]


@pytest.mark.parametrize(("task", "shape"), _tasks(), ids=lambda x: getattr(x, "task", None))
def test_each_tasks_numpy_activation_is_its_torch_one(
    task: TaskSpec, shape: tuple[int, ...]
) -> None:
    logits = torch.randn(*shape, generator=torch.Generator().manual_seed(0)) * 4
    expected = task.activation(logits).numpy()
    got = task.activate(logits.numpy())
    assert got.dtype == np.float32 and got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7)
    assert np.abs(got - task.outputs(logits)).max() == 0  # torch logits take the numpy path
    assert task.outputs(np.empty((0, *shape[1:]), dtype=np.float32)).shape[0] == 0
