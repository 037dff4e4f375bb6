"""Throughput, model FLOP utilisation and peak memory of esmtune on one GPU, in one run.

Run:  python benchmarks/gpu_bench.py                  (t33_650M and t36_3B on cuda; 9 processes of
                                                       15 s measured each: about 4 minutes)
      python benchmarks/gpu_bench.py --shapes t33_650M --seconds 30 --out gpu.json
      python benchmarks/gpu_bench.py --device cpu --shapes tiny --seconds 1     (what the tests run)

Models are ESM2 architectures with random weights (``model.pretrained: false``, built from
``EsmConfig`` by esmtune's own backbone code): speed does not depend on the weights, and nothing is
downloaded. They are built by ``build_model``, the path ``esmtune train`` takes, LoRA adapters and
all (``finetune.mode``); batches come from esmtune's token-budget batching (sequences of similar
length, each batch padded only to its own longest, never to 1,024). The workload is bench.py's:
seeded random proteins, log-normal lengths around a median of 300 residues, clipped to 30-1,022.
For each shape, each in a fresh process (so that its peak memory is its own and an out-of-memory
leaves the next one a clean device), for ``--seconds`` after a warm-up:

* embedding, residues/s: ``pooled_embeddings`` (what ``esmtune embed`` runs) in bf16 autocast;
* LoRA training and full fine-tuning, tokens/s: forward in bf16 autocast, fp32 loss, backward,
  gradient clipping and an AdamW step, as ``esmtune train`` with ``training.mixed_precision=bf16``;
  ``esmtune plan`` first estimates the memory, and a setting it expects not to fit is skipped
  with its verdict as the reason (``--ignore-plan`` runs it anyway; an out-of-memory is a row);
* serving, requests/s of 1, 8 and 32 concurrent clients each sending one sequence at a time:
  ``esmtune serve``'s micro-batching queue (in process, no HTTP) against a naive endpoint that
  runs one forward pass per request, on the same ``Predictor`` in bf16 (each of the six
  windows lasts a third of ``--seconds``);
* model FLOP utilisation (MFU): model FLOPs per second over the device's peak, where the peak is
  a large bf16 matmul's rate measured on the same device in the same run (best of several), not
  the data sheet's; and peak memory (``torch.cuda.max_memory_allocated`` on a GPU, the process's
  peak resident set on a CPU, which includes torch itself).

Model FLOPs count real tokens only (a sequence of n residues is n + 2 tokens; padding is not
counted), with N the backbone's parameters less the token embeddings (a lookup), and, for an input
of L tokens, the attention's 4 x layers x hidden x L^2 (scores and their weighted sum):

    forward (embedding)  F = 2 N T + 4 layers hidden sum(L^2)
    full fine-tuning     3 F   (backward: gradients of activations and of weights, 2 F)
    LoRA training        4 N T + 12 layers hidden sum(L^2)
                         (frozen weights get no weight gradients; attention's backward still runs)

On a tiny model with eager attention these counts agree with ``torch.utils.flop_counter`` within
1% (tests/test_gpu_bench.py). Recomputation under gradient checkpointing (``--gradient-checkpointing``) is not counted: MFU, not
hardware utilisation. Published anchor: BioNeMo reports 59% MFU training ESM2-650M on an A100.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench import CLASSES, build, flop_terms, matmul_peak, settings, synchronize, workload

from esmtune.architectures import ESM2_ARCHITECTURES, Esm2Architecture
from esmtune.config import TrainConfig
from esmtune.data.batching import EncodedDataset, TokenBudgetBatchSampler, encode, pad_collate
from esmtune.data.fasta import SequenceRecord
from esmtune.embeddings import pooled_embeddings
from esmtune.inference import inference_budget, model_inputs, precision_context
from esmtune.model.backbone import build_esm2_config
from esmtune.model.run_model import LoadedRun
from esmtune.plan import GIB, PlanOptions, model_shape, plan, setting_from_config
from esmtune.predict import Predictor
from esmtune.serve import ServeSettings, _Batcher
from esmtune.tasks import task_class

# Every published ESM2 shape by its short name (t33_650M), and a tiny one for tests on a CPU.
SHAPES = {
    name.removeprefix("esm2_").removesuffix("_UR50D"): f"facebook/{name}"
    for name in ESM2_ARCHITECTURES
}
TINY = Esm2Architecture(layers=2, hidden=64, heads=4)
MEASUREMENTS = {
    "embedding": "embedding, bf16",
    "lora": "LoRA training, bf16",
    "full": "full fine-tuning, bf16",
    "serving": "serving, bf16",
}
UNITS = {"embedding": "residues/s", "lora": "tokens/s", "full": "tokens/s", "serving": "requests/s"}
CLIENTS = (1, 8, 32)  # concurrent clients of the serving measurement
WARMUP_STEPS = 2  # kernels chosen, caches and optimizer state allocated: not timed
PEAK_SIZE = {"cuda": 8192, "cpu": 2048}  # the matmul whose rate is the denominator of MFU
ANCHOR = "BioNeMo reports 59% MFU training ESM2-650M on an A100"


def _tiny_model(folder: Path) -> str:
    """A local model folder holding only the tiny shape's config.json (random weights from it)."""
    build_esm2_config(*TINY).save_pretrained(folder)
    return str(folder)


def _peak_memory_gib(device: torch.device) -> float:
    """This process's peak: allocated by torch on a GPU; resident set (KiB on Linux) on a CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _device_memory_gib(device: torch.device) -> float:
    """What the device holds: the GPU's memory, or this machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory / GIB
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB


def _timed(step: Callable[[], tuple[int, float]], seconds: float, device: torch.device) -> dict:
    """Run ``step`` (returns units done, FLOPs) for ``seconds`` after the warm-up; rates."""
    for _ in range(WARMUP_STEPS):
        step()
    synchronize(device)
    units = flops = 0.0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        done, work = step()
        units, flops = units + done, flops + work
    synchronize(device)
    elapsed = time.perf_counter() - started
    return {"throughput": units / elapsed, "model_flops_per_s": flops / elapsed, "timed_s": elapsed}


def _chunks(dataset: EncodedDataset, tokens: int) -> Iterator[list[int]]:
    """Consecutive slices of the workload of about ``tokens`` tokens each, round and round."""
    chunk: list[int] = []
    size = 0
    for index in itertools.cycle(range(len(dataset))):
        chunk.append(index)
        size += dataset.tokens[index]
        if size >= tokens:
            yield chunk
            chunk, size = [], 0


def embedding_rate(
    name: str, sequences: list[str], budget: int, seconds: float, device: torch.device
) -> dict:
    """Residues/s of ``esmtune embed``'s path: pooled embeddings, bf16 autocast, token budget."""
    with device:
        model, tokenizer = build(name, "finetune.mode=frozen")
    model.to(device).eval()
    dataset = EncodedDataset(encode(tokenizer, sequences, 1022))
    # A few batches per call: the loader sorts each call's sequences by length, as embed does.
    chunks = _chunks(dataset, 4 * budget)

    def step() -> tuple[int, float]:
        indices = next(chunks)
        part = EncodedDataset([dataset.windows[i] for i in indices])
        pooled_embeddings(model, part, tokenizer.pad_token_id, budget, precision="bf16")
        weights, attention = flop_terms(model, [dataset.tokens[i] for i in indices])
        return sum(len(sequences[i]) for i in indices), weights + attention

    return _timed(step, seconds, device)


def _training_flops(model: torch.nn.Module, mode: str, tokens: list[int]) -> float:
    """Model FLOPs of one training step on inputs of these token counts (see the docstring)."""
    weights, attention = flop_terms(model, tokens)
    return (2 if mode == "lora" else 3) * weights + 3 * attention


def _planned(config: TrainConfig, device: torch.device) -> dict:
    """``esmtune plan``'s estimate for this training setting on this device."""
    capacity = _device_memory_gib(device)
    setting = setting_from_config(config, PlanOptions(gpu_memory=capacity))
    report = plan(model_shape(config.model.name), setting, capacity)
    return {
        "fits": report["fits"],
        "gib": report["total_bytes"] / GIB,
        "verdict": report["verdict"],
    }


def training_rate(
    name: str,
    mode: str,
    sequences: list[str],
    budget: int,
    seconds: float,
    device: torch.device,
    checkpointing: bool,
    ignore_plan: bool,
) -> dict:
    """Tokens/s of training steps as ``esmtune train`` takes them, in bf16 autocast."""
    overrides = [f"finetune.mode={mode}", f"training.max_tokens={budget}"]
    overrides += ["training.mixed_precision=bf16", f"model.gradient_checkpointing={checkpointing}"]
    config = settings(name, *overrides)
    planned = _planned(config, device)
    if not planned["fits"] and not ignore_plan:
        return {"status": "skipped", "reason": planned["verdict"], "planned_gib": planned["gib"]}
    with device:
        model, tokenizer = build(name, *overrides)
    model.to(device).train()
    dataset = EncodedDataset(encode(tokenizer, sequences, 1022))
    sampler = TokenBudgetBatchSampler(
        dataset.tokens,
        budget,
        shuffle=True,
        seed=0,
        window_counts=dataset.window_counts,
        max_sequences=config.training.batch_size,
    )
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.training.learning_rate)
    targets = torch.randint(CLASSES, (len(sequences),), generator=torch.Generator().manual_seed(0))

    def batches() -> Iterator[list[int]]:
        for epoch in itertools.count():
            sampler.set_epoch(epoch)
            yield from sampler

    order = batches()

    def step() -> tuple[int, float]:
        indices = next(order)
        batch = pad_collate([dataset[i] for i in indices], tokenizer.pad_token_id)
        with precision_context("bf16", device):
            logits = model(**model_inputs(batch, device))
        loss = torch.nn.functional.cross_entropy(logits.float(), targets[indices].to(device))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, config.training.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        tokens = [dataset.tokens[i] for i in indices]
        return sum(tokens), _training_flops(model, mode, tokens)

    return {**_timed(step, seconds, device), "planned_gib": planned["gib"]}


def _predictor(name: str, budget: int, device: torch.device) -> Predictor:
    """A Predictor over a random-weight model with an untrained multiclass head (no run saved)."""
    config = settings(name, "finetune.mode=frozen")
    with device:
        model, tokenizer = build(name, "finetune.mode=frozen")
    labels = [f"class {index}" for index in range(CLASSES)]
    task = task_class(config.task)(
        labels=labels, objective=config.objective, label_names={}, ancestors={}
    )
    loaded = LoadedRun(Path("."), config, task, model, tokenizer)
    return Predictor(loaded, device=str(device), max_tokens=budget, precision="bf16")


async def _requests_per_s(
    answer: Callable[[SequenceRecord], Awaitable[object]],
    sequences: list[str],
    clients: int,
    seconds: float,
) -> float:
    """Requests/s of ``clients`` concurrent clients, each sending one sequence at a time."""
    order = itertools.cycle(range(len(sequences)))
    done = 0
    deadline = time.perf_counter() + seconds

    async def client() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            index = next(order)
            await answer(SequenceRecord(str(index), sequences[index]))
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return done / (time.perf_counter() - started)


def serving_rates(
    name: str, sequences: list[str], budget: int, seconds: float, device: torch.device
) -> dict:
    """Requests/s of ``esmtune serve``'s micro-batching queue against one forward per request.

    In process, without HTTP: the queue (serve.py's batcher, with ``esmtune serve``'s default
    wait and its ``max_batch_tokens`` set to the budget) groups the requests waiting together into
    one model call; the naive endpoint runs one ``Predictor.predict`` per request, one at a time.
    """
    predictor = _predictor(name, budget, device)
    defaults = ServeSettings()
    predictor.predict(sequences[:WARMUP_STEPS])
    window = seconds / len(CLIENTS)

    async def measure() -> dict:
        batcher = _Batcher(predictor, defaults.batch_wait_ms / 1000, budget)
        worker = asyncio.create_task(batcher.run_forever())
        lock = asyncio.Lock()

        async def naive(record: SequenceRecord) -> object:
            async with lock:  # one model: requests take turns, one forward pass each
                return await asyncio.to_thread(predictor.predict, [record])

        async def batched(record: SequenceRecord) -> object:
            return await batcher.submit([record], None)

        rates = {}
        for clients in CLIENTS:
            rates[f"naive_{clients}"] = await _requests_per_s(naive, sequences, clients, window)
            rates[f"batched_{clients}"] = await _requests_per_s(batched, sequences, clients, window)
        worker.cancel()
        return rates

    rates = asyncio.run(measure())
    return {"requests_per_s": rates, "throughput": rates[f"batched_{CLIENTS[-1]}"]}


def child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process; an out-of-memory is a result, not a crash."""
    device = torch.device(args.device)
    if args.child == "peak":
        size = PEAK_SIZE.get(device.type, 2048)
        return {"flops_per_s": matmul_peak(size, 10, torch.bfloat16, device), "size": size}
    sequences = workload(args.sequences, args.seed)
    budget = args.budget
    try:
        if args.child in ("embedding", "serving"):
            measure = embedding_rate if args.child == "embedding" else serving_rates
            budget = budget or inference_budget(device)
            result = measure(args.model, sequences, budget, args.seconds, device)
        else:
            budget = budget or settings(args.model).training.max_tokens
            result = training_rate(
                args.model, args.child, sequences, budget, args.seconds, device,
                args.gradient_checkpointing, args.ignore_plan,
            )  # fmt: skip
    except (torch.OutOfMemoryError, MemoryError) as error:
        result = {"status": "out of memory", "reason": str(error).splitlines()[0]}
    result.setdefault("status", "ok")
    result["budget"] = budget or inference_budget(device)
    result["peak_memory_gib"] = _peak_memory_gib(device)
    return result


def _run_child(args: argparse.Namespace, kind: str, model: str = "") -> dict:
    """``kind`` measured in a fresh process; a crash (killed, no output) is a failed row."""
    command = [
        sys.executable, __file__, "--child", kind, "--model", model, "--device", args.device,
        "--seconds", str(args.seconds), "--sequences", str(args.sequences),
        "--seed", str(args.seed), "--budget", str(args.budget or 0),
    ]  # fmt: skip
    command += ["--gradient-checkpointing"] * args.gradient_checkpointing
    command += ["--ignore-plan"] * args.ignore_plan
    done = subprocess.run(command, capture_output=True, text=True)
    lines = done.stdout.strip().splitlines()
    if done.returncode or not lines:
        return {"status": "failed", "reason": (done.stderr.strip().splitlines() or ["?"])[-1]}
    return json.loads(lines[-1])


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        return f"{name}, {_device_memory_gib(device):.0f} GiB"
    return f"CPU, {torch.get_num_threads()} threads, {_device_memory_gib(device):.0f} GiB RAM"


def _table(results: dict) -> str:
    memory = "max_memory_allocated" if results["device"].startswith("cuda") else "peak RSS"
    lines = [
        f"device: {results['device_name']}; bf16 matmul peak {results['matmul_peak_tflops']:.2f} "
        f"TFLOP/s (measured, {results['matmul_size']}^2); torch {results['torch']}; workload: "
        f"{results['sequences']} sequences, median length {results['median_length']:.0f}; "
        f"{results['seconds']:g} s per measurement",
        "",
        f"{'shape':9} {'measure':24} {'budget':>7} {'throughput':>22} {'MFU':>6} "
        f"{memory + ' GiB':>26} {'planned GiB':>12}",
    ]
    for row in results["rows"]:
        measure = MEASUREMENTS[row["measurement"]]
        head = f"{row['shape']:9} {measure:24} {row['budget']:>7,}"
        planned = f"{row['planned_gib']:12.2f}" if "planned_gib" in row else f"{'':>12}"
        if row["status"] != "ok":
            lines.append(f"{head} {row['status']}: {row['reason']}")
            continue
        throughput = f"{row['throughput']:,.0f} {row['unit']}"
        mfu = f"{row['mfu']:6.1%}" if "mfu" in row else f"{'':>6}"
        lines.append(f"{head} {throughput:>22} {mfu} {row['peak_memory_gib']:26.2f} {planned}")
        if "requests_per_s" in row:
            rates = row["requests_per_s"]
            for clients in CLIENTS:
                naive, batched = rates[f"naive_{clients}"], rates[f"batched_{clients}"]
                lines.append(
                    f"{'':9}   {clients:>2} client(s): {batched:,.1f} requests/s batched, "
                    f"{naive:,.1f} one forward pass per request ({batched / naive:.1f}x)"
                )
    lines += ["", f"anchor: {ANCHOR}"]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", default="cuda", help="where to measure [cuda]")
    parser.add_argument(
        "--shapes", nargs="+", default=["t33_650M", "t36_3B"], choices=["tiny", *SHAPES],
        help="ESM2 shapes, random weights [t33_650M t36_3B]",
    )  # fmt: skip
    parser.add_argument("--seconds", type=float, default=15, help="per measurement [15]")
    parser.add_argument(
        "--budget", type=int, default=0,
        help="token budget of every batch [esmtune's defaults: embedding 16,384 on a GPU and "
        "1,024 on a CPU, training.max_tokens 4,096 for training]",
    )  # fmt: skip
    parser.add_argument("--measurements", nargs="+", default=list(MEASUREMENTS),
                        choices=list(MEASUREMENTS), help="[all]")  # fmt: skip
    parser.add_argument("--gradient-checkpointing", action="store_true", help="when training")
    parser.add_argument(
        "--ignore-plan", action="store_true",
        help="also run training that esmtune plan expects not to fit (an OOM is then a row)",
    )  # fmt: skip
    parser.add_argument("--sequences", type=int, default=512, help="workload size [512]")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="also write the results here as JSON")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.child:
        print(json.dumps(child(args)))
        return
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device here; --device cpu measures this machine (not comparable)")
    print("matmul peak ...", file=sys.stderr)
    peak = _run_child(args, "peak")
    sequences = workload(args.sequences, args.seed)
    results: dict = {
        "device": args.device,
        "device_name": _device_name(device),
        "torch": torch.__version__,
        "matmul_peak_tflops": peak["flops_per_s"] / 1e12,
        "matmul_size": peak["size"],
        "seconds": args.seconds,
        "sequences": len(sequences),
        "median_length": float(np.median([len(s) for s in sequences])),
        "gradient_checkpointing": args.gradient_checkpointing,
        "anchor": ANCHOR,
        "rows": [],
    }
    with tempfile.TemporaryDirectory() as folder:
        for shape in args.shapes:
            model = _tiny_model(Path(folder)) if shape == "tiny" else SHAPES[shape]
            for measurement in args.measurements:
                print(f"{shape}: {MEASUREMENTS[measurement]} ...", file=sys.stderr)
                row = {"shape": shape, "measurement": measurement}
                row |= _run_child(args, measurement, model)
                if row["status"] == "ok":
                    row["unit"] = UNITS[measurement]
                if "model_flops_per_s" in row:
                    row["mfu"] = row["model_flops_per_s"] / peak["flops_per_s"]
                row.setdefault("budget", args.budget)
                results["rows"].append(row)
    print(_table(results))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
