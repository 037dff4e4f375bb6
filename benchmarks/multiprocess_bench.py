"""How much faster ``esmtune embed`` runs on two processes than on one, measured in one run.

Run:  python benchmarks/multiprocess_bench.py          (t12_35M shape, 192 sequences, about 8 min)
      python benchmarks/multiprocess_bench.py --shape t6_8M --sequences 32 --json multi.json

The same command, ``esmtune embed MODEL proteins.fasta --out FILE``, as a user runs it: once as
one process and once under ``accelerate launch --num_processes 2`` (gloo on the CPU), each
process with one thread (``OMP_NUM_THREADS=1``), so that two processes use two cores where one
uses one. Wall time includes everything a user waits for: starting Python, loading the model,
reading the FASTA, embedding and writing. The model is an ESM2 architecture with random weights
(speed does not depend on the weights; nothing is downloaded), the workload bench.py's (seeded
log-normal lengths around 300 residues, clipped to 30-1,022). One process and two alternate,
``--repeats`` times each, and the best time of each counts, which is the least disturbed by
other work on the machine. A third pair embeds one short sequence: the start-up alone.

The ratio (two processes' time over one's) is below 1 when sharing pays; 0.5 is the limit with
two cores, which start-up, the slowest process's share and the gather keep it above.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import workload
from transformers import EsmForMaskedLM

from esmtune.architectures import ESM2_ARCHITECTURES, Esm2Architecture
from esmtune.data.embedding_files import read_embeddings
from esmtune.model.backbone import build_esm2_config, esm2_tokenizer

SHAPES: dict[str, Esm2Architecture] = {
    "tiny": Esm2Architecture(2, 32, 4),  # for a quick check that the script works
    "t6_8M": ESM2_ARCHITECTURES["esm2_t6_8M_UR50D"],
    "t12_35M": ESM2_ARCHITECTURES["esm2_t12_35M_UR50D"],
    "t30_150M": ESM2_ARCHITECTURES["esm2_t30_150M_UR50D"],
}
LAUNCH = [
    "-m", "accelerate.commands.launch", "--num_processes", "2", "--num_machines", "1",
    "--mixed_precision", "no", "--dynamo_backend", "no", "--multi_gpu", "--main_process_port", "0",
]  # fmt: skip


def save_model(shape: Esm2Architecture, folder: Path) -> Path:
    """An ESM2 of ``shape`` with seeded random weights, saved as a hub checkpoint is."""
    torch.manual_seed(0)
    EsmForMaskedLM(build_esm2_config(*shape)).save_pretrained(folder)
    esm2_tokenizer().save_pretrained(folder)
    return folder


def write_fasta(sequences: list[str], path: Path) -> Path:
    path.write_text("".join(f">p{i}\n{s}\n" for i, s in enumerate(sequences)))
    return path


def embed(processes: int, model: Path, fasta: Path, out: Path) -> float:
    """Wall seconds of ``esmtune embed`` on ``processes`` processes of one thread each."""
    start = [sys.executable, *(LAUNCH if processes > 1 else [])]
    command = [*start, "-m", "esmtune", "embed", str(model), str(fasta), "--out", str(out),
               "--overwrite"]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    started = time.perf_counter()
    subprocess.run(command, check=True, capture_output=True, env=environment)
    return time.perf_counter() - started


def best_times(model: Path, fasta: Path, folder: Path, repeats: int) -> dict[int, float]:
    """Best wall time of one and of two processes, run alternately."""
    times: dict[int, list[float]] = {1: [], 2: []}
    for _ in range(repeats):
        for processes in (1, 2):
            times[processes].append(embed(processes, model, fasta, folder / f"{processes}.npz"))
    return {processes: min(seconds) for processes, seconds in times.items()}


def measure(shape: str, count: int, repeats: int, seed: int) -> dict[str, Any]:
    load_before = os.getloadavg()[0]  # other work on the machine takes cores from two processes
    sequences = workload(count, seed)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        model = save_model(SHAPES[shape], folder / "model")
        print(f"{shape}: start-up ...", file=sys.stderr)
        startup = best_times(model, write_fasta(sequences[:1], folder / "one.fasta"), folder,
                             repeats)  # fmt: skip
        print(f"{shape}: {count} sequences ...", file=sys.stderr)
        whole = best_times(model, write_fasta(sequences, folder / "all.fasta"), folder, repeats)
        one, two = (read_embeddings(folder / f"{n}.npz").vectors for n in (1, 2))
        difference = max(float(np.abs(one[i] - two[i]).max()) for i in one)
    residues = sum(len(s) for s in sequences)
    return {
        "shape": shape,
        "architecture": SHAPES[shape]._asdict(),
        "sequences": count,
        "residues": residues,
        "median_length": float(np.median([len(s) for s in sequences])),
        "repeats": repeats,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "one_process_s": whole[1],
        "two_processes_s": whole[2],
        "ratio": whole[2] / whole[1],
        "startup_one_process_s": startup[1],
        "startup_two_processes_s": startup[2],
        "ratio_without_startup": (whole[2] - startup[2]) / (whole[1] - startup[1]),
        "one_process_residues_per_s": residues / whole[1],
        "two_processes_residues_per_s": residues / whole[2],
        "max_abs_difference": difference,
        "load_average_before_after": [load_before, os.getloadavg()[0]],
    }


def table(r: dict[str, Any]) -> str:
    return "\n".join(
        [
            f"esmtune embed, ESM2 {r['shape']} shape (random weights), {r['sequences']} sequences "
            f"({r['residues']:,} residues, median {r['median_length']:.0f}); one thread per "
            f"process, {r['cores']} cores, torch {r['torch']}; best of {r['repeats']}",
            "",
            f"{'':26} {'1 process':>10} {'2 processes':>12} {'ratio':>7}",
            f"{'wall seconds':26} {r['one_process_s']:10.1f} {r['two_processes_s']:12.1f} "
            f"{r['ratio']:7.2f}",
            f"{'start-up seconds':26} {r['startup_one_process_s']:10.1f} "
            f"{r['startup_two_processes_s']:12.1f} "
            f"{r['startup_two_processes_s'] / r['startup_one_process_s']:7.2f}",
            f"{'without start-up':26} "
            f"{r['one_process_s'] - r['startup_one_process_s']:10.1f} "
            f"{r['two_processes_s'] - r['startup_two_processes_s']:12.1f} "
            f"{r['ratio_without_startup']:7.2f}",
            f"{'residues/s':26} {r['one_process_residues_per_s']:10,.0f} "
            f"{r['two_processes_residues_per_s']:12,.0f}",
            "",
            f"embeddings of two processes vs one: largest difference {r['max_abs_difference']:.1e}; "
            "load average (1 min) before and after: {:.1f}, {:.1f}".format(
                *r["load_average_before_after"]
            ),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--shape", choices=list(SHAPES), default="t12_35M")
    parser.add_argument("--sequences", type=int, default=192, help="[192]")
    parser.add_argument("--repeats", type=int, default=3, help="runs of each, best counts [3]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    results = measure(args.shape, args.sequences, args.repeats, args.seed)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
