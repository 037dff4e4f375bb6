"""Encoding, token-budget batching and window stitching, checked against plain computations.

The references are deliberately naive: the ESM2 tokenizer itself, one sequence at a time through
the model, and Python loops averaging each residue over the windows that cover it.
"""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from tests.helpers import ATOL, RESIDUES, logits_as_array, random_protein, tiny_model

from esmtune.config import LongSequences, Pooling
from esmtune.data.batching import (
    EncodedDataset,
    TokenBudgetBatchSampler,
    Window,
    encode,
    pad_collate,
    window_starts,
)
from esmtune.inference import eval_loader, model_inputs, predict_outputs
from esmtune.model.classifier import SequenceClassifier

# --- encode ---------------------------------------------------------------------------------


def test_vocabulary_lookup_matches_the_esm2_tokenizer(tokenizer) -> None:
    rng = random.Random(0)
    sequences = [random_protein(rng, rng.randint(1, 300)) for _ in range(50)]
    sequences.append(RESIDUES)  # every letter at least once
    encoded = encode(tokenizer, sequences, max_length=1022)
    expected = tokenizer(sequences, add_special_tokens=True)["input_ids"]
    assert [[window.ids for window in windows] for windows in encoded] == [[e] for e in expected]
    assert all(windows[0].start == 0 for windows in encoded)
    assert tokenizer.unk_token_id not in {i for ids in expected for i in ids}


def test_truncate_keeps_the_first_residues(tokenizer) -> None:
    sequence = random_protein(random.Random(1), 57)
    [[window]] = encode(tokenizer, [sequence], 20, LongSequences.TRUNCATE)
    assert window.start == 0
    assert window.ids == tokenizer(sequence[:20])["input_ids"]


@pytest.mark.parametrize(
    ("length", "start"),
    [(25, 2), (24, 2), (21, 0), (57, 18)],
    ids=["odd-leftover-extra-at-tail", "even-leftover", "one-over", "long"],
)
def test_centre_keeps_the_middle_residues(tokenizer, length: int, start: int) -> None:
    sequence = random_protein(random.Random(length), length)
    [[window]] = encode(tokenizer, [sequence], 20, LongSequences.CENTRE)
    assert window.start == start
    assert window.ids == tokenizer(sequence[start : start + 20])["input_ids"]


@pytest.mark.parametrize(
    ("length", "stride", "starts"),
    [
        (57, 10, [0, 10, 20, 30, 37]),
        (57, None, [0, 10, 20, 30, 37]),  # default stride: max_length // 2
        (60, 20, [0, 20, 40]),  # the last window already ends at the end: no duplicate
        (21, 7, [0, 1]),
        (23, 1, [0, 1, 2, 3]),
    ],
)
def test_windows_cover_every_residue(
    tokenizer, length: int, stride: int | None, starts: list[int]
) -> None:
    sequence = random_protein(random.Random(length), length)
    [windows] = encode(tokenizer, [sequence], 20, LongSequences.WINDOW, stride=stride)
    assert [window.start for window in windows] == starts
    covered = set()
    for window in windows:
        assert len(window.ids) == 20 + 2
        assert window.ids == tokenizer(sequence[window.start : window.start + 20])["input_ids"]
        covered.update(range(window.start, window.start + 20))
    assert covered == set(range(length))
    assert windows[-1].start + 20 == length


def test_short_sequences_are_one_window_whatever_the_mode(tokenizer) -> None:
    rng = random.Random(2)
    sequences = [random_protein(rng, length) for length in (5, 19, 20)]
    modes = [encode(tokenizer, sequences, 20, mode) for mode in LongSequences]
    assert modes[0] == modes[1] == modes[2]
    assert all(len(windows) == 1 for windows in modes[0])


@pytest.mark.parametrize(
    ("length", "size", "stride", "starts"),
    [
        (5, 10, 5, [0]),  # shorter than a window
        (10, 10, 5, [0]),  # exactly one window
        (11, 10, 5, [0, 1]),  # one residue over: the second window is shifted by one
        (14, 10, 1, [0, 1, 2, 3, 4]),  # stride 1: every offset
        (30, 10, 10, [0, 10, 20]),  # stride == size, an exact fit: no overlap
        (35, 10, 10, [0, 10, 20, 25]),  # stride == size: the last window overlaps
    ],
)
def test_window_starts_edge_cases(length: int, size: int, stride: int, starts: list[int]) -> None:
    assert window_starts(length, size, stride) == starts


# --- pad_collate ----------------------------------------------------------------------------


def test_pad_collate_without_windows_has_no_window_keys(tokenizer) -> None:
    windows = encode(tokenizer, ["MKT", "MKTAYIAK"], 20, LongSequences.WINDOW)
    targets = np.array([1, 0])
    batch = pad_collate(
        [(5, windows[0], targets[0]), (2, windows[1], targets[1])], tokenizer.pad_token_id
    )
    assert set(batch) == {"index", "input_ids", "attention_mask", "target"}
    assert batch["index"].tolist() == [5, 2]
    assert batch["input_ids"].tolist() == [
        [*windows[0][0].ids, *[tokenizer.pad_token_id] * 5],
        windows[1][0].ids,
    ]
    assert batch["attention_mask"].sum(dim=1).tolist() == [5, 10]
    assert batch["target"].tolist() == [1, 0]


def test_pad_collate_describes_the_windows(tokenizer) -> None:
    rng = random.Random(3)
    short, long = random_protein(rng, 10), random_protein(rng, 57)
    encoded = encode(tokenizer, [short, long], 20, LongSequences.WINDOW, stride=10)
    batch = pad_collate([(7, encoded[0], None), (3, encoded[1], None)], tokenizer.pad_token_id)
    assert "target" not in batch
    assert batch["index"].tolist() == [7, 3]
    assert batch["input_ids"].shape == (1 + 5, 22)
    assert batch["window_owner"].tolist() == [0, 1, 1, 1, 1, 1]
    assert batch["window_start"].tolist() == [0, 0, 10, 20, 30, 37]
    assert batch["residue_count"].tolist() == [10, 57]
    assert batch["attention_mask"].sum(dim=1).tolist() == [12, 22, 22, 22, 22, 22]


# --- TokenBudgetBatchSampler ----------------------------------------------------------------


def make_lengths(count: int, seed: int, windowed: bool) -> tuple[list[int], list[int]]:
    """Long-tailed token counts (with BOS/EOS), and window counts (1-3 when ``windowed``)."""
    rng = random.Random(seed)
    tokens = [min(2 + int(rng.lognormvariate(3.5, 0.8)), 130) for _ in range(count)]
    counts = [rng.randint(1, 3) if windowed else 1 for _ in range(count)]
    return tokens, counts


def batch_cost(batch: list[int], tokens: list[int], counts: list[int]) -> int:
    return sum(counts[i] for i in batch) * max(tokens[i] for i in batch)


SAMPLER_CASES = [
    pytest.param(shuffle, max_sequences, windowed, id=f"{name}-{limit}-{kind}")
    for shuffle, name in ((False, "sorted"), (True, "shuffled"))
    for max_sequences, limit in ((None, "budget"), (4, "max4"))
    for windowed, kind in ((False, "single"), (True, "windows"))
]


@pytest.mark.parametrize(("shuffle", "max_sequences", "windowed"), SAMPLER_CASES)
def test_every_sequence_once_within_the_budget(
    shuffle: bool, max_sequences: int | None, windowed: bool
) -> None:
    tokens, counts = make_lengths(200, seed=4, windowed=windowed)
    tokens[17] = 500  # alone over the budget
    sampler = TokenBudgetBatchSampler(
        tokens,
        max_tokens=400,
        shuffle=shuffle,
        seed=1,
        window_counts=counts,
        max_sequences=max_sequences,
        group_size=64,
    )
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(sampler) == len(batches)
        assert sorted(i for batch in batches for i in batch) == list(range(len(tokens)))
        assert [17] in batches
        for batch in batches:
            assert len(batch) == 1 or batch_cost(batch, tokens, counts) <= 400
            assert max_sequences is None or len(batch) <= max_sequences
    assert len(batches) > 10  # the budget really cut the data into many batches


def test_unshuffled_batches_are_longest_first_and_stable() -> None:
    tokens, counts = make_lengths(100, seed=5, windowed=True)
    sampler = TokenBudgetBatchSampler(tokens, 300, shuffle=False, window_counts=counts)
    batches = list(sampler)
    order = [i for batch in batches for i in batch]
    assert [tokens[i] for i in order] == sorted(tokens, reverse=True)
    sampler.set_epoch(3)
    assert list(sampler) == batches
    assert list(TokenBudgetBatchSampler(tokens, 300, shuffle=False, window_counts=counts)) == (
        batches
    )


def test_shuffled_order_changes_per_epoch_and_resumes_exactly() -> None:
    tokens, counts = make_lengths(150, seed=6, windowed=True)

    def sampler() -> TokenBudgetBatchSampler:
        return TokenBudgetBatchSampler(
            tokens, 300, shuffle=True, seed=11, window_counts=counts, group_size=50
        )

    first = sampler()
    epochs = []
    for epoch in range(3):
        first.set_epoch(epoch)
        epochs.append(list(first))
    assert epochs[0] != epochs[1] != epochs[2] != epochs[0]
    # The same (seed, epoch) gives the same batches: again, and from a fresh sampler (resume).
    first.set_epoch(1)
    assert list(first) == epochs[1]
    resumed = sampler()
    resumed.set_epoch(2)
    assert list(resumed) == epochs[2]
    other_seed = TokenBudgetBatchSampler(
        tokens, 300, shuffle=True, seed=12, window_counts=counts, group_size=50
    )
    assert list(other_seed) != epochs[0]


def test_sampler_has_no_batch_size_attribute() -> None:
    # accelerate's BatchSamplerShard (accelerate/data_loader.py, __init__) reads
    # `getattr(batch_sampler, "batch_size", None)`; only None makes `_iter_with_no_split` treat
    # batches as variable-length lists. With a batch_size it yields a round of batches only when
    # the last one has exactly batch_size indices, and pads the final round with indices cycled
    # to batch_size: wrong for token-budget batches.
    sampler = TokenBudgetBatchSampler([10, 20, 30], 100, shuffle=True)
    assert not hasattr(sampler, "batch_size")


@pytest.mark.parametrize("replicas", [2, 3])
@pytest.mark.parametrize("shuffle", [False, True], ids=["sorted", "shuffled"])
@pytest.mark.parametrize("windowed", [False, True], ids=["single", "windows"])
def test_batches_share_evenly_between_processes(
    replicas: int, shuffle: bool, windowed: bool
) -> None:
    from accelerate.data_loader import BatchSamplerShard

    tokens, counts = make_lengths(101, seed=7, windowed=windowed)

    def sampler(max_tokens: int, num_replicas: int) -> TokenBudgetBatchSampler:
        return TokenBudgetBatchSampler(
            tokens,
            max_tokens,
            shuffle=shuffle,
            seed=3,
            window_counts=counts,
            num_replicas=num_replicas,
        )

    uneven = False
    for max_tokens, epoch in itertools.product((300, 500, 700), range(3)):
        alone, shared = sampler(max_tokens, 1), sampler(max_tokens, replicas)
        alone.set_epoch(epoch)
        shared.set_epoch(epoch)
        uneven |= len(alone) % replicas != 0  # so the splitting is exercised
        batches = list(shared)
        assert len(batches) == len(shared)
        assert len(batches) % replicas == 0
        for batch in batches:
            assert len(batch) == 1 or batch_cost(batch, tokens, counts) <= max_tokens
        # Round-robin, as BatchSamplerShard hands out batches of a sampler without batch_size.
        shares = [[i for batch in batches[r::replicas] for i in batch] for r in range(replicas)]
        assert len({len(batches[r::replicas]) for r in range(replicas)}) == 1
        assert sorted(i for share in shares for i in share) == list(range(len(tokens)))
        # And through accelerate itself: no index repeated (no cycling back), none lost.
        seen = []
        steps = set()
        for rank in range(replicas):
            shard = BatchSamplerShard(
                shared, num_processes=replicas, process_index=rank, even_batches=True
            )
            own = list(shard)
            steps.add(len(own))
            assert len(own) == len(shard)
            seen += [i for batch in own for i in batch]
        assert len(steps) == 1
        assert sorted(seen) == list(range(len(tokens)))
    assert uneven


def test_fewer_sequences_than_processes_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 sequence"):
        TokenBudgetBatchSampler([10, 12], 100, shuffle=False, num_replicas=3)


def test_one_sequence_batches_share_evenly_between_processes() -> None:
    from accelerate.data_loader import BatchSamplerShard

    sampler = TokenBudgetBatchSampler(
        [10] * 5, 1000, shuffle=False, max_sequences=1, num_replicas=2
    )
    seen = [
        i
        for rank in range(2)
        for batch in BatchSamplerShard(sampler, num_processes=2, process_index=rank)
        for i in batch
    ]
    assert sorted(seen) == list(range(5))  # nothing lost, nothing repeated
    assert len(sampler) % 2 == 0
    assert sorted(map(len, sampler)) == [1, 1, 1, 2]  # the two shortest share a batch


# --- predict_outputs ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [LongSequences.TRUNCATE, LongSequences.WINDOW])
def test_predict_outputs_are_in_input_order(
    tiny_model_dir: Path, tokenizer, mode: LongSequences
) -> None:
    model = tiny_model(tiny_model_dir)
    rng = random.Random(8)
    sequences = [random_protein(rng, rng.randint(3, 45)) for _ in range(23)]
    dataset = EncodedDataset(encode(tokenizer, sequences, 20, mode, stride=10))
    pad = tokenizer.pad_token_id
    assert len(eval_loader(dataset, 64, pad)) > 5  # a small budget: many batches, sorted
    batched = predict_outputs(model, dataset, logits_as_array, max_tokens=64, pad_token_id=pad)
    one_by_one = np.stack(
        [
            predict_outputs(model, EncodedDataset([windows]), logits_as_array, 10_000, pad)[0]
            for windows in dataset.windows
        ]
    )
    assert batched.shape == (23, 3)
    assert torch.allclose(torch.from_numpy(batched), torch.from_numpy(one_by_one), atol=ATOL)


# --- windows --------------------------------------------------------------------------------


@torch.inference_mode()
def manual_stitch(
    model: SequenceClassifier, windows: list[Window], length: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each window alone through the backbone; residues averaged over the windows covering them.

    Returns ``<cls> residues <eos>`` states ``(length + 2, hidden)`` and the residue mask.
    """
    hidden = model.backbone.config.hidden_size
    residues = torch.zeros(length, hidden)
    covers = torch.zeros(length, 1)
    ends = []
    for window in windows:
        ids = torch.tensor([window.ids])
        states = model.backbone(input_ids=ids, attention_mask=torch.ones_like(ids))
        states = states.last_hidden_state[0]
        count = len(window.ids) - 2
        residues[window.start : window.start + count] += states[1 : 1 + count]
        covers[window.start : window.start + count] += 1
        ends.append((states[0], states[1 + count]))
    assert bool((covers > 0).all())
    cls = torch.stack([first for first, _ in ends]).mean(dim=0)
    eos = torch.stack([last for _, last in ends]).mean(dim=0)
    stitched = torch.cat([cls[None], residues / covers, eos[None]])
    mask = torch.zeros(length + 2, dtype=torch.bool)
    mask[1 : length + 1] = True
    return stitched, mask


def pooled(model: SequenceClassifier, items: list, pad_token_id: int) -> torch.Tensor:
    with torch.inference_mode():
        return model.pooled(**model_inputs(pad_collate(items, pad_token_id)))


def test_residue_states_stitch_windows_like_a_manual_average(tiny_model_dir, tokenizer) -> None:
    model = tiny_model(tiny_model_dir)
    sequence = random_protein(random.Random(9), 57)
    [windows] = encode(tokenizer, [sequence], 20, LongSequences.WINDOW, stride=10)
    assert len(windows) == 5
    batch = pad_collate([(0, windows, None)], tokenizer.pad_token_id)
    with torch.inference_mode():
        states, mask = model.residue_states(**model_inputs(batch))
    expected, expected_mask = manual_stitch(model, windows, 57)
    assert states.shape == (1, 59, 32)
    assert torch.equal(mask[0], expected_mask)
    assert torch.allclose(states[0], expected, atol=ATOL)


@pytest.mark.parametrize("pooling", list(Pooling))
def test_pooling_sees_the_stitched_sequence(tiny_model_dir, tokenizer, pooling: Pooling) -> None:
    model = tiny_model(tiny_model_dir, pooling)
    sequence = random_protein(random.Random(10), 57)
    [windows] = encode(tokenizer, [sequence], 20, LongSequences.WINDOW, stride=10)
    stitched, mask = manual_stitch(model, windows, 57)
    residues = stitched[1:-1]
    if pooling is Pooling.MEAN:
        expected = residues.mean(dim=0)
    elif pooling is Pooling.MAX:
        expected = residues.max(dim=0).values
    elif pooling is Pooling.CLS:
        expected = stitched[0]
    else:
        with torch.inference_mode():
            expected = model.pooler(stitched[None], mask[None])[0]
    assert torch.allclose(pooled(model, [(0, windows, None)], 1)[0], expected, atol=ATOL)


@pytest.mark.parametrize("pooling", list(Pooling))
def test_a_short_sequence_is_unaffected_by_a_windowed_neighbour(
    tiny_model_dir, tokenizer, pooling: Pooling
) -> None:
    model = tiny_model(tiny_model_dir, pooling)
    rng = random.Random(11)
    long, short = random_protein(rng, 57), random_protein(rng, 13)
    encoded = encode(tokenizer, [long, short], 20, LongSequences.WINDOW, stride=10)
    pad = tokenizer.pad_token_id
    mixed = pooled(model, [(0, encoded[0], None), (1, encoded[1], None)], pad)
    alone = pooled(model, [(1, encoded[1], None)], pad)
    # The short one, read on its own with no windowing at all.
    plain = tokenizer([short], return_tensors="pt")
    with torch.inference_mode():
        unwindowed = model.pooled(
            input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]
        )
    assert torch.allclose(mixed[1], alone[0], atol=ATOL)
    assert torch.allclose(mixed[1], unwindowed[0], atol=ATOL)
    long_alone = pooled(model, [(0, encoded[0], None)], pad)
    assert torch.allclose(mixed[0], long_alone[0], atol=ATOL)


def test_a_sequence_within_one_window_pools_the_same_as_truncated(
    tiny_model_dir, tokenizer
) -> None:
    model = tiny_model(tiny_model_dir, Pooling.ATTENTION)
    sequence = random_protein(random.Random(12), 17)
    by_mode = {
        mode: pooled(model, [(0, encode(tokenizer, [sequence], 20, mode)[0], None)], 1)
        for mode in (LongSequences.WINDOW, LongSequences.TRUNCATE)
    }
    assert torch.equal(by_mode[LongSequences.WINDOW], by_mode[LongSequences.TRUNCATE])
