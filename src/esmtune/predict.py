"""Predictions from a trained run: ``Predictor.from_run(path).predict(sequences)``."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import torch

from esmtune.config import LongSequences, Task
from esmtune.data.batching import EncodedDataset, encode
from esmtune.data.check import sequence_problem
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import DataError, EsmtuneError
from esmtune.inference import predict_outputs
from esmtune.model.rundir import load_run
from esmtune.tasks import TaskSpec

__all__ = ["Predictor", "as_records", "write_predictions"]


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
            SequenceRecord(record.id, sequence, record.target, record.source, record.line)
        )
    return cleaned


class Predictor:
    """A trained model ready to predict; batches by length internally, returns input order."""

    def __init__(
        self,
        loaded: Any,
        device: str | torch.device | None = None,
        max_tokens: int | None = None,
        long_sequences: LongSequences | str = LongSequences.WINDOW,
        precision: str = "fp32",
    ):
        self.run = loaded
        self.precision = precision
        self.task: TaskSpec = loaded.task
        self.labels: list[str] = loaded.labels
        self.max_length = loaded.config.data.max_length
        self.window_stride = loaded.config.data.window_stride
        self.long_sequences = LongSequences(long_sequences)
        self.max_tokens = max_tokens
        device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model = loaded.model.to(device).eval()

    @classmethod
    def from_run(
        cls,
        run_dir: Path | str,
        device: str | torch.device | None = None,
        max_tokens: int | None = None,
        long_sequences: LongSequences | str = LongSequences.WINDOW,
        precision: str = "fp32",
    ) -> Predictor:
        """Load the best model of a run directory.

        Args:
            run_dir: A finished run directory.
            device: ``cpu``, ``cuda``, ``cuda:1`` ... (default: cuda when available).
            max_tokens: Token budget per batch, inputs x longest input (default: 1,024 on a
                CPU, where small batches run fastest; 16,384 on a GPU).
            long_sequences: Sequences over the run's max_length: ``window`` (default; every
                residue is seen), ``truncate`` or ``centre``.
            precision: ``fp32``; ``bf16`` autocast (faster and leaner where the hardware runs
                bf16 natively: recent GPUs, CPUs with AVX512-BF16 or AMX; slower elsewhere);
                ``auto`` = bf16 exactly there.
        """
        return cls(load_run(run_dir), device, max_tokens, long_sequences, precision)

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
        """Predict for each sequence, in the format of the run's task.

        Args:
            sequences: Plain sequences, ``{id: sequence}``, or records.
            top_k: Rank only the k most probable labels (multiclass default: all; multilabel: 5).
            progress: Show a progress bar.

        Returns:
            One dict per input, in input order, with ``id``, ``length`` and ``truncated``
            (residues beyond the run's max_length were not seen), plus per task:
            multiclass ``label``, ``probability``, ``probabilities``, ``top_k`` [(label, p)];
            binary ``label``, ``probability`` (of the positive class), ``threshold``,
            ``probabilities``; multilabel ``labels`` (all at or above their threshold),
            ``top_k``, ``probabilities``, ``names`` (ontology names); regression ``value``
            (one target) and ``values`` (by target name). ``windows`` says how many
            overlapping windows a long sequence was read in.

        Raises:
            DataError: On empty sequences or invalid residues, naming every record.
        """
        records = as_records(sequences)
        if not records:
            return []
        self._validate(records)
        windows = encode(
            self.run.tokenizer, [r.sequence for r in records], self.max_length,
            self.long_sequences, self.window_stride,
        )  # fmt: skip
        outputs = predict_outputs(
            self.model,
            EncodedDataset(windows),
            self.task.outputs,
            self.max_tokens,
            self.run.tokenizer.pad_token_id,
            progress=progress,
            precision=self.precision,
        )
        cut = self.long_sequences is not LongSequences.WINDOW
        results = []
        predictions = self.task.predictions(outputs, top_k)
        for record, prediction, parts in zip(records, predictions, windows, strict=True):
            results.append(
                {
                    "id": record.id,
                    **prediction,
                    "length": len(record.sequence),
                    "truncated": cut and len(record.sequence) > self.max_length,
                    "windows": len(parts),
                }
            )
        return results

    def predict_frame(
        self,
        sequences: Iterable[str | SequenceRecord] | Mapping[str, str],
        top_k: int | None = None,
        progress: bool = False,
    ) -> Any:
        """:meth:`predict` as a pandas DataFrame, one row per sequence, one column per number.

        Columns: ``id``; the prediction (``label``, or ``labels`` joined by ';', or one column
        per regression target); ``probability`` and ``threshold`` where the task has them;
        ``p_<label>`` for every label; ``length``, ``truncated``, ``windows``.

        Raises:
            EsmtuneError: When pandas is not installed.
        """
        try:
            import pandas as pd
        except ImportError:
            raise EsmtuneError("predict_frame needs pandas: pip install pandas") from None
        rows = []
        for result in self.predict(sequences, top_k=top_k, progress=progress):
            row: dict[str, Any] = {"id": result["id"]}
            if "values" in result:
                row.update(result["values"])
            else:
                row["label" if "label" in result else "labels"] = result.get(
                    "label", ";".join(result.get("labels", []))
                )
                row.update({k: result[k] for k in ("probability", "threshold") if k in result})
                row.update({f"p_{k}": v for k, v in result["probabilities"].items()})
            row.update({k: result[k] for k in ("length", "truncated", "windows")})
            rows.append(row)
        return pd.DataFrame(rows)


# Per-label probability columns stop being readable (and useful in a table) beyond this many.
_MAX_PROBABILITY_COLUMNS = 50


def _ranked_text(result: dict[str, Any]) -> str:
    names = result.get("names", {})
    return ";".join(
        f"{label}{' ' + names[label] if label in names else ''}:{p:.4f}"
        for label, p in result["top_k"]
    )


def _table_row(task: TaskSpec, result: dict[str, Any], columns: list[str]) -> list[str]:
    if task.task is Task.REGRESSION:
        return [result["id"], *(f"{result['values'][x]:.6g}" for x in task.labels)]
    chosen = ";".join(result["labels"]) if "labels" in result else result["label"]
    row = [result["id"], chosen]
    if task.task is Task.BINARY:
        row += [f"{result['probability']:.6f}", f"{result['threshold']:.4f}"]
    elif task.task is Task.MULTICLASS:
        row += [f"{result['probability']:.6f}", _ranked_text(result)]
    else:
        row += [_ranked_text(result)]
    return row + [f"{result['probabilities'][x]:.6f}" for x in columns]


def _table_header(task: TaskSpec) -> tuple[list[str], list[str]]:
    """Column names and the labels that get a probability column."""
    if task.task is Task.REGRESSION:
        return ["id", *task.labels], []
    columns = task.labels if len(task.labels) <= _MAX_PROBABILITY_COLUMNS else []
    header = {
        Task.MULTICLASS: ["id", "label", "probability", "top_k"],
        Task.BINARY: ["id", "label", "probability", "threshold"],
        Task.MULTILABEL: ["id", "labels", "top_k"],
    }[task.task]
    return header + [f"p_{x}" for x in columns], columns


def _text_block(task: TaskSpec, result: dict[str, Any]) -> list[str]:
    """A person's view of one prediction."""
    lines = [f"{result['id']} ({result['length']} residues"
             + (", truncated)" if result["truncated"] else ")")]  # fmt: skip
    if task.task is Task.REGRESSION:
        lines += [f"  {name}: {value:.4g}" for name, value in result["values"].items()]
        return lines
    if task.task is Task.BINARY:
        lines.append(
            f"  {result['label']}  (P({task.labels[1]}) = {result['probability']:.3f}, "
            f"threshold {result['threshold']:.3f})"
        )
        return lines
    names = result.get("names", {})
    if task.task is Task.MULTILABEL:
        chosen = ", ".join(names.get(x, x) for x in result["labels"]) or "none above threshold"
        lines.append(f"  labels: {chosen}")
    lines.append(f"  top {len(result['top_k'])}:")
    for label, p in result["top_k"]:
        bar = "#" * round(p * 20)
        shown = f"{names[label]} ({label})" if label in names else label
        lines.append(f"    {p:5.2f} {bar:<20} {shown}")
    return lines


def write_predictions(
    results: list[dict[str, Any]], task: TaskSpec, fmt: str, handle: TextIO
) -> None:
    """Write predictions as ``tsv``, ``csv``, ``json`` or ``text`` (for people)."""
    if fmt == "json":
        json.dump(results, handle, indent=2)
        handle.write("\n")
        return
    if fmt == "text":
        for result in results:
            handle.write("\n".join(_text_block(task, result)) + "\n")
        return
    writer = csv.writer(handle, delimiter="\t" if fmt == "tsv" else ",", lineterminator="\n")
    header, columns = _table_header(task)
    writer.writerow(header)
    for result in results:
        writer.writerow(_table_row(task, result, columns))
