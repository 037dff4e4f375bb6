"""Residues/s and file size of every form a trained model can take, in one run on this machine.

Run:  python benchmarks/export_bench.py       (t6_8M and t12_35M, 64 sequences, about 8 min)
      python benchmarks/export_bench.py --models t6_8M --sequences 32 --json export.json

A run is trained briefly (frozen mode, one epoch) on a slice of the bundled SCL example with a
random-weight ESM2 of the chosen shape (speed does not depend on the weights; nothing is
downloaded), then exported as ``hf`` and as ``onnx --quantize int8``. Every form predicts the
same seeded workload (bench.py's: log-normal lengths around 300 residues, clipped to 30-1,022)
through ``esmtune.Predictor``, so all share esmtune's length-sorted token-budget batching:

* torch fp32 and torch bf16 autocast (the run itself);
* onnxruntime fp32 (``model.onnx``) and dynamic int8 (``model.int8.onnx``);
* and the naive recipe as the baseline for ratios: torch fp32, 8 sequences per batch padded to
  1,024 tokens, in input order.

Agreement is with the torch fp32 labels; differences are in probabilities.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import MODELS, naive_batches, naive_inference, workload

from esmtune.cli import main as esmtune
from esmtune.data.batching import encode
from esmtune.predict import Predictor

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "scl3"
PER_LABEL = 6  # sequences per label and split in the training slice: the run only has to exist


def training_slice(folder: Path) -> Path:
    """A few sequences per label and split of the bundled example, same layout."""
    for path in EXAMPLE.glob("*/*.fasta"):
        text = path.read_text().split(">")[1 : PER_LABEL + 1]
        target = folder / path.relative_to(EXAMPLE)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text("".join(">" + record for record in text))
    return folder


def train_and_export(model: str, work: Path) -> tuple[Path, Path, Path]:
    run_args = [
        "train", f"model.name={MODELS[model]}", "model.pretrained=false",
        f"data.path={training_slice(work / 'data')}", f"output.dir={work}", "output.name=run",
        "finetune.mode=frozen", "finetune.cache_embeddings=false", "training.epochs=1",
    ]  # fmt: skip
    assert esmtune(run_args) == 0
    run = work / "run"
    for fmt, extra in (("hf", []), ("onnx", ["--quantize", "int8"])):
        out = work / fmt
        assert esmtune(["export", str(run), "--format", fmt, "--out", str(out),
                        "--check-sequences", "0", *extra]) == 0  # fmt: skip
    return run, work / "hf", work / "onnx"


def size(*paths: Path) -> int:
    return sum(p.stat().st_size for path in paths for p in path.parent.glob(path.name))


def timed(predictor: Predictor, sequences: list[str]) -> tuple[float, np.ndarray]:
    predictor.outputs(sequences[:2])  # warm-up: first-call setup is not throughput
    started = time.perf_counter()
    outputs = predictor.outputs(sequences)
    return time.perf_counter() - started, outputs


def measure(model: str, count: int) -> dict[str, object]:
    sequences = workload(count)
    residues = sum(map(len, sequences))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        run, hf, onnx = train_and_export(model, work)
        reference = Predictor.from_run(run, device="cpu")
        tokenizer = reference.run.tokenizer
        batches = naive_batches(encode(tokenizer, sequences, 1022), tokenizer.pad_token_id)
        naive_s, _ = naive_inference(reference.model, batches[:1])  # warm-up
        naive_s, _ = naive_inference(reference.model, batches)
        forms = {
            "torch fp32": (reference, size(hf / "*.safetensors")),
            "torch bf16": (
                Predictor.from_run(run, device="cpu", precision="bf16"),
                size(hf / "*.safetensors"),
            ),
            "onnx fp32": (
                Predictor.from_export(onnx, runtime="onnx"),
                size(onnx / "model.onnx*", onnx / "head.onnx"),
            ),
            "onnx int8": (
                Predictor.from_export(onnx, runtime="onnx-int8"),
                size(onnx / "model.int8.onnx*", onnx / "head.onnx"),
            ),
        }
        rows: dict[str, dict[str, float]] = {
            "naive torch fp32": {"residues_per_s": residues / naive_s, "file_bytes": 0}
        }
        expected = None
        for name, (predictor, file_bytes) in forms.items():
            seconds, outputs = timed(predictor, sequences)
            expected = outputs if expected is None else expected
            rows[name] = {
                "residues_per_s": residues / seconds,
                "file_bytes": file_bytes,
                "label_agreement": float(np.mean(outputs.argmax(1) == expected.argmax(1))),
                "max_abs_difference": float(np.abs(outputs - expected).max()),
            }
        shutil.rmtree(work / "data")
    return {"model": model, "sequences": count, "residues": residues, "forms": rows}


def table(result: dict[str, object]) -> str:
    forms = result["forms"]
    naive = forms["naive torch fp32"]["residues_per_s"]
    torch32 = forms["torch fp32"]["residues_per_s"]
    lines = [
        f"{result['model']}, {result['sequences']} sequences ({result['residues']:,} residues), "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}",
        f"{'form':<17} {'residues/s':>10} {'x naive':>8} {'x torch':>8} {'file MiB':>9} "
        f"{'same label':>10} {'max diff':>9}",
    ]
    for name, row in forms.items():
        rate = row["residues_per_s"]
        file_mib = f"{row['file_bytes'] / 2**20:.1f}" if row["file_bytes"] else "-"
        agree = f"{row['label_agreement']:.1%}" if "label_agreement" in row else "-"
        diff = f"{row['max_abs_difference']:.1e}" if "max_abs_difference" in row else "-"
        lines.append(
            f"{name:<17} {rate:>10,.0f} {rate / naive:>8.2f} {rate / torch32:>8.2f} "
            f"{file_mib:>9} {agree:>10} {diff:>9}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", choices=sorted(MODELS), default=sorted(MODELS))
    parser.add_argument("--sequences", type=int, default=64, help="workload size [64]")
    parser.add_argument(
        "--json",
        type=Path,
        default=Path(__file__).with_name("export_results.json"),
        help="where the numbers are written [benchmarks/export_results.json]",
    )
    args = parser.parse_args()
    results = [measure(model, args.sequences) for model in args.models]
    print("\n\n".join(table(result) for result in results))
    args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
