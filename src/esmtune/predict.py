"""Predictions from a trained run: ``Predictor.from_run(path).predict(sequences)``."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from esmtune.data.batching import EncodedDataset, encode
from esmtune.data.check import sequence_problem
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import DataError
from esmtune.inference import predict_outputs
from esmtune.model.rundir import load_run
from esmtune.tasks import task_spec

__all__ = ["Predictor", "as_records"]


def as_records(
    sequences: Iterable[str | SequenceRecord] | Mapping[str, str],
) -> list[SequenceRecord]:
    """Accept strings, ``{id: sequence}`` or records; normalise case, spaces and a final '*'."""
    if isinstance(sequences, Mapping):
        items = [SequenceRecord(str(k), v) for k, v in sequences.items()]
    else:
        items = [
            s if isinstance(s, SequenceRecord) else SequenceRecord(f"seq{i + 1}", s)
            for i, s in enumerate(sequences)
        ]
    cleaned = []
    for record in items:
        sequence = "".join(record.sequence.split()).upper().removesuffix("*")
        cleaned.append(
            SequenceRecord(record.id, sequence, record.label, record.source, record.line)
        )
    return cleaned


class Predictor:
    """A trained model ready to predict; batches by length internally, returns input order."""

    def __init__(self, loaded: Any, device: str | torch.device | None = None, batch_size: int = 16):
        self.run = loaded
        self.labels: list[str] = loaded.labels
        self.max_length = loaded.config.data.max_length
        self.spec = task_spec(loaded.config.task)
        self.batch_size = batch_size
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = loaded.model.to(device).eval()

    @classmethod
    def from_run(
        cls, run_dir: Path | str, device: str | torch.device | None = None, batch_size: int = 16
    ) -> Predictor:
        """Load the best model of a run directory."""
        return cls(load_run(run_dir), device=device, batch_size=batch_size)

    def _validate(self, records: list[SequenceRecord]) -> None:
        problems = [problem for record in records if (problem := sequence_problem(record))]
        if problems:
            raise DataError(
                f"{len(problems)} invalid input sequence(s):\n  - " + "\n  - ".join(problems)
            )

    def predict(
        self,
        sequences: Iterable[str | SequenceRecord] | Mapping[str, str],
        top_k: int | None = None,
        progress: bool = False,
    ) -> list[dict[str, Any]]:
        """Predict a label and every class probability for each sequence.

        Args:
            sequences: Plain sequences, ``{id: sequence}``, or records.
            top_k: Also return the k most probable labels (default: all, ranked).
            progress: Show a progress bar.

        Returns:
            One dict per input, in input order: ``id``, ``label``, ``probability``,
            ``probabilities`` (label -> p), ``top_k`` ([(label, p), ...]), ``length`` and
            ``truncated`` (residues beyond the run's max_length were not seen).

        Raises:
            DataError: On empty sequences or invalid residues, naming every record.
        """
        records = as_records(sequences)
        if not records:
            return []
        self._validate(records)
        ids = encode(self.run.tokenizer, [r.sequence for r in records], self.max_length)
        probabilities = predict_outputs(
            self.model,
            EncodedDataset(ids),
            self.spec.activation,
            self.batch_size,
            self.run.tokenizer.pad_token_id,
            progress=progress,
        )
        k = min(top_k or len(self.labels), len(self.labels))
        results = []
        for record, row in zip(records, probabilities, strict=True):
            ranked = sorted(zip(self.labels, row.tolist(), strict=True), key=lambda x: -x[1])
            results.append(
                {
                    "id": record.id,
                    "label": ranked[0][0],
                    "probability": ranked[0][1],
                    "probabilities": dict(zip(self.labels, row.tolist(), strict=True)),
                    "top_k": ranked[:k],
                    "length": len(record.sequence),
                    "truncated": len(record.sequence) > self.max_length,
                }
            )
        return results
