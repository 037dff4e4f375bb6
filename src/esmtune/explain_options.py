"""What an explanation is asked for, importable without torch: label, method, steps, plot path.

``esmtune explain`` builds its ``--label``, ``--method`` and ``--steps`` from these fields (type,
choices, default and help), and :meth:`esmtune.predict.Predictor.explain` checks its keywords
through the same model, so the command line and Python cannot drift apart. The command checks
its ``--plot`` path here too, before a model loads. The methods themselves are
:mod:`esmtune.explain`'s.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from esmtune.errors import EsmtuneError

__all__ = [
    "DEFAULT_STEPS",
    "MAX_TRACKS_PER_FIGURE",
    "PLOT_SUFFIXES",
    "ExplainOptions",
    "Method",
    "one_figure",
]

# Captum's own default; on the tiny test model the completeness error was below 1e-5 from 32.
DEFAULT_STEPS = 50

# Figure formats a plot path may name (matplotlib writes each by its suffix); any other path
# is a folder that gets one PNG per sequence.
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
# One figure stays readable with this many tracks, one per sequence; more need a folder.
MAX_TRACKS_PER_FIGURE = 20


class Method(StrEnum):
    """How residues are scored: integrated gradients or attention rollout."""

    IG = "ig"
    ROLLOUT = "rollout"


class ExplainOptions(BaseModel):
    """One explanation request; each default suits most uses."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    label: str | None = Field(
        None,
        description="the label to explain (regression: the target) [each sequence's predicted "
        "label; multilabel: its most probable]",
    )
    method: Method = Field(
        Method.IG,
        description="ig = integrated gradients on the input embeddings (Captum): how much each "
        "residue moved the label's probability from a baseline with every residue masked; "
        "rollout = attention rollout: where the pooled representation draws from, the same for "
        "every label, no gradients [ig]",
    )
    steps: int = Field(
        DEFAULT_STEPS,
        ge=1,
        description="ig: points of the integral's approximation; more follow the model more "
        f"closely and cost as many forward and backward passes [{DEFAULT_STEPS}]",
    )

    @classmethod
    def checked(cls, **values: Any) -> ExplainOptions:
        """The options from keywords, every bad one reported at once.

        Raises:
            EsmtuneError: Naming each bad option and what it accepts.
        """
        try:
            return cls.model_validate(values)
        except ValidationError as error:
            lines = []
            for problem in error.errors():
                name = str(problem["loc"][0])
                message = problem["msg"].removeprefix("Value error, ")
                lines.append(f"{name}={problem['input']!r}: {message}")
            raise EsmtuneError("invalid explain options:\n  - " + "\n  - ".join(lines)) from None


def one_figure(path: Path, sequences: int) -> bool:
    """Whether a plot path names one figure (True) or a folder of one PNG per sequence (False).

    A path with a suffix of :data:`PLOT_SUFFIXES` is a figure; one without a suffix, or a folder
    that exists, is a folder.

    Raises:
        EsmtuneError: On another suffix, or more sequences than one figure shows.
    """
    suffix = path.suffix.lower()
    if path.is_dir() or not suffix:
        return False
    if suffix not in PLOT_SUFFIXES:
        *others, last = PLOT_SUFFIXES
        raise EsmtuneError(
            f"plot {path}: name a {', '.join(others)} or {last} file (one figure), or a folder "
            "(one PNG per sequence)"
        )
    if sequences > MAX_TRACKS_PER_FIGURE:
        raise EsmtuneError(
            f"plot {path}: {sequences} sequences are too many tracks for one figure (at most "
            f"{MAX_TRACKS_PER_FIGURE}); name a folder instead, which gets one PNG per sequence"
        )
    return True
