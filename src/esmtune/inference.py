"""Running a model over encoded sequences, batched by length, results back in input order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from functools import partial

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from esmtune.data.batching import EncodedDataset, LengthGroupedBatchSampler, pad_collate

__all__ = ["eval_loader", "iterate_outputs", "predict_outputs"]


def eval_loader(
    dataset: EncodedDataset, batch_size: int, pad_token_id: int, num_workers: int = 0
) -> DataLoader:
    """Length-sorted batches padded to their own longest sequence."""
    sampler = LengthGroupedBatchSampler(dataset.lengths, batch_size, shuffle=False)
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=partial(pad_collate, pad_token_id=pad_token_id),
        num_workers=num_workers,
        generator=torch.Generator(),  # leaves the global RNG (dropout in training) untouched
    )


@torch.inference_mode()
def iterate_outputs(
    model: nn.Module,
    batches: Iterable[dict[str, torch.Tensor]],
    outputs: Callable[[torch.Tensor], np.ndarray],
    device: torch.device | None = None,
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (input indices, outputs) per batch; the model must be in eval mode.

    ``outputs`` turns logits into what the task reports (e.g. :meth:`TaskSpec.outputs`).
    """
    for batch in batches:
        input_ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        if device is not None:
            input_ids, attention_mask = input_ids.to(device), attention_mask.to(device)
        logits = model(input_ids=input_ids, attention_mask=attention_mask)
        yield batch["index"].cpu().numpy(), outputs(logits)


def predict_outputs(
    model: nn.Module,
    dataset: EncodedDataset,
    outputs: Callable[[torch.Tensor], np.ndarray],
    batch_size: int,
    pad_token_id: int,
    progress: bool = False,
) -> np.ndarray:
    """Outputs for every sequence of ``dataset``, in its order, on the model's device."""
    device = next(model.parameters()).device
    loader = eval_loader(dataset, batch_size, pad_token_id)
    rows: dict[int, np.ndarray] = {}
    bar = tqdm(total=len(dataset), desc="predict", unit="seq", disable=not progress)
    for indices, batch_outputs in iterate_outputs(model, loader, outputs, device):
        rows.update(zip(indices.tolist(), batch_outputs, strict=True))
        bar.update(len(indices))
    bar.close()
    return np.stack([rows[i] for i in range(len(dataset))])
