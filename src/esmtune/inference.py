"""Running a model over encoded sequences, batched by length, results back in input order.

Memory is bounded by the token budget, whatever the sequences' lengths: batches are filled to
the budget, and a sequence whose windows alone exceed it (a 35,000-residue titin is some 70
windows of 1,022) is read a few windows per forward pass, its windows stitched and pooled as they
come (:class:`~esmtune.model.windows.WindowStitcher`), never all held at once.

Outputs are one row per sequence, stacked into one array; a per-residue model's are ragged, one
``(residues, outputs)`` array per sequence, held in a 1-D object array (:func:`sequence_rows`)
so that everything that passes outputs along keeps one type. Residues a cut sequence
(``truncate``, ``centre``) left unread get NaN rows (:func:`place_residues`), never another
residue's output.

The loader (:func:`~esmtune.data.batching.eval_loader`) and the pass-by-pass reading
(:func:`~esmtune.model.windows.stream_windows`) live upstream, where
:class:`~esmtune.model.encoder.ProteinEncoder` uses them too; they are re-exported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import AbstractContextManager, nullcontext
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from esmtune.data.batching import EncodedDataset, eval_loader, loader_sequences
from esmtune.data.encoding import place_residues, sequence_rows, token_budget
from esmtune.data.encoding import ragged as _ragged
from esmtune.model.interface import Classifier
from esmtune.model.windows import over_budget, stream_windows
from esmtune.processes import Processes, join_shares

__all__ = [
    "bf16_is_fast",
    "eval_loader",
    "inference_budget",
    "iterate_outputs",
    "model_inputs",
    "over_budget",
    "place_residues",
    "precision_context",
    "predict_outputs",
    "sequence_rows",
    "stream_windows",
]


def inference_budget(device: torch.device) -> int:
    """Default token budget for inference on ``device`` (see :func:`token_budget`)."""
    return token_budget(device.type)


def bf16_is_fast(device: torch.device) -> bool:
    """Whether bfloat16 matmuls run natively: CUDA with bf16, or a CPU with AVX512-BF16 or AMX.

    Elsewhere bf16 is emulated: on our AVX-512 CPUs without those instructions, bf16 autocast ran
    at half the fp32 speed (benchmarks/bench.py).
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    return False


def precision_context(precision: str, device: torch.device) -> AbstractContextManager:
    """Autocast to bfloat16 (``bf16``, or ``auto`` where it is fast), or plain fp32."""
    if precision == "auto":
        precision = "bf16" if bf16_is_fast(device) else "fp32"
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return nullcontext()


MODEL_INPUTS = (
    "input_ids", "attention_mask", "window_owner", "window_start", "residue_count", "embeddings",
    "embedding_mask",
)  # fmt: skip


def model_inputs(
    batch: dict[str, torch.Tensor], device: torch.device | None = None
) -> dict[str, torch.Tensor]:
    """The tensors of a batch the model takes (windows included), on ``device``."""
    return {
        key: batch[key] if device is None else batch[key].to(device)
        for key in MODEL_INPUTS
        if key in batch
    }


def _parameters_device(model: Classifier) -> torch.device:
    """Where a torch model's parameters are; a model without any (onnxruntime) takes the CPU's."""
    if isinstance(model, nn.Module):
        return next(model.parameters()).device
    return torch.device("cpu")


def _unwrapped(model: Any) -> Any:
    """The model inside a DistributedDataParallel wrapper (which hides its methods)."""
    return getattr(model, "module", model)


def _batch_logits(
    model: Any, batch: dict[str, torch.Tensor], device: torch.device | None, max_tokens: int | None
) -> torch.Tensor | list[torch.Tensor]:
    """One forward pass, or passes within the budget for windows that exceed it.

    Streamed per-residue logits stay one ``(residues, outputs)`` tensor per sequence.
    """
    if "window_owner" in batch:  # (batches of cached embeddings have no tokens at all)
        budget = max_tokens or inference_budget(device or batch["input_ids"].device)
        if over_budget(batch, budget):
            inner = _unwrapped(model)
            passes = stream_windows(
                inner.window_states, batch, budget, inner.long_sequence_sink, device
            )
            return passes if getattr(inner, "per_residue", False) else torch.cat(passes)
    return model(**model_inputs(batch, device))


def _residues_read(batch: dict[str, torch.Tensor]) -> list[int]:
    """Residues each sequence of a batch was read with (stitched, or its one input's)."""
    if "residue_count" in batch:
        return [int(count) for count in batch["residue_count"].tolist()]
    if "embedding_mask" in batch:  # cached residue states: the mask marks the residues
        return [int(count) for count in batch["embedding_mask"].sum(dim=1).tolist()]
    return [int(count) - 2 for count in batch["attention_mask"].sum(dim=1).tolist()]


@torch.inference_mode()
def iterate_outputs(
    model: Callable[..., torch.Tensor],
    batches: Iterable[dict[str, torch.Tensor]],
    outputs: Callable[[torch.Tensor], np.ndarray],
    device: torch.device | None = None,
    max_tokens: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (input indices, outputs) per batch; the model must be in eval mode.

    ``outputs`` turns logits into what the task reports (e.g. :meth:`TaskSpec.outputs`); a
    per-residue model's outputs are an object array of ``(residues, outputs)`` arrays. A batch
    of long sequences whose windows exceed ``max_tokens`` (default: :func:`inference_budget`)
    is read in passes within it.
    """
    for batch in batches:
        logits = _batch_logits(model, batch, device, max_tokens)
        indices = batch["index"].cpu().numpy()
        if isinstance(logits, list):  # streamed per-residue logits, one tensor per sequence
            yield indices, _ragged([outputs(piece) for piece in logits])
        elif logits.ndim == 3:  # per residue: keep each sequence's residues (no <cls>, <eos>, pad)
            values = outputs(logits)
            counts = _residues_read(batch)
            yield indices, _ragged([values[row, 1 : 1 + n] for row, n in enumerate(counts)])
        else:
            yield indices, outputs(logits)


def predict_outputs(
    model: Classifier,
    dataset: EncodedDataset,
    outputs: Callable[[torch.Tensor], np.ndarray],
    max_tokens: int | None,
    pad_token_id: int,
    progress: bool = False,
    max_sequences: int | None = None,
    precision: str = "fp32",
    device: torch.device | None = None,
    processes: Processes | None = None,
) -> np.ndarray:
    """Outputs for every sequence of ``dataset``, in its order, on the model's device.

    ``max_tokens``: token budget per batch (None: :func:`inference_budget`). ``precision``:
    ``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 where it is fast). ``device``: where the
    batches go (default: the model's parameters' device); an onnxruntime model, which has no
    parameters, takes CPU tensors. ``processes``: each computes its share of the batches and
    every one gets all outputs (default: this process computes all).
    """
    processes = processes or Processes()
    device = device or _parameters_device(model)
    budget = max_tokens or inference_budget(device)
    loader = eval_loader(dataset, budget, pad_token_id, max_sequences, processes=processes)

    def share() -> dict[int, np.ndarray]:
        rows: dict[int, np.ndarray] = {}
        shown = progress and processes.is_main
        total = loader_sequences(loader)  # (this process's share)
        bar = tqdm(total=total, desc="predict", unit="seq", disable=not shown)
        with precision_context(precision, device):
            for indices, batch_outputs in iterate_outputs(model, loader, outputs, device, budget):
                rows.update(zip(indices.tolist(), batch_outputs, strict=True))
                bar.update(len(indices))
        bar.close()
        return rows

    return sequence_rows(join_shares(processes.gather(share), len(dataset)))
