"""Figures: confusion matrix, ROC/PR curves, scatter, training curves, residue tracks, reliability.

Each function writes one figure (PNG unless its path says .svg or .pdf) and closes it, so that a
long evaluation never piles up open figures. matplotlib is imported inside the functions (Agg
backend, no display needed) so that importing this module stays cheap for commands that draw
nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

DPI = 120


def _pyplot() -> Any:
    """Return pyplot on the Agg backend, which needs no display (servers, CI)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure: Figure, path: Path) -> None:
    """Write the figure in the format of its suffix, creating its folder, and free it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=DPI)
    plt.close(figure)


def _note(axes: Axes, text: str) -> None:
    """Write a message in the middle of an empty panel instead of a plot."""
    axes.text(0.5, 0.5, text, ha="center", va="center", transform=axes.transAxes, color="gray")
    axes.set_xticks([])
    axes.set_yticks([])


def plot_confusion_matrix(
    matrix: list[list[int]], labels: list[str], path: Path, title: str
) -> None:
    """Draw counts in each cell, coloured by share of the true class (readable with imbalance).

    Args:
        matrix: Counts, rows are true classes and columns predicted classes.
        labels: Class names in row/column order.
        path: Where to write the PNG.
        title: Figure title.
    """
    plt = _pyplot()
    counts = np.asarray(matrix)
    shares = counts / np.clip(counts.sum(axis=1, keepdims=True), 1, None)
    size = max(4.0, 0.6 * len(labels) + 2.5)
    figure, axes = plt.subplots(figsize=(size + 1, size))
    image = axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted")
    axes.set_ylabel("true")
    axes.set_title(title)
    for row in range(len(labels)):
        for col in range(len(labels)):
            colour = "white" if shares[row, col] > 0.5 else "black"
            axes.text(col, row, str(counts[row, col]), ha="center", va="center", color=colour)
    figure.colorbar(image, ax=axes, label="share of true class")
    _save(figure, path)


def plot_roc_pr(
    targets: np.ndarray,
    scores: np.ndarray,
    path: Path,
    title: str,
    threshold: float | None = None,
) -> None:
    """Draw the ROC curve and the precision–recall curve side by side.

    The PR panel shows the positive prevalence as the no-skill level, which (unlike the ROC
    diagonal) moves with class imbalance and is what average precision should be compared to.

    Args:
        targets: 0/1 truth, shape (n,) for a binary task or (n, L) for multilabel; multilabel
            input is micro-averaged (every protein–label pair counts once).
        scores: Scores or probabilities of the positive class, same shape as `targets`.
        path: Where to write the PNG.
        title: Figure title.
        threshold: Decision threshold; when given, the operating point it yields is marked on
            both curves.

    Raises:
        ValueError: If `targets` and `scores` differ in shape.
    """
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    targets = np.asarray(targets)
    scores = np.asarray(scores, dtype=float)
    if targets.shape != scores.shape:
        raise ValueError(f"targets {targets.shape} and scores {scores.shape} differ in shape")
    averaged = " (micro-average)" if targets.ndim == 2 else ""
    truth = targets.ravel().astype(int)
    scores = scores.ravel()

    plt = _pyplot()
    figure, (roc_axes, pr_axes) = plt.subplots(1, 2, figsize=(10, 4.5))
    figure.suptitle(title)
    roc_axes.set_title("ROC" + averaged)
    pr_axes.set_title("precision–recall" + averaged)
    if np.unique(truth).size < 2:
        # Both curves need positives and negatives; say so rather than draw a misleading line.
        _note(roc_axes, "undefined: only one class")
        _note(pr_axes, "undefined: only one class")
        _save(figure, path)
        return

    false_positive_rate, true_positive_rate, _ = roc_curve(truth, scores)
    roc_axes.plot(
        false_positive_rate,
        true_positive_rate,
        label=f"AUC = {auc(false_positive_rate, true_positive_rate):.3f}",
    )
    roc_axes.plot([0, 1], [0, 1], linestyle="--", color="gray", label="chance")
    roc_axes.set_xlabel("false positive rate")
    roc_axes.set_ylabel("true positive rate")

    precision, recall, _ = precision_recall_curve(truth, scores)
    prevalence = float(truth.mean())
    pr_axes.plot(
        recall,
        precision,
        drawstyle="steps-post",
        label=f"AP = {average_precision_score(truth, scores):.3f}",
    )
    pr_axes.axhline(prevalence, linestyle="--", color="gray", label=f"no skill = {prevalence:.3f}")
    pr_axes.set_xlabel("recall")
    pr_axes.set_ylabel("precision")

    if threshold is not None:
        predicted = scores >= threshold
        true_positives = int(np.sum(predicted & (truth == 1)))
        false_positives = int(np.sum(predicted & (truth == 0)))
        label = f"threshold {threshold:.3g}"
        roc_axes.plot(
            false_positives / np.sum(truth == 0),
            true_positives / np.sum(truth == 1),
            "o",
            color="crimson",
            label=label,
        )
        # Precision is undefined when nothing is predicted positive; mark only the ROC point then.
        if true_positives + false_positives:
            pr_axes.plot(
                true_positives / np.sum(truth == 1),
                true_positives / (true_positives + false_positives),
                "o",
                color="crimson",
                label=label,
            )

    for axes in (roc_axes, pr_axes):
        axes.set_xlim(-0.02, 1.02)
        axes.set_ylim(-0.02, 1.02)
        axes.legend(loc="lower right" if axes is roc_axes else "lower left")
    _save(figure, path)


def _spearman(targets: np.ndarray, predictions: np.ndarray) -> str:
    """Spearman's rho as text, or "n/a" where it is undefined (constant input)."""
    from scipy.stats import spearmanr

    if targets.size < 2 or np.ptp(targets) == 0 or np.ptp(predictions) == 0:
        return "n/a"
    return f"{spearmanr(targets, predictions).statistic:.3f}"


def _r_squared(targets: np.ndarray, predictions: np.ndarray) -> str:
    """R² as text, or "n/a" where it is undefined (constant targets)."""
    from sklearn.metrics import r2_score

    if targets.size < 2 or np.ptp(targets) == 0:
        return "n/a"
    return f"{r2_score(targets, predictions):.3f}"


def plot_scatter(
    targets: np.ndarray, predictions: np.ndarray, names: list[str], path: Path, title: str
) -> None:
    """Draw predicted against true values, one panel per target, with the y = x line.

    Small semi-transparent markers keep thousands of points readable: dense regions darken
    instead of merging into a single blot.

    Args:
        targets: True values, shape (n,) for one target or (n, k) for k targets.
        predictions: Predicted values, same shape as `targets`.
        names: One name per target column, used as panel titles.
        path: Where to write the PNG.
        title: Figure title.

    Raises:
        ValueError: If the shapes differ or `names` does not match the number of targets.
    """
    targets = np.asarray(targets, dtype=float)
    predictions = np.asarray(predictions, dtype=float)
    if targets.shape != predictions.shape:
        raise ValueError(
            f"targets {targets.shape} and predictions {predictions.shape} differ in shape"
        )
    if targets.ndim == 1:
        targets, predictions = targets[:, None], predictions[:, None]
    if len(names) != targets.shape[1]:
        raise ValueError(f"{len(names)} names for {targets.shape[1]} target columns")

    count = len(targets)
    marker_size = 4 if count > 2000 else 12
    alpha = 0.25 if count > 1000 else 0.6
    columns = min(len(names), 3)
    rows = math.ceil(len(names) / columns)
    plt = _pyplot()
    figure, grid = plt.subplots(rows, columns, figsize=(4.5 * columns, 4.3 * rows), squeeze=False)
    figure.suptitle(title)
    for index, axes in enumerate(grid.ravel()):
        if index >= len(names):
            axes.set_visible(False)
            continue
        truth, predicted = targets[:, index], predictions[:, index]
        finite = np.concatenate([truth, predicted])
        finite = finite[np.isfinite(finite)]
        low, high = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
        margin = 0.05 * (high - low) or 0.5
        low, high = low - margin, high + margin
        axes.plot([low, high], [low, high], linestyle="--", color="gray", linewidth=1)
        axes.scatter(truth, predicted, s=marker_size, alpha=alpha, edgecolors="none")
        axes.set_xlim(low, high)
        axes.set_ylim(low, high)
        axes.set_aspect("equal")
        axes.set_xlabel("true")
        axes.set_ylabel("predicted")
        # Statistics over complete pairs only: one NaN would otherwise blank the whole panel.
        pairs = np.isfinite(truth) & np.isfinite(predicted)
        truth, predicted = truth[pairs], predicted[pairs]
        axes.set_title(
            f"{names[index]}\nSpearman {_spearman(truth, predicted)} · "
            f"R² {_r_squared(truth, predicted)}"
        )
    _save(figure, path)


def _is_number(value: object) -> TypeGuard[Real]:
    """True for real numbers, numpy scalars included; False for None, text and booleans."""
    return isinstance(value, Real) and not isinstance(value, bool)


def _series(history: Sequence[dict[str, Any]], key: str) -> tuple[list[float], list[float]]:
    """Epochs and values of one key, skipping entries where either is missing or None."""
    epochs, values = [], []
    for entry in history:
        epoch, value = entry.get("epoch"), entry.get(key)
        if _is_number(epoch) and _is_number(value):
            epochs.append(float(epoch))
            values.append(float(value))
    return epochs, values


def plot_training_curves(
    history: list[dict[str, Any]], metric: str, path: Path, best_epoch: int | None = None
) -> None:
    """Draw loss by epoch (left) and the validation metric by epoch (right).

    Lines carry markers so that a single epoch still shows up as a point.

    Args:
        history: One entry per evaluation, e.g. ``{"epoch": 1, "train_loss": 0.9, "loss": 0.8,
            "macro_f1": 0.5}``; missing keys and None values are skipped.
        metric: Key of the validation metric to draw on the right.
        path: Where to write the PNG.
        best_epoch: Epoch of the kept checkpoint, marked on the metric panel.
    """
    plt = _pyplot()
    figure, (loss_axes, metric_axes) = plt.subplots(1, 2, figsize=(10, 4))

    drawn = False
    # The training objective may carry class or positive weights and standardised regression
    # targets; the validation loss is the plain metric: the legend says so, lest they be compared.
    series = (
        ("train_loss", "train (training objective)"),
        ("loss", "validation (unweighted, original scale)"),
    )
    for key, label in series:
        epochs, values = _series(history, key)
        if epochs:
            loss_axes.plot(epochs, values, marker="o", label=label)
            drawn = True
    loss_axes.set_title("loss")
    if drawn:
        loss_axes.set_xlabel("epoch")
        loss_axes.legend()
    else:
        _note(loss_axes, "no loss recorded")

    epochs, values = _series(history, metric)
    metric_axes.set_title(f"validation {metric}")
    if epochs:
        metric_axes.plot(epochs, values, marker="o", label=metric)
        if best_epoch is not None:
            metric_axes.axvline(
                best_epoch, linestyle="--", color="crimson", label=f"best epoch {best_epoch}"
            )
            best = [
                value for epoch, value in zip(epochs, values, strict=True) if epoch == best_epoch
            ]
            if best:
                metric_axes.plot(best_epoch, best[-1], "*", markersize=14, color="crimson")
        metric_axes.set_xlabel("epoch")
        metric_axes.legend()
    else:
        _note(metric_axes, f"no {metric} recorded")

    for axes in (loss_axes, metric_axes):
        _epoch_ticks(axes, sorted({float(x) for line in axes.lines for x in line.get_xdata()}))
    _save(figure, path)


def _epoch_ticks(axes: Axes, epochs: list[float]) -> None:
    """Label whole epochs only; matplotlib would otherwise label 0.96, 0.98... for one epoch."""
    from matplotlib.ticker import MaxNLocator

    if not epochs:
        return
    if len(epochs) <= 12:
        axes.set_xticks(epochs, [f"{epoch:g}" for epoch in epochs])
    else:
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    if epochs[0] == epochs[-1]:
        axes.set_xlim(epochs[0] - 1, epochs[0] + 1)


# Up to this many residues a track names each one under its position; longer chains get
# position numbers, as letters would overlap.
RESIDUE_TICKS_UP_TO = 80


def plot_residue_scores(
    tracks: Sequence[tuple[str, str, np.ndarray]],
    path: Path,
    title: str,
    marked: Sequence[int | None] | None = None,
) -> None:
    """Draw one track per sequence: a bar per residue, evidence for up, against down.

    Args:
        tracks: ``(name, sequence, scores)`` per sequence, ``scores`` one per residue; NaN marks
            residues the model did not read, shaded grey.
        path: Where to write the figure; its suffix (.png, .svg, .pdf) sets the format.
        title: Figure title (what was explained, and how).
        marked: Per track, a 1-based position to mark (the residue whose prediction was
            explained), or None; a gold band behind it and a triangle over it, so that the
            scores around it read as relative to it.
    """
    plt = _pyplot()
    longest = max((len(sequence) for _, sequence, _ in tracks), default=1)
    lettered = longest <= RESIDUE_TICKS_UP_TO
    width = min(16.0, max(6.0, 0.12 * longest + 1.5)) if lettered else 12.0
    figure, grid = plt.subplots(
        len(tracks), 1, figsize=(width, 0.6 + 1.9 * len(tracks)), squeeze=False
    )
    figure.suptitle(title)
    marks = list(marked) if marked is not None else [None] * len(tracks)
    for axes, (name, sequence, scores), mark in zip(grid[:, 0], tracks, marks, strict=True):
        values = np.asarray(scores, dtype=float)
        positions = np.arange(1, len(values) + 1)
        read = np.isfinite(values)
        shown = np.where(read, values, 0.0)
        colours = np.where(shown >= 0, "#b2182b", "#2166ac")  # for the label red, against blue
        axes.bar(positions, shown, width=0.85, color=colours)
        for position in positions[~read]:
            axes.axvspan(position - 0.5, position + 0.5, color="0.9", linewidth=0)
        axes.axhline(0, color="0.4", linewidth=0.6)
        if mark is not None:
            _mark_position(axes, mark)
        axes.set_xlim(0.5, len(values) + 0.5)
        axes.set_title(name, fontsize=10, loc="left")
        axes.set_ylabel("score")
        if lettered:
            axes.set_xticks(positions, list(sequence), fontsize=7, fontfamily="monospace")
            axes.tick_params(axis="x", length=0)
        else:
            from matplotlib.ticker import MaxNLocator

            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        if not read.any():
            _note(axes, "no residue read")
    grid[-1, 0].set_xlabel("residue" if lettered else "residue position")
    _save(figure, path)


def _mark_position(axes: Any, position: int) -> None:
    """A gold band behind ``position`` and a triangle above it, pointing down at it."""
    axes.axvspan(position - 0.5, position + 0.5, color="#fdd84b", alpha=0.6, linewidth=0, zorder=0)
    axes.plot(
        [position], [1.0], marker="v", color="#b8860b", markersize=7, clip_on=False,
        transform=axes.get_xaxis_transform(), linestyle="none",
    )  # fmt: skip


def plot_residue_tracks(
    tracks: Sequence[tuple[str, np.ndarray, np.ndarray]],
    labels: list[str],
    ignored: int,
    path: Path,
    title: str,
) -> None:
    """Per-residue predictions along a few chains: each class's probability, truth and call.

    Args:
        tracks: ``(name, targets, probabilities)`` per chain: class indices per residue
            (``ignored`` where masked) and ``(residues, classes)`` probabilities (NaN rows
            where the model did not read the residue).
        labels: Class names in index order.
        ignored: The class index of masked residues, drawn grey in the truth row.
        path: Where to write the figure.
        title: Figure title.
    """
    plt = _pyplot()
    from matplotlib.colors import ListedColormap

    colours = [plt.get_cmap("tab10")(i % 10) for i in range(len(labels))]
    grey = (0.85, 0.85, 0.85, 1.0)
    palette = ListedColormap([*colours, grey])
    figure, grid = plt.subplots(
        len(tracks), 1, figsize=(12.0, 0.8 + 2.2 * len(tracks)), squeeze=False
    )
    figure.suptitle(title)
    for axes, (name, targets, probabilities) in zip(grid[:, 0], tracks, strict=True):
        positions = np.arange(1, len(targets) + 1)
        read = np.isfinite(probabilities).all(axis=1)
        for index, label in enumerate(labels):
            shown = np.where(read, probabilities[:, index], np.nan)
            axes.plot(positions, shown, color=colours[index], linewidth=1.0, label=f"P({label})")
        truth = np.where(targets == ignored, len(labels), targets)
        called = np.where(read, np.nan_to_num(probabilities).argmax(axis=1), len(labels))
        extent = (0.5, len(targets) + 0.5)
        for row, (values, top) in enumerate(((truth, -0.12), (called, -0.24))):
            axes.imshow(
                values[np.newaxis, :], aspect="auto", cmap=palette, vmin=0, vmax=len(labels),
                extent=(*extent, top - 0.1, top), interpolation="nearest",
            )  # fmt: skip
            axes.text(extent[0], top - 0.05, ("true ", "predicted ")[row], ha="right",
                      va="center", fontsize=8)  # fmt: skip
        axes.set_xlim(*extent)
        axes.set_ylim(-0.36, 1.02)
        axes.set_yticks([0, 0.5, 1])
        axes.set_ylabel("probability")
        axes.set_title(name, fontsize=10, loc="left")
    grid[0, 0].legend(loc="upper right", fontsize=8, ncol=len(labels))
    grid[-1, 0].set_xlabel("residue position (grey: masked or not read)")
    _save(figure, path)


def plot_reliability(calibration: dict[str, Any], path: Path, title: str) -> None:
    """The reliability diagram: observed frequency against mean predicted probability per bin.

    Before and after the run's calibration, each point sized by its bin's count; the diagonal is
    perfect calibration, points below it are over-confident.

    Args:
        calibration: ``before`` and ``after`` from :func:`esmtune.calibration.reliability`
            (``ece`` and ``bins``), and the ``method``.
        path: Where to write the figure.
        title: Figure title.
    """
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 5))
    axes.plot([0, 1], [0, 1], color="gray", linestyle="--", linewidth=1, label="perfect")
    sides = [("before", "tab:red", "uncalibrated")]
    if calibration["method"] != "none":
        sides.append(("after", "tab:blue", f"after {calibration['method']}"))
    for key, colour, name in sides:
        result = calibration[key]
        bins = result["bins"]
        if not bins:
            continue
        total = sum(b["count"] for b in bins)
        confidence = [b["confidence"] for b in bins]
        frequency = [b["frequency"] for b in bins]
        sizes = [20 + 300 * b["count"] / total for b in bins]
        axes.plot(confidence, frequency, color=colour, linewidth=1)
        axes.scatter(confidence, frequency, s=sizes, color=colour, alpha=0.7,
                     label=f"{name} (ECE {result['ece']:.3f})")  # fmt: skip
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1)
    axes.set_xlabel("predicted probability (bin mean)")
    axes.set_ylabel("observed frequency")
    axes.set_title(title)
    axes.legend(loc="upper left")
    _save(figure, path)
