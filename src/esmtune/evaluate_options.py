"""What an evaluation adds beside its metrics, importable without torch: intervals and baseline.

``esmtune evaluate`` builds ``--resamples``, ``--bootstrap-seed`` and ``--skip-baseline`` from
these fields (type, default and help), and :func:`esmtune.evaluate.evaluate_run` takes the same
object, so the command line and Python cannot drift apart.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import ConfigDict, Field

from esmtune.options import CheckedOptions

__all__ = ["DEFAULT_RESAMPLES", "LEVEL", "EvaluateOptions"]

# Enough for the 2.5th and 97.5th percentiles to settle to about a hundredth on a few hundred
# proteins (the usual advice for percentile intervals), at a few milliseconds per metric.
DEFAULT_RESAMPLES = 1000
# The coverage of every interval: the 2.5th to the 97.5th percentile of the resampled metric.
LEVEL = 0.95


class EvaluateOptions(CheckedOptions):
    """How much an evaluation says about its numbers' uncertainty; each default suits most uses."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    command: ClassVar[str] = "evaluate"

    resamples: int = Field(
        DEFAULT_RESAMPLES,
        ge=0,
        description="bootstrap resamples of the evaluated proteins behind each headline "
        "metric's confidence interval (the 2.5th to 97.5th percentile of its resampled values) "
        "and that of its difference from the baseline; per-residue tasks resample whole "
        f"chains, never single residues; 0 turns intervals off [{DEFAULT_RESAMPLES}]",
    )
    bootstrap_seed: int = Field(
        0,
        ge=0,
        description="seed of the resamples: the same seed gives the same intervals [0]",
    )
    skip_identity: bool = Field(
        False,
        description="do not measure each evaluated sequence's highest identity to the run's "
        "train split (MMseqs2) nor score the headline metrics per identity bin",
    )
    skip_baseline: bool = Field(
        False,
        description="do not fit the task's baseline (composition or one-hot window logistic "
        "regression, ridge for regression) on the run's train split to score beside the model",
    )
