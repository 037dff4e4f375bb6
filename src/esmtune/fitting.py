"""Training from Python objects: ``esmtune.fit(train=[(sequence, target), ...], ...)``.

For notebooks, where the data is already in memory (BioNeMo's ESM2 tutorial trains on a list of
``(sequence, target)`` pairs). The records go through the data check that files go through, with
the same rules and messages, each naming the record (``train[12], record 'P3'``), and nothing
is written but the run directory. The configuration is built and validated as ``esmtune train``
builds it: a YAML file, a mapping or a :class:`~esmtune.config.TrainConfig`, then overrides, with
every problem reported at once.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from esmtune.config import Task, TrainConfig, load_config
from esmtune.data.memory import IN_MEMORY, MemoryDataset
from esmtune.errors import ConfigError
from esmtune.evaluate import evaluate_run, format_report
from esmtune.train import train as train_run

__all__ = ["Records", "fit"]

# A split: a list of (sequence, target) pairs, SequenceRecords or dicts, or a pandas DataFrame.
Records = Any
# Keyword overrides join a config key's sections with this: training__epochs=3.
_SECTION_JOIN = "__"
_CALLER = "esmtune.fit"
# What YAML writes after a lone scalar.
_DOCUMENT_END = "...\n"


def fit(
    train: Records,
    validation: Records | None = None,
    test: Records | None = None,
    *,
    task: Task | str | None = None,
    config: TrainConfig | Mapping[str, Any] | Path | str | None = None,
    **overrides: Any,
) -> Path:
    """Check the records, train on them as ``esmtune train`` would, and return the run directory.

    Each split is a list of records in any of these forms, or a pandas DataFrame:

    * ``(sequence, target)`` pairs; ids are made up from the position (``train:12``);
    * :class:`~esmtune.data.fasta.SequenceRecord` objects (with their ``target``);
    * dicts ``{"id": ..., "sequence": ..., "target": ...}`` (``id`` optional), or with the
      target under its column name(s), as in a table row;
    * a DataFrame with the config's ``data.id_column``, ``data.sequence_column`` and
      ``data.target_columns``, as a table file would have them.

    A target is what a table cell holds, as a value: a label, a number, ``True``/``False``
    (binary), a list or set of labels or a ``';'``-joined string (multilabel), a tuple with one
    number per ``data.target_columns`` entry (regression with several targets). The task reads
    it as it reads a file's, so the checks and messages are those of files.

    Args:
        train: The training records.
        validation: Records that select the best epoch (and tune thresholds); required.
        test: Records to score the trained model on (written to ``RUN/eval/test/``); also
            checked for leakage from train. None: no test split.
        task: ``multiclass``, ``binary``, ``multilabel`` or ``regression`` [the config's].
        config: A YAML file, a mapping of sections (as the YAML holds), a
            :class:`~esmtune.config.TrainConfig`, or None for the defaults. Its ``data.path``
            is not read: the records are the data.
        **overrides: Config keys with their sections joined by a double underscore, and Python
            values: ``training__epochs=3``, ``model__head_hidden=[128]``,
            ``training__early_stopping__patience=2``. Applied after ``config``.

    Returns:
        The run directory (load it with ``Predictor.from_run``).

    Raises:
        ConfigError: Listing every problem of the configuration at once.
        DataError: Listing every problem of the records, each with where it sits.
        ModelLoadError: When the backbone cannot be loaded.
        RunDirError: When the run directory exists (choose ``output__name=...``).
    """
    resolved = fit_config(config, task, overrides)
    dataset = MemoryDataset({"train": train, "validation": validation, "test": test}, _CALLER)
    with dataset.active():
        run_dir = train_run(resolved)
        if test is not None:
            metrics, _, written = evaluate_run(run_dir, split="test", progress=False)
            print(format_report(metrics))
            print(f"\nwritten: {', '.join(str(path) for path in written)}")
    return run_dir


def fit_config(
    config: TrainConfig | Mapping[str, Any] | Path | str | None,
    task: Task | str | None,
    overrides: Mapping[str, Any],
) -> TrainConfig:
    """The validated configuration :func:`fit` trains with, its data held in memory.

    The config and overrides become ``esmtune train``'s ``key=value`` overrides, so they are
    validated by the same code, with the same messages (unknown keys with suggestions, options
    of another task, every problem at once).

    Raises:
        ConfigError: Listing every problem; a bad override key says how to write it.
    """
    settings = _override_texts(overrides)
    if task is not None:
        settings.append(_setting("task", task))
    if isinstance(config, str | Path):
        resolved = load_config(config, settings)
    elif config is None or isinstance(config, TrainConfig | Mapping):
        raw = config.to_yaml_dict() if isinstance(config, TrainConfig) else config or {}
        given = [_setting(key, value) for key, value in _sections(raw)]
        try:
            resolved = load_config(None, [*given, *settings])
        except ConfigError as error:  # no file: name the call instead of "defaults"
            raise ConfigError(str(error).replace("defaults: ", f"{_CALLER}: ", 1)) from None
    else:
        raise ConfigError(
            f"{_CALLER}: config is a {type(config).__name__}; give a YAML file, a mapping of "
            "sections, a TrainConfig or None"
        )
    resolved.data.path = IN_MEMORY
    return resolved


def _override_texts(overrides: Mapping[str, Any]) -> list[str]:
    """``training__epochs=3`` as ``training.epochs=3``; data.path is the records, not a key."""
    problems, settings = [], []
    for name, value in overrides.items():
        key = name.replace(_SECTION_JOIN, ".")
        if "." in name:
            fixed = name.replace(".", _SECTION_JOIN)
            problems.append(f"{name}: write {fixed}=... (sections joined by '{_SECTION_JOIN}')")
        elif key == "data.path":
            problems.append(
                f"{name}: the records are the data; pass them as train=, validation= and test="
            )
        else:
            settings.append(_setting(key, value))
    if problems:
        lines = [f"{_CALLER}: {len(problems)} problem(s) in the overrides:"]
        raise ConfigError("\n".join([*lines, *(f"  - {problem}" for problem in problems)]))
    return settings


def _sections(raw: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """A config mapping as (``section.key``, value) pairs; deeper mappings stay values."""
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{_CALLER}: config must be a mapping of sections")
    pairs: list[tuple[str, Any]] = []
    for section, value in raw.items():
        if isinstance(value, Mapping):
            pairs += [(f"{section}.{key}", inner) for key, inner in value.items()]
        else:
            pairs.append((str(section), value))
    return pairs


def _setting(key: str, value: Any) -> str:
    """One ``key=value`` override, the value written as YAML (which the override reads back)."""
    text = yaml.safe_dump(_plain(value), default_flow_style=True, width=1 << 30)
    return f"{key}={text.removesuffix(_DOCUMENT_END).strip()}"


def _plain(value: Any) -> Any:
    """A Python value as data YAML can write: enums by value, paths as text, tuples as lists."""
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, Mapping):
        return {str(key): _plain(inner) for key, inner in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_plain(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # a numpy scalar
        return value.item()
    return value
