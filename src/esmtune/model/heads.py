"""Pooling per-residue embeddings into one vector, and the MLP head on top.

Pooling sees only residues: the BOS (``<cls>``) and EOS tokens and padding are masked out, as in
ESM's own ``extract.py``; ``cls`` pooling is the one exception, by definition.
"""

from __future__ import annotations

from typing import assert_never

import torch
from torch import nn

from esmtune.config import Pooling

__all__ = ["ConvHead", "MLPHead", "Pooler", "StreamingPooler"]


class Pooler(nn.Module):
    """Turn ``(batch, length, hidden)`` states into ``(batch, hidden)``.

    Attention pooling learns one score per residue (a linear layer) and takes the softmax-weighted
    sum; it lets the model focus on a signal peptide or a motif instead of the average.
    """

    def __init__(self, pooling: Pooling, hidden_size: int) -> None:
        super().__init__()
        self.pooling = Pooling(pooling)
        self.scorer = nn.Linear(hidden_size, 1) if self.pooling is Pooling.ATTENTION else None

    def attention_scorer(self) -> nn.Linear:
        """The layer that scores each residue state.

        Raises:
            ValueError: When the pooling is not attention, which has no scores.
        """
        if self.scorer is None:
            raise ValueError(f"{self.pooling.value} pooling has no residue scorer")
        return self.scorer

    def forward(self, hidden: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        """Pool the residues marked by ``residue_mask`` (bool, ``(batch, length)``)."""
        if self.pooling is Pooling.CLS:
            return hidden[:, 0]
        mask = residue_mask.unsqueeze(-1)
        if self.pooling is Pooling.MEAN:
            total = (hidden * mask).sum(dim=1)
            return total / mask.sum(dim=1).clamp(min=1)
        if self.pooling is Pooling.MAX:
            lowest = torch.finfo(hidden.dtype).min
            return hidden.masked_fill(~mask, lowest).max(dim=1).values
        if self.pooling is Pooling.ATTENTION:
            scores = self.attention_scorer()(hidden).squeeze(-1).float()
            scores = scores.masked_fill(~residue_mask, float("-inf"))
            weights = torch.softmax(scores, dim=1).to(hidden.dtype).unsqueeze(-1)
            return (hidden * weights).sum(dim=1)
        assert_never(self.pooling)


class MLPHead(nn.Module):
    """Dropout → (Linear → activation → Dropout) per hidden size → Linear to the outputs.

    With one hidden layer of the input's width and ``tanh`` it is, layer for layer,
    transformers' ``EsmClassificationHead`` (the ``esm`` head).
    """

    def __init__(
        self,
        in_size: int,
        hidden_sizes: list[int],
        out_size: int,
        dropout: float,
        activation: type[nn.Module] = nn.GELU,
    ) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        for size in hidden_sizes:
            layers += [nn.Linear(in_size, size), activation(), nn.Dropout(dropout)]
            in_size = size
        layers.append(nn.Linear(in_size, out_size))
        self.layers = nn.Sequential(*layers)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """Logits for each output."""
        return self.layers(pooled)


class ConvHead(nn.Module):
    """A 1D CNN over residue states: Conv → GELU → Dropout → Conv to the outputs, per residue.

    As biotrainer's and NetSurfP's CNN heads: each residue's prediction reads its neighbours'
    states too (``kernel_size`` residues, centred). Positions that are not residues (``<cls>``,
    ``<eos>``, padding) are zeroed before each convolution, so they act as the zero padding at a
    chain's ends and a residue's output does not depend on what else is in its batch.
    """

    def __init__(
        self, in_size: int, channels: int, out_size: int, kernel_size: int, dropout: float
    ) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.first = nn.Conv1d(in_size, channels, kernel_size, padding=padding)
        self.activation = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.last = nn.Conv1d(channels, out_size, kernel_size, padding=padding)

    @property
    def reach(self) -> int:
        """Residues either side whose states a residue's logits read: half a kernel per layer."""
        return sum(conv.kernel_size[0] // 2 for conv in (self.first, self.last))

    def forward(self, states: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(sequences, positions, outputs)`` from their states ``(..., hidden)``."""
        keep = residue_mask.unsqueeze(1).to(states.dtype)  # (sequences, 1, positions)
        hidden = self.first(self.dropout(states.transpose(1, 2)) * keep)
        hidden = self.dropout(self.activation(hidden)) * keep
        return self.last(hidden).transpose(1, 2)


class StreamingPooler:
    """:class:`Pooler` over a sequence that arrives in pieces, with memory for one piece.

    Every pooling reduces exactly over pieces: mean as a running sum and count, max as a
    running maximum, attention as an online softmax (a running maximum score, the sum of the
    exponentials below it, and the weighted sum of states, rescaled when the maximum rises).
    Implements :class:`~esmtune.model.windows.ResidueSink`; ``close`` returns ``(hidden,)``.
    """

    def __init__(self, pooler: Pooler) -> None:
        self.pooler = pooler
        self._count = 0
        self._total: torch.Tensor | None = None  # sum (mean), maximum (max), weighted sum (attn)
        self._top_score = torch.tensor(float("-inf"))
        self._weight = torch.tensor(0.0)

    def add_residues(self, states: torch.Tensor) -> None:
        """Fold in the states ``(residues, hidden)`` of the next residues."""
        if len(states) == 0:
            return
        self._count += len(states)
        pooling = self.pooler.pooling
        if pooling is Pooling.CLS:
            return
        if pooling is Pooling.MEAN:
            piece = states.sum(dim=0)
            self._total = piece if self._total is None else self._total + piece
        elif pooling is Pooling.MAX:
            piece = states.max(dim=0).values
            self._total = piece if self._total is None else torch.maximum(self._total, piece)
        elif pooling is Pooling.ATTENTION:
            scorer = self.pooler.attention_scorer()
            scores = scorer(states.to(scorer.weight.dtype)).squeeze(-1).float()
            top = torch.maximum(self._top_score, scores.max())
            rescale = torch.exp(self._top_score - top)  # 0 for the first piece
            weights = torch.exp(scores - top)
            piece = (weights.unsqueeze(1) * states.float()).sum(dim=0)
            self._total = piece if self._total is None else self._total * rescale + piece
            self._weight = self._weight * rescale + weights.sum()
            self._top_score = top
        else:
            assert_never(pooling)

    def close(self, cls_state: torch.Tensor) -> torch.Tensor:
        """The pooled vector ``(hidden,)``; ``cls_state`` is the sequence's ``<cls>`` state."""
        pooling = self.pooler.pooling
        if pooling is Pooling.CLS:
            return cls_state
        if self._total is None:
            return torch.zeros_like(cls_state)  # no residues (the batched pooler's 0 / 1)
        if pooling is Pooling.MEAN:
            return self._total / self._count
        if pooling is Pooling.MAX:
            return self._total
        if pooling is Pooling.ATTENTION:
            return self._total / self._weight
        assert_never(pooling)
