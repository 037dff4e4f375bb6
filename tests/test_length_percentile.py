"""``data.max_length: p95``: the input length read off the training split, saved as a number.

Protein lengths are long-tailed: a fixed 1,022 pads most batches for a few giants, a guess cuts
too many. A percentile of the training lengths says what share of proteins are read whole; the
data check turns it into a number, the run saves the number, and predict reads the same windows.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import yaml
from tests.helpers import ROOT, tiny_overrides, write_fasta

from esmtune.cli import main
from esmtune.config import DataConfig, load_config
from esmtune.data.check import check_dataset
from esmtune.errors import ConfigError

_RESIDUES = {"Acidic": "DEDEEDSTGANQ", "Basic": "KRKRRKSTGANQ", "Hydrophobic": "LIVLFVMASTGW"}


def _long_tailed(rng: random.Random, count: int) -> list[int]:
    """Mostly 20-60 residues, with a tail reaching some hundreds (as real proteomes have)."""
    return [min(int(rng.lognormvariate(3.6, 0.6)) + 10, 900) for _ in range(count)]


def _dataset(root: Path, seed: int = 0) -> tuple[Path, list[int]]:
    """Long-tailed training lengths; validation and test all short, so they would pull p95 down.

    Returns:
        The folder and the training lengths.
    """
    rng = random.Random(seed)
    train_lengths = []
    for label, residues in _RESIDUES.items():
        for split, lengths in (
            ("train", _long_tailed(rng, 40)),
            ("validation", [rng.randint(15, 25) for _ in range(10)]),
            ("test", [rng.randint(15, 25) for _ in range(10)]),
        ):
            records = [
                (f"{label}_{split}_{i}", "M" + "".join(rng.choice(residues) for _ in range(n - 1)))
                for i, n in enumerate(lengths)
            ]
            write_fasta(root / split / f"{label}.fasta", records)
            train_lengths += lengths if split == "train" else []
    return root, train_lengths


def _nearest_rank(lengths: list[int], percentile: float) -> int:
    return int(np.percentile(lengths, percentile, method="inverted_cdf"))


@pytest.mark.parametrize("percentile", [50, 90, 95, 99, 100])
def test_a_percentile_is_the_shortest_length_that_many_training_sequences_fit(
    percentile: int,
) -> None:
    lengths = _long_tailed(random.Random(percentile), 500)
    data = DataConfig.model_validate({"max_length": f"p{percentile}"})
    assert data.max_length_percentile == percentile
    note = data.fix_max_length(lengths)
    chosen = data.max_length
    assert chosen == _nearest_rank(lengths, percentile)
    assert np.mean(np.array(lengths) <= chosen) >= percentile / 100
    assert np.mean(np.array(lengths) <= chosen - 1) < percentile / 100  # and no shorter one
    assert data.max_length_percentile is None  # a number from now on
    assert note is not None and f"p{percentile}: {chosen} residues" in note


def test_the_number_stays_within_esm2s_context_and_above_the_minimum() -> None:
    giants = DataConfig.model_validate({"max_length": "p50"})
    giants.fix_max_length([3000, 5000, 8000])
    assert giants.max_length == 1022
    tiny = DataConfig.model_validate({"max_length": "p50"})
    tiny.fix_max_length([3, 4, 5])
    assert tiny.max_length == 8


def test_an_unresolved_percentile_reads_back_as_written_and_a_number_as_a_number() -> None:
    config = load_config(None, ["data.max_length=p95"])
    assert config.to_yaml_dict()["data"]["max_length"] == "p95"
    config.data.fix_max_length([100] * 20)
    assert config.to_yaml_dict()["data"]["max_length"] == 100
    assert load_config(None, ["data.max_length=300"]).data.max_length_percentile is None


@pytest.mark.parametrize("value", ["p0", "p101", "95%", "longest"])
def test_what_is_neither_a_number_nor_a_percentile_is_refused(value: str) -> None:
    with pytest.raises(ConfigError, match=r"data\.max_length: .*percentile"):
        load_config(None, [f"data.max_length={value}"])


def test_a_stride_longer_than_the_chosen_length_is_reported(tmp_path: Path) -> None:
    root, _ = _dataset(tmp_path)
    data = DataConfig.model_validate(
        {"path": root, "max_length": "p50", "long_sequences": "window", "window_stride": 500}
    )
    with pytest.raises(ConfigError, match=r"p50 = \d+: data.window_stride \(500\) exceeds"):
        check_dataset(data)


def test_the_data_check_fixes_it_from_the_training_split_only(tmp_path: Path) -> None:
    root, train_lengths = _dataset(tmp_path)
    data = DataConfig.model_validate({"path": root, "max_length": "p95"})
    report = check_dataset(data)
    expected = _nearest_rank(train_lengths, 95)
    assert data.max_length == expected
    assert expected > 100  # the short validation and test sequences did not count
    [note] = [line for line in report.notes if line.startswith("data.max_length")]
    assert note.startswith(f"data.max_length p95: {expected} residues")
    longer = sum(n > expected for n in train_lengths)
    assert f"{longer} sequence(s) longer than {expected} residues will be truncated" in "\n".join(
        report.notes
    )


def test_a_p95_run_saves_the_number_and_predict_reads_it(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from esmtune.predict import Predictor

    root, train_lengths = _dataset(tmp_path / "data")
    expected = _nearest_rank(train_lengths, 95)
    overrides = tiny_overrides(tiny_model_dir, root, tmp_path / "runs", "p95")
    overrides += [
        "data.max_length=p95",
        "data.long_sequences=window",
        "training.epochs=1",
        "finetune.mode=frozen",
        "finetune.cache_embeddings=false",
    ]
    assert main(["train", *overrides]) == 0
    run = tmp_path / "runs" / "p95"
    assert f"data.max_length p95: {expected} residues" in capsys.readouterr().out
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["data"]["max_length"] == expected
    manifest = json.loads((run / "manifest.json").read_text())
    assert any(line.startswith("data.max_length p95") for line in manifest["data_notes"])

    predictor = Predictor.from_run(run, device="cpu")
    assert predictor.max_length == expected
    fits, longer = ("M" * expected, "M" * (expected + 1))
    windows = [row["windows"] for row in predictor.predict([fits, longer])]
    assert windows == [1, 2]  # one input of the run's length; past it, windows of that length


def test_the_data_check_option_takes_a_percentile_too(capsys) -> None:
    from esmtune.cli import main

    assert main(["data", "check", str(ROOT / "examples/scl3"), "--max-length", "p95"]) == 0
    assert "note: data.max_length p95: 291 residues" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["data", "check", str(ROOT / "examples/scl3"), "--max-length", "p9x"])
    assert "give residues (e.g. 500) or a percentile (p95)" in capsys.readouterr().err
