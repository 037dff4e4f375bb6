"""A head trained on precomputed embeddings (``data.embeddings``): no backbone at all.

The pooling and head are the classifier's own modules (:class:`~esmtune.model.heads.Pooler`,
:class:`~esmtune.model.heads.MLPHead`), under the same weight names (``pooler.``, ``head.``), so
a head trained on embeddings of an ESM2 model can sit on that model again: what the embeddings
were made with is recorded in the run (:data:`SOURCE_FILE`) and :func:`attach_source` rebuilds
the full classifier from it, so that ``predict`` and ``serve`` take sequences.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from esmtune.config import Pooling, TrainConfig
from esmtune.errors import ConfigError, EsmtuneError
from esmtune.model.heads import MLPHead, Pooler
from esmtune.model.windows import ResidueSink

__all__ = ["SOURCE_FILE", "EmbeddingClassifier", "EmbeddingSource"]

# In the run directory: the embeddings' size and shape, and what made them (if known).
SOURCE_FILE = "model/embeddings.json"


@dataclass
class EmbeddingSource:
    """What a run's embeddings were: their size, whether per residue, and what made them.

    ``made_with`` holds ``esmtune embed``'s metadata (``model``, ``pooling``, ``max_length``,
    ``long_sequences``) when the file carried it: then sequences can be embedded again the same
    way at prediction time.
    """

    dim: int
    per_residue: bool
    file: str
    made_with: dict[str, str] = field(default_factory=dict)

    def save(self, run_dir: Path) -> None:
        """Write :data:`SOURCE_FILE` (atomically, via the caller's run-file writer)."""
        from esmtune.rundir import atomic_write_text

        atomic_write_text(run_dir / SOURCE_FILE, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def read(cls, run_dir: Path) -> EmbeddingSource | None:
        """The run's embedding source, or None for a run whose backbone ran."""
        path = run_dir / SOURCE_FILE
        if not path.is_file():
            return None
        return cls(**json.loads(path.read_text()))

    @property
    def model(self) -> str | None:
        """The ESM2 model (hub id, folder or run) that made the embeddings, if known."""
        return self.made_with.get("model")


def _no_sequences(*_: Any, **__: Any) -> torch.Tensor:
    raise EsmtuneError(
        "this run was trained on precomputed embeddings from a model esmtune does not know: "
        "give embeddings (`esmtune predict RUN --embeddings FILE`, Predictor.predict_embeddings), "
        "or the ESM2 model that made them (`--embed-with MODEL`)"
    )


class EmbeddingClassifier(nn.Module):
    """Pooling (for per-residue embeddings) and the MLP head, on embeddings given as input.

    Batches carry ``embeddings`` ``(batch, dim)``, or ``(batch, residues, dim)`` with
    ``embedding_mask`` for per-residue ones. Token inputs are refused with the way out, since
    there is no backbone to read them.
    """

    runtime = "torch"

    def __init__(self, source: EmbeddingSource, num_outputs: int, config: TrainConfig) -> None:
        super().__init__()
        if config.model.head == "esm":
            raise ConfigError(
                "model.head=esm reads ESM2's <cls> state, which precomputed embeddings do not "
                "have: use model.head=mlp with data.embeddings"
            )
        if source.per_residue and config.model.pooling is Pooling.CLS:
            raise ConfigError(
                "per-residue embeddings have no <cls> state: set model.pooling to mean, max or "
                "attention"
            )
        self.source = source
        self.pooler = Pooler(config.model.pooling, source.dim)
        self.head = MLPHead(
            source.dim, config.model.head_hidden, num_outputs, config.model.head_dropout
        )

    def forward(
        self,
        embeddings: torch.Tensor | None = None,
        embedding_mask: torch.Tensor | None = None,
        **tokens: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``(batch, num_outputs)``; token inputs are refused (there is no backbone)."""
        if embeddings is None:
            return _no_sequences()
        if embeddings.ndim == 3:
            if embedding_mask is None:
                raise ValueError("per-residue embeddings need their embedding_mask")
            embeddings = self.pooler(embeddings, embedding_mask)
        return self.head(embeddings)

    def head_parameters(self) -> list[nn.Parameter]:
        """Every parameter: there is nothing else to train."""
        return list(self.parameters())

    def window_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """No backbone: refused with the way out."""
        return _no_sequences()

    def long_sequence_sink(self) -> ResidueSink:
        """No backbone: refused with the way out."""
        _no_sequences()
        raise AssertionError  # (unreachable: the line above raises)

    def prepare_inference(self, device: str | torch.device | None) -> torch.device:
        """Move to ``device`` (default: a GPU when there is one) in eval mode."""
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.to(chosen).eval()
        return chosen
