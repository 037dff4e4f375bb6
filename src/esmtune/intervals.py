"""Confidence intervals by bootstrap over proteins, and the model's difference from a baseline.

A score on a few hundred test proteins moves by several points with the luck of which proteins
were drawn; an interval says by how much. Each resample draws as many proteins as were
evaluated, with replacement (per-residue tasks: whole chains, since a chain's residues are not
independent of each other), and the headline metrics are computed on it; the interval is the
2.5th to 97.5th percentile of the resampled values (the percentile bootstrap). The model and the
baseline are scored on the *same* resamples, so the interval of their difference is paired: a
resample full of hard proteins lowers both scores together, and the difference's interval is
narrower than the two intervals side by side suggest. It answers "does fine-tuning beat the
baseline on data like this?".

Resample ``r`` draws ``rng.integers(0, n, size=n)`` from ``numpy.random.default_rng(seed)``,
one call per resample in order, so a seed gives the same intervals again (numpy keeps its
generators' streams stable). A
resample where a metric is undefined (an AUC without positives, a correlation of constant
values) is left out of that metric's interval and counted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from esmtune.evaluate_options import LEVEL
from esmtune.metrics import HIGHER_IS_BETTER
from esmtune.tasks import TaskSpec
from esmtune.weighted_metrics import chunk_rows

__all__ = [
    "Scored",
    "bootstrap",
    "compare",
    "interval_lines",
    "percentile_interval",
    "resample_weights",
    "verdict",
]

# How metric names are shown in the terminal (as the tasks' own reports show them).
_SHOWN = {
    "accuracy": "accuracy",
    "macro_f1": "macro-F1",
    "micro_f1": "micro-F1",
    "f1": "F1",
    "mcc": "MCC",
    "roc_auc": "ROC-AUC",
    "pr_auc": "PR-AUC",
    "fmax": "Fmax",
    "micro_ap": "micro-AP",
    "spearman": "Spearman",
    "pearson": "Pearson",
    "r2": "R²",
    "rmse": "RMSE",
}


@dataclass(frozen=True)
class Scored:
    """One predictor's outputs on the evaluated proteins, and the task that scores them."""

    task: TaskSpec
    outputs: np.ndarray


def resample_weights(proteins: int, resamples: int, seed: int) -> Iterator[np.ndarray]:
    """How often each protein is drawn in each resample, a slice of resamples at a time.

    Args:
        proteins: Proteins evaluated (n); each resample draws n of them with replacement.
        resamples: Resamples in all.
        seed: Seed of the generator; resample ``r`` is its ``r``-th ``integers(0, n, n)`` call.

    Yields:
        ``(rows, proteins)`` float arrays of counts, the resamples in order.
    """
    generator = np.random.default_rng(seed)
    for rows in chunk_rows(resamples, proteins):
        counts = np.zeros((rows.stop - rows.start, proteins))
        for row in counts:
            row[:] = np.bincount(generator.integers(0, proteins, size=proteins), minlength=proteins)
        yield counts


def bootstrap(
    scorers: Sequence[Callable[[np.ndarray], dict[str, np.ndarray]]],
    proteins: int,
    resamples: int,
    seed: int,
) -> list[dict[str, np.ndarray]]:
    """Each scorer's metrics on the same resamples (paired), one value per resample.

    Args:
        scorers: Functions of a ``(rows, proteins)`` weight matrix giving metrics per row, such
            as a task's :meth:`~esmtune.tasks.TaskSpec.resampled_scores` on fixed outputs.
        proteins: Proteins evaluated.
        resamples: Resamples to draw.
        seed: As in :func:`resample_weights`.

    Returns:
        Per scorer, each metric's ``(resamples,)`` values (NaN where undefined).
    """
    parts: list[list[dict[str, np.ndarray]]] = [[] for _ in scorers]
    for weights in resample_weights(proteins, resamples, seed):
        for found, scorer in zip(parts, scorers, strict=True):
            found.append(scorer(weights))
    return [
        {name: np.concatenate([part[name] for part in found]) for name in found[0]} if found else {}
        for found in parts
    ]


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> dict[str, Any]:
    """The percentile interval of resampled values, leaving out (and counting) undefined ones.

    Returns:
        ``low`` and ``high`` (None when no resample is defined) and ``undefined``, the number
        of resamples left out.
    """
    values = np.asarray(values, dtype=np.float64)
    defined = values[np.isfinite(values)]
    undefined = int(len(values) - len(defined))
    if not len(defined):
        return {"low": None, "high": None, "undefined": undefined}
    low, high = np.percentile(defined, [50 * (1 - level), 50 * (1 + level)])
    return {"low": float(low), "high": float(high), "undefined": undefined}


def verdict(metric: str, low: float | None, high: float | None) -> str | None:
    """``better``, ``worse`` or ``inconclusive`` for an interval of model − baseline.

    Better when the whole interval lies on the metric's good side of zero (above it, or below
    for errors such as RMSE), worse when it lies on the other; None without an interval.
    """
    if low is None or high is None:
        return None
    sign = 1 if HIGHER_IS_BETTER.get(metric, True) else -1
    if sign * low > 0 and sign * high > 0:
        return "better"
    if sign * low < 0 and sign * high < 0:
        return "worse"
    return "inconclusive"


def _scorer(targets: np.ndarray, scored: Scored) -> Callable[[np.ndarray], dict[str, np.ndarray]]:
    """The headline metrics of ``scored`` on the resamples of a weight matrix."""
    return lambda weights: scored.task.resampled_scores(targets, scored.outputs, weights)


def _defined(value: Any) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def compare(
    targets: np.ndarray,
    model: Scored,
    baseline: Scored | None,
    resamples: int,
    seed: int,
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Intervals of the model's headline metrics and, with a baseline, of it and the difference.

    Args:
        targets: The evaluated targets, one row (per-residue: chain) per protein.
        model: The model's outputs and task (with its saved thresholds).
        baseline: The baseline's outputs and task (its own thresholds), or None.
        resamples: Resamples; 0 gives point values only.
        seed: As in :func:`resample_weights`.

    Returns:
        ``{metric: {low, high, undefined}}`` for the model (empty without resamples), and for
        the baseline None or ``metrics`` (its headline values), ``intervals`` (as the model's)
        and ``difference`` (``{metric: {value, low, high, undefined, verdict}}``).
    """
    names = list(model.task.headline_metrics)
    contenders = [model] if baseline is None else [model, baseline]
    values = bootstrap([_scorer(targets, c) for c in contenders], len(targets), resamples, seed)

    def intervals(resampled: dict[str, np.ndarray]) -> dict[str, Any]:
        return {name: percentile_interval(resampled[name]) for name in names} if resamples else {}

    if baseline is None:
        return intervals(values[0]), None
    model_point = model.task.metrics(targets, model.outputs)
    baseline_point = baseline.task.metrics(targets, baseline.outputs)
    difference: dict[str, Any] = {}
    for name in names:
        ours, theirs = _defined(model_point[name]), _defined(baseline_point[name])
        spread = {"low": None, "high": None, "undefined": 0}
        if resamples:
            spread = percentile_interval(values[0][name] - values[1][name])
        difference[name] = {
            "value": None if ours is None or theirs is None else ours - theirs,
            **spread,
            "verdict": verdict(name, spread["low"], spread["high"]),
        }
    return intervals(values[0]), {
        "metrics": {name: _defined(baseline_point[name]) for name in names},
        "intervals": intervals(values[1]),
        "difference": difference,
    }


# --- terminal text ----------------------------------------------------------------------------


def _number(value: float | None, signed: bool = False) -> str:
    if value is None:
        return "n/a"
    sign = "+" if signed else ""
    return f"{value:{sign}.3f}" if abs(value) < 1000 else f"{value:{sign}.4g}"


def _with_interval(
    value: float | None, interval: dict[str, Any] | None, signed: bool = False
) -> str:
    shown = _number(value, signed)
    if not interval or interval.get("low") is None:
        return shown
    return f"{shown} [{_number(interval['low'], signed)}, {_number(interval['high'], signed)}]"


def _listed(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{', '.join(names[:-1])} and {names[-1]}"


def interval_lines(metrics: dict[str, Any]) -> list[str]:
    """The intervals and the baseline comparison of an evaluation's metrics, as terminal lines.

    Reads only the ``intervals`` and ``baseline`` entries :func:`esmtune.evaluate.evaluate_run`
    writes to metrics.json (no lines when neither is there).
    """
    bootstrap_info: dict[str, Any] = metrics.get("intervals") or {}
    baseline: dict[str, Any] = metrics.get("baseline") or {}
    intervals: dict[str, Any] = bootstrap_info.get("metrics", {})
    compared = "metrics" in baseline
    names = list(intervals or baseline.get("metrics") or {})
    lines = []
    if bootstrap_info:
        lines.append(
            f"{bootstrap_info['level']:.0%} intervals: {bootstrap_info['resamples']:,} bootstrap "
            f"resamples of the {bootstrap_info['proteins']:,} proteins "
            f"(seed {bootstrap_info['seed']})"
        )
    header = ["metric", "model", *([baseline["name"], "model − baseline", ""] if compared else [])]
    rows = [header]
    for name in names:
        row = [_SHOWN.get(name, name), _with_interval(metrics.get(name), intervals.get(name))]
        if compared:
            change = baseline["difference"][name]
            row += [
                _with_interval(baseline["metrics"][name], baseline["intervals"].get(name)),
                _with_interval(change["value"], change, signed=True),
                change["verdict"] or "",
            ]
        rows.append(row)
    widths = [max(len(row[column]) for row in rows) for column in range(len(header))]
    if names:
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                  for row in rows]  # fmt: skip
    for name in names:
        undefined = intervals.get(name, {}).get("undefined", 0)
        if undefined:
            lines.append(
                f"note: {_SHOWN.get(name, name)} is undefined in {undefined:,} of "
                f"{bootstrap_info['resamples']:,} resamples (e.g. only one class drawn); its "
                "interval is over the others"
            )
    if compared:
        lines += _summary(names, baseline)
        lines += [f"note: {note}" for note in baseline.get("notes", [])]
    elif "skipped" in baseline:
        lines.append(f"baseline: skipped ({baseline['skipped']})")
    return ["", *lines] if lines else []


def _summary(names: list[str], baseline: dict[str, Any]) -> list[str]:
    """What the baseline is, and in one line: does the model beat it, metric by metric?"""
    what = f"baseline: {baseline['name']}, {baseline['model']}, fitted on {baseline['fitted_on']}"
    by_verdict: dict[str, list[str]] = {}
    for name in names:
        found = baseline["difference"][name]["verdict"]
        if found is not None:
            by_verdict.setdefault(found, []).append(_SHOWN.get(name, name))
    if not by_verdict:
        return [what, "model − baseline: no intervals (--resamples 0), so no verdict"]
    said = {
        "better": "better on {}",
        "worse": "worse on {}",
        "inconclusive": "no clear difference on {} (the interval of the difference holds 0)",
    }
    parts = [said[key].format(_listed(by_verdict[key])) for key in said if key in by_verdict]
    return [what, f"model − baseline: {'; '.join(parts)}"]
