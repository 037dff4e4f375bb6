"""Training from Python objects: records in memory are checked and trained on as files are.

``esmtune.fit`` takes (sequence, target) pairs, SequenceRecords, dicts or DataFrames. These tests
hold it to the file readers: the bundled examples read from DataFrames give the records, labels
and tables their files give; every problem is found, named by where the record sits, and
reported at once; and training on records gives the weights ``esmtune train`` gives on the same
records' files.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.helpers import LORA_RUN_SETTINGS, ROOT, tiny_overrides

from esmtune.config import DataConfig, Task, load_config
from esmtune.data.check import DataReport, check_dataset
from esmtune.data.fasta import SequenceRecord
from esmtune.data.layout import SPLITS, read_split
from esmtune.data.memory import IN_MEMORY, MemoryDataset
from esmtune.errors import ConfigError, DataError
from esmtune.fitting import fit_config

_ALPHABET = "ACDEFGHIKLMNPQRSTVWY"


def protein(length: int, start: int) -> str:
    """A valid sequence; a different ``start`` (mod 20) gives a different sequence."""
    return "".join(_ALPHABET[(start + i) % len(_ALPHABET)] for i in range(length))


def check_memory(task: str, splits: dict[str, Any], **data: Any) -> DataReport:
    """check_dataset on records held in memory, with these data settings."""
    with MemoryDataset(splits).active():
        return check_dataset(DataConfig(path=IN_MEMORY, **data), task)


def contents(report: DataReport) -> dict[str, list[tuple[str, str, Any]]]:
    """Each split's (id, sequence, target), in order: what training reads."""
    return {
        split: [(r.id, r.sequence, r.target) for r in records]
        for split, records in report.splits.items()
    }


def only_error_with(report: DataReport, *parts: str) -> str:
    """The one error that contains every part; fails with the full list otherwise."""
    found = [error for error in report.errors if all(part in error for part in parts)]
    assert len(found) == 1, f"expected one error with {parts}, got:\n" + "\n".join(report.errors)
    return found[0]


def _labelled(labels: list[str], count: int, length: int) -> list[tuple[str, str]]:
    """``count`` pairs per label, all different, of lengths from ``length`` up."""
    return [(protein(length + i, 2 * i + k), label) for k, label in enumerate(labels)
            for i in range(count)]  # fmt: skip


# Two labels, a few records each, every split (no sequence in two splits): it passes the check.
GOOD = {
    "train": _labelled(["Alpha", "Beta"], 3, 12),
    "validation": _labelled(["Alpha", "Beta"], 1, 20),
    "test": _labelled(["Alpha", "Beta"], 1, 25),
}


# --- the same records as files -----------------------------------------------------------


def _frames(path: Path, split_column: str | None = None) -> dict[str, pd.DataFrame]:
    """A table example as one DataFrame per split, every cell read as text (as files are)."""
    if split_column is not None:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
        return {split: table[table[split_column] == split] for split in SPLITS}
    return {
        split: pd.read_csv(path / f"{split}.tsv", sep="\t", dtype=str, keep_default_na=False)
        for split in SPLITS
    }


def _records(folder: Path) -> dict[str, list[SequenceRecord]]:
    """A per-label FASTA example as SequenceRecords, which carry the file and line."""
    return {split: read_split(folder, split)[1] for split in SPLITS}


@pytest.mark.parametrize(
    ("example", "task", "data", "splits"),
    [
        ("scl3", "multiclass", {}, lambda: _records(ROOT / "examples/scl3")),
        (
            "scl_locations",
            "multilabel",
            {"target_columns": ["locations"]},
            lambda: _frames(ROOT / "examples/scl_locations"),
        ),
        ("gb1/gb1.csv", "regression", {}, lambda: _frames(ROOT / "examples/gb1/gb1.csv", "split")),
    ],
)
def test_a_bundled_example_in_memory_reads_as_its_files(
    example: str, task: str, data: dict[str, Any], splits: Any
) -> None:
    from_files = check_dataset(DataConfig(path=ROOT / "examples" / example, **data), task)
    in_memory = check_memory(task, splits(), **data)
    assert from_files.ok and in_memory.ok, in_memory.errors
    assert contents(in_memory) == contents(from_files)
    assert in_memory.labels == from_files.labels
    assert in_memory.table() == from_files.table()
    assert in_memory.warnings == from_files.warnings  # leakage is judged the same way
    assert in_memory.layout == "in memory (esmtune.fit)"


def test_every_form_of_a_record_gives_the_same_records() -> None:
    pairs = GOOD["train"]
    ids = [f"P{i}" for i in range(len(pairs))]
    rows = [(i, s, t) for i, (s, t) in zip(ids, pairs, strict=True)]
    forms = {
        "records": [SequenceRecord(i, s, t) for i, s, t in rows],
        "dicts": [{"id": i, "sequence": s, "target": t} for i, s, t in rows],
        "dicts by column": [{"id": i, "sequence": s, "label": t} for i, s, t in rows],
        "DataFrame": pd.DataFrame(rows, columns=["id", "sequence", "label"]),
    }
    expected = [(i, s.upper(), t) for i, s, t in rows]
    for form, train in forms.items():
        report = check_memory("multiclass", {**GOOD, "train": train})
        assert report.ok, (form, report.errors)
        assert contents(report)["train"] == expected, form
    # Pairs have no ids: they are named by split and position.
    pairs_report = check_memory("multiclass", GOOD)
    assert [r.id for r in pairs_report.splits["train"]][:2] == ["train:0", "train:1"]


def test_sequences_are_cleaned_as_a_file_reader_cleans_them() -> None:
    train = [("mkt ay\nIAK*", "Alpha"), *GOOD["train"][1:]]
    report = check_memory("multiclass", {**GOOD, "train": train})
    assert report.splits["train"][0].sequence == "MKTAYIAK"


def test_typed_targets_are_read_as_the_task_reads_text() -> None:
    # multilabel: a list, a set and a ';' string are the same label set
    forms = [["Nucleus", "Cytoplasm"], {"Cytoplasm", "Nucleus"}, "Cytoplasm;Nucleus"]
    train = [(protein(15, i), form) for i, form in enumerate(forms)]
    train += [(protein(16, 7), ("Membrane",)), (protein(17, 8), np.array(["Nucleus"]))]
    validation = [(protein(15, 30), ["Nucleus"])]
    report = check_memory("multilabel", {"train": train, "validation": validation})
    assert report.ok, report.errors
    targets = [r.target for r in report.splits["train"]]
    assert targets[:3] == [("Cytoplasm", "Nucleus")] * 3
    assert report.labels == ["Cytoplasm", "Membrane", "Nucleus"]

    # binary: booleans are true / false, and true is the positive class
    train = [(protein(12, i), i % 2 == 0) for i in range(6)]
    validation = [(protein(12, 40), np.bool_(True)), (protein(12, 41), False)]
    report = check_memory("binary", {"train": train, "validation": validation})
    assert report.ok, report.errors
    assert report.labels == ["false", "true"]

    # regression: Python and numpy numbers, and a tuple per record for several targets
    train = [(protein(12, i), value) for i, value in enumerate([0.25, np.float32(0.5), 3, -1e-3])]
    report = check_memory("regression", {"train": train, "validation": train[:1]})
    assert report.ok, report.errors
    assert [r.values for r in report.splits["train"]] == [(0.25,), (0.5,), (3.0,), (-0.001,)]
    two = [(protein(12, i), (0.1 * i, np.float64(i))) for i in range(4)]
    report = check_memory(
        "regression", {"train": two, "validation": two[:1]}, target_columns=["a", "b"]
    )
    assert report.ok, report.errors
    assert report.splits["train"][2].values == (0.2, 2.0)
    assert report.labels == ["a", "b"]


# --- problems: found, named by where the record sits, reported at once ---------------------


def test_problems_name_the_record_and_are_reported_at_once() -> None:
    train = [{"id": f"P{i}", "sequence": s, "target": t} for i, (s, t) in enumerate(GOOD["train"])]
    train[4] = {"id": "P3", "sequence": "MKJLV", "target": "Beta"}  # bad residue, repeated id
    train.append({"id": "P9", "sequence": float("nan"), "target": "Alpha"})  # an empty cell
    train.append({"id": "P10", "sequence": protein(30, 5), "target": None})
    train.append("MKTAYIAK")  # a sequence without a target
    validation = [*GOOD["validation"], (protein(20, 7), "Gamma")]
    report = check_memory("multiclass", {**GOOD, "train": train, "validation": validation})

    residue = only_error_with(report, "invalid residue")
    assert residue.startswith("train[4], record 'P3': invalid residue 'J' at position 3")
    assert "train: duplicate id 'P3' at train[4] (first at train[3])" in report.errors
    only_error_with(report, "train[6], record 'P9': empty sequence")
    only_error_with(report, "train[7], record 'P10': empty label in column 'label'")
    only_error_with(report, "train[8]: 'MKTAYIAK' is not a record; give (sequence, target) pairs")
    unknown = only_error_with(report, "validation: label(s) Gamma never occur in train")
    assert "e.g. validation[2], record 'validation:2'" in unknown
    with pytest.raises(DataError) as raised:
        report.raise_if_errors()
    assert str(raised.value).startswith(f"{IN_MEMORY}: {len(report.errors)} problem(s)")


def test_a_dataframe_row_is_named_by_its_position() -> None:
    frame = pd.DataFrame(
        {"id": ["A", "B", "C"], "sequence": ["MKV", "MK-V", "MKL"], "target": [0.1, 0.2, math.nan]}
    )
    report = check_memory("regression", {"train": frame, "validation": frame.iloc[:1]})
    only_error_with(report, "train.iloc[1], record 'B': invalid residue '-' at position 3")
    only_error_with(
        report, "train.iloc[2], record 'C': column 'target' is empty; every regression target"
    )


def test_conflicts_and_leakage_are_judged_as_in_files() -> None:
    shared = protein(25, 3)
    train = [*GOOD["train"], (shared, "Alpha"), (shared, "Beta")]
    report = check_memory("multiclass", {**GOOD, "train": train})
    only_error_with(
        report, "train[6], record 'train:6': the same sequence is labelled Alpha and Beta"
    )
    dropped = check_memory("multiclass", {**GOOD, "train": train}, drop_conflicts=True)
    assert dropped.ok and "dropped 2 record(s) of 1 sequence(s)" in dropped.notes[0]

    test = [*GOOD["test"], (GOOD["train"][0][0], "Alpha")]
    report = check_memory("multiclass", {**GOOD, "test": test})
    assert report.ok
    (warning,) = report.warnings
    assert "leakage: 1 sequence(s) of train also occur in evaluation splits (1 in test)" in warning
    assert "e.g. test[2], record 'test:2'" in warning
    fatal = check_memory("multiclass", {**GOOD, "test": test}, fail_on_leakage=True)
    only_error_with(fatal, "leakage", "data.fail_on_leakage is true")


def test_a_target_of_the_wrong_shape_says_what_to_give() -> None:
    one_column = [(protein(12, 0), (0.1, 0.2))]
    report = check_memory("regression", {"train": one_column, "validation": one_column})
    only_error_with(
        report, "train[0], record 'train:0': the target has 2 values but there is one target "
        "column ('target'); give one value, or name a column per value in data.target_columns",
    )  # fmt: skip
    labels = [(protein(12, 0), ["Alpha", "Beta"])]  # one label per sequence, two given
    report = check_memory("multiclass", {**GOOD, "train": GOOD["train"] + labels})
    only_error_with(report, "train[6]", "the target has 2 values but there is one target column")

    settings = {"target_columns": ["a", "b"]}
    wrong = [(protein(12, 0), (0.1, 0.2, 0.3)), (protein(13, 1), 0.5), (protein(14, 2), {0.1, 0.2})]
    report = check_memory("regression", {"train": wrong, "validation": wrong}, **settings)
    only_error_with(report, "train[0]", "3 value(s) for 2 target columns ('a', 'b')")
    only_error_with(report, "train[1]", "1 value(s) for 2 target columns")
    only_error_with(report, "train[2]", "a set has no order; give a tuple")
    text = [(protein(12, 0), "x;y"), (protein(13, 0), ["a;b", "c"])]
    report = check_memory("multilabel", {"train": text, "validation": text})
    only_error_with(report, "train[1]", "label 'a;b' holds the label separator ';'")


def test_missing_keys_and_columns_suggest_the_closest_name() -> None:
    train = [{"id": "P1", "sequnce": protein(12, 0), "target": "Alpha"},
             {"id": "P2", "sequence": protein(12, 1), "lable": "Beta"}]  # fmt: skip
    report = check_memory("multiclass", {**GOOD, "train": train})
    only_error_with(
        report, "train[0]: no key 'sequence' (did you mean 'sequnce'?); it has id, sequnce, "
        "target. Rename it, or set data.sequence_column",
    )  # fmt: skip
    only_error_with(report, "train[1]: no target; give it under 'target', or under 'label'")

    frame = pd.DataFrame({"ID": ["P1"], "Sequence": [protein(12, 0)], "label": ["Alpha"]})
    report = check_memory("multiclass", {**GOOD, "train": frame})
    only_error_with(
        report, "train: the DataFrame has no sequence column 'sequence' (did you mean "
        "'Sequence'?); it has ID, Sequence, label. Rename it, or set data.sequence_column",
    )  # fmt: skip
    assert not any(e.startswith("train: no records") for e in report.errors)  # not also "missing"


def test_a_split_not_given_or_not_records_says_how_to_give_it() -> None:
    report = check_memory("multiclass", {"train": GOOD["train"], "validation": None})
    only_error_with(
        report, "validation: no records; the validation split is required: pass "
        "validation=[(sequence, target), ...] to esmtune.fit",
    )  # fmt: skip
    assert report.warnings == ["test: absent; `esmtune evaluate` will need it"]
    report = check_memory("multiclass", {**GOOD, "train": "MKTAYIAK"})
    only_error_with(report, "train: a str is not a collection of records; give (sequence, target)")


def test_a_dataset_in_memory_is_read_only_while_active() -> None:
    with pytest.raises(DataError, match=re.escape("esmtune evaluate RUN --data PATH")):
        check_dataset(DataConfig(path=IN_MEMORY), "multiclass")


# --- the configuration ---------------------------------------------------------------------


def test_a_config_file_mapping_or_object_with_overrides_give_one_config() -> None:
    path = ROOT / "configs" / "regression.yaml"
    from_file = fit_config(path, None, {"training__epochs": 3, "model__head_hidden": [64]})
    raw = load_config(path).to_yaml_dict()
    from_mapping = fit_config(raw, None, {"training__epochs": 3, "model__head_hidden": (64,)})
    from_object = fit_config(load_config(path), "regression", {
        "training__epochs": np.int64(3), "model__head_hidden": [64],
    })  # fmt: skip
    assert from_file == from_mapping == from_object
    assert from_file.training.epochs == 3 and from_file.model.head_hidden == [64]
    assert from_file.training.early_stopping.metric == "spearman"  # the rest is the file's
    assert from_file.data.path == IN_MEMORY
    nested = fit_config(None, Task.BINARY, {"training__early_stopping__patience": 0})
    assert nested.task is Task.BINARY and nested.training.early_stopping.patience == 0


def test_config_mistakes_are_listed_at_once_naming_the_call() -> None:
    with pytest.raises(ConfigError) as raised:
        fit_config(
            {"training": {"epoch": 3}}, "regression", {"objective__class_weights": "balanced"}
        )
    message = str(raised.value)
    assert message.startswith("esmtune.fit: 2 problem(s) in the configuration:")
    assert "training.epoch: unknown key; did you mean 'epochs'?" in message
    applies = "applies to task=multiclass or residue_classification"
    assert f"objective.class_weights {applies}, not task=regression" in message

    with pytest.raises(ConfigError) as raised:
        fit_config(None, None, {"training.epochs": 3, "data__path": "data"})
    message = str(raised.value)
    assert "training.epochs: write training__epochs=... (sections joined by '__')" in message
    assert "data__path: the records are the data; pass them as train=, validation= and test=" in (
        message
    )


# --- training --------------------------------------------------------------------------------


def test_fit_on_records_trains_exactly_as_train_on_their_files(
    lora_run: Path,
    tiny_model_dir: Path,
    learnable_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """lora_run trained on learnable_data's files; the same records in memory, the same run."""
    from safetensors.numpy import load_file

    import esmtune
    from esmtune.cli import main
    from esmtune.evaluate import evaluate_run

    settings = [*tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "records"),
                *LORA_RUN_SETTINGS]  # fmt: skip
    splits = {split: read_split(learnable_data, split)[1] for split in SPLITS}
    run = esmtune.fit(
        splits["train"], splits["validation"], splits["test"], config=load_config(None, settings)
    )
    assert run == tmp_path / "records"
    weights = load_file(run / "model" / "weights.safetensors")
    expected = load_file(lora_run / "model" / "weights.safetensors")
    assert weights.keys() == expected.keys()
    assert all(np.array_equal(weights[name], expected[name]) for name in expected)

    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["data"]["path"] == str(IN_MEMORY)
    assert manifest["data"]["layout"] == "in memory (esmtune.fit)"
    assert (
        manifest["data"]["counts"]
        == json.loads((lora_run / "manifest.json").read_text())["data"]["counts"]
    )
    # test was scored after training, and its report printed
    scored = json.loads((run / "eval" / "test" / "metrics.json").read_text())
    assert capsys.readouterr().out.count(f"test (n={scored['n']}): accuracy") == 1
    from_files, _, _ = evaluate_run(run, learnable_data, "test", progress=False)
    # The baseline is fitted on the run's own train split, which only fit() held in memory.
    assert scored.pop("baseline")["fitted_on"].startswith("the run's train split, 120 proteins")
    assert "this dataset was given in Python" in from_files.pop("baseline")["skipped"]
    # So are the metrics by identity to that train split.
    assert "this dataset was given in Python" in from_files.pop("by_identity")["skipped"]
    scored.pop("by_identity")
    assert {**scored, "data": ""} == {**from_files, "data": ""}

    # Later, without the records: evaluate says to give the data as a path.
    assert main(["evaluate", str(run)]) == 2
    assert "is not on disk; give a dataset path instead" in capsys.readouterr().err


def test_fit_stops_on_bad_records_before_any_run_directory(
    tiny_model_dir: Path, tmp_path: Path
) -> None:
    import esmtune

    train = [(protein(20, i), float(i)) for i in range(8)] + [(protein(21, 0), "high")]
    with pytest.raises(DataError) as raised:
        esmtune.fit(train, [(protein(22, 0), "0.5")], task="regression",
                    model__name=str(tiny_model_dir), output__dir=str(tmp_path))  # fmt: skip
    assert "train[8], record 'train:8': column 'target' holds 'high', not a number" in str(
        raised.value
    )
    assert not any(tmp_path.iterdir())


@pytest.mark.end_to_end
def test_readme_fit_example_runs(
    tiny_model_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The README's notebook example, as written, on the tiny model and into tmp_path."""
    import esmtune
    from esmtune.fitting import fit

    text = (ROOT / "README.md").read_text()
    (snippet,) = re.findall(r"```py\n(.*?)```", text, flags=re.DOTALL)

    def offline_fit(*args: Any, **kwargs: Any) -> Path:
        return fit(*args, **kwargs, model__name=str(tiny_model_dir), output__dir=str(tmp_path))

    monkeypatch.setattr(esmtune, "fit", offline_fit)
    monkeypatch.chdir(ROOT)  # the snippet names configs/regression.yaml
    exec(snippet, {})
    run = tmp_path / "lysine"
    config = load_config(run / "config.yaml")
    assert config.task is Task.REGRESSION and config.training.epochs == 3
    assert config.model.head_hidden == [256]  # from configs/regression.yaml
    assert json.loads((run / "manifest.json").read_text())["data"]["counts"]["train"]["n"] == 160
    assert "spearman" in json.loads((run / "eval" / "test" / "metrics.json").read_text())
    last_line = capsys.readouterr().out.strip().splitlines()[-1]
    assert math.isfinite(float(last_line))
