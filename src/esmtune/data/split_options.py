"""What ``esmtune data split`` is asked for, importable without torch: identity, shares, seed.

The command's options are these fields (type, default and help), so the command line and
:func:`esmtune.data.split.split_dataset` cannot drift apart. The coverage default is the data
check's (``data.identity_coverage``): a split made with the defaults passes the check's
``data.max_identity`` at the same identity.
"""

from __future__ import annotations

import math
from typing import ClassVar

from pydantic import ConfigDict, Field, field_validator

from esmtune.config import DataConfig
from esmtune.options import CheckedOptions

__all__ = ["DEFAULT_FRACTIONS", "SplitOptions"]

DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)
_COVERAGE = DataConfig.model_fields["identity_coverage"].default


class SplitOptions(CheckedOptions):
    """How a dataset is split by homology."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    command: ClassVar[str] = "data split"
    as_flags: ClassVar[bool] = True

    identity: float = Field(
        0.3,
        gt=0,
        le=1,
        description="sequences at least this identical (0 to 1: identical residues per aligned "
        "column) over --coverage of both end up in the same split: MMseqs2 easy-cluster "
        "--min-seq-id, then a check with easy-search [0.3]",
    )
    coverage: float = Field(
        _COVERAGE,
        gt=0,
        le=1,
        description="an alignment counts when it covers at least this share of both sequences "
        f"(MMseqs2 -c with --cov-mode 0; data.identity_coverage in the data check) [{_COVERAGE}]",
    )
    fractions: tuple[float, float, float] = Field(
        DEFAULT_FRACTIONS,
        description="shares of the sequences for train, validation and test, summing to 1 (test "
        "may be 0); with --keep-test, train and validation share the rest in this ratio "
        f"[{' '.join(map(str, DEFAULT_FRACTIONS))}]",
    )
    seed: int = Field(
        0,
        ge=0,
        description="orders clusters of equal size before they are placed; the same data, "
        "options and seed give the same split [0]",
    )
    keep_test: bool = Field(
        False,
        description="keep the input's test split as it is and re-split only train and "
        "validation around it; sequences at least --identity identical to a test sequence are "
        "left out and listed in dropped.tsv",
    )
    threads: int | None = Field(
        None,
        ge=1,
        description="threads MMseqs2 uses [$ESMTUNE_MMSEQS_THREADS, else every core]",
    )

    @field_validator("fractions")
    @classmethod
    def _shares(cls, value: tuple[float, float, float]) -> tuple[float, float, float]:
        train, validation, _ = value
        if min(value) < 0 or not math.isclose(sum(value), 1.0, abs_tol=1e-6):
            raise ValueError("give three shares >= 0 that sum to 1, e.g. 0.8 0.1 0.1")
        if train <= 0 or validation <= 0:
            raise ValueError("train and validation need a share above 0")
        return value
