"""Shared fixtures: a tiny ESM2 saved locally, a learnable FASTA dataset, and the trained runs
several modules read, each trained once per session.

Everything runs offline on the CPU: the hub is switched off before transformers is imported.
The trained runs are shared: a test that changes a run (resumes it, evaluates into it, damages
it) works on a copy. Plain helpers are in ``tests/helpers.py``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest
from tests.helpers import (
    FULL_RUN_CHECKPOINTS,
    FULL_RUN_SETTINGS,
    LORA_RUN_SETTINGS,
    make_learnable_dataset,
    tiny_overrides,
)

if TYPE_CHECKING:
    from esmtune.predict import Predictor


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer ESM2 with random weights, saved like a hub checkpoint (config, weights, vocab)."""
    import torch
    from transformers import EsmForMaskedLM

    from esmtune.model.backbone import build_esm2_config, esm2_tokenizer

    folder = tmp_path_factory.mktemp("tiny_esm2")
    config = build_esm2_config(layers=2, hidden=32, heads=4)
    torch.manual_seed(0)
    EsmForMaskedLM(config).save_pretrained(folder)
    esm2_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tokenizer():
    """The ESM2 tokenizer esmtune builds (the same vocabulary as the tiny model's)."""
    from esmtune.model.backbone import esm2_tokenizer

    return esm2_tokenizer()


@pytest.fixture(scope="session")
def learnable_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train 40 / validation 12 / test 16 sequences per class, three classes."""
    root = tmp_path_factory.mktemp("data")
    return make_learnable_dataset(root, {"train": 40, "validation": 12, "test": 16})


def _train(model_dir: Path, data: Path, out: Path, name: str, *settings: str) -> Path:
    from esmtune.cli import main

    assert main(["train", *tiny_overrides(model_dir, data, out, name), *settings]) == 0
    return out / name


@pytest.fixture(scope="session")
def lora_run(tiny_model_dir: Path, learnable_data: Path, tmp_path_factory) -> Path:
    """Multiclass, LoRA (the default mode), 2 epochs, read in windows of 80 residues.

    What the serve tests answer from, the long-sequence memory test streams through, and the
    file-mode tests inspect. Read it; copy it before changing it.
    """
    out = tmp_path_factory.mktemp("lora_runs")
    return _train(tiny_model_dir, learnable_data, out, "lora", *LORA_RUN_SETTINGS)


@pytest.fixture(scope="session")
def full_run(tiny_model_dir: Path, learnable_data: Path, tmp_path_factory) -> Path:
    """Multiclass, full fine-tuning, 2 epochs, a checkpoint after each (both kept).

    What the storage tests resume and damage (copies of it) and the embedding tests read a
    fine-tuned backbone from. Read it; copy it before changing it.
    """
    out = tmp_path_factory.mktemp("full_runs")
    run = _train(tiny_model_dir, learnable_data, out, "full", *FULL_RUN_SETTINGS)
    assert tuple(sorted(p.name for p in (run / "checkpoints").iterdir())) == FULL_RUN_CHECKPOINTS
    return run


@pytest.fixture(scope="session")
def lora_predictor(lora_run: Path) -> Predictor:
    """esmtune's Predictor on ``lora_run``: the answers a server over that run must give."""
    from esmtune.predict import Predictor

    return Predictor.from_run(lora_run, device="cpu")
