"""Long sequences: all windows in one forward pass (the old way) against passes within the budget.

Run:  python benchmarks/long_sequences.py                  (t6_8M shape, about 3 min on 2 cores)
      python benchmarks/long_sequences.py --lengths 4000 16000 64000 --json long.json

A sequence longer than the context (1,022 residues) is read as windows overlapping by half. Read
all at once, a 16,000-residue sequence is one batch of 32 windows of 1,024 tokens, whose
activations (attention above all) grow with every window; esmtune reads the windows a few per
pass within the token budget, stitches them as they come and pools as a streaming reduction.
Each measurement runs in its own process, because peak resident memory is per process. The
model is the ESM2 t6_8M architecture with random weights (speed and memory do not depend on
the weights). Printed: residues/s and peak memory above the loaded model, and their ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import time

import numpy as np
import torch

from esmtune.config import LongSequences, load_config
from esmtune.data.batching import EncodedDataset, encode
from esmtune.inference import predict_outputs
from esmtune.model.classifier import build_model

ONE_PASS = 10**9  # a token budget no batch exceeds: every window in one forward pass


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(length: int, max_tokens: int | None) -> dict[str, float]:
    """Predict one random protein of ``length`` residues; time, peak memory and the output."""
    torch.manual_seed(0)
    config = load_config(
        None,
        ["model.name=facebook/esm2_t6_8M_UR50D", "model.pretrained=false", "model.pooling=mean"],
    )
    model, tokenizer = build_model(config, num_outputs=3)
    model.eval()
    rng = random.Random(0)
    protein = "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(length))
    dataset = EncodedDataset(encode(tokenizer, [protein], 1022, LongSequences.WINDOW))

    def outputs(logits: torch.Tensor) -> np.ndarray:
        return torch.softmax(logits.float(), dim=-1).numpy()

    pad = tokenizer.pad_token_id
    predict_outputs(
        model, EncodedDataset(encode(tokenizer, ["MKV" * 50], 1022)), outputs, None, pad
    )
    base = _peak_mb()
    started = time.perf_counter()
    result = predict_outputs(model, dataset, outputs, max_tokens, pad)
    seconds = time.perf_counter() - started
    return {
        "residues_per_second": length / seconds,
        "peak_mb": _peak_mb() - base,
        "output": result[0].tolist(),
    }


def _in_process(length: int, mode: str) -> dict[str, float]:
    command = [sys.executable, __file__, "--worker", mode, str(length)]
    answer = subprocess.run(command, capture_output=True, text=True, check=True)
    return json.loads(answer.stdout.splitlines()[-1])


def main() -> None:
    """Run every length both ways (one pass only up to --one-pass-max) and print the table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[4_000, 16_000, 64_000])
    parser.add_argument(
        "--one-pass-max",
        type=int,
        default=16_000,
        help="longest sequence to read in one pass (memory grows with it)",
    )
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--worker", nargs=2, metavar=("MODE", "LENGTH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        mode, length = args.worker
        print(json.dumps(measure(int(length), ONE_PASS if mode == "one-pass" else None)))
        return
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, t6_8M shape, fp32")
    print(f"{'residues':>9} {'mode':<9} {'residues/s':>11} {'peak MB':>9} {'x speed':>8} "
          f"{'x memory':>9} {'max |diff|':>11}")  # fmt: skip
    rows = []
    for length in args.lengths:
        streamed = _in_process(length, "streamed")
        whole = _in_process(length, "one-pass") if length <= args.one_pass_max else None
        for mode, row in (("one-pass", whole), ("streamed", streamed)):
            if row is None:
                continue
            reference = whole or streamed
            speed = row["residues_per_second"] / reference["residues_per_second"]
            memory = row["peak_mb"] / max(reference["peak_mb"], 1e-9)
            diff = float(np.abs(np.array(row["output"]) - np.array(reference["output"])).max())
            print(
                f"{length:>9,} {mode:<9} {row['residues_per_second']:>11,.0f} "
                f"{row['peak_mb']:>9,.0f} {speed:>8.2f} {memory:>9.3f} {diff:>11.1e}"
            )
            rows.append({"length": length, "mode": mode, **row})
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"threads": torch.get_num_threads(), "rows": rows}, handle, indent=2)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
