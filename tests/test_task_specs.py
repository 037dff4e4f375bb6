"""Each task's loss, fitted state and outputs, checked against torch's functions by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from esmtune.config import ObjectiveConfig, Task, load_config
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import ConfigError
from esmtune.tasks import build_task, task_from_state


def _records(targets: list) -> list[SequenceRecord]:
    return [SequenceRecord(f"r{i}", "MKV", target) for i, target in enumerate(targets)]


def _config(*overrides: str):
    return load_config(None, list(overrides))


def test_multiclass_balanced_class_weights_enter_the_loss() -> None:
    records = _records(["A"] * 6 + ["B"] * 3 + ["C"])
    spec = build_task(_config("objective.class_weights=balanced"), ["A", "B", "C"], records)
    assert spec.weights == pytest.approx([10 / 18, 10 / 9, 10 / 3])  # n / (classes x count)
    logits = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    targets = torch.from_numpy(spec.encode_targets(records))
    expected = nn.functional.cross_entropy(logits, targets, weight=torch.tensor(spec.weights))
    assert spec.loss(logits, targets) == pytest.approx(expected.item())
    assert spec.loss(logits, targets) != pytest.approx(
        nn.functional.cross_entropy(logits, targets).item()
    )


def test_multiclass_given_class_weights_must_name_labels() -> None:
    records = _records(["A", "B"])
    spec = build_task(_config("objective.class_weights={B: 3}"), ["A", "B"], records)
    assert spec.weights == [1.0, 3.0]
    with pytest.raises(ConfigError, match="names Z, which are not labels"):
        build_task(_config("objective.class_weights={Z: 3}"), ["A", "B"], records)


def test_binary_pos_weight_and_single_logit() -> None:
    records = _records(["no", "no", "no", "yes"])
    spec = build_task(
        _config("task=binary", "objective.pos_weight=balanced"), ["no", "yes"], records
    )
    assert spec.num_outputs == 1
    assert spec.weights == [3.0]
    targets = torch.from_numpy(spec.encode_targets(records))
    assert targets.tolist() == [0.0, 0.0, 0.0, 1.0]
    logits = torch.tensor([[0.2], [-1.0], [0.5], [-0.3]])
    expected = nn.functional.binary_cross_entropy_with_logits(
        logits[:, 0], targets, pos_weight=torch.tensor([3.0])
    )
    assert spec.loss(logits, targets) == pytest.approx(expected.item())
    assert spec.outputs(logits) == pytest.approx(torch.sigmoid(logits[:, 0]).numpy())


def test_binary_threshold_decides_the_label() -> None:
    spec = build_task(_config("task=binary"), ["no", "yes"], _records(["no", "yes"]))
    spec.thresholds = [0.3]
    results = spec.predictions(np.array([0.35, 0.25]), top_k=None)
    assert [r["label"] for r in results] == ["yes", "no"]
    assert results[0]["probabilities"] == pytest.approx({"no": 0.65, "yes": 0.35})


def test_multilabel_encodes_multi_hot_and_keeps_parents_above_children() -> None:
    labels = ["GO:P", "GO:C1", "GO:C2", "GO:X"]
    records = _records([("GO:C1", "GO:P"), ("GO:X",), ("GO:C2", "GO:P")])
    spec = build_task(
        _config("task=multilabel"), labels, records,
        ancestors={"GO:C1": ["GO:P"], "GO:C2": ["GO:P"]},
    )  # fmt: skip
    assert spec.encode_targets(records).tolist() == [[1, 1, 0, 0], [0, 0, 0, 1], [1, 0, 1, 0]]
    logits = torch.logit(torch.tensor([[0.2, 0.9, 0.1, 0.5]]))
    (row,) = spec.outputs(logits)
    assert row == pytest.approx([0.9, 0.9, 0.1, 0.5])  # parent raised to its best child
    spec.objective = ObjectiveConfig(ontology_consistent=False)
    (row,) = spec.outputs(logits)
    assert row == pytest.approx([0.2, 0.9, 0.1, 0.5])


def test_multilabel_predictions_list_labels_above_their_thresholds() -> None:
    spec = build_task(
        _config("task=multilabel"), ["a", "b", "c"], _records([("a",), ("b", "c")]),
        label_names={"a": "alpha"},
    )  # fmt: skip
    spec.thresholds = [0.5, 0.9, 0.1]
    (result,) = spec.predictions(np.array([[0.6, 0.8, 0.2]]), top_k=2)
    assert result["labels"] == ["a", "c"]  # b is below its own threshold; ranked by probability
    assert result["top_k"] == [("b", pytest.approx(0.8)), ("a", pytest.approx(0.6))]
    assert result["names"] == {"a": "alpha"}


@pytest.mark.parametrize("loss", ["mse", "huber"])
def test_regression_learns_on_standardised_targets_and_answers_on_the_original_scale(
    loss: str,
) -> None:
    values = [(10.0, -1.0), (20.0, -3.0), (30.0, -2.0)]
    records = _records(values)
    spec = build_task(
        _config("task=regression", "data.target_columns=[a,b]",
                f"objective.regression_loss={loss}"),
        ["a", "b"], records,
    )  # fmt: skip
    targets = np.asarray(values)
    assert spec.target_mean == pytest.approx(targets.mean(axis=0).tolist())
    assert spec.target_std == pytest.approx(targets.std(axis=0).tolist())
    perfect = torch.from_numpy((targets - targets.mean(0)) / targets.std(0)).float()
    encoded = torch.from_numpy(spec.encode_targets(records))
    assert spec.loss(perfect, encoded).item() == pytest.approx(0.0, abs=1e-10)
    assert spec.outputs(perfect) == pytest.approx(targets, rel=1e-5)
    (result, *_) = spec.predictions(spec.outputs(perfect), top_k=None)
    assert result["values"] == pytest.approx({"a": 10.0, "b": -1.0}, rel=1e-5)


def test_a_constant_regression_target_does_not_divide_by_zero() -> None:
    spec = build_task(_config("task=regression"), ["target"], _records([(5.0,), (5.0,)]))
    assert spec.target_std == [1.0]


# The per-residue tasks' training side (loss, fitted state) is not written yet: they join here
# when it is.
_TRAINED_TASKS = [Task.MULTICLASS, Task.BINARY, Task.MULTILABEL, Task.REGRESSION]


@pytest.mark.parametrize("task", _TRAINED_TASKS)
def test_a_fitted_task_survives_its_saved_state(task: Task) -> None:
    targets = {
        Task.MULTICLASS: ["A", "B", "B"],
        Task.BINARY: ["no", "yes", "no"],
        Task.MULTILABEL: [("A",), ("A", "B"), ("B",)],
        Task.REGRESSION: [(1.0,), (2.0,), (4.0,)],
    }[task]
    labels = {Task.BINARY: ["no", "yes"], Task.REGRESSION: ["target"]}.get(task, ["A", "B"])
    extra = {
        Task.MULTICLASS: "objective.class_weights=balanced",
        Task.BINARY: "objective.pos_weight=balanced",
        Task.MULTILABEL: "objective.pos_weight=2.5",
        Task.REGRESSION: "objective.regression_loss=huber",
    }[task]
    spec = build_task(_config(f"task={task.value}", extra), labels, _records(targets))
    rebuilt = task_from_state(spec.state())
    assert type(rebuilt) is type(spec)
    assert rebuilt.state() == spec.state()
    logits = torch.randn(3, spec.num_outputs, generator=torch.Generator().manual_seed(1))
    encoded = torch.from_numpy(spec.encode_targets(_records(targets)))
    assert rebuilt.loss(logits, encoded).item() == pytest.approx(spec.loss(logits, encoded).item())
