"""Predictions from a trained run or an export: ``Predictor.load(path).predict(sequences)``."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from torch import nn

from esmtune.config import LongSequences
from esmtune.data.batching import EncodedDataset, Window, encode
from esmtune.data.check import sequence_problem
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import DataError, EsmtuneError, RunDirError
from esmtune.inference import predict_outputs
from esmtune.model.backbone import check_backbone_available
from esmtune.model.exported import (
    HEAD_FILE,
    INT8_FILE,
    ONNX_FILE,
    choose_runtime,
    export_format,
    load_export,
    load_onnx_export,
    read_export,
)
from esmtune.model.rundir import LoadedRun, load_run, read_run
from esmtune.tasks import TaskSpec

__all__ = ["Predictor", "as_records", "check_loadable", "write_predictions"]


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


def check_loadable(path: Path | str, runtime: str = "auto") -> None:
    """Fail within seconds where :meth:`Predictor.load` would fail, without loading weights.

    For a server whose worker processes each load the model: one clear message up front
    instead of one traceback per worker.

    Raises:
        RunDirError: When ``path`` is neither a finished run nor an export (or lacks a graph).
        ModelLoadError: When a run's backbone cannot be found (offline, not in the cache).
        EsmtuneError: On a runtime the path cannot run in.
    """
    path = Path(path)
    if export_format(path) is not None:
        read_export(path)
        chosen = choose_runtime(path, runtime)
        graph = {"onnx": ONNX_FILE, "onnx-int8": INT8_FILE}.get(chosen)
        if graph and not (path / graph).is_file():
            raise RunDirError(f"{path / graph} is missing: export the run again with that form")
        return
    if runtime not in ("auto", "torch"):
        raise EsmtuneError(_NEEDS_EXPORT.format(runtime=runtime, path=path))
    config, _ = read_run(path)
    check_backbone_available(config.model)


_NEEDS_EXPORT = (
    "runtime {runtime} needs an ONNX export; {path} is a run directory, which runs in torch: "
    "export it first (`esmtune export {path} --format onnx --quantize int8 --out DIR`)"
)


class Predictor:
    """A trained model ready to predict; batches by length internally, returns input order.

    Load one with :meth:`from_run` (a run directory, torch), :meth:`from_export` (an
    ``esmtune export`` folder: torch for ``hf``, onnxruntime for ``onnx``) or :meth:`load`
    (either).
    """

    def __init__(
        self,
        loaded: LoadedRun,
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
        # onnxruntime models (OnnxClassifier) say which graph they run; torch models are modules.
        self.runtime: str = getattr(loaded.model, "runtime", "torch")
        if isinstance(loaded.model, nn.Module):
            self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
            self.model = loaded.model.to(self.device).eval()
        else:
            self.device = torch.device("cpu")  # onnxruntime takes numpy arrays from host memory
            self.model = loaded.model

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

    @classmethod
    def from_export(
        cls,
        export_dir: Path | str,
        runtime: str = "auto",
        device: str | torch.device | None = None,
        max_tokens: int | None = None,
        long_sequences: LongSequences | str = LongSequences.WINDOW,
        precision: str = "fp32",
    ) -> Predictor:
        """Load an ``esmtune export`` folder.

        Args:
            export_dir: The ``--out`` folder of ``esmtune export``.
            runtime: ``auto`` (default): an ``hf`` export runs in torch; an ``onnx`` export in
                onnxruntime, with the graph the export's own check found fastest among those
                that keep the labels (``export.json``: int8 when it agreed with the run on at
                least 99% of the checked sequences and ran faster, else fp32). Or force
                ``torch`` (hf exports), ``onnx`` (fp32 graph) or ``onnx-int8``.
            device: torch device for ``hf`` exports; for ONNX, ``cpu`` (default) or ``cuda``
                (onnxruntime-gpu's CUDA provider; inputs and outputs pass through host memory).
            max_tokens: Token budget per batch (see :meth:`from_run`).
            long_sequences: As in :meth:`from_run`; windows work with ONNX too.
            precision: torch only (see :meth:`from_run`).

        Raises:
            RunDirError: When the folder is not an export, or lacks the requested graph.
            EsmtuneError: On a runtime the export cannot run.
        """
        fmt = export_format(export_dir)
        if fmt is None:
            raise RunDirError(
                f"{export_dir} is not an esmtune export (no {ONNX_FILE} or {HEAD_FILE}); "
                "for a run directory use Predictor.from_run"
            )
        chosen = choose_runtime(export_dir, runtime)
        if chosen == "torch":
            loaded = load_export(export_dir)
        else:
            where = None if device is None else str(device)
            loaded = load_onnx_export(export_dir, chosen == "onnx-int8", device=where)
        return cls(loaded, device, max_tokens, long_sequences, precision)

    @classmethod
    def load(cls, path: Path | str, runtime: str = "auto", **options: Any) -> Predictor:
        """A run directory (:meth:`from_run`) or an export folder (:meth:`from_export`).

        ``options``: ``device``, ``max_tokens``, ``long_sequences``, ``precision``, as there.
        """
        if export_format(path) is not None:
            return cls.from_export(path, runtime, **options)
        if runtime not in ("auto", "torch"):
            raise EsmtuneError(_NEEDS_EXPORT.format(runtime=runtime, path=path))
        return cls.from_run(path, **options)

    def _validate(self, records: list[SequenceRecord]) -> None:
        problems = [problem for record in records if (problem := sequence_problem(record))]
        if problems:
            raise DataError(
                f"{len(problems)} invalid input sequence(s):\n  - " + "\n  - ".join(problems)
            )

    def outputs(
        self, sequences: Iterable[str | SequenceRecord] | Mapping[str, str], progress: bool = False
    ) -> np.ndarray:
        """What the task reports per sequence, in input order, as one array.

        ``(sequences, labels)`` probabilities, or regression values in target units.

        Raises:
            DataError: On empty sequences or invalid residues, naming every record.
        """
        records = as_records(sequences)
        if not records:  # the task's own shape for no sequences
            return self.task.outputs(torch.empty(0, self.task.num_outputs))
        return self._outputs(records, progress)[0]

    def _outputs(
        self, records: list[SequenceRecord], progress: bool
    ) -> tuple[np.ndarray, list[list[Window]]]:
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
            device=self.device,
        )
        return outputs, windows

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
        outputs, windows = self._outputs(records, progress)
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
        rows = [
            {
                "id": result["id"],
                **self.task.frame_row(result),
                **{k: result[k] for k in ("length", "truncated", "windows")},
            }
            for result in self.predict(sequences, top_k=top_k, progress=progress)
        ]
        return pd.DataFrame(rows)


def _text_block(task: TaskSpec, result: dict[str, Any]) -> list[str]:
    """A person's view of one prediction: its id and length, then the task's lines."""
    cut = ", truncated)" if result["truncated"] else ")"
    return [f"{result['id']} ({result['length']} residues{cut}", *task.text_lines(result)]


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
    writer.writerow(task.table_header())
    writer.writerows(task.table_row(result) for result in results)
