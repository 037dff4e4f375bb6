"""The command table and where each option's choices, help and default come from."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from esmtune import cli
from esmtune.cli import build_parser, main
from esmtune.config import DataConfig, LongSequences, Pooling, Task, describe_fields, load_config
from esmtune.data.layout import SPLITS


def help_text(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as caught:
        main([*argv, "--help"])
    assert caught.value.code == 0
    return capsys.readouterr().out


def parsers() -> dict[str, argparse.ArgumentParser]:
    """Every command of the table ("train", "data check", ...) with its parser."""
    found = {}
    for name in cli._COMMANDS:
        parser = build_parser()
        for word in name.split():
            commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
            parser = commands.choices[word]
        found[name] = parser
    return found


def option(command: str, flag: str) -> argparse.Action:
    return next(a for a in parsers()[command]._actions if flag in a.option_strings)


def test_help_lists_every_command_of_the_table(capsys: pytest.CaptureFixture[str]) -> None:
    top = help_text([], capsys)
    for name, (_, handler) in cli._COMMANDS.items():
        *group, leaf = name.split()
        listing = help_text(group, capsys) if group else top
        summary = handler.__doc__.splitlines()[0]
        assert f"{leaf}  " in listing and summary in listing, name
        assert help_text(name.split(), capsys).startswith(f"usage: esmtune {name} ")


def test_every_default_is_shown() -> None:
    for name, parser in parsers().items():
        for action in parser._actions:
            if action.default in (None, False, argparse.SUPPRESS, []):
                continue
            assert f"[{action.default}]" in action.help, (name, action.dest)


def test_choices_come_from_the_enums_and_tables() -> None:
    from esmtune.embeddings import EMBEDDING_FORMATS
    from esmtune.export import CHECK_SEQUENCES, FORMATS, RUNTIMES

    values = [task.value for task in Task]
    assert option("data check", "--task").choices == values == option("baseline", "--task").choices
    for command in ("predict", "embed"):
        assert list(option(command, "--long-sequences").choices) == list(LongSequences)
    pooled = [pooling.value for pooling in Pooling if pooling is not Pooling.ATTENTION]
    assert option("embed", "--pooling").choices == [*pooled, "per-residue"]
    assert tuple(option("evaluate", "--split").choices) == SPLITS
    assert set(option("baseline", "--split").choices) == set(SPLITS) - {"train"}
    for command in ("predict", "serve"):
        assert tuple(option(command, "--runtime").choices) == ("auto", *RUNTIMES)
    assert tuple(option("export", "--format").choices) == tuple(FORMATS)
    # Held in cli.py because their modules import torch; these keep them equal.
    quantizations = {name for form in FORMATS.values() for name in form.quantizations}
    assert set(option("export", "--quantize").choices) == quantizations
    assert f"[{CHECK_SEQUENCES}]" in option("export", "--check-sequences").help
    assert all(suffix in option("embed", "--out").help for suffix in EMBEDDING_FORMATS)


def test_the_inference_budget_shown_is_the_one_used() -> None:
    import torch

    from esmtune.inference import inference_budget

    for command in ("predict", "embed", "evaluate"):
        text = option(command, "--max-tokens").help
        assert all(f"{inference_budget(torch.device(d)):,}" in text for d in ("cpu", "cuda"))


def test_data_options_are_the_config_keys_they_set(tmp_path: Path) -> None:
    """Help and default from the schema; each option sets its key, unset ones leave --config's."""
    helps = dict(describe_fields())
    for flag, key in (*cli._DATA_OPTIONS, *cli._DATA_CHECK_OPTIONS):
        assert option("data check", flag).help.endswith(helps[key]), flag
    config = tmp_path / "train.yaml"
    config.write_text("task: multilabel\ndata:\n  id_column: accession\n  max_length: 300\n")
    argv = ["data", "check", "seqs.csv", "data.min_label_count=2", "--config", str(config)]
    argv += ["--target-column", "go", "--target-column", "ec", "--sequence-column", "aa"]
    argv += ["--split-column", "fold", "--ontology", "go.obo", "--fail-on-leakage"]
    argv += ["--drop-duplicates"]
    task, data = cli._data_config(build_parser().parse_args(argv))
    expected = DataConfig(
        path=Path("seqs.csv"), id_column="accession", sequence_column="aa", split_column="fold",
        target_columns=["go", "ec"], ontology=Path("go.obo"), max_length=300, min_label_count=2,
        fail_on_leakage=True, drop_duplicates=True,
    )  # fmt: skip
    assert (task, data) == (Task.MULTILABEL, expected)
    args = build_parser().parse_args(["baseline", "--task", "regression"])
    assert cli._data_config(args) == (Task.REGRESSION, load_config(None).data)


def test_a_reader_that_stops_early_is_not_an_error() -> None:
    """`esmtune ... | head` ends quietly with the shell's SIGPIPE status, not a traceback."""
    import os
    import subprocess
    import sys

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader has gone: every write to the pipe fails (EPIPE)
    script = "import sys\nfrom esmtune.cli import main\nsys.exit(main(['--version']))\n"
    try:
        writer = subprocess.run(
            [sys.executable, "-c", script], stdout=write_end, stderr=subprocess.PIPE, text=True
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in writer.stderr, writer.stderr
    assert writer.returncode == 141
