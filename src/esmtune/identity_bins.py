"""Metrics by identity to the training set: how a score falls with distance from train.

A test set mixes proteins nearly copied from train with proteins unlike any; one number hides how
the model does on the second kind, which is usually what a scientist wants to predict. Each
evaluated sequence gets its highest identity to any training sequence (one MMseqs2 search, as
the data check's leakage report measures it) and the task's headline metrics are computed on
each identity bin (≥95%, 80–95, 50–80, 30–50, <30%, no hit) on its own.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from esmtune.data.fasta import SequenceRecord
from esmtune.data.homology import MissingMMseqsError, MMseqs
from esmtune.data.leakage import BINS, NO_HIT, measure_leakage
from esmtune.errors import EsmtuneError
from esmtune.tasks import TaskSpec

__all__ = ["identity_bin_lines", "metrics_by_identity"]

# Bins with fewer proteins than this are shown but flagged: their metrics are anecdotes.
FEW = 10


def metrics_by_identity(
    task: TaskSpec,
    records: list[SequenceRecord],
    targets: np.ndarray,
    outputs: np.ndarray,
    train: list[SequenceRecord],
    coverage: float,
) -> dict[str, Any]:
    """The headline metrics of each identity bin of ``records`` to ``train``.

    Args:
        task: The run's task (its headline metrics are computed per bin).
        records: The evaluated records; ``targets`` and ``outputs`` are theirs, in order.
        targets: As the task's metrics take them.
        outputs: As the task's metrics take them.
        train: The run's training records.
        coverage: The least share of both sequences an alignment must cover to count.

    Returns:
        ``columns`` and ``rows`` (bin, proteins, each headline metric; None where a bin's
        metric is undefined), the ``tool`` and ``coverage``; or ``{"skipped": reason}`` when
        MMseqs2 is missing or fails.
    """
    try:
        leakage = measure_leakage({"train": train, "test": records}, coverage, MMseqs())
    except MissingMMseqsError as missing:
        return {"skipped": str(missing)}
    except EsmtuneError as failed:
        return {"skipped": f"the MMseqs2 search failed: {failed}"}
    position = {id(record): i for i, record in enumerate(records)}
    members: dict[str, list[int]] = {name: [] for _, name in BINS}
    members[NO_HIT] = []
    for row in leakage.rows:
        members[row.bin].append(position[id(row.record)])
    names = list(task.headline_metrics)
    rows = []
    for name, chosen in members.items():
        if not chosen:
            continue
        scores = _scores(task, targets[chosen], outputs[chosen], names)
        rows.append([name, len(chosen), *(scores.get(metric) for metric in names)])
    return {
        "columns": ["identity to train", "proteins", *names],
        "rows": rows,
        "tool": leakage.tool,
        "coverage": coverage,
    }


def _scores(
    task: TaskSpec, targets: np.ndarray, outputs: np.ndarray, names: list[str]
) -> dict[str, float | None]:
    """The named metrics of one bin; None for what a small bin leaves undefined."""
    try:
        with warnings.catch_warnings():  # a small bin may hold one class: scikit-learn says so
            warnings.simplefilter("ignore")
            found = task.metrics(targets, outputs)
    except ValueError:  # e.g. a bin whose residues are all masked or unread
        return {}
    return {name: _finite(found.get(name)) for name in names}


def _finite(value: Any) -> float | None:
    if value is None:
        return None
    number = float(value)
    return number if np.isfinite(number) else None


def identity_bin_lines(metrics: dict[str, Any]) -> list[str]:
    """The per-bin table for the terminal (nothing when it was not measured or not asked for)."""
    found = metrics.get("by_identity")
    if not found:
        return []
    if "skipped" in found:
        return [f"metrics by identity to train: not measured ({found['skipped']})"]
    columns = found["columns"]
    table = [columns] + [
        [str(row[0]), str(row[1]), *("n/a" if v is None else f"{v:.3f}" for v in row[2:])]
        for row in found["rows"]
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(columns))]
    lines = [
        f"metrics by identity to train ({found['tool']}; alignments covering "
        f"≥{found['coverage']:.0%} of both):"
    ]
    lines += ["  " + "  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True))
              for line in table]  # fmt: skip
    few = [str(row[0]) for row in found["rows"] if row[1] < FEW]
    if few:
        lines.append(f"  (fewer than {FEW} proteins in {', '.join(few)}: read those as anecdotes)")
    return lines
