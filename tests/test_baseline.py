"""The composition baseline: the task's model on composition beats the task's trivial predictor.

Run on every bundled example through the CLI, as the README shows it, and checked against the
numbers composition_baseline returns.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from esmtune.baseline import composition_baseline, composition_features
from esmtune.cli import main
from esmtune.config import load_config

ROOT = Path(__file__).resolve().parents[1]

# (config, the metric the baseline must win on, the trivial predictor's name)
_EXAMPLES = {
    "multiclass": ("configs/demo.yaml", "macro_f1", "always '"),
    "binary": ("configs/binary.yaml", "mcc", "always '"),
    # On these 1,200 proteins composition does not beat label frequencies on Fmax (0.35 vs
    # 0.45; the README says so); at a 0.5 threshold it does find labels, frequencies find none.
    "multilabel": ("configs/multilabel.yaml", "micro_f1", "label frequencies in train"),
    "regression": ("configs/regression.yaml", "spearman", "the train mean"),
}


def test_composition_features_are_frequencies() -> None:
    features = composition_features(["AAC", "XZ"])
    assert features.shape == (2, 420)
    assert features[0, :20].sum() == pytest.approx(1.0)  # A, A, C
    assert features[0, 20:].sum() == pytest.approx(1.0)  # AA, AC
    assert features[1].sum() == 0  # no standard residue


@pytest.mark.parametrize("task", sorted(_EXAMPLES))
def test_the_baseline_beats_the_trivial_predictor(task: str, monkeypatch, capsys) -> None:
    path, metric, trivial_name = _EXAMPLES[task]
    monkeypatch.chdir(ROOT)
    config = load_config(path)
    assert config.task.value == task
    result = composition_baseline(config.data, config.task)
    assert result["task"] == task and result["n"] > 0
    assert result["trivial_name"].startswith(trivial_name)
    assert metric in result["headline"]
    trivial = result["trivial"][metric] or 0.0  # a constant predictor's rank scores are undefined
    assert result["model"][metric] > trivial
    assert main(["baseline", "--config", path]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"composition baseline ({result['model_name']} on amino-acid")
    assert f"{metric} {result['model'][metric]:.3f}" in out
