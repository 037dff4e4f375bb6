"""Frozen backbone = compute once: the embedding cache, and `esmtune embed` in every format."""

from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tests.helpers import tiny_overrides, write_fasta

from esmtune.cli import main
from esmtune.config import load_config
from esmtune.embeddings import EmbeddingCache
from esmtune.model.classifier import SequenceClassifier, build_model


def _frozen_run(
    model_dir: Path, data: Path, out: Path, name: str, cache: Path, *extra: str
) -> Path:
    overrides = tiny_overrides(model_dir, data, out, name)
    overrides += ["finetune.mode=frozen", f"finetune.cache_dir={cache}", *extra]
    assert main(["train", *overrides]) == 0
    return out / name


@pytest.fixture
def backbone_calls(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts of sequences the backbone reads, one entry per call."""
    calls: list[int] = []
    original = SequenceClassifier.residue_states

    def counting(self, input_ids, *args, **kwargs):
        calls.append(len(input_ids))
        return original(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(SequenceClassifier, "residue_states", counting)
    return calls


def test_cached_frozen_training_matches_uncached_and_skips_the_backbone(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, backbone_calls: list[int]
) -> None:
    cache = tmp_path / "cache"
    cached = _frozen_run(tiny_model_dir, learnable_data, tmp_path, "cached", cache)
    # 120 train + 36 validation sequences, each read once for 4 epochs of training.
    assert sum(backbone_calls) == 156
    backbone_calls.clear()
    uncached = _frozen_run(
        tiny_model_dir, learnable_data, tmp_path, "uncached", cache,
        "finetune.cache_embeddings=false",
    )  # fmt: skip
    assert sum(backbone_calls) == 4 * (120 + 36)  # every epoch, train and validation
    backbone_calls.clear()
    again = _frozen_run(tiny_model_dir, learnable_data, tmp_path, "again", cache)
    assert backbone_calls == []  # everything came from the cache
    reference = load_file(uncached / "model/weights.safetensors")
    for run in (cached, again):
        weights = load_file(run / "model/weights.safetensors")
        assert weights.keys() == reference.keys()
        for name, tensor in reference.items():
            assert torch.allclose(weights[name], tensor, atol=1e-5), name
    history = json.loads((uncached / "metrics.json").read_text())["history"]
    for got, expected in zip(
        json.loads((again / "metrics.json").read_text())["history"], history, strict=True
    ):
        assert got == pytest.approx(expected, abs=1e-5)


def test_a_changed_dataset_reuses_what_is_cached(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path, backbone_calls: list[int]
) -> None:
    cache = tmp_path / "cache"
    _frozen_run(tiny_model_dir, learnable_data, tmp_path, "first", cache)
    grown = tmp_path / "grown"
    for path in learnable_data.rglob("*.fasta"):
        target = grown / path.relative_to(learnable_data)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(path.read_text())
    write_fasta(grown / "train" / "Basic.fasta", [("extra1", "MKRKRKKRRKRST"), ("extra2", "MRRKK")])
    backbone_calls.clear()
    _frozen_run(tiny_model_dir, grown, tmp_path, "second", cache)
    # Basic.fasta was replaced by two new sequences: only those are computed.
    assert sum(backbone_calls) == 2


@pytest.mark.parametrize(
    "change",
    ["model.pooling=max", "data.max_length=32", "data.long_sequences=window", "other-model"],
)
def test_a_cache_entry_is_keyed_by_model_pooling_and_length(
    tiny_model_dir: Path, tmp_path: Path, change: str
) -> None:
    def entry(*overrides: str, seed: int = 0) -> Path:
        config = load_config(None, [f"model.name={tiny_model_dir}", "finetune.mode=frozen",
                                    *overrides])  # fmt: skip
        torch.manual_seed(seed)
        model, _ = build_model(config, 2)
        return EmbeddingCache.for_run(tmp_path, model, config).folder

    base = entry()
    assert entry() == base  # same settings, same entry
    if change == "other-model":
        # A random-init backbone is identified by its weights.
        assert entry("model.pretrained=false", seed=1) != entry("model.pretrained=false", seed=2)
    else:
        assert entry(change) != base


# --- esmtune embed ---------------------------------------------------------------------------


@pytest.fixture
def fasta(tmp_path: Path) -> Path:
    return write_fasta(
        tmp_path / "in.fasta",
        [("short", "MKTAYIAKQR"), ("long/1", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ" * 2)],
    )


def _direct(model_dir: Path, sequences: list[str], pooling: str) -> list[torch.Tensor]:
    """Embeddings computed by hand: the backbone alone on each whole sequence."""
    config = load_config(None, [f"model.name={model_dir}", "finetune.mode=frozen"])
    model, tokenizer = build_model(config, 1)
    model.eval()
    rows = []
    with torch.no_grad():
        for sequence in sequences:
            inputs = tokenizer([sequence], return_tensors="pt")
            states = model.backbone(**inputs).last_hidden_state[0]
            residues = states[1:-1]
            rows.append(
                {
                    "mean": residues.mean(0),
                    "max": residues.max(0).values,
                    "cls": states[0],
                    "per-residue": residues,
                }[pooling]
            )
    return rows


@pytest.mark.parametrize("suffix", [".h5", ".npz", ".safetensors"])
@pytest.mark.parametrize("pooling", ["mean", "per-residue"])
def test_embed_writes_every_format_with_ids(
    tiny_model_dir: Path, fasta: Path, tmp_path: Path, suffix: str, pooling: str
) -> None:
    out = tmp_path / f"embeddings{suffix}"
    assert main(["embed", str(tiny_model_dir), str(fasta), "--pooling", pooling,
                 "--out", str(out)]) == 0  # fmt: skip
    ids = ["short", "long/1"]
    sequences = ["MKTAYIAKQR", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ" * 2]
    expected = _direct(tiny_model_dir, sequences, pooling)
    if suffix == ".h5":
        with h5py.File(out) as handle:
            assert list(handle["ids"].asstr()[:]) == ids
            assert handle.attrs["pooling"] == pooling
            if pooling == "mean":
                got = list(torch.from_numpy(handle["embeddings"][:]))
            else:
                got = [torch.from_numpy(handle["per_residue"][i.replace("/", "%2F")][:])
                       for i in ids]  # fmt: skip
    elif suffix == ".npz":
        arrays = np.load(out)
        assert arrays["ids"].tolist() == ids
        got = (
            list(torch.from_numpy(arrays["embeddings"]))
            if pooling == "mean"
            else [torch.from_numpy(arrays[i]) for i in ids]
        )
    else:
        with safe_open(str(out), framework="pt") as handle:
            assert json.loads(handle.metadata()["ids"]) == ids
            got = (
                list(handle.get_tensor("embeddings"))
                if pooling == "mean"
                else [handle.get_tensor(i) for i in ids]
            )
    assert len(got) == 2
    for row, reference in zip(got, expected, strict=True):
        assert row.shape == reference.shape
        assert torch.allclose(row, reference, atol=1e-5)


def test_embed_reads_long_sequences_in_windows_and_says_so(
    tiny_model_dir: Path, fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "e.npz"
    assert main(["embed", str(tiny_model_dir), str(fasta), "--max-length", "20",
                 "--pooling", "per-residue", "--out", str(out)]) == 0  # fmt: skip
    assert "1 sequence(s) over 20 residues: overlapping windows" in capsys.readouterr().err
    assert np.load(out)["long/1"].shape[0] == 66  # every residue, not the first 20


def test_embed_refuses_to_overwrite_and_unknown_formats(
    tiny_model_dir: Path, fasta: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "e.npz"
    out.write_text("keep me")
    assert main(["embed", str(tiny_model_dir), str(fasta), "--out", str(out)]) == 2
    assert "exists" in capsys.readouterr().err and out.read_text() == "keep me"
    assert main(["embed", str(tiny_model_dir), str(fasta), "--out", str(tmp_path / "e.csv")]) == 2
    assert ".h5, .npz or .safetensors" in capsys.readouterr().err


def test_embed_from_a_run_uses_its_trained_backbone(
    tiny_model_dir: Path, full_run: Path, fasta: Path, tmp_path: Path
) -> None:
    from esmtune.data.batching import EncodedDataset, encode
    from esmtune.embeddings import pooled_embeddings
    from esmtune.model.run_model import load_run

    out = tmp_path / "e.safetensors"
    assert main(["embed", str(full_run), str(fasta), "--out", str(out)]) == 0
    loaded = load_run(full_run)
    sequences = ["MKTAYIAKQR", "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ" * 2]
    windows = encode(loaded.tokenizer, sequences, loaded.config.data.max_length, "window")
    expected = pooled_embeddings(loaded.model, EncodedDataset(windows), 1, None)
    got = load_file(out)["embeddings"]
    assert torch.allclose(got, expected, atol=1e-5)
    untrained = _direct(tiny_model_dir, sequences, "mean")
    assert not torch.allclose(got[0], untrained[0], atol=1e-3)  # fine-tuning moved it
