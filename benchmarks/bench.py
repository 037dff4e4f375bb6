"""How fast esmtune is against the usual recipe, measured as ratios in one run on this machine.

Run:  python benchmarks/bench.py                      (t6_8M and t12_35M, about 15 min on 2 cores)
      python benchmarks/bench.py --models t6_8M --sequences 32 --json results.json

Models are ESM2 architectures with random weights (``model.pretrained: false``): speed does not
depend on the weights, and nothing is downloaded. The workload is seeded: sequence lengths drawn
from a log-normal distribution with a median of 300 residues (sigma 0.6), clipped to 30-1,022,
as protein sets are. For each model:

* inference, residues/s: the naive recipe (every batch padded to 1,024 tokens, 8 sequences per
  batch, input order) against esmtune's path (length-sorted batches filled to the device's default
  token budget, padded to their own longest), in fp32 and bf16 autocast, with the share of this machine's
  measured fp32 matmul peak that the model's FLOPs reach (model FLOP utilisation), the label
  agreement of bf16 with fp32, and sdpa against eager attention;
* LoRA training steps, residues/s and peak memory (each in its own process): naive against
  esmtune in fp32, bf16 autocast and with gradient checkpointing;
* frozen mode: epoch 1 (the backbone embeds every sequence once, then the head trains) against
  epoch 2 onwards (the head trains on the cached embeddings).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from esmtune.config import TrainConfig, load_config
from esmtune.data.batching import EncodedDataset, TokenBudgetBatchSampler, encode, pad_collate
from esmtune.embeddings import pooled_embeddings
from esmtune.inference import model_inputs, precision_context, predict_outputs
from esmtune.model.classifier import build_model

MODELS = {"t6_8M": "facebook/esm2_t6_8M_UR50D", "t12_35M": "facebook/esm2_t12_35M_UR50D"}
RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
NAIVE_BATCH, NAIVE_TOKENS = 8, 1024
TRAINING_BUDGET = 4096  # the default training.max_tokens
CLASSES = 10


def workload(count: int, seed: int = 0) -> list[str]:
    """Random proteins with log-normal lengths (median 300), clipped to 30-1,022 residues."""
    rng = np.random.default_rng(seed)
    lengths = np.clip(np.round(rng.lognormal(math.log(300), 0.6, count)), 30, 1022).astype(int)
    return ["".join(rng.choice(list(RESIDUES), size=n)) for n in lengths]


def synchronize(device: torch.device) -> None:
    """Wait for a GPU's queued work, so that a clock read after it counts that work."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(
    size: int = 2048,
    repeats: int = 5,
    dtype: torch.dtype = torch.float32,
    device: torch.device | None = None,
) -> float:
    """Best square matmul rate on ``device`` (the CPU) in ``dtype``, in FLOP/s (MFU's denominator)."""
    device = device or torch.device("cpu")
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    torch.mm(a, b)
    synchronize(device)
    best = math.inf
    for _ in range(repeats):
        started = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def flop_terms(model: torch.nn.Module, tokens: list[int]) -> tuple[float, float]:
    """Forward FLOPs of inputs of these token counts (no padding): weight matmuls, attention.

    Weights: 2 x (backbone parameters less the embeddings, which are looked up) x tokens.
    Attention: per layer and input of L tokens, 2 x L x L x hidden for the scores and as many
    for their weighted sum of the values.
    """
    config = model.backbone_config
    weights = sum(p.numel() for n, p in model.backbone.named_parameters() if "embeddings" not in n)
    attention = sum(4 * config.num_hidden_layers * t * t * config.hidden_size for t in tokens)
    return 2 * weights * sum(tokens), attention


def model_flops(model: torch.nn.Module, sequences: list[str]) -> float:
    """Forward FLOPs of the sequences themselves (no padding): 2 x weights x tokens + attention."""
    return sum(flop_terms(model, [len(s) + 2 for s in sequences]))


def settings(name: str, *overrides: str) -> TrainConfig:
    """The config of a random-weight ESM2 of ``name``'s shape with these overrides."""
    return load_config(None, [f"model.name={name}", "model.pretrained=false", *overrides])


def build(name: str, *overrides: str) -> tuple[torch.nn.Module, object]:
    torch.manual_seed(0)
    return build_model(settings(name, *overrides), CLASSES)


def naive_batches(windows: list, pad: int) -> list[dict[str, torch.Tensor]]:
    """Input order, 8 per batch, every batch padded to 1,024 tokens."""
    batches = []
    for start in range(0, len(windows), NAIVE_BATCH):
        items = [
            (i, windows[i], None) for i in range(start, min(start + NAIVE_BATCH, len(windows)))
        ]
        batch = pad_collate(items, pad)
        width = batch["input_ids"].shape[1]
        batch["input_ids"] = torch.nn.functional.pad(
            batch["input_ids"], (0, NAIVE_TOKENS - width), value=pad
        )
        batch["attention_mask"] = torch.nn.functional.pad(
            batch["attention_mask"], (0, NAIVE_TOKENS - width)
        )
        batches.append(batch)
    return batches


@torch.inference_mode()
def naive_inference(model: torch.nn.Module, batches: list) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    outputs = [model(**model_inputs(b)).float() for b in batches]
    return time.perf_counter() - started, torch.cat(outputs).argmax(1).numpy()


def esmtune_inference(model: torch.nn.Module, dataset: EncodedDataset, pad: int, precision: str):
    started = time.perf_counter()
    outputs = predict_outputs(
        model, dataset, lambda logits: logits.float().cpu().numpy(), None, pad,
        precision=precision,
    )  # fmt: skip
    return time.perf_counter() - started, outputs.argmax(1)


def inference(name: str, sequences: list[str], peak: float) -> dict[str, object]:
    residues = sum(map(len, sequences))
    model, tokenizer = build(name)
    model.eval()
    pad = tokenizer.pad_token_id
    windows = encode(tokenizer, sequences, 1022)
    dataset = EncodedDataset(windows)
    esmtune_inference(model, EncodedDataset(windows[:4]), pad, "fp32")  # warm-up
    naive_s, naive_labels = naive_inference(model, naive_batches(windows, pad))
    fp32_s, fp32_labels = esmtune_inference(model, dataset, pad, "fp32")
    bf16_s, bf16_labels = esmtune_inference(model, dataset, pad, "bf16")
    eager, _ = build(name, "model.attn_implementation=eager")
    eager.eval()
    eager_s, _ = esmtune_inference(eager, dataset, pad, "fp32")
    flops = model_flops(model, sequences)
    return {
        "naive_residues_per_s": residues / naive_s,
        "esmtune_fp32_residues_per_s": residues / fp32_s,
        "esmtune_bf16_residues_per_s": residues / bf16_s,
        "eager_fp32_residues_per_s": residues / eager_s,
        "speedup_fp32": naive_s / fp32_s,
        "speedup_bf16": naive_s / bf16_s,
        "sdpa_over_eager": eager_s / fp32_s,
        "fp32_mfu": flops / fp32_s / peak,
        "bf16_label_agreement": float(np.mean(bf16_labels == fp32_labels)),
        "naive_label_agreement": float(np.mean(naive_labels == fp32_labels)),
    }


def train_child(name: str, mode: str, sequences: list[str]) -> dict[str, float]:
    """One pass of LoRA training steps in this (child) process; returns rate and peak memory."""
    overrides = ["finetune.mode=lora"]
    if mode == "checkpointing":
        overrides.append("model.gradient_checkpointing=true")
    model, tokenizer = build(name, *overrides)
    model.train()
    pad = tokenizer.pad_token_id
    windows = encode(tokenizer, sequences, 1022)
    if mode == "naive":
        batches = naive_batches(windows, pad)
    else:
        dataset = EncodedDataset(windows)
        sampler = TokenBudgetBatchSampler(
            dataset.tokens,
            TRAINING_BUDGET,
            shuffle=True,
            seed=0,
            window_counts=dataset.window_counts,
        )
        batches = [pad_collate([(i, windows[i], None) for i in batch], pad) for batch in sampler]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    precision = "bf16" if mode == "bf16" else "fp32"
    targets = torch.zeros(len(sequences), dtype=torch.long)
    started = time.perf_counter()
    for batch in batches:
        with precision_context(precision, torch.device("cpu")):
            logits = model(**model_inputs(batch))
        loss = torch.nn.functional.cross_entropy(logits.float(), targets[batch["index"]])
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - started
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"residues_per_s": sum(map(len, sequences)) / seconds, "peak_rss_gb": peak_kib / 2**20}


def training(short: str, count: int, seed: int) -> dict[str, object]:
    """Each training mode in a fresh process, so that its peak memory is its own."""
    results = {}
    for mode in ("naive", "fp32", "bf16", "checkpointing"):
        command = [sys.executable, __file__, "--child", mode, "--models", short,
                   "--train-sequences", str(count), "--seed", str(seed)]  # fmt: skip
        output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
        results[mode] = json.loads(output.strip().splitlines()[-1])
    naive = results["naive"]["residues_per_s"]
    for mode in ("fp32", "bf16", "checkpointing"):
        results[mode]["speedup"] = results[mode]["residues_per_s"] / naive
    return results


def frozen(name: str, sequences: list[str], epochs: int = 20) -> dict[str, float]:
    """Epoch 1 (embed everything once + a head epoch) against a head epoch on the cache."""
    model, tokenizer = build(name, "finetune.mode=frozen")
    pad = tokenizer.pad_token_id
    dataset = EncodedDataset(encode(tokenizer, sequences, 1022))
    optimizer = torch.optim.AdamW(model.head.parameters(), lr=1e-3)
    targets = torch.zeros(len(sequences), dtype=torch.long)

    def head_epoch(embeddings: torch.Tensor) -> None:
        for start in range(0, len(embeddings), NAIVE_BATCH):
            rows = slice(start, start + NAIVE_BATCH)
            loss = torch.nn.functional.cross_entropy(
                model(embeddings=embeddings[rows]), targets[rows]
            )
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)

    started = time.perf_counter()
    embeddings = pooled_embeddings(model, dataset, pad, None)
    head_epoch(embeddings)
    first = time.perf_counter() - started
    started = time.perf_counter()
    for _ in range(epochs):
        head_epoch(embeddings)
    later = (time.perf_counter() - started) / epochs
    return {"epoch1_s": first, "epoch2plus_s": later, "ratio": first / later}


def _table(results: dict[str, object]) -> str:
    lines = [
        f"machine: {results['threads']} threads, fp32 matmul peak {results['matmul_peak_gflops']:.0f} GFLOP/s, "
        f"torch {torch.__version__}; workload: {results['sequences']} sequences (inference, frozen), "
        f"{results['train_sequences']} (training), median length {results['median_length']:.0f}",
        "",
        f"{'model':8} {'measure':38} {'naive':>10} {'esmtune':>10} {'ratio':>7}",
    ]
    for name, r in results["models"].items():
        inf, tr, fz = r["inference"], r["training"], r["frozen"]
        rows = [
            ("inference res/s, fp32", inf["naive_residues_per_s"], inf["esmtune_fp32_residues_per_s"], inf["speedup_fp32"]),
            ("inference res/s, bf16 autocast", inf["naive_residues_per_s"], inf["esmtune_bf16_residues_per_s"], inf["speedup_bf16"]),
            ("inference res/s, eager attention (fp32)", inf["eager_fp32_residues_per_s"], inf["esmtune_fp32_residues_per_s"], inf["sdpa_over_eager"]),
            ("LoRA training res/s, fp32", tr["naive"]["residues_per_s"], tr["fp32"]["residues_per_s"], tr["fp32"]["speedup"]),
            ("LoRA training res/s, bf16 autocast", tr["naive"]["residues_per_s"], tr["bf16"]["residues_per_s"], tr["bf16"]["speedup"]),
            ("LoRA training res/s, grad. checkpointing", tr["naive"]["residues_per_s"], tr["checkpointing"]["residues_per_s"], tr["checkpointing"]["speedup"]),
            ("frozen epoch seconds: 1 vs 2+ (cache)", fz["epoch1_s"], fz["epoch2plus_s"], fz["ratio"]),
        ]  # fmt: skip
        for measure, naive, ours, ratio in rows:
            lines.append(f"{name:8} {measure:38} {naive:10,.1f} {ours:10,.1f} {ratio:6.1f}x")
        lines.append(
            f"{name:8} fp32 model FLOP utilisation {inf['fp32_mfu']:.0%}; bf16 labels agree with "
            f"fp32 on {inf['bf16_label_agreement']:.1%}; peak memory (GB) naive "
            f"{tr['naive']['peak_rss_gb']:.2f}, fp32 {tr['fp32']['peak_rss_gb']:.2f}, bf16 "
            f"{tr['bf16']['peak_rss_gb']:.2f}, checkpointing {tr['checkpointing']['peak_rss_gb']:.2f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--sequences", type=int, default=64, help="inference and frozen [64]")
    parser.add_argument("--train-sequences", type=int, default=32, help="training steps [32]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        sequences = workload(args.train_sequences, args.seed)
        print(json.dumps(train_child(MODELS[args.models[0]], args.child, sequences)))
        return
    sequences = workload(args.sequences, args.seed)
    results: dict[str, object] = {
        "threads": torch.get_num_threads(),
        "matmul_peak_gflops": matmul_peak() / 1e9,
        "sequences": len(sequences),
        "train_sequences": args.train_sequences,
        "median_length": float(np.median([len(s) for s in sequences])),
        "models": {},
    }
    for short in args.models:
        name = MODELS[short]
        print(f"{short}: inference ...", file=sys.stderr)
        inference_results = inference(name, sequences, results["matmul_peak_gflops"] * 1e9)
        print(f"{short}: training ...", file=sys.stderr)
        training_results = training(short, args.train_sequences, args.seed)
        print(f"{short}: frozen ...", file=sys.stderr)
        results["models"][short] = {
            "inference": inference_results,
            "training": training_results,
            "frozen": frozen(name, sequences),
        }
    print(_table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
