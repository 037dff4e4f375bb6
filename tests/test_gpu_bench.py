"""The GPU benchmark keeps working on the CPU, and its FLOP formula is torch's own count.

``benchmarks/gpu_bench.py`` is written for a GPU, which CI does not have; run on the CPU with a
tiny shape it goes through every code path but the device (building each model, token-budget
batches, timing, the plan check, MFU, the JSON). Its MFU is only as right as its FLOP count, so
that count is held to torch's FLOP counter on the same forward and backward passes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from benchmarks import gpu_bench
from torch.utils.flop_counter import FlopCounterMode

from esmtune.data.batching import encode, pad_collate
from esmtune.inference import model_inputs

ROOT = Path(__file__).resolve().parents[1]


def test_cpu_run_reports_every_measurement(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    command = [
        sys.executable, str(ROOT / "benchmarks" / "gpu_bench.py"), "--device", "cpu",
        "--shapes", "tiny", "--seconds", "0.5", "--sequences", "64", "--out", str(out),
    ]  # fmt: skip
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    printed = subprocess.run(
        command, capture_output=True, text=True, check=True, env=environment
    ).stdout
    results = json.loads(out.read_text())
    assert results["matmul_peak_tflops"] > 0
    rows = {(row["shape"], row["measurement"]): row for row in results["rows"]}
    assert set(rows) == {("tiny", kind) for kind in gpu_bench.MEASUREMENTS}
    for (_, kind), row in rows.items():
        assert row["status"] == "ok", row
        assert row["throughput"] > 0
        assert row["unit"] == gpu_bench.UNITS[kind]
        if kind == "serving":  # requests/s, batched and one forward pass per request
            rates = row["requests_per_s"]
            assert set(rates) == {
                f"{way}_{clients}" for way in ("naive", "batched") for clients in gpu_bench.CLIENTS
            }
            assert all(rate > 0 for rate in rates.values())
        else:
            assert 0 < row["mfu"] < 1.5
        assert row["peak_memory_gib"] > 0
        assert row["budget"] > 0
        assert gpu_bench.MEASUREMENTS[kind] in printed
    # Training rows carry esmtune plan's estimate, checked before they ran.
    assert rows["tiny", "lora"]["planned_gib"] > 0
    assert rows["tiny", "full"]["planned_gib"] > 0


@pytest.mark.parametrize("mode", ["frozen", "lora", "full"])
def test_model_flops_match_torch_flop_counter(mode: str, tmp_path: Path) -> None:
    # Eager attention: its matmuls are ops the counter sees (the CPU's fused sdpa kernel is not).
    name = gpu_bench._tiny_model(tmp_path)
    model, tokenizer = gpu_bench.build(
        name, f"finetune.mode={mode}", "model.attn_implementation=eager"
    )
    sequences = gpu_bench.workload(2, seed=1)
    windows = encode(tokenizer, sequences, 1022)
    tokens = [len(w[0].ids) for w in windows]
    with FlopCounterMode(display=False) as counter:
        for index, sequence_windows in enumerate(windows):  # one at a time: no padding counted
            batch = pad_collate([(index, sequence_windows, None)], tokenizer.pad_token_id)
            logits = model(**model_inputs(batch))
            if mode != "frozen":
                logits.sum().backward()
    if mode == "frozen":
        ours = sum(gpu_bench.flop_terms(model, tokens))
    else:
        ours = gpu_bench._training_flops(model, mode, tokens)
    assert ours == pytest.approx(counter.get_total_flops(), rel=0.03)
    # Attention is a real share at these lengths, so leaving it out would fail the check.
    assert gpu_bench.flop_terms(model, tokens)[1] > 0.1 * ours
