"""Embeddings computed elsewhere, read by id: ``.h5``, ``.npz`` or ``.safetensors``.

Teams often have embeddings already (ProtT5, ESM2 from ``esmtune embed``, bio_embeddings or
biotrainer ``.h5`` files), and a head trained on them needs no backbone at all. The layouts read:

- esmtune's own (``esmtune embed``): ``ids`` with ``embeddings`` (pooled, one row per id), or
  one array per id (per residue); ``.h5`` per-residue arrays sit in the group ``per_residue``;
- one array per id at the top level, named by the id, or (bio_embeddings / biotrainer ``.h5``)
  by any key with the id in its ``original_id`` attribute.

A 1-D array per id is a pooled embedding; a 2-D one is per residue ``(residues, dim)``. Nothing
is unpickled: ``.npz`` members are read with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from esmtune.errors import DataError

__all__ = ["EMBEDDING_SUFFIXES", "EmbeddingFile", "read_embeddings"]

EMBEDDING_SUFFIXES = (".h5", ".hdf5", ".npz", ".safetensors")


@dataclass
class EmbeddingFile:
    """Vectors by id, as read, with what the file says about how they were made."""

    path: Path
    vectors: dict[str, np.ndarray]
    # esmtune embed writes model, pooling, max_length and long_sequences here.
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def per_residue(self) -> bool:
        """Whether the arrays are per residue ``(residues, dim)`` rather than one per protein."""
        return any(v.ndim == 2 for v in self.vectors.values())

    @property
    def dim(self) -> int:
        """The embedding size (of the first array; :func:`problems` checks they agree)."""
        return int(next(iter(self.vectors.values())).shape[-1]) if self.vectors else 0

    def problems(self) -> list[str]:
        """Arrays of another rank or size than the rest, and non-finite values, by id."""
        found = []
        shapes = {(v.ndim, v.shape[-1] if v.ndim else 0) for v in self.vectors.values()}
        if len(shapes) > 1:
            common = max(
                shapes, key=lambda s: sum((v.ndim, v.shape[-1]) == s for v in self.vectors.values())
            )
            odd = [i for i, v in self.vectors.items() if (v.ndim, v.shape[-1]) != common]
            found.append(
                f"{self.path}: {len(odd)} embedding(s) differ in shape from the rest "
                f"({common[0]}-D of size {common[1]}), e.g. {', '.join(odd[:5])}; every id needs "
                "an embedding from the same model and pooling"
            )
        bad = [i for i, v in self.vectors.items() if v.ndim not in (1, 2)]
        if bad:
            found.append(
                f"{self.path}: embedding(s) of {', '.join(bad[:5])} are neither one vector nor "
                "one per residue"
            )
        broken = [i for i, v in self.vectors.items() if not np.isfinite(v).all()]
        if broken:
            found.append(
                f"{self.path}: {len(broken)} embedding(s) hold NaN or infinite values, e.g. "
                f"{', '.join(broken[:5])}; compute them again"
            )
        return found


def read_embeddings(path: Path | str) -> EmbeddingFile:
    """Read an embedding file (cached while the file is unchanged).

    Raises:
        DataError: When the file is missing, of an unknown kind or unreadable.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"{path}: no such embedding file; compute one with `esmtune embed MODEL FASTA --out "
            f"{path.name}`, or fix data.embeddings"
        )
    if path.suffix.lower() not in EMBEDDING_SUFFIXES:
        raise DataError(
            f"{path}: unknown embedding format '{path.suffix}'; use {', '.join(EMBEDDING_SUFFIXES)}"
        )
    return _read(path.resolve(), path.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _read(path: Path, changed: int) -> EmbeddingFile:
    try:
        suffix = path.suffix.lower()
        if suffix == ".npz":
            return _read_npz(path)
        if suffix == ".safetensors":
            return _read_safetensors(path)
        return _read_h5(path)
    except DataError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
        raise DataError(f"{path}: cannot be read as embeddings ({error})") from None


def _by_ids(path: Path, ids: list[str], rows: np.ndarray) -> dict[str, np.ndarray]:
    if len(ids) != len(rows):
        raise DataError(f"{path}: {len(ids)} ids but {len(rows)} embeddings")
    if len(set(ids)) != len(ids):
        raise DataError(f"{path}: repeated ids; each id needs one embedding")
    return {i: np.asarray(r, dtype=np.float32) for i, r in zip(ids, rows, strict=True)}


def _read_npz(path: Path) -> EmbeddingFile:
    with np.load(path, allow_pickle=False) as archive:
        names = list(archive.files)
        metadata = json.loads(str(archive["metadata"])) if "metadata" in names else {}
        if "ids" in names:  # esmtune embed's layout
            ids = [str(i) for i in archive["ids"]]
            if "embeddings" in names:
                return EmbeddingFile(path, _by_ids(path, ids, archive["embeddings"]), metadata)
            vectors = {i: archive[i].astype(np.float32) for i in ids}
            return EmbeddingFile(path, vectors, metadata)
        return EmbeddingFile(path, {n: archive[n].astype(np.float32) for n in names})


def _read_safetensors(path: Path) -> EmbeddingFile:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as handle:
        metadata = dict(handle.metadata() or {})
        names = list(handle.keys())
        ids = json.loads(metadata.pop("ids")) if "ids" in metadata else None
        if ids is not None and names == ["embeddings"]:
            vectors = _by_ids(path, [str(i) for i in ids], handle.get_tensor("embeddings"))
        else:
            vectors = {n: handle.get_tensor(n).astype(np.float32) for n in ids or names}
    return EmbeddingFile(path, vectors, metadata)


def _read_h5(path: Path) -> EmbeddingFile:
    import h5py  # only .h5 users pay for the import

    with h5py.File(path, "r") as handle:
        metadata = {k: str(v) for k, v in handle.attrs.items()}
        if "ids" in handle:
            ids = [x.decode() if isinstance(x, bytes) else str(x) for x in handle["ids"][()]]
            if "embeddings" in handle:
                return EmbeddingFile(path, _by_ids(path, ids, handle["embeddings"][()]), metadata)
            group = handle["per_residue"]
            vectors = {i: group[i.replace("/", "%2F")][()].astype(np.float32) for i in ids}
            return EmbeddingFile(path, vectors, metadata)
        vectors = {}
        for key, dataset in handle.items():
            if not isinstance(dataset, h5py.Dataset):
                continue
            identifier = str(dataset.attrs.get("original_id", key))
            if identifier in vectors:
                raise DataError(f"{path}: the id {identifier!r} has two embeddings")
            vectors[identifier] = dataset[()].astype(np.float32)
        return EmbeddingFile(path, vectors, metadata)
