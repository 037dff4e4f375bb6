"""Heads on precomputed embeddings (data.embeddings): read, checked, trained, predicted, served.

The embeddings are made by ``esmtune embed`` with the tiny ESM2 (which records the model and
pooling in the file), or written by hand in other tools' layouts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import tiny_overrides

from esmtune.cli import main
from esmtune.data.check import check_dataset
from esmtune.data.embedding_files import read_embeddings
from esmtune.data.fasta import read_fasta
from esmtune.embeddings import write_embeddings
from esmtune.errors import EsmtuneError, RunDirError
from esmtune.predict import Predictor


def _fasta_files(data: Path) -> list[str]:
    return [str(path) for path in sorted(data.glob("*/*.fasta"))]


def _records(data: Path) -> dict[str, str]:
    return {r.id: r.sequence for path in _fasta_files(data) for r in read_fasta(Path(path))}


@pytest.fixture(scope="module")
def embedded(tiny_model_dir: Path, learnable_data: Path, tmp_path_factory) -> Path:
    """Mean-pooled embeddings of every sequence of learnable_data, by esmtune embed."""
    out = tmp_path_factory.mktemp("embedded") / "mean.npz"
    args = ["embed", str(tiny_model_dir), *_fasta_files(learnable_data), "--out", str(out)]
    assert main(args) == 0
    return out


@pytest.fixture(scope="module")
def head_run(embedded: Path, tiny_model_dir: Path, learnable_data: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("head_runs")
    overrides = tiny_overrides(tiny_model_dir, learnable_data, out, "head")
    overrides += [f"data.embeddings={embedded}", "training.epochs=8", "training.learning_rate=0.01"]
    assert main(["train", *overrides]) == 0
    return out / "head"


# --- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".safetensors"])
def test_esmtune_files_read_back_by_id(tmp_path: Path, suffix: str) -> None:
    pooled = torch.randn(3, 8)
    write_embeddings(tmp_path / f"p{suffix}", ["a", "b/c", "d"], pooled, {"model": "m"})
    found = read_embeddings(tmp_path / f"p{suffix}")
    assert list(found.vectors) == ["a", "b/c", "d"] and not found.per_residue and found.dim == 8
    assert np.allclose(found.vectors["b/c"], pooled[1].numpy())
    per_residue = [torch.randn(n, 8) for n in (4, 2, 7)]
    write_embeddings(tmp_path / f"r{suffix}", ["a", "b/c", "d"], per_residue, {"model": "m"})
    found = read_embeddings(tmp_path / f"r{suffix}")
    assert found.per_residue and [len(v) for v in found.vectors.values()] == [4, 2, 7]
    assert found.metadata["model"] == "m"


def test_other_tools_layouts_are_read(tmp_path: Path) -> None:
    import h5py

    vectors = {"P1": np.ones(5, np.float32), "P2": np.zeros(5, np.float32)}
    # bio_embeddings / biotrainer: datasets keyed by a hash, the id in an attribute.
    with h5py.File(tmp_path / "bio.h5", "w") as handle:
        for identifier, vector in vectors.items():
            key = hashlib.md5(identifier.encode()).hexdigest()
            handle.create_dataset(key, data=vector).attrs["original_id"] = identifier
    np.savez(tmp_path / "plain.npz", **vectors)  # one member per id, no id list
    from safetensors.numpy import save_file

    save_file(vectors, str(tmp_path / "plain.safetensors"))
    for name in ("bio.h5", "plain.npz", "plain.safetensors"):
        found = read_embeddings(tmp_path / name)
        assert sorted(found.vectors) == ["P1", "P2"], name
        assert np.array_equal(found.vectors["P1"], vectors["P1"]), name


def test_a_missing_or_unknown_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(EsmtuneError, match="no such embedding file; compute one with"):
        read_embeddings(tmp_path / "none.h5")
    (tmp_path / "e.pt").write_bytes(b"")
    with pytest.raises(EsmtuneError, match=r"unknown embedding format '\.pt'"):
        read_embeddings(tmp_path / "e.pt")


# --- the data check -----------------------------------------------------------------------------


def test_the_data_check_names_every_embedding_problem(learnable_data: Path, tmp_path: Path) -> None:
    from esmtune.config import DataConfig

    ids = list(_records(learnable_data))
    vectors = {i: np.random.default_rng(0).normal(size=6).astype(np.float32) for i in ids[2:]}
    vectors[ids[3]] = np.ones(7, np.float32)  # another size
    vectors[ids[4]] = np.full(6, np.nan, np.float32)
    vectors["stranger"] = np.zeros(6, np.float32)
    np.savez(tmp_path / "bad.npz", **vectors)
    report = check_dataset(DataConfig(path=learnable_data, embeddings=tmp_path / "bad.npz"))
    errors = "\n".join(report.errors)
    assert f"no embedding for 2 record(s), e.g. {ids[0]}, {ids[1]}" in errors
    assert "esmtune embed MODEL FASTA --out FILE" in errors
    assert f"1 embedding(s) differ in shape from the rest (1-D of size 6), e.g. {ids[3]}" in errors
    assert f"1 embedding(s) hold NaN or infinite values, e.g. {ids[4]}" in errors
    assert any("1 embedding(s) of ids not in the data, unused" in n for n in report.notes)


def test_per_residue_embeddings_need_a_row_per_residue(
    learnable_data: Path, tmp_path: Path
) -> None:
    from esmtune.config import DataConfig

    records = _records(learnable_data)
    arrays = {i: np.zeros((len(s), 4), np.float32) for i, s in records.items()}
    first = next(iter(records))
    arrays[first] = np.zeros((3, 4), np.float32)
    np.savez(tmp_path / "r.npz", **arrays)
    report = check_dataset(DataConfig(path=learnable_data, embeddings=tmp_path / "r.npz"))
    (error,) = report.errors
    assert f"e.g. {first} (3 rows, {len(records[first])} residues)" in error


# --- training and predicting -------------------------------------------------------------------


def test_a_head_trains_on_embeddings_without_a_backbone(head_run: Path) -> None:
    import json

    metrics = json.loads((head_run / "metrics.json").read_text())
    assert metrics["best_value"] > 0.8  # macro-F1 of three classes: chance is about 0.33
    assert not (head_run / "model/backbone").exists()
    source = json.loads((head_run / "model/embeddings.json").read_text())
    assert source["dim"] == 32 and not source["per_residue"]
    assert source["made_with"]["pooling"] == "mean"


def test_the_run_reads_sequences_through_the_model_that_made_its_embeddings(
    head_run: Path, embedded: Path, learnable_data: Path
) -> None:
    predictor = Predictor.from_run(head_run, device="cpu")
    assert predictor.reads_sequences
    records = _records(learnable_data)
    ids = list(records)[::7]
    from_sequences = predictor.predict({i: records[i] for i in ids})
    from_file = predictor.predict_embeddings(embedded, ids=ids)
    for a, b in zip(from_sequences, from_file, strict=True):
        assert a["id"] == b["id"] and a["label"] == b["label"]
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_predict_evaluate_and_the_refusals_through_the_cli(
    head_run: Path, embedded: Path, tmp_path: Path, capsys
) -> None:
    out = tmp_path / "predictions.tsv"
    assert main(["predict", str(head_run), "--embeddings", str(embedded), "-o", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("id\tlabel\tprobability") and len(lines) == 1 + len(
        read_embeddings(embedded).vectors
    )
    assert main(["evaluate", str(head_run)]) == 0
    assert "test (n=48): accuracy" in capsys.readouterr().out
    assert main(["export", str(head_run), "--format", "hf", "--out", str(tmp_path / "x")]) == 2
    assert "head trained on precomputed embeddings" in capsys.readouterr().err


def test_an_unknown_embedding_model_takes_embeddings_only(
    embedded: Path, tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    vectors = read_embeddings(embedded).vectors
    np.savez(tmp_path / "anonymous.npz", **vectors)  # no metadata: the model is unknown
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "anonymous")
    overrides += [f"data.embeddings={tmp_path / 'anonymous.npz'}", "training.epochs=2"]
    assert main(["train", *overrides]) == 0
    run = tmp_path / "anonymous"
    predictor = Predictor.from_run(run, device="cpu")
    assert not predictor.reads_sequences
    assert len(predictor.predict_embeddings(tmp_path / "anonymous.npz")) == len(vectors)
    with pytest.raises(EsmtuneError, match="--embed-with MODEL"):
        predictor.predict(["MKTAYIAKQR"])
    from esmtune.serve import create_app

    with pytest.raises(EsmtuneError, match="cannot read sequences"):
        create_app(run)
    given = Predictor.from_run(run, device="cpu", embed_with=str(tiny_model_dir))
    assert given.reads_sequences and given.predict(["MKTAYIAKQR"])[0]["label"]
    with pytest.raises(RunDirError, match="precomputed embeddings"):
        from esmtune.model.run_model import load_run

        load_run(run)


def test_per_residue_embeddings_train_an_attention_head(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    out = tmp_path / "residues.h5"
    args = ["embed", str(tiny_model_dir), *_fasta_files(learnable_data), "--out", str(out)]
    assert main([*args, "--pooling", "per-residue"]) == 0
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "attention")
    overrides += [f"data.embeddings={out}", "model.pooling=attention", "training.epochs=2"]
    assert main(["train", *overrides]) == 0
    predictor = Predictor.from_run(tmp_path / "attention", device="cpu")
    assert predictor.reads_sequences  # per-residue states of the recorded model, then its pooling
    records = _records(learnable_data)
    ids = list(records)[:5]
    from_file = predictor.predict_embeddings(out, ids=ids)
    from_sequences = predictor.predict({i: records[i] for i in ids})
    for a, b in zip(from_sequences, from_file, strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-5)


def test_the_baseline_also_fits_the_embeddings(
    embedded: Path, tiny_model_dir: Path, learnable_data: Path, capsys
) -> None:
    args = ["baseline", str(learnable_data), "--embeddings", str(embedded)]
    assert main([*args, "--embed-with", str(tiny_model_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("composition baseline (logistic regression")
    assert lines[1].startswith(
        f"embedding baseline (logistic regression on embeddings in {embedded})"
    )
    assert lines[2].startswith(
        f"embedding baseline (logistic regression on mean-pooled embeddings of {tiny_model_dir})"
    )
    assert lines[3].startswith("always '")
    # The same embeddings, from the file or computed: the same scores.
    assert lines[1].rsplit(": ", 1)[1] == lines[2].rsplit(": ", 1)[1]
    accuracy = float(lines[1].split("accuracy ")[1].split(",")[0])
    assert accuracy > 0.8
