"""`esmtune tune`: an Optuna study of ordinary runs, resumable, pruning, with its leaderboard."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.helpers import ROOT, tiny_overrides

from esmtune.config import load_config
from esmtune.errors import ConfigError
from esmtune.search_space import TuneOptions, load_search_space

# Learning rates far apart: the tiny model learns at 3e-3 and not at all at 1e-7, so trials differ.
SPACE = """\
training.learning_rate: {log_float: [1.0e-7, 3.0e-3]}
model.pooling: [mean, max]
"""


def _base(model_dir: Path, data: Path, out: Path) -> list[str]:
    settings = tiny_overrides(model_dir, data, out, "unused")
    return [s for s in settings if not s.startswith("output.name")] + [
        "training.epochs=2",
        "data.max_length=60",
    ]


def _csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def search(tiny_model_dir: Path, learnable_data: Path, tmp_path_factory: pytest.TempPathFactory):
    """A three-trial search, then one more trial of the same study (a resumed search)."""
    from esmtune.tune import tune

    out = tmp_path_factory.mktemp("tune")
    space = out / "space.yaml"
    space.write_text(SPACE)
    base = _base(tiny_model_dir, learnable_data, out)
    options = TuneOptions(trials=3, study="s", pruner_startup_trials=1)
    first = tune(None, space, options, base)
    first_rows = _csv(first.folder / "leaderboard.csv")
    second = tune(None, space, options.model_copy(update={"trials": 1}), base)
    return first, first_rows, second, base


def test_a_search_writes_its_leaderboard_best_config_and_plots(search) -> None:
    first, rows, _, _ = search
    assert [row["trial"] for row in rows] == ["0", "1", "2"]
    assert set(rows[0]) == {
        "trial", "training.learning_rate", "model.pooling", "macro_f1", "epochs", "seconds",
        "state",
    }  # fmt: skip
    assert {row["state"] for row in rows} <= {"complete", "pruned"}
    for row in rows:  # every trial is a normal run directory
        run = first.folder / f"trial-{int(row['trial']):03d}"
        assert (run / "config.yaml").is_file() and (run / "metrics.json").is_file()
    assert "trial" in first.table.splitlines()[0]
    assert (first.folder / "optimization_history.png").stat().st_size > 0
    assert (first.folder / "study.db").is_file()


def test_the_best_config_trains(search, tmp_path: Path) -> None:
    from esmtune.train import train

    _, _, second, _ = search
    best = second.folder / "best_config.yaml"
    assert best.read_text().startswith(f"# Run: esmtune train --config {best}")
    config = load_config(best, [f"output.dir={tmp_path}", "output.name=best", "training.epochs=1"])
    assert train(config) == tmp_path / "best"


def test_a_search_resumes_its_study(search) -> None:
    _, _, second, _ = search
    rows = _csv(second.folder / "leaderboard.csv")
    assert [row["trial"] for row in rows] == ["0", "1", "2", "3"]
    assert sorted(p.name for p in second.folder.glob("trial-*")) == [
        "trial-000", "trial-001", "trial-002", "trial-003",
    ]  # fmt: skip
    assert (second.folder / "param_importances.png").is_file()


def test_a_poor_trial_is_pruned(search) -> None:
    """A learning rate of 1e-7 cannot keep up with the median after its first epoch."""
    _, _, second, _ = search
    rows = _csv(second.folder / "leaderboard.csv")
    states = {row["state"] for row in rows}
    assert "complete" in states
    pruned = [row for row in rows if row["state"] == "pruned"]
    assert pruned, rows
    for row in pruned:  # stopped through train()'s on_validation, as an early stop ends
        assert row["epochs"] == "1"
        run = second.folder / f"trial-{int(row['trial']):03d}"
        assert json.loads((run / "metrics.json").read_text())["stopped_early"] is True
        assert (run / "model" / "weights.safetensors").is_file()


@pytest.mark.multiprocess
def test_two_processes_share_one_study(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    """Two `esmtune tune` processes at once: one study, distinct trials, one run dir each."""
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    base = [*_base(tiny_model_dir, learnable_data, tmp_path), "training.epochs=1"]
    command = [
        sys.executable, "-m", "esmtune", "tune", "--search", str(space), "--trials", "2",
        "--study", "shared", *base,
    ]  # fmt: skip
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    processes = [
        subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr.decode()[-3000:]
    folder = tmp_path / "shared"
    rows = _csv(folder / "leaderboard.csv")  # written by whichever process ended last
    assert sorted(int(row["trial"]) for row in rows) == [0, 1, 2, 3]
    assert len(list(folder.glob("trial-*"))) == 4
    assert {row["state"] for row in rows} <= {"complete", "pruned"}


def _join_study(folder: Path, barrier: Any) -> int:
    from optuna.study import StudyDirection

    from esmtune.tune import _open_study

    barrier.wait()  # every process opens the new SQLite file at the same moment
    _, joined = _open_study(folder, "race", StudyDirection.MAXIMIZE, TuneOptions())
    return joined


@pytest.mark.multiprocess
def test_processes_opening_a_new_study_at_once_all_join_it(tmp_path: Path) -> None:
    """Unlocked, Optuna's schema stamp collides (seen in CI); each process gets its own seed."""
    context = multiprocessing.get_context("spawn")
    with context.Manager() as manager, context.Pool(4) as pool:
        for attempt in range(3):  # unlocked, about one attempt in two failed
            folder = tmp_path / str(attempt)
            folder.mkdir()
            joined = pool.starmap(_join_study, [(folder, manager.Barrier(4))] * 4)
            assert sorted(joined) == [0, 1, 2, 3]


def test_search_space_errors_are_reported_at_once(tmp_path: Path) -> None:
    space = tmp_path / "space.yaml"
    space.write_text(
        "training.learning_rat: {log_float: [1.0e-5, 1.0e-3]}\n"  # misspelt
        "training.batch_size: {int: [32, 8]}\n"  # empty range
        "model.pooling: [mean, sum]\n"  # not a pooling
        "training.warmup_ratio: {log_float: [0, 0.1]}\n"  # log of 0
        "model.head_dropout: {uniform: [0, 1]}\n"  # unknown kind
    )
    with pytest.raises(ConfigError) as caught:
        load_search_space(space, None)
    message = str(caught.value)
    assert "5 problem(s)" in message
    assert "did you mean 'training.learning_rate'" in message
    assert "[32, 8] is empty" in message
    assert "model.pooling: 'sum' is rejected" in message
    assert "needs low > 0" in message
    assert "unknown range kind 'uniform'" in message


def test_the_shipped_search_space_loads() -> None:
    path = ROOT / "configs" / "search.yaml"
    assert (
        "esmtune tune --config configs/demo.yaml --search configs/search.yaml"
        in (path.read_text().splitlines()[0])
    )
    keys = [d.key for d in load_search_space(path, ROOT / "configs" / "demo.yaml")]
    assert "training.learning_rate" in keys
