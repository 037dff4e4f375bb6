"""An ONNX export run by onnxruntime, with numpy for everything around the graphs.

The export holds two graphs: ``model.onnx`` (tokens -> logits, and the residue states) and
``head.onnx`` (residue states -> logits), so that sequences longer than the context are read in
windows exactly as in torch: the windows' states are stitched between the two graphs. Batching
by token budget, stitching, streaming pooling and the task's activation run here in numpy, so
that predicting from an export imports neither torch nor transformers: a small container or a
pipeline step pays only for numpy and onnxruntime. The model comes back inside a
:class:`~esmtune.model.loaded.LoadedRun`, so :class:`esmtune.predict.Predictor` and ``serve``
hold an export as they hold a run.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from esmtune.architectures import ESM2_VOCAB
from esmtune.config import Pooling
from esmtune.data.encoding import (
    Esm2Vocabulary,
    NumpyStitcher,
    StitchSink,
    Window,
    fill_batches,
    sequence_rows,
    token_budget,
)
from esmtune.errors import EsmtuneError, RunDirError
from esmtune.export.files import INT8_FILE, ONNX_FILE, POOL_HEAD_FILE, read_export, require_modules
from esmtune.export.names import Runtime
from esmtune.model.loaded import LoadedRun

__all__ = ["OnnxClassifier", "Provider", "load_onnx_export", "onnx_providers"]

# An onnxruntime execution provider: its name, or its name with provider options.
Provider = str | tuple[str, dict[str, str]]


class OnnxClassifier:
    """An ONNX export run by onnxruntime; inputs and outputs are numpy arrays.

    ``model(input_ids=..., attention_mask=...)`` gives the logits of rows that are each one
    whole sequence; :meth:`predict_outputs` reads any sequences, long ones in windows stitched
    and pooled (``head.onnx``) as the torch model does.
    """

    def __init__(
        self,
        export_dir: Path | str,
        quantized: bool = False,
        providers: Sequence[Provider] = ("CPUExecutionProvider",),
        threads: int | None = None,
        pooling: Pooling = Pooling.MEAN,
        per_residue: bool = False,
    ) -> None:
        """Open ``model.onnx`` (or ``model.int8.onnx`` with ``quantized``) and ``head.onnx``.

        ``threads``: onnxruntime's intra-op threads (default: ``OMP_NUM_THREADS`` if set, else
        onnxruntime's one per physical core; torch's default too, so both runtimes use the same
        cores). ``pooling``: the run's, for long sequences read in passes. ``per_residue``: the
        graphs give logits per position (a per-residue task's export).
        """
        require_modules("onnxruntime")
        import onnxruntime

        folder = Path(export_dir)
        path = folder / (INT8_FILE if quantized else ONNX_FILE)
        if not path.is_file():
            hint = "--quantize int8 " if quantized else ""
            raise RunDirError(
                f"{path} is missing: create it with "
                f"`esmtune export RUN --format onnx {hint}--out {folder}`"
            )
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads or _default_threads()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = path
        self.pooling = Pooling(pooling)
        self.per_residue = per_residue
        self.runtime = Runtime.ONNX_INT8 if quantized else Runtime.ONNX
        self.session = onnxruntime.InferenceSession(str(path), options, providers=list(providers))
        head = folder / POOL_HEAD_FILE
        self.head = (
            onnxruntime.InferenceSession(str(head), options, providers=list(providers))
            if head.is_file()
            else None
        )

    def __call__(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Logits ``(rows, num_outputs)`` of a padded batch, each row one whole sequence.

        Per residue: ``(rows, tokens, num_outputs)``, residue i at token i + 1. Takes anything
        numpy reads as an array (CPU torch tensors too).
        """
        return self.session.run(["logits"], _feeds(input_ids, attention_mask))[0]

    def window_states(self, input_ids: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
        """Residue states of each input row ``(rows, tokens, hidden)``, nothing stitched."""
        return self.session.run(["hidden_states"], _feeds(input_ids, attention_mask))[0]

    def prepare_inference(self, device: object) -> str:
        """Inputs stay in host memory: onnxruntime reads numpy arrays, whatever provider runs it.

        The provider (CPU, or CUDA with onnxruntime-gpu) was chosen when the session opened.
        """
        return "cpu"

    def predict_outputs(
        self,
        windows: list[list[Window]],
        outputs: Callable[[np.ndarray], np.ndarray],
        max_tokens: int | None,
        pad_token_id: int,
        progress: bool = False,
    ) -> np.ndarray:
        """What ``outputs`` makes of each sequence's logits, in input order.

        Args:
            windows: Each sequence's windows (:func:`~esmtune.data.encoding.encode`).
            outputs: The task's activation (:meth:`~esmtune.tasks.base.TaskSpec.outputs`).
            max_tokens: Token budget of each call (None: the CPU budget, 1,024).
            pad_token_id: What pads shorter rows.
            progress: Show a progress bar.

        Returns:
            One row per sequence; per residue, one ``(residues, outputs)`` array per sequence
            in a 1-D object array.

        Sequences in one window are batched, longest first, within the budget; a sequence in
        several windows is read a few windows per call and stitched as they arrive
        (:class:`~esmtune.data.encoding.NumpyStitcher`), so memory does not grow with its length.
        """
        budget = max_tokens or token_budget("cpu")
        tokens = [max(len(window.ids) for window in sequence) for sequence in windows]
        counts = [len(sequence) for sequence in windows]
        order = sorted(range(len(windows)), key=lambda i: (-tokens[i], i))
        whole = [index for index in order if counts[index] == 1]
        rows: dict[int, np.ndarray] = {}
        bar = _progress_bar(len(windows), progress)
        for batch in fill_batches(whole, tokens, counts, budget):
            read = [windows[index][0].ids for index in batch]
            values = outputs(self(*_padded(read, pad_token_id)))
            for row, (index, ids) in enumerate(zip(batch, read, strict=True)):
                # Per residue: keep the residues (no <cls>, <eos> or padding).
                rows[index] = values[row, 1 : len(ids) - 1] if self.per_residue else values[row]
            bar(len(batch))
        for index in order:
            if counts[index] > 1:
                logits = self._read_in_passes(windows[index], budget, pad_token_id)
                rows[index] = outputs(logits) if self.per_residue else outputs(logits)[0]
                bar(1)
        return sequence_rows([rows[i] for i in range(len(windows))])

    def _read_in_passes(
        self, sequence: list[Window], max_tokens: int, pad_token_id: int
    ) -> np.ndarray:
        """One sequence's windows, a few per call, stitched into a sink; the sink's logits."""
        self._require_head()
        ordered = sorted(sequence, key=lambda window: window.start)
        width = max(len(window.ids) for window in ordered)
        per_pass = max(1, max_tokens // width)
        sink: _Sink = _ResidueSink(self) if self.per_residue else _HeadSink(self)
        stitcher = NumpyStitcher(sink)
        for first in range(0, len(ordered), per_pass):
            chunk = ordered[first : first + per_pass]
            hidden = self.window_states(*_padded([w.ids for w in chunk], pad_token_id))
            for row, window in enumerate(chunk):
                end = len(window.ids) - 1
                stitcher.add(window.start, hidden[row, 0], hidden[row, 1:end])
        return stitcher.finish()

    def _require_head(self) -> None:
        if self.head is None:
            raise EsmtuneError(
                f"{self.path.parent} has no {POOL_HEAD_FILE}, so long sequences cannot be read "
                "in windows: export the run again with this esmtune, or predict with "
                "long_sequences=truncate"
            )

    def pool_head(self, states: np.ndarray, residue_mask: np.ndarray) -> np.ndarray:
        """``head.onnx``: pooling and head over stitched states ``(sequences, tokens, hidden)``."""
        self._require_head()
        assert self.head is not None
        feeds = {
            "hidden_states": np.asarray(states, dtype=np.float32),
            "residue_mask": np.asarray(residue_mask, dtype=bool),
        }
        return self.head.run(["logits"], feeds)[0]


def _default_threads() -> int:
    """``OMP_NUM_THREADS`` when set (as torch reads it), else 0: onnxruntime's own choice."""
    try:
        return max(0, int(os.environ.get("OMP_NUM_THREADS", "0")))
    except ValueError:
        return 0


def _feeds(input_ids: np.ndarray, attention_mask: np.ndarray) -> dict[str, np.ndarray]:
    """``model.onnx``'s inputs: int64 arrays, as the exporter traced them."""
    return {
        "input_ids": np.asarray(input_ids, dtype=np.int64),
        "attention_mask": np.asarray(attention_mask, dtype=np.int64),
    }


def _padded(rows: list[list[int]], pad_token_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows padded to the longest: ``input_ids`` and ``attention_mask``."""
    longest = max(len(ids) for ids in rows)
    input_ids = np.full((len(rows), longest), pad_token_id, dtype=np.int64)
    attention_mask = np.zeros((len(rows), longest), dtype=np.int64)
    for row, ids in enumerate(rows):
        input_ids[row, : len(ids)] = ids
        attention_mask[row, : len(ids)] = 1
    return input_ids, attention_mask


def _progress_bar(total: int, shown: bool) -> Callable[[int], None]:
    """A function advancing a tqdm bar (imported only when one is shown)."""
    if not shown:
        return lambda count: None
    from tqdm import tqdm

    bar = tqdm(total=total, desc="predict", unit="seq")

    def advance(count: int) -> None:
        bar.update(count)
        if bar.n >= total:
            bar.close()

    return advance


_Sink = StitchSink[np.ndarray]


class _HeadSink:
    """A long sequence's stitched states into ``head.onnx``, pooled as they arrive.

    ``head.onnx`` pools whatever rows it is given, so mean, max and cls pooling reduce as the
    states arrive and hand it one summary residue (its pooling of one residue is that residue):
    memory stays flat. Attention pooling's scores live inside the graph, so for it the sink
    keeps the sequence's stitched states (4 bytes x hidden size per residue).
    """

    def __init__(self, model: OnnxClassifier) -> None:
        self.model = model
        self.pooling = model.pooling
        self.count = 0
        self.total: np.ndarray | None = None  # sum (mean) or maximum (max) of the states
        self.pieces: list[np.ndarray] = []

    def add_residues(self, states: np.ndarray) -> None:
        if len(states) == 0:
            return
        self.count += len(states)
        if self.pooling is Pooling.ATTENTION:
            self.pieces.append(states)
        elif self.pooling is Pooling.MEAN:
            piece = states.sum(axis=0)
            self.total = piece if self.total is None else self.total + piece
        elif self.pooling is Pooling.MAX:
            piece = states.max(axis=0)
            self.total = piece if self.total is None else np.maximum(self.total, piece)

    def close(self, cls_state: np.ndarray) -> np.ndarray:
        if self.pooling is Pooling.ATTENTION:
            residues = np.concatenate(self.pieces)
        elif self.pooling is Pooling.CLS:
            residues = cls_state[None]  # head.onnx pools <cls> alone; any row does here
        elif self.total is None:
            residues = np.zeros_like(cls_state)[None]  # no residues: the batched pooler's 0 / 1
        elif self.pooling is Pooling.MEAN:
            residues = (self.total / self.count)[None]
        else:
            residues = self.total[None]
        zero = np.zeros_like(cls_state)[None]
        states = np.concatenate([cls_state[None], residues, zero])[None]
        mask = np.zeros(states.shape[:2], dtype=bool)
        mask[0, 1 : 1 + len(residues)] = True
        return self.model.pool_head(states, mask)


class _ResidueSink:
    """A long sequence's stitched residue states, kept whole, then ``head.onnx`` on them all.

    Gives ``(residues, outputs)``, as the torch model's per-residue sink does.
    """

    def __init__(self, model: OnnxClassifier) -> None:
        self.model = model
        self.pieces: list[np.ndarray] = []

    def add_residues(self, states: np.ndarray) -> None:
        self.pieces.append(states)

    def close(self, cls_state: np.ndarray) -> np.ndarray:
        states = np.concatenate(self.pieces)[None]
        return self.model.pool_head(states, np.ones(states.shape[:2], dtype=bool))[0]


def onnx_providers(device: str | None) -> tuple[Provider, ...]:
    """The execution providers of onnxruntime for a torch-style device name (None or cpu: CPU).

    ``cuda:N`` runs on GPU N (each process of a launch on its own GPU); ``cuda`` on the first.

    Raises:
        EsmtuneError: When a GPU is asked for and this onnxruntime has no CUDA provider.
    """
    if device is None or not str(device).startswith("cuda"):
        return ("CPUExecutionProvider",)
    _, _, index = str(device).partition(":")
    if index and not index.isdigit():
        raise EsmtuneError(f"device {device}: give a GPU as cuda or cuda:N, N its index")
    require_modules("onnxruntime")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise EsmtuneError(
            f"device {device}: this onnxruntime runs on the CPU only; install onnxruntime-gpu "
            "for ONNX on a GPU, or use an hf export (torch) there"
        )
    return (("CUDAExecutionProvider", {"device_id": index or "0"}), "CPUExecutionProvider")


def export_vocabulary(folder: Path) -> Esm2Vocabulary:
    """The tokenizer of an export: the ESM2 alphabet, which its ``vocab.txt`` must hold.

    Raises:
        RunDirError: When ``vocab.txt`` holds another vocabulary (not an ESM2 model's).
    """
    path = folder / "vocab.txt"
    if path.is_file():
        found = tuple(line.strip() for line in path.read_text().splitlines() if line.strip())
        if found != ESM2_VOCAB:
            raise RunDirError(
                f"{path} is not the ESM2 vocabulary ({len(found)} tokens, {found[:6]}...): "
                "esmtune exports hold ESM2 models only; export the run again"
            )
    return Esm2Vocabulary()


def load_onnx_export(
    export_dir: Path | str,
    quantized: bool = False,
    threads: int | None = None,
    device: str | None = None,
) -> LoadedRun[OnnxClassifier]:
    """An ONNX export as a :class:`LoadedRun` whose model is an :class:`OnnxClassifier`.

    ``device``: None or ``cpu`` (default), or ``cuda`` with onnxruntime-gpu installed.

    Raises:
        RunDirError: When the folder is not an ONNX export (or lacks the int8 graph).
        EsmtuneError: When onnxruntime is not installed, or has no GPU provider for ``cuda``.
    """
    folder = Path(export_dir)
    config, task = read_export(folder)
    providers = onnx_providers(device)
    model = OnnxClassifier(
        folder, quantized, providers, threads=threads, pooling=config.model.pooling,
        per_residue=task.per_residue,
    )  # fmt: skip
    return LoadedRun(folder, config, task, model, export_vocabulary(folder))
