"""Two-process training on the CPU (gloo) through `accelerate launch`, as on a multi-GPU node."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors.torch import load_file
from tests.helpers import ONE_MACHINE, launch_two, tiny_overrides

pytestmark = pytest.mark.multiprocess


def test_two_process_training_completes_and_learns(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "ddp")
    overrides += [
        "finetune.mode=partial",  # progressive unfreezing: the hardest case under DDP
        "finetune.unfreeze_every_epochs=2",
        "training.gradient_accumulation=2",
        "training.keep_checkpoints=10",
    ]
    command = [*launch_two(*ONE_MACHINE), "-m", "esmtune", "train", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    run = tmp_path / "ddp"
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["processes"] == 2
    checkpoints = sorted((run / "checkpoints").iterdir())
    assert {p.name for p in checkpoints[-1].iterdir()} >= {"rng-0.safetensors", "rng-1.safetensors"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 4
    assert metrics["best_value"] > 0.6
    # Layer 0 stays at its pretrained values until epoch 3 (first two epochs: nothing unfrozen).
    from transformers import EsmModel

    pretrained = EsmModel.from_pretrained(tiny_model_dir, add_pooling_layer=False).state_dict()
    second_epoch = load_file(checkpoints[1] / "trainable.safetensors")
    layer_keys = [k for k in second_epoch if ".layer." in k]
    assert layer_keys and all(
        (second_epoch[k] == pretrained[k.removeprefix("backbone.")]).all() for k in layer_keys
    )


def test_two_process_frozen_training_shares_one_embedding_cache(
    tiny_model_dir: Path, learnable_data: Path, tmp_path: Path
) -> None:
    """Each process embeds and writes its share of the cache; both read all and train the head."""
    overrides = tiny_overrides(tiny_model_dir, learnable_data, tmp_path, "frozen")
    overrides += ["finetune.mode=frozen", f"finetune.cache_dir={tmp_path / 'cache'}"]
    overrides += ["data.measure_identity=true"]  # (tiny_overrides turns the search off)
    command = [*launch_two(*ONE_MACHINE), "-m", "esmtune", "train", *overrides]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    mmseqs, calls = shutil.which("mmseqs"), tmp_path / "mmseqs-calls.txt"
    if mmseqs is not None:  # a logging stand-in: the data check's search runs on one process
        logged = tmp_path / "mmseqs"
        logged.write_text(f'#!/bin/sh\necho "$1" >> {calls}\nexec {mmseqs} "$@"\n')
        logged.chmod(0o755)
        env["ESMTUNE_MMSEQS"] = str(logged)
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "train: 120 embedding(s) computed" in result.stdout + result.stderr
    if mmseqs is not None:
        assert calls.read_text().split().count("easy-search") == 1
    (entry,) = (tmp_path / "cache").iterdir()
    assert len(list(entry.glob("shard-*.safetensors"))) == 4  # train and validation, per process
    metrics = json.loads((tmp_path / "frozen" / "metrics.json").read_text())
    assert len(metrics["history"]) == 4 and metrics["best_value"] > 0.6
