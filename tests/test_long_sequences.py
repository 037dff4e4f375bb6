"""Long sequences in bounded memory: windows read a few per pass give what one pass gives.

A sequence whose windows exceed the token budget is read in passes, stitched and pooled as the
windows come (``stream_windows``). These tests hold that path to the one-pass result for every
pooling and every consumer (predict, pooled and per-residue embeddings), and measure that peak
memory stays flat as the sequence grows, where it used to grow with every window.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import ATOL, logits_as_array, random_protein, tiny_model

from esmtune.config import LongSequences, Pooling
from esmtune.data.batching import EncodedDataset, encode, pad_collate
from esmtune.embeddings import pooled_embeddings, residue_embeddings
from esmtune.inference import model_inputs, over_budget, predict_outputs, stream_windows
from esmtune.model.heads import Pooler, StreamingPooler
from esmtune.model.windows import WindowStitcher


def _batch(tokenizer, sequences: list[str], max_length: int = 20, stride: int = 10) -> dict:
    encoded = encode(tokenizer, sequences, max_length, LongSequences.WINDOW, stride=stride)
    items = [(i, windows, None) for i, windows in enumerate(encoded)]
    return pad_collate(items, tokenizer.pad_token_id)


@pytest.mark.parametrize("pooling", list(Pooling))
@pytest.mark.parametrize("per_pass", [1, 2, 3])
def test_windows_read_in_passes_give_the_one_pass_logits(
    tiny_model_dir: Path, tokenizer, pooling: Pooling, per_pass: int
) -> None:
    model = tiny_model(tiny_model_dir, pooling)
    rng = random.Random(20)
    # Two long sequences (5 and 9 windows, the last window overlapping most) and a short one.
    sequences = [random_protein(rng, 57), random_protein(rng, 93), random_protein(rng, 14)]
    batch = _batch(tokenizer, sequences)
    budget = per_pass * batch["input_ids"].shape[1]
    assert over_budget(batch, budget)
    with torch.inference_mode():
        one_pass = model(**model_inputs(batch))
        passes = stream_windows(model.window_states, batch, budget, model.long_sequence_sink)
    assert len(passes) == 3 and passes[0].shape == (1, 3)
    torch.testing.assert_close(torch.cat(passes), one_pass, atol=ATOL, rtol=0)


def test_window_stitcher_holds_only_one_windows_overlap() -> None:
    """Residues reach the sink in order, each the mean of its windows, as soon as they are final."""

    class Recorder:
        def __init__(self) -> None:
            self.pieces: list[torch.Tensor] = []
            self.pending: list[int] = []

        def add_residues(self, states: torch.Tensor) -> None:
            self.pieces.append(states)
            self.pending.append(stitcher._pending())

        def close(self, cls_state: torch.Tensor) -> torch.Tensor:
            return cls_state

    length, size, stride = 1000, 40, 20
    starts = [*range(0, length - size, stride), length - size]
    states = {s: torch.randn(size, 4) for s in starts}
    recorder = Recorder()
    stitcher = WindowStitcher(recorder)
    for start in starts:
        stitcher.add(start, torch.full((4,), float(start)), states[start])
    cls_state = stitcher.finish()
    expected_sum, covers = torch.zeros(length, 4), torch.zeros(length, 1)
    for start, window in states.items():
        expected_sum[start : start + size] += window
        covers[start : start + size] += 1
    torch.testing.assert_close(torch.cat(recorder.pieces), expected_sum / covers)
    torch.testing.assert_close(cls_state, torch.full((4,), sum(starts) / len(starts)))
    assert max(recorder.pending) <= size  # never more than one window of residues held


def test_window_stitcher_refuses_windows_out_of_order() -> None:
    stitcher = WindowStitcher(StreamingPooler(Pooler(Pooling.MEAN, 4)))
    stitcher.add(0, torch.zeros(4), torch.zeros(10, 4))
    stitcher.add(5, torch.zeros(4), torch.zeros(10, 4))
    with pytest.raises(ValueError, match="out of order"):
        stitcher.add(0, torch.zeros(4), torch.zeros(10, 4))  # residues 0-4 are already final
    with pytest.raises(ValueError, match="gap"):
        stitcher.add(30, torch.zeros(4), torch.zeros(10, 4))  # nothing covers 15-29


@pytest.mark.parametrize("pooling", list(Pooling))
def test_predict_outputs_within_a_small_budget_equal_one_pass(
    tiny_model_dir: Path, tokenizer, pooling: Pooling
) -> None:
    model = tiny_model(tiny_model_dir, pooling)
    rng = random.Random(21)
    sequences = [random_protein(rng, rng.randint(5, 160)) for _ in range(12)]
    dataset = EncodedDataset(encode(tokenizer, sequences, 20, LongSequences.WINDOW, stride=10))
    pad = tokenizer.pad_token_id
    small = predict_outputs(model, dataset, logits_as_array, max_tokens=50, pad_token_id=pad)
    large = predict_outputs(model, dataset, logits_as_array, 100_000, pad)
    np.testing.assert_allclose(small, large, atol=ATOL, rtol=0)


@pytest.mark.parametrize("pooling", [Pooling.CLS, Pooling.MEAN, Pooling.MAX])
def test_embeddings_within_a_small_budget_equal_one_pass(
    tiny_model_dir: Path, tokenizer, pooling: Pooling
) -> None:
    model = tiny_model(tiny_model_dir)
    rng = random.Random(22)
    sequences = [random_protein(rng, n) for n in (150, 12, 77)]
    dataset = EncodedDataset(encode(tokenizer, sequences, 20, LongSequences.WINDOW, stride=10))
    pad = tokenizer.pad_token_id
    pooler = Pooler(pooling, 32)
    small = pooled_embeddings(model, dataset, pad, 40, pooler)
    large = pooled_embeddings(model, dataset, pad, 100_000, pooler)
    torch.testing.assert_close(small, large, atol=ATOL, rtol=0)
    per_residue_small = residue_embeddings(model, dataset, pad, 40)
    per_residue_large = residue_embeddings(model, dataset, pad, 100_000)
    assert [len(x) for x in per_residue_small] == [150, 12, 77]
    for got, want in zip(per_residue_small, per_residue_large, strict=True):
        torch.testing.assert_close(got, want, atol=ATOL, rtol=0)


# --- peak memory ----------------------------------------------------------------------------

_MEASURE = textwrap.dedent(
    """
    import json, random, resource, sys
    from esmtune.predict import Predictor

    def peak_mb():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    predictor = Predictor.from_run(sys.argv[1], device="cpu", max_tokens=int(sys.argv[2]))
    rng = random.Random(0)
    protein = lambda n: "".join(rng.choice("ACDEFGHIKLMNPQRSTVWY") for _ in range(n))
    predictor.predict([protein(60)])  # warm-up: one window
    base = peak_mb()
    growth = {}
    for length in map(int, sys.argv[3:]):  # ascending: ru_maxrss only ever rises
        predictor.predict([protein(length)])
        growth[length] = peak_mb() - base
    print(json.dumps(growth))
    """
)


@pytest.mark.end_to_end
def test_peak_memory_is_flat_in_sequence_length(lora_run: Path) -> None:
    """From 2,000 to 32,000 residues (50 to 800 windows of 80), peak memory must not follow.

    Measured in a fresh process (peak resident memory is per process). With all windows in one
    pass, as before, this model's peak grew by 13, 54 and 219 MB for 2,000, 8,000 and 32,000
    residues; now by about 6, 9 and 12 MB: what remains is the token ids themselves (some 80
    bytes per residue), not activations.
    """
    lengths = [2_000, 8_000, 32_000]
    answer = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(lora_run), "1024", *map(str, lengths)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    growth = {int(k): v for k, v in json.loads(answer.stdout.splitlines()[-1]).items()}
    # 16x the residues: growing with them would add 15x the first growth. Flat means far less:
    # under a quarter of that, with 10 MB of room for the token ids and the allocator.
    extra = growth[32_000] - growth[2_000]
    assert extra < max(10.0, 0.25 * 15 * growth[2_000]), growth
