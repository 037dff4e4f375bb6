"""Predictions from a trained run or an export: ``Predictor.load(path).predict(sequences)``.

An ONNX export predicts with numpy and onnxruntime alone (its model reads windows, pools and
stitches in numpy, the task activates in numpy), so this module imports torch, transformers
and peft only where a run or an hf export is loaded: inside :meth:`Predictor.from_run`, the
torch branch of predicting, embeddings and explanations.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, cast

import numpy as np

from esmtune.config import LongSequences
from esmtune.data.check import sequence_problem
from esmtune.data.encoding import Window, encode, place_residues
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import DataError, EsmtuneError
from esmtune.explain_options import DEFAULT_STEPS, ExplainOptions, Method
from esmtune.export.formats import export_format
from esmtune.export.load import check_export_loadable, open_export
from esmtune.export.names import AUTO, Runtime
from esmtune.export.onnx_runtime import OnnxClassifier
from esmtune.extras import require_training_stack
from esmtune.predict_options import PredictOptions
from esmtune.processes import Processes
from esmtune.rundir import read_run
from esmtune.tasks import TaskSpec

if TYPE_CHECKING:
    import torch

    from esmtune.explain import Explainer, Explanation
    from esmtune.model.embedding_head import EmbeddingClassifier
    from esmtune.model.interface import Classifier, RuntimeModel
    from esmtune.model.loaded import LoadedRun

# Embeddings per forward pass of a head alone (cheap: no backbone runs).
_EMBEDDING_BATCH = 256

__all__ = ["PredictOptions", "Predictor", "as_records", "check_loadable", "write_predictions"]


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


def check_loadable(path: Path | str, runtime: str = AUTO) -> None:
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
        check_export_loadable(path, runtime)
        return
    _check_runs_in_torch(path, PredictOptions.merged(None, {"runtime": runtime}))
    require_training_stack("predicting from a run directory")
    from esmtune.model.backbone import check_backbone_available

    config, _ = read_run(path)
    check_backbone_available(config.model)


def _check_runs_in_torch(run_dir: Path | str, options: PredictOptions) -> None:
    """A run directory holds torch weights only: refuse an ONNX runtime, saying how to get one."""
    if options.runtime not in (AUTO, Runtime.TORCH):
        raise EsmtuneError(
            f"runtime {options.runtime} needs an ONNX export; {run_dir} is a run directory, "
            f"which runs in torch: export it first (`esmtune export {run_dir} --format onnx "
            "--quantize int8 --out DIR`)"
        )


def _with_runtime(overrides: dict[str, Any], runtime: str | None) -> dict[str, Any]:
    """Keyword options, plus the runtime when it was given positionally."""
    return overrides if runtime is None else {**overrides, "runtime": runtime}


class Predictor:
    """A trained model ready to predict; batches by length internally, returns input order.

    Load one with :meth:`from_run` (a run directory, torch), :meth:`from_export` (an
    ``esmtune export`` folder: torch for ``hf``, onnxruntime for ``onnx``) or :meth:`load`
    (either). Each takes a :class:`PredictOptions` (``options=``) and/or its fields as
    keywords: ``Predictor.load(path, device="cpu", max_tokens=4096)``.

    Under ``accelerate launch``, the processes share the batches of each :meth:`predict` by
    tokens, each on its own GPU, and every process gets all predictions, in input order.
    """

    def __init__(
        self,
        loaded: LoadedRun[RuntimeModel],
        options: PredictOptions | None = None,
        *,
        embedding_head: EmbeddingClassifier | None = None,
        **overrides: Any,
    ) -> None:
        """Predict with a model already loaded.

        Args:
            loaded: The model with its run's tokenizer, task and config
                (:func:`~esmtune.model.run_model.load_run`,
                :func:`~esmtune.export.load.open_export`).
            options: How to predict (None: :class:`PredictOptions`' defaults).
            embedding_head: A run trained on precomputed embeddings: its head alone, for
                :meth:`predict_embeddings`.
            **overrides: :class:`PredictOptions` fields replacing those of ``options``.

        Raises:
            EsmtuneError: On a bad option, or a runtime other than the model's.
        """
        options = PredictOptions.merged(options, overrides)
        if options.runtime not in (AUTO, loaded.model.runtime):
            raise EsmtuneError(
                f"this model runs in {loaded.model.runtime}, not {options.runtime}: load the "
                f"folder with Predictor.load(path, runtime={options.runtime!r}) instead"
            )
        self.run = loaded
        self.options = options
        self.model = loaded.model
        self.runtime = loaded.model.runtime
        # Under `accelerate launch`, the processes that share each predict() call.
        self.processes = Processes.current()
        self.device: torch.device | str = loaded.model.prepare_inference(
            self.processes.device_for(options.device)
        )
        self.task: TaskSpec = loaded.task
        self.labels: list[str] = loaded.labels
        self.max_length = loaded.config.data.max_length
        self.window_stride = loaded.config.data.window_stride
        self.long_sequences = options.long_sequences
        # A run trained on precomputed embeddings: its head alone (None for any other model).
        self.embedding_head = embedding_head
        if embedding_head is not None:
            embedding_head.prepare_inference(self.device)

    @property
    def reads_sequences(self) -> bool:
        """False for a head on embeddings whose making model is unknown: it takes embeddings."""
        return self.model is not self.embedding_head

    def predict_embeddings(
        self,
        embeddings: Path | str | Mapping[str, np.ndarray],
        top_k: int | None = None,
        ids: Iterable[str] | None = None,
    ) -> list[dict[str, Any]]:
        """Predict from precomputed embeddings, for a run trained on such (``data.embeddings``).

        Args:
            embeddings: An embedding file (as ``data.embeddings`` takes), or ``{id: array}``.
            top_k: As in :meth:`predict`.
            ids: Which ids to predict, in this order (default: every id, in the file's order).

        Returns:
            One dict per id, in the task's format (see :meth:`predict`), with ``id``.

        Raises:
            EsmtuneError: When the run was not trained on embeddings, or their shape or size
                differs from what its head was trained on.
            DataError: On an unreadable file, or ids it lacks.
        """
        head = self.embedding_head
        if head is None:
            raise EsmtuneError(
                f"{self.run.run_dir} reads sequences (its backbone runs); embeddings go only to "
                "a run trained on them (data.embeddings)"
            )
        import torch

        from esmtune.data.embedding_files import read_embeddings
        from esmtune.embeddings import FileEmbeddings

        vectors = (
            read_embeddings(embeddings).vectors
            if isinstance(embeddings, str | Path)
            else dict(embeddings)
        )
        chosen = list(vectors) if ids is None else list(ids)
        missing = [i for i in chosen if i not in vectors]
        if missing:
            raise DataError(f"no embedding for {len(missing)} id(s), e.g. {missing[:5]}")
        arrays = [np.asarray(vectors[i], dtype=np.float32) for i in chosen]
        source = head.source
        wrong = [
            i for i, a in zip(chosen, arrays, strict=True)
            if a.shape[-1] != source.dim or (a.ndim == 2) != source.per_residue
        ]  # fmt: skip
        if wrong:
            shape = f"({'residues, ' if source.per_residue else ''}{source.dim})"
            raise EsmtuneError(
                f"{len(wrong)} embedding(s) differ from the {shape} ones the head was trained on, "
                f"e.g. {wrong[:3]}: use the model and pooling that made {source.file}"
            )
        rows = []
        for start in range(0, len(arrays), _EMBEDDING_BATCH):
            chunk = FileEmbeddings(arrays[start : start + _EMBEDDING_BATCH], None)
            batch = chunk.collate([chunk[n] for n in range(len(chunk))])
            inputs = {k: v.to(self.device) for k, v in batch.items() if k.startswith("embedding")}
            with torch.inference_mode():
                rows.append(self.task.outputs(head(**inputs)))
        outputs = np.concatenate(rows) if rows else self._no_outputs()
        return [
            {"id": identifier, **prediction}
            for identifier, prediction in zip(
                chosen, self.task.predictions(outputs, top_k), strict=True
            )
        ]

    @classmethod
    def from_run(
        cls, run_dir: Path | str, options: PredictOptions | None = None, **overrides: Any
    ) -> Predictor:
        """Load the best model of a run directory (torch).

        Args:
            run_dir: A finished run directory.
            options: How to predict (see :class:`PredictOptions`; its runtime must be ``auto``
                or ``torch``).
            **overrides: :class:`PredictOptions` fields, e.g. ``device="cpu"``.

        Raises:
            RunDirError: When the folder is not a finished run.
            EsmtuneError: On a bad option, or an ONNX runtime (that needs an export).
        """
        options = PredictOptions.merged(options, overrides)
        _check_runs_in_torch(run_dir, options)
        require_training_stack("predicting from a run directory")
        from esmtune.embeddings import load_embedding_run
        from esmtune.model.embedding_head import EmbeddingSource
        from esmtune.model.run_model import load_run

        if EmbeddingSource.read(Path(run_dir)) is not None:  # a head on precomputed embeddings
            loaded, head = load_embedding_run(Path(run_dir), options.embed_with)
            return cls(loaded, options, embedding_head=head)
        return cls(load_run(run_dir), options)

    @classmethod
    def from_export(
        cls,
        export_dir: Path | str,
        runtime: str | None = None,
        options: PredictOptions | None = None,
        **overrides: Any,
    ) -> Predictor:
        """Load an ``esmtune export`` folder.

        Args:
            export_dir: The ``--out`` folder of ``esmtune export``.
            runtime: The ``runtime`` option, positionally. ``auto`` (default): an ``hf`` export
                runs in torch; an ``onnx`` export in onnxruntime, with the graph the export's
                own check found fastest among those that keep the labels (``export.json``:
                int8 when it agreed with the run on at least 99% of the checked sequences and
                ran faster, else fp32). Or force ``torch`` (hf exports), ``onnx`` (fp32 graph)
                or ``onnx-int8``.
            options: How to predict (see :class:`PredictOptions`; ``device`` for ONNX is ``cpu``
                or ``cuda`` with onnxruntime-gpu).
            **overrides: :class:`PredictOptions` fields, e.g. ``max_tokens=4096``.

        Raises:
            RunDirError: When the folder is not an export, or lacks the requested graph.
            EsmtuneError: On a bad option, or a runtime the export cannot run.
        """
        options = PredictOptions.merged(options, _with_runtime(overrides, runtime))
        device = options.device
        if device is not None and device.startswith("cuda"):
            # Under `accelerate launch`, each process on its own GPU: the ONNX session binds
            # its device when it opens, before the predictor places anything.
            device = Processes.current().device_for(device)
        return cls(open_export(export_dir, options.runtime, device), options)

    @classmethod
    def load(
        cls,
        path: Path | str,
        runtime: str | None = None,
        options: PredictOptions | None = None,
        **overrides: Any,
    ) -> Predictor:
        """A run directory (:meth:`from_run`) or an export folder (:meth:`from_export`).

        ``runtime`` is the ``runtime`` option, positionally; ``options`` and ``overrides`` as
        there.
        """
        overrides = _with_runtime(overrides, runtime)
        if export_format(path) is not None:
            return cls.from_export(path, options=options, **overrides)
        return cls.from_run(path, options, **overrides)

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
        if not records:
            return self._no_outputs()
        return self._outputs(records, progress)[0]

    def _no_outputs(self) -> np.ndarray:
        """The task's own shape for no sequences."""
        return self.task.outputs(np.empty((0, self.task.num_outputs), dtype=np.float32))

    def _outputs(
        self, records: list[SequenceRecord], progress: bool
    ) -> tuple[np.ndarray, list[list[Window]]]:
        self._validate(records)
        windows = encode(
            self.run.tokenizer, [r.sequence for r in records], self.max_length,
            self.long_sequences, self.window_stride,
        )  # fmt: skip
        pad_token_id = self.run.tokenizer.pad_token_id
        if isinstance(self.model, OnnxClassifier):  # numpy and onnxruntime only
            outputs = self.model.predict_outputs(
                windows, self.task.outputs, self.options.max_tokens, pad_token_id, progress
            )
        else:
            outputs = self._torch_outputs(windows, pad_token_id, progress)
        lengths = [len(r.sequence) for r in records]
        return place_residues(outputs, [w[0].start for w in windows], lengths), windows

    def _torch_outputs(
        self, windows: list[list[Window]], pad_token_id: int, progress: bool
    ) -> np.ndarray:
        """The task's outputs of a torch model (a run, an hf export), batched as in training."""
        import torch

        from esmtune.data.batching import EncodedDataset
        from esmtune.inference import predict_outputs

        assert isinstance(self.device, torch.device)
        return predict_outputs(
            cast("Classifier", self.model),
            EncodedDataset(windows),
            self.task.outputs,
            self.options.max_tokens,
            pad_token_id,
            progress=progress,
            precision=self.options.precision,
            device=self.device,
            processes=self.processes,
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
            (one target) and ``values`` (by target name); residue_classification
            ``sequence``, ``prediction`` (one class per residue, ``?`` where not read),
            ``classes``, ``probabilities`` (per residue, None where not read) and ``unread``;
            residue_regression ``sequence``, ``values`` (per residue) and ``unread``.
            ``windows`` says how many overlapping windows a long sequence was read in.

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
            # A per-residue prediction is read against its sequence (``--format text``).
            sequence = {"sequence": record.sequence} if self.task.per_residue else {}
            results.append(
                {
                    "id": record.id,
                    **sequence,
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

    def explain(
        self,
        sequences: Iterable[str | SequenceRecord] | Mapping[str, str],
        label: str | None = None,
        method: Method | str = Method.IG,
        steps: int = DEFAULT_STEPS,
        progress: bool = False,
        position: int | str | Iterable[int | str] | None = None,
    ) -> list[Explanation]:
        """Why the model predicted what it did: a score per residue (see :mod:`esmtune.explain`).

        Sequences are read as :meth:`predict` reads them (long ones in windows, by default), in
        float32. A per-residue run (``residue_classification``, ``residue_regression``) predicts
        each residue, so ``position`` says which residue's prediction to explain; there is no
        default, since each position costs a whole explanation.

        Args:
            sequences: Plain sequences, ``{id: sequence}``, or records.
            label: The label (regression: the target) to explain; None: each sequence's
                predicted label (multilabel: its most probable; regression: the first target).
                Per-residue runs: the class at ``position`` (None: the one predicted there).
            method: ``ig`` (integrated gradients on the input embeddings, needs Captum:
                ``pip install 'esmtune[explain]'``) or ``rollout`` (attention rollout, the same
                for every label).
            steps: Integrated gradients' points along the path (more: closer to the integral).
            progress: Show a progress bar.
            position: Per-residue runs only, and required there: the residue(s) whose
                prediction to explain, numbered from 1 (as ``predict --format text``): ``42``,
                ``"10-20"``, ``"10,42"`` or a list of these. Each sequence is explained at each.

        Returns:
            One :class:`~esmtune.explain.Explanation` per input (per-residue runs: per input
            and position, positions ascending), in input order: ``id``, ``sequence``, ``label``,
            ``method``, ``scores`` (a float32 array, one per residue, no ``<cls>``/``<eos>``;
            NaN for residues a cut sequence left out), ``output``, for ``ig``,
            ``baseline_output`` (the scores sum to the difference), and ``position``.

        Raises:
            DataError: On empty sequences or invalid residues, naming every record.
            EsmtuneError: On an unknown label, method, step count or position, a missing
                position (per-residue runs) or one given to a sequence-level run, positions
                beyond a sequence or not read, a missing Captum, or a model not in torch (an
                ONNX export).
        """
        options = ExplainOptions.checked(label=label, method=method, steps=steps, position=position)
        records = as_records(sequences)
        self._validate(records)
        return self._explainer().explain(records, options, progress)

    def attention(self, sequence: str | SequenceRecord, special_tokens: bool = False) -> np.ndarray:
        """The raw attention maps of one sequence, every layer and head (for those who study them).

        Computed with eager attention for this call (sdpa, the default, computes no weights).

        Args:
            sequence: One sequence (or record) of at most ``max_length`` residues.
            special_tokens: Keep the ``<cls>`` and ``<eos>`` rows and columns (first and last),
                so that each row sums to 1; without them rows lose those shares.

        Returns:
            A float32 array ``(layers, heads, L, L)``, ``L`` the residues (+ 2 with
            ``special_tokens``): ``maps[layer, head, i, j]`` is how much position i attends to
            position j, first layer first, positions 0-based.

        Raises:
            DataError: On an empty sequence or invalid residues.
            EsmtuneError: On a sequence longer than max_length (pass a slice), or a model not in
                torch.
        """
        records = as_records([sequence])
        self._validate(records)
        return self._explainer().attention(records[0], special_tokens)

    def _explainer(self) -> Explainer:
        """Explanations read sequences as :meth:`predict` does (windows, budget, device)."""
        import torch

        from esmtune.explain import Explainer, torch_run
        from esmtune.inference import inference_budget

        run = torch_run(self.run)  # refuses a model outside torch, saying what to use
        device = torch.device(self.device)
        return Explainer(
            run,
            device,
            self.max_length,
            self.long_sequences,
            self.window_stride,
            self.options.max_tokens or inference_budget(device),
        )


def _text_block(task: TaskSpec, result: dict[str, Any]) -> list[str]:
    """A person's view of one prediction: its id and length, then the task's lines."""
    if "length" not in result:  # predicted from an embedding: no sequence to describe
        return [result["id"], *task.text_lines(result)]
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
