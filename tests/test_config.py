"""The config schema, YAML loading, overrides, and the CLI's help texts."""

from __future__ import annotations

import argparse
import itertools
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from esmtune.cli import build_parser, main
from esmtune.config import TrainConfig, apply_overrides, describe_fields, load_config
from esmtune.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
# accelerate*.yaml configure `accelerate launch`, not esmtune (tests/test_fsdp.py reads the FSDP
# and DeepSpeed ones as accelerate does); search.yaml is a search space (tests/test_tune.py).
SHIPPED = sorted(
    p
    for p in (ROOT / "configs").glob("*.yaml")
    if not p.name.startswith("accelerate") and p.name != "search.yaml"
)


def config_error(overrides: list[str], path: Path | None = None) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(path, overrides)
    return str(caught.value)


def leaf_keys(mapping: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key, value in mapping.items():
        if isinstance(value, dict):
            keys |= leaf_keys(value, f"{prefix}{key}.")
        else:
            keys.add(f"{prefix}{key}")
    return keys


# --- shipped configs ---------------------------------------------------------------------


def test_the_demo_config_is_shipped() -> None:
    assert ROOT / "configs" / "demo.yaml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_config_validates(path: Path) -> None:
    config = load_config(path)
    assert isinstance(config, TrainConfig)
    # The file's keys are all read (no silent defaults for a misspelt section).
    assert leaf_keys(yaml.safe_load(path.read_text())) <= leaf_keys(config.to_yaml_dict())


@pytest.mark.parametrize("path", SHIPPED, ids=lambda path: path.name)
def test_every_shipped_config_starts_with_the_command_that_runs_it(path: Path) -> None:
    lines = path.read_text().splitlines()
    opening_comment = "\n".join(itertools.takewhile(lambda line: line.startswith("#"), lines))
    assert f"esmtune train --config configs/{path.name}" in opening_comment


def test_the_demo_config_points_at_bundled_files() -> None:
    config = load_config(ROOT / "configs" / "demo.yaml")
    assert (ROOT / config.data.path / "train").is_dir()
    assert (ROOT / config.model.name / "config.json").is_file()
    assert config.model.pretrained is False  # the bundled model has no weights


def test_a_resolved_config_round_trips_through_yaml(tmp_path: Path) -> None:
    config = load_config(ROOT / "configs" / "demo.yaml", ["finetune.mode=lora"])
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(config.to_yaml_dict()))
    assert load_config(saved) == config


def test_no_file_and_an_empty_file_give_the_defaults(tmp_path: Path) -> None:
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    assert load_config(None) == TrainConfig()
    assert load_config(empty) == TrainConfig()


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("override", "location", "suggestion"),
    [
        ("training.learnig_rate=0.1", "training.learnig_rate", "learning_rate"),
        ("trainig.epochs=3", "trainig", "training"),
        ("training.early_stopping.patiense=2", "training.early_stopping.patiense", "patience"),
        ("finetune.lora.rank=4", "finetune.lora.rank", None),
    ],
)
def test_an_unknown_key_is_named_with_a_suggestion(
    override: str, location: str, suggestion: str | None
) -> None:
    message = config_error([override])
    assert f"{location}: unknown key" in message
    if suggestion is None:
        assert "did you mean" not in message
    else:
        assert f"did you mean '{suggestion}'?" in message


def test_every_problem_is_reported_in_one_message() -> None:
    message = config_error(
        [
            "training.learnig_rate=0.1",
            "training.epochs=0",
            "model.pooling=median",
            "training.batch_size=abc",
        ]
    )
    assert message.startswith("defaults: 4 problem(s) in the configuration:")
    assert "did you mean 'learning_rate'?" in message
    assert "training.epochs: Input should be greater than or equal to 1 (got 0)" in message
    assert "model.pooling:" in message
    assert "(got 'median')" in message
    assert "training.batch_size:" in message
    assert "(got 'abc')" in message


def test_errors_in_a_file_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("training:\n  epochs: 0\nmodel:\n  head_hidden: [64, 0]\n")
    message = config_error([], path)
    assert message.startswith(f"{path}: 2 problem(s)")
    assert "training.epochs" in message
    assert "model.head_hidden: every size must be >= 1" in message


def test_overrides_are_parsed_as_yaml_and_win_over_the_file(tmp_path: Path) -> None:
    path = tmp_path / "train.yaml"
    path.write_text("training:\n  learning_rate: 0.5\n  epochs: 7\n")
    config = load_config(
        path,
        [
            "model.head_hidden=[64,32]",
            "training.learning_rate=1e-3",
            "data.fail_on_leakage=true",
            "model.revision=null",
            "model.pooling=attention",
        ],
    )
    assert config.model.head_hidden == [64, 32]
    assert config.training.learning_rate == pytest.approx(1e-3)
    assert config.training.epochs == 7  # untouched keys of the file stay
    assert config.data.fail_on_leakage is True
    assert config.model.revision is None
    assert config.model.pooling == "attention"


def test_overrides_create_missing_sections() -> None:
    raw = apply_overrides({"training": {"epochs": 2}}, ["training.early_stopping.patience=3"])
    assert raw == {"training": {"epochs": 2, "early_stopping": {"patience": 3}}}


@pytest.mark.parametrize("override", ["training.epochs", "=3", " =3"])
def test_an_override_that_is_not_key_value_is_an_error(override: str) -> None:
    message = config_error([override])
    assert f"override '{override}' is not key=value" in message


def test_partial_tuning_with_nothing_to_unfreeze_is_an_error() -> None:
    message = config_error(["finetune.mode=partial"])
    assert "finetune.mode=partial trains nothing" in message
    assert "use mode=frozen" in message
    assert load_config(None, ["finetune.mode=partial", "finetune.unfreeze_last_layers=2"])
    assert load_config(None, ["finetune.mode=partial", "finetune.unfreeze_every_epochs=1"])


@pytest.mark.parametrize(
    "overrides",
    [
        ["finetune.unfreeze_last_layers=2"],
        ["finetune.mode=lora", "finetune.unfreeze_last_layers=2"],
        ["finetune.mode=lora", "finetune.unfreeze_every_epochs=1"],
    ],
)
def test_unfreezing_outside_partial_mode_is_an_error(overrides: list[str]) -> None:
    message = config_error(overrides)
    assert "apply to mode=partial, not mode=lora" in message


def test_a_cross_field_problem_is_reported_with_the_field_errors() -> None:
    message = config_error(["finetune.mode=partial", "training.epochs=0"])
    assert "2 problem(s)" in message
    assert "finetune.mode=partial trains nothing" in message


def test_task_rules_are_reported_with_the_field_errors() -> None:
    """Options of another task are named even when an unrelated field fails validation."""
    message = config_error(
        [
            "task=binary",
            "objective.class_weights=balanced",
            "training.epochs=0",
            "training.early_stopping.metric=fmax",
            "data.target_columns=[a, b]",
        ]
    )
    assert message.startswith("defaults: 4 problem(s) in the configuration:")
    assert "training.epochs: Input should be greater than or equal to 1" in message
    applies = "applies to task=multiclass or residue_classification"
    assert f"objective.class_weights {applies}, not task=binary" in message
    assert "'fmax' is not a binary metric" in message
    assert "task=binary reads one label column" in message


def test_task_rules_alone_are_reported_once() -> None:
    message = config_error(["task=regression", "objective.class_weights={A: 2}"])
    assert message.startswith("defaults: 1 problem(s) in the configuration:")
    assert (
        message.count("applies to task=multiclass or residue_classification, not task=regression")
        == 1
    )


def test_class_weights_given_per_label_are_one_setting() -> None:
    config = load_config(None, ["objective.class_weights={A: 2, B: 1}"])
    assert config.objective.class_weights == {"A": 2.0, "B": 1.0}


def test_numeric_looking_text_overrides_are_accepted() -> None:
    config = load_config(None, ["output.name=2024", "model.revision=1234567"])
    assert (config.output.name, config.model.revision) == ("2024", "1234567")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("- training\n- model\n", "must hold a mapping of sections, not list"),
        ("just a string\n", "must hold a mapping of sections, not str"),
        ("training: [1, 2\n", "is not valid YAML"),
        ("training:\n  epochs: 3\n   batch_size: 4\n", "is not valid YAML"),
    ],
)
def test_a_file_that_is_not_a_yaml_mapping_is_named(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    message = config_error([], path)
    assert str(path) in message
    assert expected in message


def test_a_missing_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = config_error([], path)
    assert f"config file {path} does not exist" in message


def test_a_folder_given_as_config_is_a_config_error(tmp_path: Path) -> None:
    message = config_error([], tmp_path)
    assert str(tmp_path) in message


# --- help texts --------------------------------------------------------------------------


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--help"])
    assert caught.value.code == 0
    return capsys.readouterr().out


def test_describe_fields_covers_every_key_with_a_description() -> None:
    rows = describe_fields()
    keys = [key for key, _ in rows]
    assert len(keys) == len(set(keys))
    assert set(keys) == leaf_keys(TrainConfig().to_yaml_dict())
    for key, text in rows:
        assert not text.startswith("None"), f"{key} has no description"
        assert "[default: " in text
    assert dict(rows)["model.pooling"].endswith("[default: mean]")


def test_train_help_lists_every_config_key(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_text(["train"], capsys)
    for key, text in describe_fields():
        assert key in out
        assert text in out, f"the help text of {key} is missing or wrapped"


def subcommand_paths(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list:
    """Every command path (``(), ("train",), ("data", "check"), ...``) with its parser."""
    found = [(path, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found += subcommand_paths(child, (*path, name))
    return found


COMMANDS = subcommand_paths(build_parser())


def test_the_command_table_has_the_documented_commands() -> None:
    paths = {path for path, _ in COMMANDS}
    expected = {("train",), ("data",), ("data", "check"), ("evaluate",), ("predict",)}
    assert expected <= paths


@pytest.mark.parametrize(
    "path", [path for path, _ in COMMANDS], ids=lambda path: " ".join(path) or "esmtune"
)
def test_every_command_help_works(
    path: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    out = help_text(list(path), capsys)
    assert out.startswith(f"usage: {' '.join(('esmtune', *path))}")


def test_top_level_help_lists_every_command(capsys: pytest.CaptureFixture[str]) -> None:
    out = help_text([], capsys)
    for path, _ in COMMANDS:
        if len(path) == 1:
            assert path[0] in out


@pytest.mark.parametrize(
    ("path", "parser"), COMMANDS, ids=[" ".join(path) or "esmtune" for path, _ in COMMANDS]
)
def test_every_option_and_command_has_help_text(
    path: tuple[str, ...], parser: argparse.ArgumentParser
) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            # The container is listed by its metavar; each command in it needs a help line.
            for choice in action._choices_actions:
                assert choice.help, f"{' '.join(path)} {choice.dest}: command without help"
            continue
        assert action.help, f"{' '.join(path)} {action.option_strings or action.dest}: no help"


def test_importing_the_cli_does_not_import_torch() -> None:
    code = "import sys, esmtune.cli; print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "False"
