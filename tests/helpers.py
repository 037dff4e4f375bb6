"""Plain helpers the test modules share: data writers, config overrides, a tiny model, a server.

Fixtures live in ``conftest.py``; what is here is called, not requested, and every module
imports it the same way: ``from tests.helpers import ...``. Nothing here imports torch or the
server stack at import time, so collecting a test module stays cheap.
"""

from __future__ import annotations

import os
import random
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from esmtune.config import Pooling, load_config

if TYPE_CHECKING:
    import numpy as np
    import torch

    from esmtune.model.classifier import SequenceClassifier

ROOT = Path(__file__).resolve().parents[1]

# --- data ------------------------------------------------------------------------------------

# Three classes a 2-layer model learns in a few epochs: residue composition differs.
_CLASS_RESIDUES = {
    "Acidic": "DEDEEDSTGANQ",
    "Basic": "KRKRRKSTGANQ",
    "Hydrophobic": "LIVLFVMASTGW",
}

# The 20 standard residues, then the ambiguous / rare letters ESM2 also has tokens for.
RESIDUES = "ACDEFGHIKLMNPQRSTVWYXBZUO"


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


# FLIP's split headers on labels.fasta (see esmtune.data.residue_layouts).
FLIP_SPLITS = {"train": "SET=train VALIDATION=False", "validation": "SET=train VALIDATION=True",
               "test": "SET=test"}  # fmt: skip
FLIP_LETTERS = "ADEKLRSVGN"


def write_flip(
    root: Path,
    counts: dict[str, int],
    target: Callable[[str, int], str | float],
    regression: bool,
    seed: int = 0,
    garbage: int = 0,
) -> Path:
    """A FLIP folder of random chains with per-residue targets and ~10% of residues masked.

    ``target(sequence, i)`` gives residue ``i``'s class (or value, with ``regression``). Masked
    residues carry garbage drawn with ``garbage`` as the seed: the chains and masks are the same
    whatever ``garbage`` is, and only the masked targets differ.
    """
    rng, junk = random.Random(seed), random.Random(1000 + garbage)
    sequences, labels, masks = [], [], []
    for split, count in counts.items():
        for n in range(count):
            name = f"{split}{n}"
            sequence = "".join(rng.choice(FLIP_LETTERS) for _ in range(rng.randint(20, 45)))
            mask = "".join("0" if rng.random() < 0.1 else "1" for _ in sequence)
            if regression:
                values = [
                    float(target(sequence, i)) if flag == "1" else junk.uniform(-9, 9)
                    for i, flag in enumerate(mask)
                ]
                text = ",".join(f"{v:.4f}" for v in values)
            else:
                text = "".join(
                    str(target(sequence, i)) if flag == "1" else junk.choice("CHE")
                    for i, flag in enumerate(mask)
                )
            sequences.append(f">{name}\n{sequence}\n")
            labels.append(f">{name} {FLIP_SPLITS[split]}\n{text}\n")
            masks.append(f">{name}\n{mask}\n")
    root.mkdir(parents=True, exist_ok=True)
    (root / "sequences.fasta").write_text("".join(sequences))
    (root / "labels.fasta").write_text("".join(labels))
    (root / "mask.fasta").write_text("".join(masks))
    return root


def random_protein(rng: random.Random, length: int, letters: str = RESIDUES) -> str:
    return "".join(rng.choice(letters) for _ in range(length))


# --- homology (MMseqs2) ------------------------------------------------------------------------

STANDARD_RESIDUES = RESIDUES[:20]
requires_mmseqs = pytest.mark.skipif(
    shutil.which("mmseqs") is None,
    reason="MMseqs2 is not installed (apt install mmseqs2; .ci/run installs it)",
)


def point_mutant(sequence: str, identity: float, rng: random.Random) -> str:
    """``sequence`` with ``round((1 - identity) * length)`` residues replaced by other residues.

    Substitutions only, so the alignment to the original is gapless and its identity is
    ``identity`` (a little more where a local alignment trims a mutated end).
    """
    residues = list(sequence)
    for position in rng.sample(range(len(residues)), round(len(residues) * (1 - identity))):
        residues[position] = rng.choice(STANDARD_RESIDUES.replace(residues[position], ""))
    return "".join(residues)


def families(
    rng: random.Random, count: int, members: int, identity: float, length: int = 150
) -> list[list[str]]:
    """``count`` families of ``members`` sequences, each a point mutant of its own ancestor.

    Members of a family are about ``identity`` identical to the ancestor (less to each other);
    different families are unrelated random sequences.
    """
    found = []
    for _ in range(count):
        ancestor = random_protein(rng, length, STANDARD_RESIDUES)
        found.append([point_mutant(ancestor, identity, rng) for _ in range(members)])
    return found


# --- runs ------------------------------------------------------------------------------------


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
        # MMseqs2's search costs seconds even on tiny data; tests/test_leakage.py trains with it.
        "data.measure_identity=false",
    ]


# What conftest's shared runs add to ``tiny_overrides``; tests that train a run of the same kind
# (to compare with it, or into a folder of their own) take the settings from here.
LORA_RUN_MAX_LENGTH = 80  # short, so that windowing is cheap to test
LORA_RUN_SETTINGS = ["training.epochs=2", f"data.max_length={LORA_RUN_MAX_LENGTH}"]
FULL_RUN_SETTINGS = ["finetune.mode=full", "training.epochs=2", "training.keep_checkpoints=2"]
# full_run's checkpoints: one after each epoch.
FULL_RUN_CHECKPOINTS = ("epoch-0001-step-00000015", "epoch-0002-step-00000030")


def markdown_commands(text: str, blocks: bool = True, inline: bool = True) -> list[list[str]]:
    """Every ``esmtune ...`` command in Markdown, as argv without the program name.

    ``blocks``: the lines of fenced ``bash`` blocks (joined where they end in a backslash,
    comments dropped); ``inline``: full commands in inline code (tables and prose).
    """
    lines = []
    if blocks:
        found = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
        joined = [re.sub(r"\\\n\s*", " ", block) for block in found]
        lines += [line.split("#")[0].strip() for block in joined for line in block.splitlines()]
    if inline:
        prose = re.sub(r"```.*?```", "", text, flags=re.DOTALL)  # not code spans inside blocks
        lines += re.findall(r"`(esmtune [a-z]+ [^`]+)`", prose)
    return [shlex.split(line)[1:] for line in lines if line.startswith("esmtune ")]


def readme_commands() -> list[list[str]]:
    """Every ``esmtune ...`` command the README shows, as argv without the program name."""
    return markdown_commands((ROOT / "README.md").read_text())


# --- a model without a run -------------------------------------------------------------------

ATOL = 1e-5


def tiny_model(model_dir: Path, pooling: Pooling = Pooling.MEAN) -> SequenceClassifier:
    """The tiny ESM2 with a head, in eval mode (no dropout), seeded so heads are reproducible."""
    import torch

    from esmtune.model.classifier import build_model

    config = load_config(
        None,
        [
            f"model.name={model_dir}",
            f"model.pooling={pooling.value}",
            "model.head_hidden=[8]",
            "finetune.mode=frozen",
        ],
    )
    torch.manual_seed(0)
    model, _ = build_model(config, num_outputs=3)
    return model.eval()


def logits_as_array(logits: torch.Tensor) -> np.ndarray:
    return logits.float().cpu().numpy()


# --- esmtune serve ---------------------------------------------------------------------------

# Requests the serve tests send: one sequence of each class, and one that needs windows.
ACID = "MDEDEEDDEEDSDEDEEDDEEDEDDE"
BASE = "MKRKRRKKRKRRKKRKRRKSTGK"
OILY = "MLIVLFVMLIVLIVLWVLLF"
LONG = "M" + "KRKRRKSTGANQ" * 20  # 241 residues: four windows of LORA_RUN_MAX_LENGTH (80)


def free_port() -> int:
    """A loopback port no one listens on now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def launch_two(*options: str) -> list[str]:
    """`accelerate launch` of two CPU processes (gloo) on a free port, before the program.

    Port 0 lets the rendezvous pick one: the default 29500 may be held by another launch.
    """
    return [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
        "--mixed_precision", "no", "--main_process_port", "0", *options,
    ]  # fmt: skip


# torchrun-style launch options for processes on one machine (no GPU, so gloo on CPUs).
ONE_MACHINE = ("--num_machines", "1", "--dynamo_backend", "no", "--multi_gpu")


@contextmanager
def serve_process(run_dir: Path, *options: str) -> Iterator[tuple[subprocess.Popen, str]]:
    """`esmtune serve` starting on a free loopback port, and its base URL; stopped on exit."""
    port = free_port()
    command = [sys.executable, "-m", "esmtune", "serve", str(run_dir), "--port", str(port)]
    command += ["--device", "cpu", "--log-level", "warning", *options]
    process = subprocess.Popen(command, env=os.environ.copy())
    try:
        yield process, f"http://127.0.0.1:{port}"
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def wait_until_healthy(process: subprocess.Popen, base: str, seconds: float = 60) -> None:
    """Poll /health until the server answers (it loads the model first)."""
    import httpx

    deadline = time.monotonic() + seconds
    while True:
        assert process.poll() is None, "the server exited"
        try:
            if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, f"the server did not answer /health in {seconds} s"
        time.sleep(0.1)
