"""A frozen backbone on a per-residue task: every residue's state computed once, kept as float16.

The second run on the same backbone and data never runs the backbone, trains to the same weights
as the first, and both agree with a run that reads the backbone every batch up to the float16
rounding of the states.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file
from tests.test_residue_tasks import MAX_LENGTH, write_flip

from esmtune.rundir import WEIGHTS_FILE


def _frozen_run(model_dir: Path, data: Path, out: Path, name: str, *settings: str) -> Path:
    from tests.helpers import tiny_overrides

    from esmtune.cli import main

    overrides = tiny_overrides(model_dir, data, out, name)
    overrides += [f"data.max_length={MAX_LENGTH}", "data.long_sequences=window"]
    overrides += ["task=residue_classification", "finetune.mode=frozen", "training.epochs=2"]
    assert main(["train", *overrides, *settings]) == 0
    return out / name


def test_residue_states_are_computed_once_and_read_from_disk(
    tiny_model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = write_flip(tmp_path / "data", {"train": 24, "validation": 6}, regression=False)
    cache = f"finetune.cache_dir={tmp_path / 'cache'}"
    first = _frozen_run(tiny_model_dir, data, tmp_path / "runs", "first", cache)
    said = capsys.readouterr().out
    assert "train: residue states of 24 sequence(s) computed, 0 read from the cache" in said
    assert "float16" in said and "KiB on disk" in said

    shards = sorted((tmp_path / "cache").rglob("shard-*.safetensors"))
    stored = {}
    for shard in shards:
        with safe_open(str(shard), framework="pt") as handle:
            stored.update({key: handle.get_tensor(key) for key in handle.keys()})  # noqa: SIM118
    assert len(stored) == 30 and all(t.dtype == torch.float16 for t in stored.values())
    lengths = sorted(len(t) for t in stored.values())
    assert max(lengths) > MAX_LENGTH  # long chains stitched from windows, every residue kept
    assert all(t.shape[1] == 32 for t in stored.values())  # the tiny model's hidden size

    second = _frozen_run(tiny_model_dir, data, tmp_path / "runs", "second", cache)
    assert "train: residue states of 0 sequence(s) computed, 24 read" in capsys.readouterr().out
    a, b = load_file(first / WEIGHTS_FILE), load_file(second / WEIGHTS_FILE)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    live = _frozen_run(
        tiny_model_dir, data, tmp_path / "runs", "live", "finetune.cache_embeddings=false"
    )
    c = load_file(live / WEIGHTS_FILE)
    assert max(float((a[k] - c[k]).abs().max()) for k in a) < 1e-2  # float16 states only
