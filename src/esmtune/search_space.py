"""The search space of ``esmtune tune``: YAML over config keys, checked against the schema.

A space maps dotted config keys to a range or a list of choices::

    training.learning_rate: {log_float: [1.0e-5, 1.0e-3]}
    training.batch_size: {int: [8, 32]}
    finetune.lora.r: [4, 8, 16]          # a list: one of these

Every value a trial could take is validated the way ``esmtune train`` validates a config (the
same :func:`~esmtune.config.load_config`), so a space that would produce a bad trial fails
before any training, with every problem in one message. Torch-free, like the config.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from esmtune.config import describe_fields, load_config
from esmtune.errors import ConfigError

__all__ = ["RANGE_KINDS", "Dimension", "TuneOptions", "load_search_space"]

# A range's kind: its numbers, and whether it is sampled on a log scale.
RANGE_KINDS: dict[str, tuple[type, bool]] = {
    "float": (float, False),
    "log_float": (float, True),
    "int": (int, False),
    "log_int": (int, True),
}
_Scalar = bool | int | float | str


class TuneOptions(BaseModel):
    """How a search runs; ``esmtune tune`` builds its options from these fields."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    trials: int = Field(20, ge=1, description="trials this process runs (added to the study's)")
    study: str = Field(
        "study",
        min_length=1,
        description="the study: its folder under output.dir holds study.db, the trial runs, "
        "the leaderboard, the best config and the plots; run again to resume, or in several "
        "processes at once to share the work",
    )
    pruner_startup_trials: int = Field(
        2, ge=0, description="trials that always run to the end before any is pruned"
    )
    pruner_warmup_epochs: int = Field(
        1,
        ge=1,
        description="epochs every trial completes before it may be pruned (the median pruner "
        "stops a trial whose validation metric is below the median of earlier trials' at the "
        "same epoch)",
    )

    @classmethod
    def checked(cls, **values: Any) -> TuneOptions:
        """The options from keywords, every bad one reported at once.

        Raises:
            ConfigError: Naming each bad option and what it accepts.
        """
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            lines = [
                f"--{str(problem['loc'][0]).replace('_', '-')} {problem['input']!r}: "
                f"{problem['msg']}"
                for problem in error.errors()
            ]
            raise ConfigError("invalid tune options:\n  - " + "\n  - ".join(lines)) from None


@dataclass(frozen=True)
class Dimension:
    """One searched config key: a range (``low``..``high``) or a list of choices."""

    key: str
    kind: Literal["float", "log_float", "int", "log_int", "choice"]
    low: float = 0.0
    high: float = 0.0
    choices: tuple[_Scalar, ...] = ()

    def override(self, value: _Scalar) -> str:
        """The ``key=value`` override that sets this key to a sampled value (JSON is YAML)."""
        return f"{self.key}={json.dumps(value)}"

    def values_to_check(self) -> list[_Scalar]:
        """The values whose validity stands for all: the choices, or a range's two ends."""
        if self.kind == "choice":
            return list(self.choices)
        number = RANGE_KINDS[self.kind][0]
        return [number(self.low), number(self.high)]


def _parse(key: str, spec: Any) -> tuple[Dimension | None, list[str]]:
    """One entry of the space file, or what is wrong with its form."""
    forms = f"a list of choices or {{KIND: [low, high]}} with KIND one of {', '.join(RANGE_KINDS)}"
    if isinstance(spec, list):
        bad = [value for value in spec if not isinstance(value, _Scalar)]
        if not spec or bad:
            return None, [f"{key}: choices must be a non-empty list of plain values (got {spec!r})"]
        return Dimension(key, "choice", choices=tuple(spec)), []
    if not (isinstance(spec, dict) and len(spec) == 1):
        return None, [f"{key}: expected {forms} (got {spec!r})"]
    ((kind, bounds),) = spec.items()
    if kind not in RANGE_KINDS:
        close = difflib.get_close_matches(str(kind), RANGE_KINDS, n=1)
        hint = f"; did you mean '{close[0]}'?" if close else ""
        return None, [
            f"{key}: unknown range kind '{kind}'{hint} (allowed: {', '.join(RANGE_KINDS)})"
        ]
    number, log = RANGE_KINDS[kind]
    numbers = (int,) if number is int else (int, float)
    if not (
        isinstance(bounds, list)
        and len(bounds) == 2
        and all(isinstance(b, numbers) and not isinstance(b, bool) for b in bounds)
    ):
        return None, [f"{key}: {kind} needs [low, high] of {number.__name__}s (got {bounds!r})"]
    low, high = bounds
    if low >= high:
        return None, [f"{key}: {kind} range [{low}, {high}] is empty; write low < high"]
    if log and low <= 0:
        return None, [f"{key}: {kind} needs low > 0 for a log scale (got {low}); use {kind[4:]}"]
    return Dimension(key, kind, low=float(low), high=float(high)), []


def load_search_space(
    path: Path, config: Path | None, overrides: list[str] | None = None
) -> list[Dimension]:
    """Read a search space and check it against the schema and the base config.

    Args:
        path: The YAML search space.
        config: The base config the trials start from (None: the defaults).
        overrides: ``key=value`` overrides of the base config, as ``esmtune train`` takes.

    Returns:
        One dimension per searched key, in the file's order.

    Raises:
        ConfigError: Listing every problem: unknown keys (with a suggestion), bad ranges, and
            values the config schema rejects for their key.
    """
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"search space {path} does not exist") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(f"{path} must map config keys to ranges or choices, e.g. {_EXAMPLE}")
    load_config(config, overrides)  # the base config's own problems come first, on their own
    known = [key for key, _ in describe_fields()]
    problems: list[str] = []
    dimensions = []
    for key, spec in raw.items():
        if str(key) not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            problems.append(f"{key}: not a config key{hint} (see `esmtune train --help`)")
            continue
        dimension, found = _parse(str(key), spec)
        problems += found
        if dimension is not None:
            problems += _value_problems(dimension, config, overrides or [])
            dimensions.append(dimension)
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise ConfigError(f"{path}: {len(problems)} problem(s) in the search space:\n{lines}")
    return dimensions


_EXAMPLE = "training.learning_rate: {log_float: [1.0e-5, 1.0e-3]}"


def _value_problems(dimension: Dimension, config: Path | None, overrides: list[str]) -> list[str]:
    """What the config schema says of each value the dimension can take, on the base config."""
    problems = []
    for value in dimension.values_to_check():
        try:
            load_config(config, [*overrides, dimension.override(value)])
        except ConfigError as error:
            reasons = [line.strip().removeprefix("- ") for line in str(error).splitlines()[1:]]
            problems.append(f"{dimension.key}: {value!r} is rejected: {'; '.join(reasons)}")
    return problems
