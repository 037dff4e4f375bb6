"""A model sharded by FSDP: its full weights gathered, its checkpoints written shard by shard.

Under FSDP2 every parameter (and every optimizer moment) is a ``DTensor`` of which each process
holds a slice. Two things follow. The best weights, which ``predict`` and ``export`` read, must be
whole: :func:`gathered` assembles one tensor at a time on the main process, so a 15B model never
has a second full copy on a GPU. Checkpoints stay sharded: every process writes its own slices
with torch.distributed.checkpoint's ``HuggingFaceStorageWriter`` (safetensors, one file per
process, each slice's offsets as JSON in its header), and resuming reads them back with
``HuggingFaceStorageReader`` straight into the model's and optimizer's slices.

Why not DCP's default files: its ``.metadata`` is a pickle, and unpickling a file can run any code
it names. The Hugging Face reader builds the same plan from the safetensors headers and JSON
alone, so no file of a checkpoint is unpickled. (DCP pickles its save and load *plans* to send
them between the processes of one job; those come from our own processes, never from a file.)
What is not a tensor (the optimizer's parameter groups, which moments each parameter has) goes
into the usual state file (:mod:`esmtune.checkpoint.statefile`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.tensor import DTensor

from esmtune.errors import RunDirError

__all__ = [
    "MODEL_SHARDS",
    "OPTIMIZER_SHARDS",
    "gathered",
    "is_sharded",
    "load_shards",
    "save_shards",
]

MODEL_SHARDS = "model"  # folders of a sharded checkpoint: one safetensors file per process
OPTIMIZER_SHARDS = "optimizer"
_SHARD = "shard"  # marks a tensor of the optimizer skeleton that lives in the shards


def is_sharded(tensors: dict[str, torch.Tensor]) -> bool:
    """Whether any tensor is a slice of a sharded one (the model is under FSDP2)."""
    return any(isinstance(tensor, DTensor) for tensor in tensors.values())


def gathered(tensors: dict[str, torch.Tensor], keep: bool) -> dict[str, torch.Tensor]:
    """Whole tensors on the CPU, gathered one at a time; call on every process.

    Args:
        tensors: Plain or sharded tensors, in the same order on every process.
        keep: Whether this process keeps the result (the main process); the others only take
            part in each gather and get an empty dict, so a big model is not held N times.
    """
    whole = {}
    for name, tensor in tensors.items():
        full = tensor.full_tensor() if isinstance(tensor, DTensor) else tensor
        if keep:
            whole[name] = full.detach().cpu().contiguous()
    return whole


def _dtype(folder: Path, name: object) -> torch.dtype:
    """A dtype named in a checkpoint's state file, only if it is one (the file is data, not code).

    Raises:
        RunDirError: When the name is not a torch dtype (a damaged or edited state file).
    """
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise RunDirError(
            f"{folder}: the optimizer state names {name!r} as a dtype, which is not one: the "
            "checkpoint is damaged; resume from an earlier one (remove this folder)"
        )
    return dtype


def _writer(folder: Path) -> dcp.HuggingFaceStorageWriter:
    return dcp.HuggingFaceStorageWriter(str(folder), save_distributed=True)


def save_shards(folder: Path, trainable: dict[str, torch.Tensor], optimizer: Any) -> Any:
    """Write this process's slices of the weights and optimizer state; call on every process.

    Returns:
        The optimizer state without its tensors (for the main process to save with
        :func:`~esmtune.checkpoint.statefile.save_state`): parameter groups, and for each
        tensor its shard key, shape and dtype.
    """
    dcp.save({name: tensor.detach() for name, tensor in trainable.items()},
             storage_writer=_writer(folder / MODEL_SHARDS))  # fmt: skip
    native = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    skeleton: dict[int, dict[str, Any]] = {}
    for index, entry in native["state"].items():
        skeleton[index] = {}
        for key, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}.{key}"] = value.detach()
                value = {_SHARD: f"{index}.{key}", "shape": list(value.shape),
                         "dtype": str(value.dtype).removeprefix("torch."),
                         "like_parameter": isinstance(value, DTensor)}  # fmt: skip
            skeleton[index][key] = value
    if tensors:
        dcp.save(tensors, storage_writer=_writer(folder / OPTIMIZER_SHARDS))
    return {"state": skeleton, "param_groups": native["param_groups"]}


def load_shards(
    folder: Path, trainable: dict[str, torch.Tensor], optimizer: Any, skeleton: Any
) -> None:
    """Read the slices into the model (in place) and the optimizer; call on every process.

    ``trainable``: the model's own tensors under their saved names (read into as they are: a
    second copy of a big model's weights would not fit). ``skeleton``: what :func:`save_shards`
    returned. The optimizer's moments are read into tensors shaped and sharded as the
    parameters they belong to.
    """
    reader = dcp.HuggingFaceStorageReader
    dcp.load({name: tensor.detach() for name, tensor in trainable.items()},
             storage_reader=reader(str(folder / MODEL_SHARDS)))  # fmt: skip
    parameters = [p for group in optimizer.param_groups for p in group["params"]]
    targets: dict[str, torch.Tensor] = {}
    state: dict[int, dict[str, Any]] = {}
    for index, entry in skeleton["state"].items():
        state[index] = {}
        for key, value in entry.items():
            if isinstance(value, dict) and _SHARD in value:
                dtype = _dtype(folder, value["dtype"])
                parameter = parameters[index]
                if value["like_parameter"]:
                    value = torch.empty_like(parameter.detach(), dtype=dtype)
                else:
                    value = torch.empty(value["shape"], dtype=dtype)
                targets[f"{index}.{key}"] = value
            state[index][key] = value
    if targets:
        dcp.load(targets, storage_reader=reader(str(folder / OPTIMIZER_SHARDS)))
    optimizer.load_state_dict({"state": state, "param_groups": skeleton["param_groups"]})
