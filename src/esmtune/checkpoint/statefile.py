"""Nested training state (optimizer, scheduler, RNG) in a safetensors file, without pickle.

``torch.save`` pickles, and unpickling a file runs whatever code the file names, so a run
directory received from someone else could not be resumed safely. Instead a state is walked
once: every tensor (and numpy array, as its raw bytes) goes into the safetensors file under a
numbered key, and a JSON skeleton of everything else (dicts, lists, tuples, numbers, strings,
None; inf and nan as Python's json writes them) travels in the file's metadata, with a
placeholder where each tensor was. Reading back uses only safetensors and json, and gives the
same Python types back: tuples stay tuples, integer keys stay integers (an optimizer's state is
keyed by parameter index), so ``load_state_dict`` and ``random.setstate`` take the result as is.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import safe_open

from esmtune.storage import save_tensors

__all__ = ["read_state", "save_state"]

SKELETON_KEY = "esmtune.state"
FORMAT_KEY = "esmtune.state_format"
FORMAT = "1"

# Placeholders in the skeleton; a dict whose keys are not all plain strings is stored as items.
_TENSOR, _ARRAY, _TUPLE, _ITEMS = "__tensor__", "__ndarray__", "__tuple__", "__items__"


def _encode(value: Any, path: str, tensors: dict[str, torch.Tensor]) -> Any:
    """The JSON skeleton of ``value``; tensors and arrays are moved into ``tensors``."""
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, torch.Tensor):
        key = f"{len(tensors)}:{path}"
        tensors[key] = value.detach().cpu().contiguous()
        return {_TENSOR: key}
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            raise TypeError(f"{path}: numpy arrays of Python objects cannot be stored")
        key = f"{len(tensors)}:{path}"
        raw = np.ascontiguousarray(value).reshape(-1).view(np.uint8)
        tensors[key] = torch.from_numpy(raw.copy())
        return {_ARRAY: key, "dtype": value.dtype.str, "shape": list(value.shape)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, tuple):
        return {_TUPLE: [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_encode(v, f"{path}.{i}", tensors) for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in value):
            return {k: _encode(v, f"{path}.{k}", tensors) for k, v in value.items()}
        return {
            _ITEMS: [
                [_encode(k, f"{path}.key{i}", tensors), _encode(v, f"{path}.{k}", tensors)]
                for i, (k, v) in enumerate(value.items())
            ]
        }
    raise TypeError(f"{path}: {type(value).__name__} cannot be stored in a state file")


def _decode(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Rebuild the value :func:`_encode` described."""
    if isinstance(skeleton, list):
        return [_decode(v, tensors) for v in skeleton]
    if not isinstance(skeleton, dict):
        return skeleton
    if _TENSOR in skeleton:
        return tensors[skeleton[_TENSOR]]
    if _ARRAY in skeleton:
        raw = tensors[skeleton[_ARRAY]].numpy().tobytes()
        array = np.frombuffer(raw, dtype=np.dtype(skeleton["dtype"]))
        return array.reshape(skeleton["shape"]).copy()
    if _TUPLE in skeleton:
        return tuple(_decode(v, tensors) for v in skeleton[_TUPLE])
    if _ITEMS in skeleton:
        return {_hashable(_decode(k, tensors)): _decode(v, tensors) for k, v in skeleton[_ITEMS]}
    return {k: _decode(v, tensors) for k, v in skeleton.items()}


def _hashable(key: Any) -> Any:
    """Dict keys come back as they went in; a list can only be a key that was a tuple's items."""
    return tuple(key) if isinstance(key, list) else key


def save_state(state: Any, path: Path) -> None:
    """Write a nested state (dicts, lists, tuples, tensors, arrays, plain values) to ``path``.

    Raises:
        TypeError: When the state holds something else (it would not come back the same).
        OSError: When the file cannot be written (see :func:`esmtune.storage.save_tensors`).
    """
    tensors: dict[str, torch.Tensor] = {}
    skeleton = _encode(state, "state", tensors)
    metadata = {FORMAT_KEY: FORMAT, SKELETON_KEY: json.dumps(skeleton)}
    save_tensors(tensors, path, metadata)


def read_state(path: Path) -> Any:
    """Read a state written by :func:`save_state`; nothing in the file can run code.

    Raises:
        ValueError: When the file is damaged or not a state file (the message says which).
        OSError: When it cannot be read.
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except OSError:
        raise
    except Exception as error:  # safetensors' own error type for a damaged file
        raise ValueError(f"{path.name} cannot be read as safetensors ({error})") from None
    if metadata.get(FORMAT_KEY) != FORMAT or SKELETON_KEY not in metadata:
        raise ValueError(f"{path.name} is not an esmtune state file (no {SKELETON_KEY} metadata)")
    try:
        return _decode(json.loads(metadata[SKELETON_KEY]), tensors)
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{path.name} holds a damaged state skeleton ({error})") from None
