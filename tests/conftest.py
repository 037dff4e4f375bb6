"""Shared fixtures: a tiny ESM2 saved locally, a learnable FASTA dataset, and a trained run.

Everything runs offline on the CPU: the hub is switched off before transformers is imported.
"""

from __future__ import annotations

import os
import random
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Three classes a 2-layer model learns in a few epochs: residue composition differs.
_CLASS_RESIDUES = {
    "Acidic": "DEDEEDSTGANQ",
    "Basic": "KRKRRKSTGANQ",
    "Hydrophobic": "LIVLFVMASTGW",
}


def write_fasta(path: Path, records: list[tuple[str, str]], width: int = 60) -> Path:
    """Write records, wrapping sequences at ``width`` to exercise line joining."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = []
    for name, sequence in records:
        lines.append(f">{name} synthetic")
        lines += [sequence[i : i + width] for i in range(0, len(sequence), width)]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_learnable_dataset(root: Path, per_class: dict[str, int], seed: int = 0) -> Path:
    """``root/{split}/<Label>.fasta`` with composition-coded classes and no duplicates."""
    rng = random.Random(seed)
    for split, count in per_class.items():
        for label, residues in _CLASS_RESIDUES.items():
            records = []
            for i in range(count):
                length = rng.randint(20, 70)
                sequence = "M" + "".join(rng.choice(residues) for _ in range(length))
                records.append((f"{label}_{split}_{i}", sequence))
            write_fasta(root / split / f"{label}.fasta", records)
    return root


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
def learnable_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Train 40 / validation 12 / test 16 sequences per class, three classes."""
    root = tmp_path_factory.mktemp("data")
    return make_learnable_dataset(root, {"train": 40, "validation": 12, "test": 16})


def tiny_overrides(model_dir: Path, data_dir: Path, out_dir: Path, name: str) -> list[str]:
    """Config overrides for a fast run of the tiny model on the learnable data."""
    return [
        f"model.name={model_dir}",
        f"data.path={data_dir}",
        f"output.dir={out_dir}",
        f"output.name={name}",
        "model.head_hidden=[32]",
        "training.epochs=4",
        "training.batch_size=8",
        "training.learning_rate=0.003",
        "training.warmup_ratio=0.0",
    ]
