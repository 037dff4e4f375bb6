"""Embeddings: computed once, cached on disk, and written for other tools.

A frozen backbone gives the same pooled embedding for a sequence every epoch, so frozen-mode
training computes it once and trains the head on the cache: from epoch 2 on the backbone never
runs. The cache is keyed by what determines the embedding (model, revision or weights, pooling,
max length, long-sequence handling) and, inside, by each sequence's hash, so a changed dataset
reuses what is already there. ``esmtune embed`` writes embeddings with their ids.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from esmtune.config import LongSequences, Pooling, TrainConfig
from esmtune.data.batching import BudgetedDataset, EncodedDataset, encode, loader_sequences
from esmtune.data.check import sequence_problem
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import DataError, EsmtuneError, ModelLoadError, RunDirError
from esmtune.inference import (
    eval_loader,
    inference_budget,
    model_inputs,
    over_budget,
    precision_context,
    stream_windows,
)
from esmtune.model.backbone import esm2_tokenizer
from esmtune.model.classifier import SequenceClassifier, build_model
from esmtune.model.embedding_head import EmbeddingClassifier, EmbeddingSource
from esmtune.model.heads import Pooler, StreamingPooler
from esmtune.model.run_model import LoadedRun, load_run, load_weights
from esmtune.model.windows import ResidueSink
from esmtune.processes import Processes, join_shares
from esmtune.rundir import CONFIG_FILE, WEIGHTS_FILE, read_run
from esmtune.storage import save_tensors

__all__ = [
    "EMBEDDING_FORMATS",
    "EmbeddedDataset",
    "EmbeddingCache",
    "FileEmbeddings",
    "backbone_fingerprint",
    "embed_records",
    "embedding_collate",
    "load_embedder",
    "load_embedding_run",
    "pooled_embeddings",
    "pooled_share",
    "residue_embeddings",
    "residue_share",
    "sequence_key",
    "write_embeddings",
]

EMBEDDING_FORMATS = (".h5", ".npz", ".safetensors")


def _progress(total: int, show: bool, what: str) -> tqdm:
    return tqdm(total=total, desc=what, unit="seq", disable=not show, dynamic_ncols=True)


@torch.inference_mode()
def _share(
    model: SequenceClassifier,
    dataset: EncodedDataset,
    pad_token_id: int,
    max_tokens: int | None,
    reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | list[torch.Tensor]],
    make_sink: Callable[[], ResidueSink],
    progress: bool,
    precision: str,
    processes: Processes,
) -> dict[int, torch.Tensor]:
    """Run the backbone over this process's share of ``dataset``, one tensor per sequence back.

    ``reduce(states, mask)`` turns a batch's residue states into one tensor per sequence; a long
    sequence whose windows exceed the budget is read in passes into ``make_sink()`` instead,
    which must give the same result. Results are ``{index: tensor}``, float32, on the CPU.
    """
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    budget = max_tokens or inference_budget(device)
    loader = eval_loader(dataset, budget, pad_token_id, processes=processes)
    total = loader_sequences(loader)  # (this process's share)
    rows: dict[int, torch.Tensor] = {}
    bar = _progress(total, progress and processes.is_main, "embed")
    with precision_context(precision, device):
        for batch in loader:
            reduced: torch.Tensor | list[torch.Tensor]  # a tensor's rows, or one per sequence
            if over_budget(batch, budget):
                reduced = stream_windows(model.window_states, batch, budget, make_sink, device)
            else:
                reduced = reduce(*model.residue_states(**model_inputs(batch, device)))
            indices = batch["index"].tolist()
            rows.update(zip(indices, [r.float().cpu() for r in reduced], strict=True))
            bar.update(len(batch["index"]))
    bar.close()
    model.train(was_training)
    return rows


def pooled_share(
    model: SequenceClassifier,
    dataset: EncodedDataset,
    pad_token_id: int,
    max_tokens: int | None,
    processes: Processes,
    pooler: Pooler | None = None,
    progress: bool = False,
    precision: str = "fp32",
) -> dict[int, torch.Tensor]:
    """This process's share of :func:`pooled_embeddings`: ``{index: vector}``.

    For the frozen-mode cache, where each process writes its own share and none is sent.
    """
    device = next(model.parameters()).device
    pool = pooler.to(device) if pooler is not None else model.pooler
    return _share(
        model, dataset, pad_token_id, max_tokens, pool, lambda: StreamingPooler(pool),
        progress, precision, processes,
    )  # fmt: skip


def pooled_embeddings(
    model: SequenceClassifier,
    dataset: EncodedDataset,
    pad_token_id: int,
    max_tokens: int | None,
    pooler: Pooler | None = None,
    progress: bool = False,
    precision: str = "fp32",
    processes: Processes | None = None,
) -> torch.Tensor:
    """One pooled vector per sequence of ``dataset``, in its order, as float32 on the CPU.

    Args:
        model: The model whose backbone (and, by default, pooling) is used.
        dataset: Encoded windows.
        pad_token_id: Padding id of the tokenizer.
        max_tokens: Token budget per batch (None: the device's default).
        pooler: Pooling to apply instead of the model's own (``esmtune embed``).
        progress: Show a progress bar.
        precision: ``fp32``, ``bf16`` or ``auto`` (see :func:`precision_context`).
        processes: Each computes its share of the batches and every one gets all vectors
            (default: this process computes all).
    """
    processes = processes or Processes()
    shares = processes.gather(
        lambda: pooled_share(
            model, dataset, pad_token_id, max_tokens, processes, pooler, progress, precision
        )
    )
    return torch.stack(join_shares(shares, len(dataset)))


class _ResidueCollector:
    """Keeps a long sequence's stitched residue states: per-residue embeddings are the output."""

    def __init__(self) -> None:
        self.pieces: list[torch.Tensor] = []

    def add_residues(self, states: torch.Tensor) -> None:
        self.pieces.append(states)

    def close(self, cls_state: torch.Tensor) -> torch.Tensor:
        return torch.cat(self.pieces)


def _residues_only(states: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
    return [row[keep] for row, keep in zip(states, mask, strict=True)]


def residue_share(
    model: SequenceClassifier,
    dataset: EncodedDataset,
    pad_token_id: int,
    max_tokens: int | None,
    processes: Processes,
    progress: bool = False,
    precision: str = "fp32",
) -> dict[int, torch.Tensor]:
    """This process's share of :func:`residue_embeddings`: ``{index: (residues, hidden)}``."""
    return _share(
        model, dataset, pad_token_id, max_tokens, _residues_only, _ResidueCollector, progress,
        precision, processes,
    )  # fmt: skip


def residue_embeddings(
    model: SequenceClassifier,
    dataset: EncodedDataset,
    pad_token_id: int,
    max_tokens: int | None,
    progress: bool = False,
    precision: str = "fp32",
    processes: Processes | None = None,
) -> list[torch.Tensor]:
    """Per-residue states ``(residues, hidden)`` of each sequence (no BOS/EOS), in order.

    ``processes``: as in :func:`pooled_embeddings`.
    """
    processes = processes or Processes()
    shares = processes.gather(
        lambda: residue_share(
            model, dataset, pad_token_id, max_tokens, processes, progress, precision
        )
    )
    return join_shares(shares, len(dataset))


def backbone_fingerprint(model: SequenceClassifier, config: TrainConfig) -> str:
    """What identifies the backbone's weights.

    A hub model is its id and revision; a local folder adds its weight files' sizes and times;
    a randomly initialised backbone, or one initialised from an earlier run (model.init_from),
    hashes its parameters, since nothing else identifies it.
    """
    name = config.model.name
    if not config.model.pretrained or config.model.init_from is not None:
        digest = hashlib.sha256()
        for key, tensor in sorted(model.backbone.state_dict().items()):
            digest.update(key.encode())
            digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
        return f"random:{digest.hexdigest()}"
    local = Path(name).expanduser()
    if local.is_dir():
        files = sorted(local.glob("*.safetensors")) + sorted(local.glob("*.bin"))
        stamps = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
        return f"local:{local.resolve()}:{stamps}"
    return f"hub:{name}@{config.model.revision or 'main'}"


def sequence_key(sequence: str) -> str:
    """The cache's name for a sequence (its SHA-1)."""
    return hashlib.sha1(sequence.encode()).hexdigest()


class EmbeddingCache:
    """Pooled embeddings on disk, one folder per (backbone, pooling, length handling).

    Each folder holds ``info.json`` (what the key stands for) and shard files written
    atomically, each mapping sequence hashes to vectors. New sequences go into a new shard, so
    concurrent or interrupted writers never corrupt what is there.
    """

    def __init__(self, root: Path, description: dict[str, object]) -> None:
        text = json.dumps(description, sort_keys=True)
        self.folder = Path(root).expanduser() / hashlib.sha256(text.encode()).hexdigest()[:24]
        self.description = description

    @classmethod
    def for_run(
        cls, root: Path, model: SequenceClassifier, config: TrainConfig, per_residue: bool = False
    ) -> EmbeddingCache:
        """The cache entry of a training config's frozen backbone.

        ``per_residue``: every residue's state (float16) instead of the pooled vector.
        """
        data = config.data
        return cls(
            root,
            {
                "backbone": backbone_fingerprint(model, config),
                "pooling": "per-residue float16" if per_residue else config.model.pooling.value,
                "max_length": data.max_length,
                "long_sequences": data.long_sequences.value,
                "window_stride": data.window_stride,
                "attn_implementation": config.model.attn_implementation,
            },
        )

    def stored(self) -> dict[str, Path]:
        """Sequence hash -> shard file, for everything cached so far."""
        found: dict[str, Path] = {}
        if self.folder.is_dir():
            for shard in sorted(self.folder.glob("shard-*.safetensors")):
                with safe_open(str(shard), framework="pt") as handle:
                    found.update(dict.fromkeys(handle.keys(), shard))
        return found

    def missing(self, keys: Sequence[str]) -> list[int]:
        """Indices of the sequences (by key) not cached yet, each new sequence once."""
        stored = self.stored()
        missing: list[int] = []
        seen: set[str] = set()
        for index, key in enumerate(keys):
            if key not in stored and key not in seen:
                seen.add(key)
                missing.append(index)
        return missing

    def fetch(
        self,
        sequences: Sequence[str],
        compute: Callable[[list[int]], dict[int, torch.Tensor]],
        processes: Processes | None = None,
    ) -> tuple[torch.Tensor, list[int]]:
        """Embeddings of ``sequences`` (in order): cached ones read, missing ones computed.

        Under several processes the main one decides what is missing (one list for all,
        whatever other writers do meanwhile), each computes and writes its own share as a shard
        of its own, and all read the whole once every share is on disk: no vector is sent.

        Args:
            sequences: Residue strings.
            compute: Called with the indices of the missing sequences; returns
                ``{index: vector}`` for those this process computed (all, with one process).
            processes: The processes sharing the work (default: this one alone).

        Returns:
            The ``(n, hidden)`` embeddings, and how many each process computed.
        """
        processes = processes or Processes()
        keys = [sequence_key(s) for s in sequences]
        missing = processes.on_main(lambda: self.missing(keys))
        fresh: dict[str, torch.Tensor] = {}

        def compute_share() -> int:
            computed = compute(missing) if missing else {}
            fresh.update({keys[i]: vector.contiguous() for i, vector in computed.items()})
            if fresh:
                self.write(fresh)
            return len(fresh)

        counts = processes.gather(compute_share)  # (returns once every share is on disk)
        vectors = dict(fresh)
        stored = self.stored()
        by_shard: dict[Path, list[str]] = {}
        for key in set(keys) - set(vectors):
            by_shard.setdefault(stored[key], []).append(key)
        for shard, wanted in by_shard.items():
            with safe_open(str(shard), framework="pt") as handle:
                vectors.update({key: handle.get_tensor(key) for key in wanted})
        return torch.stack([vectors[key] for key in keys]), counts

    def write(self, vectors: dict[str, torch.Tensor]) -> Path:
        """Add tensors as a new shard (atomically); returns the shard."""
        self.folder.mkdir(parents=True, exist_ok=True)
        info = self.folder / "info.json"
        if not info.is_file():
            info.write_text(json.dumps(self.description, indent=2) + "\n")
        shard = self.folder / f"shard-{uuid.uuid4().hex}.safetensors"
        save_tensors(vectors, shard)
        return shard


def write_embeddings(
    path: Path,
    ids: list[str],
    embeddings: torch.Tensor | list[torch.Tensor],
    metadata: dict[str, str],
) -> None:
    """Write embeddings with their ids, in the format the file's extension names.

    Pooled embeddings (one tensor ``(n, hidden)``) go in as ``ids`` and ``embeddings``; per-residue
    ones (one ``(residues, hidden)`` tensor per sequence) as one array per id.

    Raises:
        EsmtuneError: On an unknown extension or repeated ids (or, per-residue ``.npz``, the id
            ``ids``).
    """
    suffix = path.suffix.lower()
    if suffix not in EMBEDDING_FORMATS:
        raise EsmtuneError(
            f"{path}: unknown embedding format '{suffix}'; use {', '.join(EMBEDDING_FORMATS)}"
        )
    if len(set(ids)) != len(ids):
        raise EsmtuneError("repeated sequence ids; embeddings are stored by id, make them unique")
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp{suffix}")
    if suffix == ".safetensors":
        tensors = (
            {"embeddings": embeddings}
            if isinstance(embeddings, torch.Tensor)
            else dict(zip(ids, embeddings, strict=True))
        )
        save_tensors(  # (with the umask's mode, unlike safetensors' own 0600)
            {k: v.contiguous() for k, v in tensors.items()},
            temporary,
            metadata={**metadata, "ids": json.dumps(ids)},
        )
    elif suffix == ".npz":
        # What made the embeddings, as text in a member of its own (npz has no metadata).
        described = {"ids": np.asarray(ids), "metadata": np.asarray(json.dumps(metadata))}
        if isinstance(embeddings, torch.Tensor):
            arrays = {**described, "embeddings": embeddings.numpy()}
        else:
            if reserved := sorted(set(ids) & set(described)):  # the members naming the rest
                raise EsmtuneError(
                    f"a sequence has the id {reserved[0]!r}, a name .npz files use for their "
                    "own members; rename it, or write .h5 or .safetensors"
                )
            per_id = {i: e.numpy() for i, e in zip(ids, embeddings, strict=True)}
            arrays = {**described, **per_id}
        with temporary.open("wb") as handle:
            _save_npz(handle, arrays)
    else:
        import h5py  # only .h5 users pay for the import

        with h5py.File(temporary, "w") as handle:
            handle.attrs.update(metadata)
            names = np.asarray(ids, dtype=object)
            handle.create_dataset("ids", data=names, dtype=h5py.string_dtype())
            if isinstance(embeddings, torch.Tensor):
                handle.create_dataset("embeddings", data=embeddings.numpy())
            else:
                group = handle.create_group("per_residue")  # one dataset per id ('/' escaped)
                for identifier, states in zip(ids, embeddings, strict=True):
                    group.create_dataset(identifier.replace("/", "%2F"), data=states.numpy())
    os.replace(temporary, path)


def _save_npz(handle: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """What ``np.savez(handle, **arrays)`` writes, one ``<name>.npy`` member per array.

    Ids are text and embeddings numbers, so nothing is pickled (``allow_pickle=False``).

    Not ``np.savez`` itself: its keyword arguments ``file`` and ``allow_pickle`` would capture a
    sequence with that id (a TypeError, or an array silently taken for the pickle flag).
    """
    with zipfile.ZipFile(handle, mode="w", compression=zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            with archive.open(f"{name}.npy", mode="w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(array), allow_pickle=False)


class EmbeddedDataset(BudgetedDataset):
    """Cached pooled embeddings in place of token windows, batched exactly like them.

    ``tokens`` and ``window_counts`` come from the encoded dataset, so the token-budget sampler
    forms the same batches as it would from tokens; only the backbone's work disappears.
    """

    def __init__(self, embeddings: torch.Tensor, encoded: EncodedDataset) -> None:
        self.embeddings = embeddings
        self.targets = encoded.targets
        self._tokens = encoded.tokens
        self._window_counts = encoded.window_counts

    def __len__(self) -> int:
        return len(self.embeddings)

    @property
    def tokens(self) -> list[int]:
        """Tokens of each sequence's longest window, as if it were run from tokens."""
        return self._tokens

    @property
    def window_counts(self) -> list[int]:
        """Windows each sequence has, as if it were run from tokens."""
        return self._window_counts

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, np.ndarray | None]:
        target = None if self.targets is None else self.targets[index]
        return index, self.embeddings[index], target


class FileEmbeddings(BudgetedDataset):
    """Embeddings read from a file (``data.embeddings``), one per record, with their targets.

    Pooled vectors each cost one token, so batches are bounded by their count (``max_sequences``);
    per-residue arrays cost their residues, like token windows.
    """

    def __init__(self, vectors: list[np.ndarray], targets: np.ndarray | None) -> None:
        self.vectors = [torch.from_numpy(np.ascontiguousarray(v)) for v in vectors]
        self.targets = targets

    def __len__(self) -> int:
        return len(self.vectors)

    @property
    def per_residue(self) -> bool:
        """Whether each item is a ``(residues, dim)`` array."""
        return bool(self.vectors) and self.vectors[0].ndim == 2

    @property
    def tokens(self) -> list[int]:
        """1 per pooled vector; residues per per-residue array."""
        return [len(v) if v.ndim == 2 else 1 for v in self.vectors]

    @property
    def window_counts(self) -> list[int]:
        """One input per record."""
        return [1] * len(self.vectors)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor, np.ndarray | None]:
        target = None if self.targets is None else self.targets[index]
        return index, self.vectors[index], target

    def collate(
        self, items: list[tuple[int, torch.Tensor, np.ndarray | None]]
    ) -> dict[str, torch.Tensor]:
        """Pooled vectors stacked; per-residue arrays padded, with ``embedding_mask``."""
        if not self.per_residue:
            return embedding_collate(items)
        longest = max(len(states) for _, states, _ in items)
        size = items[0][1].shape[-1]
        padded = torch.zeros(len(items), longest, size)
        mask = torch.zeros(len(items), longest, dtype=torch.bool)
        for row, (_, states, _) in enumerate(items):
            padded[row, : len(states)] = states
            mask[row, : len(states)] = True
        batch = embedding_collate([(i, torch.zeros(0), t) for i, _, t in items])
        batch["embeddings"], batch["embedding_mask"] = padded, mask
        return batch


def embedding_collate(
    items: list[tuple[int, torch.Tensor, np.ndarray | None]],
) -> dict[str, torch.Tensor]:
    """Stack cached embeddings (and targets) into a batch the model's head takes directly."""
    batch = {
        "index": torch.tensor([index for index, _, _ in items], dtype=torch.long),
        "embeddings": torch.stack([embedding for _, embedding, _ in items]),
    }
    targets = [target for _, _, target in items if target is not None]
    if targets:  # a dataset has targets for every sequence or for none
        batch["target"] = torch.from_numpy(np.stack(targets))
    return batch


def load_embedder(
    model: str, revision: str | None = None, attn_implementation: str = "sdpa"
) -> tuple[SequenceClassifier, Any, int]:
    """A backbone to embed with: a run directory's (fine-tuned) one, a local folder or a hub id.

    Returns:
        The model (its head is unused), the tokenizer, and the longest input it was trained on
        (a run's data.max_length; 1,022 otherwise).

    Raises:
        ModelLoadError: When the model cannot be found (offline, typo), with the fix.
    """
    folder = Path(model).expanduser()
    if (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        loaded = load_run(folder)
        return loaded.model, loaded.tokenizer, loaded.config.data.max_length
    config = TrainConfig.model_validate(
        {
            "model": {
                "name": model,
                "revision": revision,
                "attn_implementation": attn_implementation,
                "head_hidden": [],
            },
            "finetune": {"mode": "frozen"},
        }
    )
    embedder, tokenizer = build_model(config, num_outputs=1)
    return embedder, tokenizer, 1022


def embed_records(
    model: SequenceClassifier,
    tokenizer: Any,
    records: list[SequenceRecord],
    pooling: str,
    max_length: int,
    long_sequences: LongSequences = LongSequences.WINDOW,
    max_tokens: int | None = None,
    progress: bool = True,
    precision: str = "fp32",
) -> torch.Tensor | list[torch.Tensor]:
    """Pooled ``(n, hidden)`` embeddings, or per-residue ones (``pooling='per-residue'``).

    Under ``accelerate launch`` the processes share the batches by tokens and every one gets
    all embeddings (:meth:`Processes.current`); the model must be on each process's device.

    Raises:
        DataError: On empty sequences or invalid residues, naming every record.
    """
    problems = [problem for record in records if (problem := sequence_problem(record))]
    if problems:
        raise DataError(f"{len(problems)} invalid sequence(s):\n  - " + "\n  - ".join(problems))
    windows = encode(tokenizer, [r.sequence for r in records], max_length, long_sequences)
    dataset = EncodedDataset(windows)
    pad = tokenizer.pad_token_id
    processes = Processes.current()
    if pooling == "per-residue":
        return residue_embeddings(
            model, dataset, pad, max_tokens, progress, precision, processes=processes
        )
    hidden = model.backbone_config.hidden_size
    pooler = Pooler(Pooling(pooling), hidden)
    return pooled_embeddings(
        model, dataset, pad, max_tokens, pooler, progress, precision, processes=processes
    )


def load_embedding_run(
    run_dir: Path, embed_with: str | None = None
) -> tuple[LoadedRun[Any], EmbeddingClassifier]:
    """A run whose head was trained on precomputed embeddings (``data.embeddings``).

    When the ESM2 model that made the embeddings is known (``esmtune embed`` records it in the
    file, and the run keeps it) or given (``embed_with``), the head sits on that model with the
    same pooling and long-sequence handling, so the run reads sequences like any other. Otherwise
    the model is the head alone, which takes embeddings (:meth:`Predictor.predict_embeddings`)
    and refuses sequences with the way out.

    Returns:
        The run, and its head on its own (which takes embeddings whichever model reads sequences).

    Raises:
        RunDirError: When the folder is not a finished run.
        ModelLoadError: When the given model's embeddings have another size than the head's.
    """
    config, task = read_run(run_dir)
    source = EmbeddingSource.read(run_dir)
    if source is None:
        raise RunDirError(f"{run_dir} was not trained on precomputed embeddings")
    head = EmbeddingClassifier(source, task.num_outputs, config)
    load_weights(head, run_dir / WEIGHTS_FILE, complete=True)
    head.eval()
    model_name = embed_with or source.model
    if model_name is None:
        return LoadedRun(run_dir, config, task, head, esm2_tokenizer()), head
    embedder, tokenizer, trained_length = load_embedder(model_name)
    size = embedder.backbone_config.hidden_size
    if size != source.dim:
        raise ModelLoadError(
            f"{model_name} makes embeddings of size {size}, but the head of {run_dir} was trained "
            f"on size {source.dim} ({source.file}): give the model that made them (--embed-with)"
        )
    made = {} if embed_with else source.made_with
    pooling = Pooling(made.get("pooling", Pooling.MEAN.value)) if not source.per_residue else None
    embedder.pooler = head.pooler if pooling is None else Pooler(pooling, size)
    embedder.head = head.head
    data = config.data.model_copy(
        update={
            "max_length": int(made.get("max_length", trained_length)),
            "long_sequences": LongSequences(made.get("long_sequences", LongSequences.WINDOW)),
        }
    )
    loaded = LoadedRun(run_dir, config.model_copy(update={"data": data}), task, embedder, tokenizer)
    return loaded, head
