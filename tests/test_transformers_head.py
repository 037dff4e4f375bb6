"""The ``esm`` head: hf exports that plain transformers loads and that give the run's numbers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import tiny_overrides
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from esmtune.cli import main
from esmtune.config import load_config
from esmtune.errors import ConfigError, EsmtuneError
from esmtune.export import export_run
from esmtune.export.write import _merged_classifier
from esmtune.model.classifier import build_model
from esmtune.model.transformers_head import to_sequence_classification
from esmtune.predict import Predictor
from esmtune.tasks import task_from_state

SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "MDEDEEDSTGANQDEDE", "MLIVLFVMLIVLIVLWVLLF", "MKR"]

# Each task's state, and what the usual transformers recipe does with the logits.
TASKS = {
    "multiclass": ({"labels": ["a", "b", "c"]}, lambda logits: logits.softmax(-1)),
    "binary": (
        {"labels": ["no", "yes"], "thresholds": [0.3]},
        lambda logits: logits.softmax(-1)[:, 1:],
    ),
    "multilabel": ({"labels": ["GO:1", "GO:2", "GO:3", "GO:4"]}, lambda logits: logits.sigmoid()),
    "regression": (
        {"labels": ["stability", "activity"], "target_mean": [3.5, -1.0], "target_std": [2.0, 0.1]},
        lambda logits: logits,
    ),
}


def _batch(folder: Path) -> dict[str, torch.Tensor]:
    tokenizer = AutoTokenizer.from_pretrained(folder)
    encoded = tokenizer(SEQUENCES, return_tensors="pt", padding=True)
    return {"input_ids": encoded["input_ids"], "attention_mask": encoded["attention_mask"]}


@pytest.mark.export
@pytest.mark.parametrize("name", sorted(TASKS))
def test_plain_transformers_gives_the_task_outputs(
    name: str, tiny_model_dir: Path, tmp_path: Path
) -> None:
    state, recipe = TASKS[name]
    task = task_from_state({"task": name, **state})
    config = load_config(
        None, [f"model.name={tiny_model_dir}", "model.head=esm", "model.pooling=cls"]
    )
    torch.manual_seed(1)
    model, _ = build_model(config, task.num_outputs)
    with torch.no_grad():  # a head far from its initialisation, as after training
        for parameter in model.head.parameters():
            parameter.normal_(0, 0.5)
    model = _merged_classifier(model.eval())  # LoRA (the default mode) merged, as export does
    to_sequence_classification(model, task).save_pretrained(tmp_path)

    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(plain).__name__ == "EsmForSequenceClassification"
    assert plain.config.id2label == dict(enumerate(task.labels))
    batch = _batch(tiny_model_dir)
    with torch.no_grad():
        expected = task.outputs(model(**batch)).reshape(len(SEQUENCES), -1)
        got = recipe(plain(**batch).logits).numpy()
    assert got.shape == expected.shape
    assert np.abs(got - expected).max() < 1e-5


def test_only_the_esm_head_converts(tiny_model_dir: Path) -> None:
    config = load_config(None, [f"model.name={tiny_model_dir}"])
    model, _ = build_model(config, 3)
    with pytest.raises(EsmtuneError, match=r"model\.head=esm"):
        to_sequence_classification(model, task_from_state({"labels": ["a", "b", "c"]}))


def test_esm_head_needs_cls_pooling() -> None:
    with pytest.raises(ConfigError, match=r"set model\.pooling=cls"):
        load_config(None, ["model.head=esm", "model.pooling=mean"])


@pytest.mark.export
def test_a_run_with_the_esm_head_exports_for_auto_model(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    """Train through the CLI, export hf: AutoModelForSequenceClassification = the run."""
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "esm_head")
    overrides += ["model.head=esm", "model.pooling=cls", "finetune.mode=lora"]
    assert main(["train", *overrides, "training.epochs=2"]) == 0
    run = tmp_path / "esm_head"
    folder = export_run(run, tmp_path / "hf", "hf", check_sequences=8)

    plain = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    batch = _batch(folder)
    with torch.no_grad():
        probabilities = plain(**batch).logits.softmax(-1).numpy()
    predictor = Predictor.from_run(run, device="cpu")
    expected = predictor.outputs(SEQUENCES)
    assert predictor.run.task.calibration is not None  # folded into the exported layer
    assert np.abs(probabilities - expected).max() < 1e-5
    # esmtune's own loader reads the same folder, and the card shows the plain recipe.
    assert np.abs(Predictor.from_export(folder).outputs(SEQUENCES) - expected).max() < 1e-5
    card = (folder / "README.md").read_text()
    assert "AutoModelForSequenceClassification.from_pretrained" in card
    assert "pipeline_tag: text-classification" in card
    assert "EsmForSequenceClassification head on the `<cls>` state (dense 32 + tanh" in card
    assert "MLP head" not in card
