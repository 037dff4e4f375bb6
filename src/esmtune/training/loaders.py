"""Checked data to loaders: token windows (or, frozen, cached embeddings) in token-budget batches.

The train loader's sampler is kept next to it because the loop re-seeds it with the true epoch
on every pass (a resumed process would otherwise start counting at 0).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch.utils.data import DataLoader

from esmtune.config import FinetuneMode, Pooling, TrainConfig
from esmtune.data.batching import (
    BudgetedDataset,
    EncodedDataset,
    TokenBudgetBatchSampler,
    encode,
    pad_collate,
)
from esmtune.data.check import DataReport
from esmtune.data.embedding_files import EmbeddingFile, read_embeddings
from esmtune.data.fasta import SequenceRecord
from esmtune.embeddings import (
    EmbeddedDataset,
    EmbeddingCache,
    FileEmbeddings,
    embedding_collate,
    pooled_share,
    residue_share,
)
from esmtune.inference import eval_loader
from esmtune.model.classifier import SequenceClassifier
from esmtune.processes import Processes
from esmtune.tasks import TaskSpec
from esmtune.training.log import say
from esmtune.training.residue_cache import (
    CachedResidueStates,
    cache_residue_states,
    residue_state_collate,
)

__all__ = ["encode_split", "evaluation_sample", "make_embedding_loaders", "make_loaders"]


def encode_split(
    report: DataReport, split: str, tokenizer: Any, config: TrainConfig, spec: TaskSpec
) -> EncodedDataset:
    """Token windows and encoded targets of one split."""
    return _encode(report.splits[split], tokenizer, config, spec)


def evaluation_sample(
    records: list[SequenceRecord], fraction: float, seed: int, processes: int
) -> list[SequenceRecord]:
    """A seeded share of the validation records, the same at every evaluation and on resume.

    At least one record per process, so that every process has a batch to evaluate.
    """
    if fraction >= 1.0:
        return records
    count = min(len(records), max(processes, round(fraction * len(records))))
    chosen = sorted(random.Random(seed).sample(range(len(records)), count))
    return [records[i] for i in chosen]


def _split_records(
    accelerator: Accelerator, config: TrainConfig, report: DataReport
) -> dict[str, list[SequenceRecord]]:
    """Train's records, and validation's (or the sample training.eval_fraction asks for)."""
    training = config.training
    validation = report.splits["validation"]
    sample = evaluation_sample(
        validation, training.eval_fraction, training.seed, accelerator.num_processes
    )
    if len(sample) < len(validation):
        say(
            accelerator,
            f"validation: evaluating on {len(sample)} of {len(validation)} sequences "
            f"(training.eval_fraction {training.eval_fraction:g}, seeded)",
        )
    return {"train": report.splits["train"], "validation": sample}


def _encode(
    records: list[SequenceRecord], tokenizer: Any, config: TrainConfig, spec: TaskSpec
) -> EncodedDataset:
    data = config.data
    windows = encode(
        tokenizer, [r.sequence for r in records], data.max_length, data.long_sequences,
        data.window_stride,
    )  # fmt: skip
    return EncodedDataset(windows, spec.encode_targets(records), residue_targets=spec.per_residue)


def make_loaders(
    accelerator: Accelerator,
    config: TrainConfig,
    report: DataReport,
    tokenizer: Any,
    spec: TaskSpec,
    model: SequenceClassifier,
) -> tuple[DataLoader, TokenBudgetBatchSampler, DataLoader]:
    """Encoded (or, frozen, embedded) train and validation sets behind token-budget loaders.

    Returns:
        The train loader, its sampler (re-seeded every epoch) and the validation loader.
    """
    records = _split_records(accelerator, config, report)
    encoded = {split: _encode(recs, tokenizer, config, spec) for split, recs in records.items()}
    datasets: Mapping[str, BudgetedDataset] = encoded
    if _caches_residue_states(config, spec):
        # Every residue's state, once, on disk; the head trains on them.
        datasets = _residue_states_once(accelerator, model, tokenizer.pad_token_id, config,
                                        records, encoded)  # fmt: skip
    elif not spec.per_residue and _caches_embeddings(config):
        # The backbone's only work: from here on the head trains on cached embeddings.
        datasets = _embed_once(accelerator, model, tokenizer.pad_token_id, config, records, encoded)
    train_set, val_set = datasets["train"], datasets["validation"]
    processes = accelerator.num_processes
    train_loader, train_sampler = _make_train_loader(
        train_set, config, tokenizer.pad_token_id, processes
    )
    val_loader = eval_loader(
        val_set, config.training.max_tokens, tokenizer.pad_token_id,
        max_sequences=config.training.batch_size, num_replicas=processes,
        collate_fn=_collate(val_set, tokenizer.pad_token_id),
    )  # fmt: skip
    return train_loader, train_sampler, val_loader


# Sequences per batch when a head trains on embeddings from a file and training.batch_size is
# unset: pooled vectors cost one token each, so the token budget alone would allow thousands.
EMBEDDING_BATCH = 32


def make_embedding_loaders(
    accelerator: Accelerator, config: TrainConfig, report: DataReport, spec: TaskSpec
) -> tuple[EmbeddingFile, DataLoader, TokenBudgetBatchSampler, DataLoader]:
    """Loaders over the embeddings of ``data.embeddings`` (checked by the data check).

    Returns:
        The file, the train loader, its sampler (re-seeded every epoch) and the validation loader.
    """
    assert config.data.embeddings is not None
    found = read_embeddings(config.data.embeddings)
    training = config.training
    records = _split_records(accelerator, config, report)
    datasets = {
        split: FileEmbeddings([found.vectors[r.id] for r in recs], spec.encode_targets(recs))
        for split, recs in records.items()
    }
    say(
        accelerator,
        f"{found.path}: training the head on {'per-residue' if found.per_residue else 'pooled'} "
        f"embeddings of size {found.dim}; no backbone runs (model.name and finetune unused)",
    )
    batch = training.batch_size or EMBEDDING_BATCH
    processes = accelerator.num_processes
    train_loader, sampler = _make_train_loader(datasets["train"], config, 0, processes, batch)
    val_set = datasets["validation"]
    val_loader = eval_loader(
        val_set, training.max_tokens, 0, max_sequences=batch, num_replicas=processes,
        collate_fn=val_set.collate,
    )  # fmt: skip
    return found, train_loader, sampler, val_loader


def _caches_residue_states(config: TrainConfig, spec: TaskSpec) -> bool:
    """Frozen backbone and a per-residue task: each residue's state never changes."""
    frozen = config.finetune.mode is FinetuneMode.FROZEN
    return spec.per_residue and frozen and config.finetune.cache_embeddings


def _caches_embeddings(config: TrainConfig) -> bool:
    """Frozen backbone and a pooling without parameters: the pooled embedding never changes."""
    return (
        config.finetune.mode is FinetuneMode.FROZEN
        and config.finetune.cache_embeddings
        and config.model.pooling is not Pooling.ATTENTION
    )


def _cache_root(config: TrainConfig) -> Path:
    return config.finetune.cache_dir or (
        Path(os.environ.get("ESMTUNE_CACHE", "~/.cache/esmtune")).expanduser() / "embeddings"
    )


def _residue_states_once(
    accelerator: Accelerator,
    model: SequenceClassifier,
    pad_token_id: int,
    config: TrainConfig,
    records: dict[str, list[SequenceRecord]],
    datasets: dict[str, EncodedDataset],
) -> dict[str, CachedResidueStates]:
    """Per-residue states of every split, read from the cache or computed once, shared by tokens."""
    cache = EmbeddingCache.for_run(_cache_root(config), model, config, per_residue=True)
    model.to(accelerator.device)
    processes = Processes(accelerator.state)
    cached: dict[str, CachedResidueStates] = {}
    for split, dataset in datasets.items():
        sequences = [r.sequence for r in records[split]]

        def compute(
            missing: list[int], dataset: EncodedDataset = dataset
        ) -> dict[int, torch.Tensor]:
            subset = EncodedDataset([dataset.windows[i] for i in missing])
            show = len(missing) > 1
            share = residue_share(model, subset, pad_token_id, None, processes, progress=show)
            return {missing[row]: states for row, states in share.items()}

        started = time.perf_counter()
        locations, computed = cache_residue_states(cache, sequences, compute, processes)
        size = sum(shard.stat().st_size for shard in {shard for shard, _ in locations})
        say(
            accelerator,
            f"{split}: residue states of {sum(computed)} sequence(s) computed"
            f"{_by_process(computed)}, "
            f"{len(sequences) - sum(computed)} read from the cache {cache.folder} "
            f"({time.perf_counter() - started:.1f} s; float16, {_size(size)} on disk)",
        )
        cached[split] = CachedResidueStates(locations, dataset)
    return cached


def _by_process(counts: list[int]) -> str:
    """Who computed what, under several processes: `` (61 + 59 on 2 processes)``."""
    if len(counts) == 1 or not sum(counts):
        return ""
    return f" ({' + '.join(map(str, counts))} on {len(counts)} processes)"


def _size(size: int) -> str:
    """Bytes as people read them."""
    for unit in ("bytes", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "bytes" else f"{size:.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return f"{size:.1f} GiB"


def _embed_once(
    accelerator: Accelerator,
    model: SequenceClassifier,
    pad_token_id: int,
    config: TrainConfig,
    records: dict[str, list[SequenceRecord]],
    datasets: dict[str, EncodedDataset],
) -> dict[str, EmbeddedDataset]:
    """Pooled embeddings of every split, from the cache or computed once, shared by tokens."""
    cache = EmbeddingCache.for_run(_cache_root(config), model, config)
    model.to(accelerator.device)
    processes = Processes(accelerator.state)
    embedded: dict[str, EmbeddedDataset] = {}
    for split, dataset in datasets.items():
        sequences = [r.sequence for r in records[split]]

        def compute(
            missing: list[int], dataset: EncodedDataset = dataset
        ) -> dict[int, torch.Tensor]:
            subset = EncodedDataset([dataset.windows[i] for i in missing])
            share = pooled_share(model, subset, pad_token_id, None, processes, progress=True)
            return {missing[row]: vector for row, vector in share.items()}

        started = time.perf_counter()
        embeddings, computed = cache.fetch(sequences, compute, processes)
        say(
            accelerator,
            f"{split}: {sum(computed)} embedding(s) computed{_by_process(computed)}, "
            f"{len(sequences) - sum(computed)} read from the cache {cache.folder} "
            f"({time.perf_counter() - started:.1f} s)",
        )
        embedded[split] = EmbeddedDataset(embeddings, dataset)
    return embedded


def _make_train_loader(
    dataset: BudgetedDataset,
    config: TrainConfig,
    pad_token_id: int,
    processes: int,
    max_sequences: int | None = None,
) -> tuple[DataLoader, TokenBudgetBatchSampler]:
    training = config.training
    sampler = TokenBudgetBatchSampler(
        dataset.tokens,
        training.max_tokens,
        shuffle=True,
        seed=training.seed,
        window_counts=dataset.window_counts,
        max_sequences=max_sequences or training.batch_size,
        num_replicas=processes,
    )
    loader = DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=_collate(dataset, pad_token_id),
        num_workers=training.num_workers,
        # Its own generator: creating an iterator then draws no number from the global RNG, so a
        # resumed run (which creates one more iterator) keeps the same dropout masks.
        generator=torch.Generator().manual_seed(training.seed),
    )
    return loader, sampler


def _collate(
    dataset: BudgetedDataset, pad_token_id: int
) -> Callable[[list[Any]], dict[str, torch.Tensor]]:
    if isinstance(dataset, FileEmbeddings):
        return dataset.collate
    if isinstance(dataset, EmbeddedDataset):
        return embedding_collate
    if isinstance(dataset, CachedResidueStates):
        return residue_state_collate
    return partial(pad_collate, pad_token_id=pad_token_id, residue_targets=dataset.residue_targets)
