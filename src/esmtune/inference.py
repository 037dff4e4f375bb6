"""Running a model over encoded sequences, batched by length, results back in input order.

Memory is bounded by the token budget, whatever the sequences' lengths: batches are filled to
the budget, and a sequence whose windows alone exceed it (a 35,000-residue titin is some 70
windows of 1,022) is read a few windows per forward pass, its windows stitched and pooled as they
come (:class:`~esmtune.model.windows.WindowStitcher`), never all held at once.

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

from esmtune.data.batching import EncodedDataset, eval_loader
from esmtune.model.interface import Classifier
from esmtune.model.windows import over_budget, stream_windows

__all__ = [
    "bf16_is_fast",
    "eval_loader",
    "inference_budget",
    "iterate_outputs",
    "model_inputs",
    "over_budget",
    "precision_context",
    "predict_outputs",
    "stream_windows",
]


def inference_budget(device: torch.device) -> int:
    """Default token budget for inference: small batches on CPUs, large ones on GPUs.

    A CPU gains nothing from wide batches but loses its caches: on our 2-core machines a budget
    of about 1,024 tokens (mostly one protein per batch, so no padding at all) ran ESM2 35M at
    2.2x the speed of a 16,384-token budget (benchmarks/bench.py). A GPU needs the width.
    """
    return 16384 if device.type == "cuda" else 1024


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
) -> torch.Tensor:
    """One forward pass, or passes within the budget for windows that exceed it."""
    if "window_owner" in batch:  # (batches of cached embeddings have no tokens at all)
        budget = max_tokens or inference_budget(device or batch["input_ids"].device)
        if over_budget(batch, budget):
            inner = _unwrapped(model)
            passes = stream_windows(
                inner.window_states, batch, budget, inner.long_sequence_sink, device
            )
            return torch.cat(passes)
    return model(**model_inputs(batch, device))


@torch.inference_mode()
def iterate_outputs(
    model: Callable[..., torch.Tensor],
    batches: Iterable[dict[str, torch.Tensor]],
    outputs: Callable[[torch.Tensor], np.ndarray],
    device: torch.device | None = None,
    max_tokens: int | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (input indices, outputs) per batch; the model must be in eval mode.

    ``outputs`` turns logits into what the task reports (e.g. :meth:`TaskSpec.outputs`). A batch
    of long sequences whose windows exceed ``max_tokens`` (default: :func:`inference_budget`)
    is read in passes within it.
    """
    for batch in batches:
        logits = _batch_logits(model, batch, device, max_tokens)
        yield batch["index"].cpu().numpy(), outputs(logits)


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
) -> np.ndarray:
    """Outputs for every sequence of ``dataset``, in its order, on the model's device.

    ``max_tokens``: token budget per batch (None: :func:`inference_budget`). ``precision``:
    ``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 where it is fast). ``device``: where the
    batches go (default: the model's parameters' device); an onnxruntime model, which has no
    parameters, takes CPU tensors.
    """
    device = device or _parameters_device(model)
    budget = max_tokens or inference_budget(device)
    loader = eval_loader(dataset, budget, pad_token_id, max_sequences)
    rows: dict[int, np.ndarray] = {}
    bar = tqdm(total=len(dataset), desc="predict", unit="seq", disable=not progress)
    with precision_context(precision, device):
        for indices, batch_outputs in iterate_outputs(model, loader, outputs, device, budget):
            rows.update(zip(indices.tolist(), batch_outputs, strict=True))
            bar.update(len(indices))
    bar.close()
    return np.stack([rows[i] for i in range(len(dataset))])
