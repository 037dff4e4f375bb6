"""An ONNX export run by onnxruntime, as a :class:`~esmtune.model.interface.Classifier`.

The export holds two graphs: ``model.onnx`` (tokens -> logits, and the residue states) and
``head.onnx`` (residue states -> logits), so that sequences longer than the context are read in
windows exactly as in torch: the windows' states are stitched between the two graphs. The
classifier comes back inside a :class:`~esmtune.model.run_model.LoadedRun`, so everything that
predicts from a run (``Predictor``, ``serve``) predicts from an export the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from transformers import AutoTokenizer

from esmtune.config import Pooling
from esmtune.errors import EsmtuneError, RunDirError
from esmtune.export.files import INT8_FILE, ONNX_FILE, POOL_HEAD_FILE, read_export, require_modules
from esmtune.export.names import Runtime
from esmtune.model.heads import Pooler, StreamingPooler
from esmtune.model.run_model import LoadedRun
from esmtune.model.windows import ResidueSink, stitch_windows

__all__ = ["OnnxClassifier", "load_onnx_export", "onnx_providers"]


class OnnxClassifier:
    """An ONNX export run by onnxruntime: a :class:`~esmtune.model.interface.Classifier`.

    ``model(input_ids=..., attention_mask=...)`` returns logits as a torch tensor; with the
    window inputs of a batch (``window_owner``, ``window_start``, ``residue_count``) the residue
    states of all windows are stitched and ``head.onnx`` pools them, as the torch model does.
    So the batching, windowing and task code of :class:`esmtune.predict.Predictor` runs
    unchanged on it.
    """

    def __init__(
        self,
        export_dir: Path | str,
        quantized: bool = False,
        providers: Sequence[str] = ("CPUExecutionProvider",),
        threads: int | None = None,
        pooling: Pooling = Pooling.MEAN,
        per_residue: bool = False,
    ) -> None:
        """Open ``model.onnx`` (or ``model.int8.onnx`` with ``quantized``) and ``head.onnx``.

        ``threads``: onnxruntime's intra-op threads (default: torch's thread count, so both
        runtimes use the same cores). ``pooling``: the run's, for long sequences read in passes.
        ``per_residue``: the graphs give logits per position (a per-residue task's export).
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
        options.intra_op_num_threads = threads or torch.get_num_threads()
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

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        window_owner: torch.Tensor | None = None,
        window_start: torch.Tensor | None = None,
        residue_count: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(sequences, num_outputs)`` for a padded batch of windows.

        Per residue: ``(sequences, positions, num_outputs)``, laid out as the stitched states.
        """
        if window_owner is None:
            logits = self.session.run(["logits"], _feeds(input_ids, attention_mask))[0]
            return torch.from_numpy(logits)
        if window_start is None or residue_count is None:
            raise ValueError("window_owner needs window_start and residue_count (see pad_collate)")
        states, residues = stitch_windows(
            self.window_states(input_ids, attention_mask),
            torch.as_tensor(attention_mask),
            window_owner,
            window_start,
            residue_count,
        )
        return self._pool_head(states, residues)

    def window_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Residue states of each input row ``(rows, tokens, hidden)``, nothing stitched."""
        feeds = _feeds(input_ids, attention_mask)
        return torch.from_numpy(self.session.run(["hidden_states"], feeds)[0])

    def prepare_inference(self, device: str | torch.device | None) -> torch.device:
        """Inputs stay in host memory: onnxruntime reads numpy arrays, whatever provider runs it.

        The provider (CPU, or CUDA with onnxruntime-gpu) was chosen when the session opened.
        """
        return torch.device("cpu")

    def long_sequence_sink(self) -> ResidueSink:
        """Pools one long sequence's stitched states as they arrive; ``close`` gives its logits.

        ``head.onnx`` pools whatever rows it is given, so mean, max and cls pooling reduce as
        the states arrive and hand it one summary residue (its pooling of one residue is that
        residue): memory stays flat. Attention pooling's scores live inside the graph, so its
        sink keeps the sequence's stitched states (4 bytes x hidden size per residue).
        """
        self._require_head()
        return _OnnxResidueSink(self) if self.per_residue else _OnnxHeadSink(self)

    def _require_head(self) -> None:
        if self.head is None:
            raise EsmtuneError(
                f"{self.path.parent} has no {POOL_HEAD_FILE}, so long sequences cannot be read "
                "in windows: export the run again with this esmtune, or predict with "
                "long_sequences=truncate"
            )

    def _pool_head(self, states: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        """``head.onnx``: pooling and head over stitched states ``(sequences, tokens, hidden)``."""
        self._require_head()
        assert self.head is not None
        feeds = {
            "hidden_states": states.float().numpy(),
            "residue_mask": residue_mask.bool().numpy(),
        }
        return torch.from_numpy(self.head.run(["logits"], feeds)[0])


def _feeds(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> dict[str, np.ndarray]:
    """``model.onnx``'s inputs: int64 arrays, as the exporter traced them."""
    return {
        "input_ids": np.asarray(input_ids, dtype=np.int64),
        "attention_mask": np.asarray(attention_mask, dtype=np.int64),
    }


class _OnnxHeadSink:
    """A long sequence's stitched states into ``head.onnx`` (see ``long_sequence_sink``)."""

    def __init__(self, model: OnnxClassifier) -> None:
        self.model = model
        self.streaming = model.pooling is not Pooling.ATTENTION
        # Parameter-free pooling: the hidden size only matters to attention's scorer.
        self.pooler = StreamingPooler(Pooler(model.pooling, 1)) if self.streaming else None
        self.pieces: list[torch.Tensor] = []

    def add_residues(self, states: torch.Tensor) -> None:
        if self.pooler is not None:
            self.pooler.add_residues(states)
        else:
            self.pieces.append(states)

    def close(self, cls_state: torch.Tensor) -> torch.Tensor:
        if self.pooler is not None:
            residues = self.pooler.close(cls_state).unsqueeze(0)
        else:
            residues = torch.cat(self.pieces)
        zero = torch.zeros_like(cls_state).unsqueeze(0)
        states = torch.cat([cls_state.unsqueeze(0), residues, zero]).unsqueeze(0)
        mask = torch.zeros(states.shape[:2], dtype=torch.bool)
        mask[0, 1 : 1 + len(residues)] = True
        return self.model._pool_head(states, mask)


class _OnnxResidueSink:
    """A long sequence's stitched residue states, kept whole, then ``head.onnx`` on them all.

    Gives ``(residues, outputs)``, as the torch model's per-residue sink does.
    """

    def __init__(self, model: OnnxClassifier) -> None:
        self.model = model
        self.pieces: list[torch.Tensor] = []

    def add_residues(self, states: torch.Tensor) -> None:
        self.pieces.append(states)

    def close(self, cls_state: torch.Tensor) -> torch.Tensor:
        states = torch.cat(self.pieces).unsqueeze(0)
        mask = torch.ones(states.shape[:2], dtype=torch.bool)
        return self.model._pool_head(states, mask)[0]


def onnx_providers(device: str | None) -> tuple[str, ...]:
    """The execution providers of onnxruntime for a torch-style device name (None or cpu: CPU).

    Raises:
        EsmtuneError: When a GPU is asked for and this onnxruntime has no CUDA provider.
    """
    if device is None or not str(device).startswith("cuda"):
        return ("CPUExecutionProvider",)
    require_modules("onnxruntime")
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        raise EsmtuneError(
            f"device {device}: this onnxruntime runs on the CPU only; install onnxruntime-gpu "
            "for ONNX on a GPU, or use an hf export (torch) there"
        )
    return ("CUDAExecutionProvider", "CPUExecutionProvider")


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
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedRun(folder, config, task, model, tokenizer)
