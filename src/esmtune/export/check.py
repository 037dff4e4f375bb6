"""The check every export gets before it is handed over: same answers as the run, and how fast.

Each runtime an export offers (torch for ``hf``; onnxruntime fp32 and int8 for ``onnx``)
predicts the same sample of sequences as the run itself. The export records how often it gave
the run's labels, the largest probability difference and its speed (``export.json``), and names
the fastest runtime that kept the labels as the one ``predict`` and ``serve`` use by default.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from esmtune.data.check import check_dataset, sequence_problem
from esmtune.errors import EsmtuneError
from esmtune.model.interface import RuntimeModel
from esmtune.model.loaded import LoadedRun
from esmtune.predict import Predictor

__all__ = ["CHECK_SEQUENCES", "LABEL_AGREEMENT", "check_runtimes", "check_sample"]

# Sequences an export compares its runtimes on by default (parity with the run, speed).
CHECK_SEQUENCES = 32

# A runtime "keeps the labels" when it agrees with the run on at least this share of sequences.
LABEL_AGREEMENT = 0.99
# Amino-acid frequencies of UniProtKB/Swiss-Prot (per cent), for synthetic check sequences.
_RESIDUES = "ARNDCQEGHILKMFPSTWYV"
_FREQUENCIES = np.array(
    [8.25, 5.53, 4.06, 5.45, 1.37, 3.93, 6.75, 7.07, 2.27, 5.96,
     9.66, 5.84, 2.42, 3.86, 4.70, 6.56, 5.34, 1.08, 2.92, 6.87]
)  # fmt: skip


def check_sample(
    loaded: LoadedRun[RuntimeModel], count: int, seed: int = 0
) -> tuple[list[str], str]:
    """Up to ``count`` sequences to compare runtimes on, and where they came from.

    The run's own validation (else test) split when its data can still be read from here, so
    the check sees the sequences the model is for; otherwise seeded synthetic proteins with
    natural residue frequencies.
    """
    rng = np.random.default_rng(seed)
    try:
        splits = check_dataset(loaded.config.data, loaded.task.task).splits
    except (EsmtuneError, OSError):
        splits = {}
    for split in ("validation", "test"):
        records = [r for r in splits.get(split, []) if sequence_problem(r) is None]
        if records:
            chosen = rng.choice(len(records), size=min(count, len(records)), replace=False)
            source = f"{split} split of {loaded.config.data.path}"
            return [records[i].sequence for i in sorted(chosen)], source
    top = max(min(loaded.config.data.max_length, 400), 30)
    lengths = rng.integers(min(30, top), top + 1, size=count)
    weights = _FREQUENCIES / _FREQUENCIES.sum()
    sequences = ["".join(rng.choice(list(_RESIDUES), size=n, p=weights)) for n in lengths]
    return sequences, "synthetic proteins (the run's data was not readable from here)"


def _timed_outputs(predictor: Predictor, sequences: list[str]) -> tuple[np.ndarray, float]:
    """Outputs and residues per second, after a warm-up call (first-call setup not counted)."""
    predictor.outputs(sequences[:2])
    start = time.perf_counter()
    outputs = predictor.outputs(sequences)
    seconds = time.perf_counter() - start
    return outputs, sum(map(len, sequences)) / max(seconds, 1e-9)


def check_runtimes(
    reference: LoadedRun[RuntimeModel],
    candidates: dict[str, tuple[LoadedRun[RuntimeModel], list[Path]]],
    count: int,
) -> dict[str, Any]:
    """Compare each candidate runtime with the run on a sample; pick the default.

    Args:
        reference: The run's own model (torch, CPU).
        candidates: Runtime name -> (the export loaded that way, the files it reads).
        count: Sequences to check on; 0 skips the check (the first candidate is the default).

    Returns:
        ``export.json``'s ``check`` and ``default_runtime`` entries.
    """
    names = list(candidates)
    if count <= 0:
        return {"check": None, "default_runtime": names[0]}
    sequences, source = check_sample(reference, count)
    bar = tqdm(total=len(names) + 1, desc=f"checking the export on {len(sequences)} sequences",
               unit="runtime", leave=False)  # fmt: skip
    expected, speed = _timed_outputs(Predictor(reference, device="cpu"), sequences)
    bar.update()
    runtimes: dict[str, Any] = {"run": {"residues_per_second": round(speed, 1)}}
    for name, (loaded, files) in candidates.items():
        outputs, speed = _timed_outputs(Predictor(loaded, device="cpu"), sequences)
        bar.update()
        runtimes[name] = {
            "residues_per_second": round(speed, 1),
            "label_agreement": reference.task.agreement(expected, outputs),
            "max_abs_difference": reference.task.largest_difference(expected, outputs),
            "file_bytes": sum(path.stat().st_size for path in files if path.is_file()),
        }
    bar.close()
    kept = [n for n in names if runtimes[n]["label_agreement"] >= LABEL_AGREEMENT]
    default = max(kept, key=lambda n: runtimes[n]["residues_per_second"]) if kept else names[0]
    check = {
        "sequences": len(sequences),
        "residues": sum(map(len, sequences)),
        "source": source,
        "runtimes": runtimes,
    }
    return {"check": check, "default_runtime": default}
