"""What an explanation is asked for, importable without torch: label, method, steps, position.

``esmtune explain`` builds its ``--label``, ``--method``, ``--steps`` and ``--position`` from
these fields (type, choices, default and help), and :meth:`esmtune.predict.Predictor.explain`
checks its keywords through the same model, so the command line and Python cannot drift apart.
The command checks its ``--plot`` path here too, before a model loads. The methods themselves
are :mod:`esmtune.explain`'s.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from enum import StrEnum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import ConfigDict, Field, field_validator

from esmtune.errors import EsmtuneError
from esmtune.options import CheckedOptions

__all__ = [
    "DEFAULT_STEPS",
    "MAX_TRACKS_PER_FIGURE",
    "PLOT_SUFFIXES",
    "ExplainOptions",
    "Method",
    "one_figure",
    "parse_positions",
]

# Captum's own default; on the tiny test model the completeness error was below 1e-5 from 32.
DEFAULT_STEPS = 50

# Figure formats a plot path may name (matplotlib writes each by its suffix); any other path
# is a folder that gets one PNG per sequence.
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
# One figure stays readable with this many tracks, one per sequence; more need a folder.
MAX_TRACKS_PER_FIGURE = 20

# One position (42) or an inclusive range (10-20); a value may list several, comma-separated.
_POSITION = re.compile(r"(\d+)(?:\s*-\s*(\d+))?")
_POSITION_HELP = (
    "give residue positions from 1: one (42), a range (10-20) or a list (10,42); repeat the "
    "option for more"
)


class Method(StrEnum):
    """How residues are scored: integrated gradients or attention rollout."""

    IG = "ig"
    ROLLOUT = "rollout"


class ExplainOptions(CheckedOptions):
    """One explanation request; each default suits most uses."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    command: ClassVar[str] = "explain"

    label: str | None = Field(
        None,
        description="the label to explain (regression: the target; residue_classification: "
        "the class at each --position) [each sequence's predicted label; multilabel: its most "
        "probable; per residue: the class predicted there]",
    )
    method: Method = Field(
        Method.IG,
        description="ig = integrated gradients on the input embeddings (Captum): how much each "
        "residue moved the label's probability from a baseline with every residue masked; "
        "rollout = attention rollout: where the pooled representation (per-residue runs: the "
        "position's) draws from, the same for every label, no gradients [ig]",
    )
    steps: int = Field(
        DEFAULT_STEPS,
        ge=1,
        description="ig: points of the integral's approximation; more follow the model more "
        f"closely and cost as many forward and backward passes [{DEFAULT_STEPS}]",
    )
    position: list[int] | None = Field(
        None,
        description="per-residue runs: the residue whose prediction to explain, numbered from 1 "
        "as predict --format text numbers them (its predicted class, or --label's; or its "
        "value); a range 10-20 or a list 10,42 too, repeatable; each sequence is explained at "
        "every position given, each costing a whole explanation, so there is no default "
        "[required for per-residue runs; sequence-level runs refuse it]",
    )

    @field_validator("position", mode="before")
    @classmethod
    def _positions(cls, value: Any) -> list[int] | None:
        return None if value is None else parse_positions(value)


def one_figure(path: Path, tracks: int) -> bool:
    """Whether a plot path names one figure (True) or a folder of one PNG per track (False).

    A track is one explanation: a sequence, or a sequence at one position (per-residue runs). A
    path with a suffix of :data:`PLOT_SUFFIXES` is a figure; one without a suffix, or a folder
    that exists, is a folder.

    Raises:
        EsmtuneError: On another suffix, or more tracks than one figure shows.
    """
    suffix = path.suffix.lower()
    if path.is_dir() or not suffix:
        return False
    if suffix not in PLOT_SUFFIXES:
        *others, last = PLOT_SUFFIXES
        raise EsmtuneError(
            f"plot {path}: name a {', '.join(others)} or {last} file (one figure), or a folder "
            "(one PNG per sequence, or per sequence and position)"
        )
    if tracks > MAX_TRACKS_PER_FIGURE:
        raise EsmtuneError(
            f"plot {path}: {tracks} explanations are too many tracks for one figure (at most "
            f"{MAX_TRACKS_PER_FIGURE}); name a folder instead, which gets one PNG per explanation"
        )
    return True


def parse_positions(value: int | str | Iterable[int | str]) -> list[int]:
    """Residue positions, sorted and each once, from ``42``, ``"10-20"``, ``"10,42"`` or a list.

    Positions count from 1 (as ``predict --format text`` numbers residues); ranges include both
    ends.

    Raises:
        ValueError: On anything else (the option's message says what it accepts).
    """
    values = [value] if isinstance(value, int | str) else list(value)
    positions: set[int] = set()
    for item in values:
        if isinstance(item, bool) or not isinstance(item, int | str):
            raise ValueError(_POSITION_HELP)
        for part in [item] if isinstance(item, int) else item.split(","):
            first, last = _position_range(part)
            positions.update(range(first, last + 1))
    if not positions:
        raise ValueError(_POSITION_HELP)
    return sorted(positions)


def _position_range(part: int | str) -> tuple[int, int]:
    """The first and last position of one ``42`` or ``10-20``.

    Raises:
        ValueError: On a malformed part, a position below 1 or a range that runs backwards.
    """
    if isinstance(part, int):
        first = last = part
    else:
        found = _POSITION.fullmatch(part.strip())
        if found is None:
            raise ValueError(f"'{part.strip()}' is not a position; {_POSITION_HELP}")
        first = int(found.group(1))
        last = int(found.group(2) or first)
    if first < 1:
        raise ValueError(f"position {first}: residues are numbered from 1")
    if last < first:
        raise ValueError(f"range {first}-{last} runs backwards; write {last}-{first}")
    return first, last
