"""Each plot writes a PNG for typical and awkward inputs without raising or warning."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from esmtune.plots import (
    plot_confusion_matrix,
    plot_roc_pr,
    plot_scatter,
    plot_training_curves,
)


@contextmanager
def no_warnings() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def assert_png(path: Path) -> None:
    assert path.is_file()
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_confusion_matrix(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "confusion.png"
    with no_warnings():
        plot_confusion_matrix([[5, 1], [0, 3]], ["membrane", "soluble"], path, "test")
    assert_png(path)


def test_roc_pr_binary_with_threshold(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 2, 300)
    scores = np.clip(0.3 * targets + rng.random(300) * 0.7, 0, 1)
    path = tmp_path / "roc_pr.png"
    with no_warnings():
        plot_roc_pr(targets, scores, path, "binary", threshold=0.5)
    assert_png(path)


def test_roc_pr_threshold_above_every_score(tmp_path: Path) -> None:
    path = tmp_path / "roc_pr.png"
    with no_warnings():
        plot_roc_pr(np.array([0, 1, 1, 0]), np.array([0.1, 0.4, 0.3, 0.2]), path, "t", 0.9)
    assert_png(path)


def test_roc_pr_multilabel(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    targets = rng.integers(0, 2, (100, 5))
    scores = rng.random((100, 5))
    path = tmp_path / "roc_pr.png"
    with no_warnings():
        plot_roc_pr(targets, scores, path, "multilabel")
    assert_png(path)


def test_roc_pr_one_class_does_not_raise(tmp_path: Path) -> None:
    path = tmp_path / "roc_pr.png"
    with no_warnings():
        plot_roc_pr(np.ones(10), np.linspace(0, 1, 10), path, "one class", threshold=0.5)
    assert_png(path)


def test_scatter_two_targets(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    targets = rng.normal(size=(3000, 2))
    predictions = targets + rng.normal(scale=0.5, size=(3000, 2))
    path = tmp_path / "scatter.png"
    with no_warnings():
        plot_scatter(targets, predictions, ["melting point", "solubility"], path, "regression")
    assert_png(path)


def test_scatter_constant_predictions_and_targets(tmp_path: Path) -> None:
    path = tmp_path / "scatter.png"
    with no_warnings():
        plot_scatter(np.arange(20.0), np.full(20, 3.0), ["stability"], path, "constant")
        plot_scatter(np.full(20, 1.0), np.full(20, 1.0), ["flat"], path, "all constant")
    assert_png(path)


def test_training_curves_one_epoch(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    history = [{"epoch": 1, "step": 10, "train_loss": 0.9, "loss": 0.8, "macro_f1": 0.5}]
    with no_warnings():
        plot_training_curves(history, "macro_f1", path, best_epoch=1)
    assert_png(path)


def test_training_curves_with_missing_keys(tmp_path: Path) -> None:
    path = tmp_path / "curves.png"
    history = [
        {"epoch": 1, "step": 10, "train_loss": 0.9, "loss": None, "macro_f1": 0.5},
        {"epoch": 2, "step": 20, "loss": 0.7, "macro_f1": 0.6},
        {"epoch": 3, "step": 30, "train_loss": 0.5, "loss": 0.65},
    ]
    with no_warnings():
        plot_training_curves(history, "macro_f1", path, best_epoch=2)
        plot_training_curves(history, "spearman", tmp_path / "absent_metric.png")
        plot_training_curves([], "macro_f1", tmp_path / "empty.png")
    assert_png(path)
    assert_png(tmp_path / "absent_metric.png")
    assert_png(tmp_path / "empty.png")
