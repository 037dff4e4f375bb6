"""Exact resume: a run stopped part-way and resumed ends with the same weights and metrics."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tests.helpers import tiny_overrides

from esmtune.cli import main


def _stop_after(run: Path, copy: Path, checkpoint_name: str) -> None:
    """Make ``copy`` look like ``run`` interrupted right after ``checkpoint_name`` was written."""
    shutil.copytree(run, copy)
    for checkpoint in (copy / "checkpoints").iterdir():
        if checkpoint.name > checkpoint_name:
            shutil.rmtree(checkpoint)
    (copy / "metrics.json").unlink()


def _two_classes(data: Path, into: Path) -> Path:
    """Acidic vs Basic from the three-class data: a binary task."""
    for split in ("train", "validation", "test"):
        (into / split).mkdir(parents=True)
        for label in ("Acidic", "Basic"):
            shutil.copy(data / split / f"{label}.fasta", into / split)
    return into


@pytest.mark.parametrize(
    ("mode", "stop_at", "task"),
    [
        ("lora", "epoch-0001-step-00000015", "multiclass"),  # after epoch 1's evaluation
        ("full", "epoch-0001-step-00000012", "multiclass"),  # mid-epoch, with accumulation
        ("lora", "epoch-0001-step-00000010", "binary"),  # a tuned threshold travels too
    ],
)
def test_resumed_run_matches_uninterrupted(
    mode: str, stop_at: str, task: str, tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    if task == "binary":
        learnable_data = _two_classes(learnable_data, tmp_path / "binary-data")
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "whole")
    overrides += [f"task={task}"]
    overrides += [
        f"finetune.mode={mode}",
        "training.epochs=3",
        "training.keep_checkpoints=20",
        "model.head_dropout=0.3",  # dropout makes RNG restoration matter
        "finetune.lora.dropout=0.2",
        "training.warmup_ratio=0.2",
    ]
    if mode == "full":
        overrides += ["training.gradient_accumulation=2", "training.checkpoint_every_steps=4"]
    assert main(["train", *overrides]) == 0
    whole = tmp_path / "whole"
    assert (whole / "checkpoints" / stop_at).is_dir(), sorted((whole / "checkpoints").iterdir())

    resumed = tmp_path / "resumed"
    _stop_after(whole, resumed, stop_at)
    assert main(["train", "--resume", str(resumed)]) == 0

    final = sorted((whole / "checkpoints").iterdir())[-1].name
    # Nothing pickled: tensors in safetensors, everything else in JSON.
    assert {p.name for p in (whole / "checkpoints" / final).iterdir()} == {
        "trainable.safetensors", "optimizer.safetensors", "scheduler.safetensors",
        "rng-0.safetensors", "state.json", "files.json",
    }  # fmt: skip
    expected = load_file(whole / "checkpoints" / final / "trainable.safetensors")
    got = load_file(resumed / "checkpoints" / final / "trainable.safetensors")
    assert expected.keys() == got.keys()
    for name in expected:
        assert (expected[name] == got[name]).all(), f"{name} differs after resume"
    best_expected = load_file(whole / "model/weights.safetensors")
    best_got = load_file(resumed / "model/weights.safetensors")
    assert all((best_expected[k] == best_got[k]).all() for k in best_expected)
    expected_metrics = json.loads((whole / "metrics.json").read_text())
    got_metrics = json.loads((resumed / "metrics.json").read_text())
    for summary in (expected_metrics, got_metrics):
        summary.pop("last_session_seconds")
    assert got_metrics == expected_metrics  # history, best epoch and value, thresholds


def test_resume_refuses_overrides_and_missing_checkpoints(tmp_path: Path, capsys) -> None:
    assert main(["train", "--resume", str(tmp_path), "training.epochs=5"]) == 2
    assert "drop --config and overrides" in capsys.readouterr().err
