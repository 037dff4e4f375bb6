"""Loading what ``esmtune export`` wrote: a merged Hugging Face folder, or ONNX graphs.

Both come back as a :class:`~esmtune.model.rundir.LoadedRun`, so everything that predicts from a
run (``Predictor``, ``serve``) predicts from an export the same way. An ONNX export holds two
graphs: ``model.onnx`` (tokens -> logits, and the residue states) and ``head.onnx`` (residue
states -> logits), so that sequences longer than the context are read in windows exactly as in
torch: the windows' states are stitched between the two graphs.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file
from transformers import AutoTokenizer

from esmtune.config import FinetuneMode, Pooling, TrainConfig, load_config
from esmtune.errors import EsmtuneError, ModelLoadError, RunDirError
from esmtune.model.classifier import build_model
from esmtune.model.heads import Pooler, StreamingPooler
from esmtune.model.run_model import LoadedRun
from esmtune.model.windows import ResidueSink, stitch_windows
from esmtune.rundir import CONFIG_FILE, LABELS_FILE, read_json
from esmtune.tasks import TaskSpec, task_from_state

__all__ = [
    "EXPORT_INFO_FILE",
    "HEAD_FILE",
    "INT8_FILE",
    "ONNX_FILE",
    "POOL_HEAD_FILE",
    "RUNTIMES",
    "OnnxClassifier",
    "choose_runtime",
    "export_format",
    "load_export",
    "load_onnx_export",
    "onnx_providers",
    "read_export",
    "read_export_info",
    "require_modules",
]

HEAD_FILE = "esmtune_head.safetensors"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
POOL_HEAD_FILE = "head.onnx"
EXPORT_INFO_FILE = "export.json"
# What runs an export: torch (hf exports and runs), onnxruntime fp32, onnxruntime dynamic int8.
RUNTIMES = ("torch", "onnx", "onnx-int8")


def require_modules(*modules: str, purpose: str = "ONNX") -> None:
    """Fail before any work when an optional dependency of the export extra is missing."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise EsmtuneError(
            f"{purpose} needs {', '.join(missing)}, which is not installed: "
            "pip install 'esmtune[export]'"
        )


def export_format(folder: Path | str) -> str | None:
    """``hf`` or ``onnx`` for an esmtune export folder, None for anything else (e.g. a run)."""
    folder = Path(folder)
    if (folder / ONNX_FILE).is_file():
        return "onnx"
    if (folder / HEAD_FILE).is_file():
        return "hf"
    return None


def read_export_info(folder: Path | str) -> dict[str, Any]:
    """``export.json``: format, and the parity and speed checks made when exporting."""
    return read_json(Path(folder) / EXPORT_INFO_FILE)


def choose_runtime(export_dir: Path | str, runtime: str = "auto") -> str:
    """The runtime for an export: ``torch``, ``onnx`` or ``onnx-int8``.

    ``auto`` takes what the export's own check chose (``default_runtime`` in ``export.json``:
    the fastest graph that kept the labels), and plain fp32 ONNX when nothing was checked.

    Raises:
        EsmtuneError: When the runtime is unknown or the export cannot run in it.
    """
    folder = Path(export_dir)
    if runtime not in ("auto", *RUNTIMES):
        raise EsmtuneError(f"runtime '{runtime}' is unknown: choose auto, {', '.join(RUNTIMES)}")
    if export_format(folder) == "hf":
        if runtime in ("auto", "torch"):
            return "torch"
        raise EsmtuneError(
            f"{folder} is an hf export, which runs in torch; for onnxruntime export the run "
            "with `--format onnx` (add `--quantize int8` for the int8 graph)"
        )
    if runtime == "torch":
        raise EsmtuneError(
            f"{folder} is an ONNX export and holds no torch weights: predict from the run, or "
            "from an hf export, to use torch"
        )
    if runtime == "auto":
        runtime = read_export_info(folder).get("default_runtime", "onnx")
        if runtime == "onnx-int8" and not (folder / INT8_FILE).is_file():
            runtime = "onnx"
    return runtime


def read_export(folder: Path) -> tuple[TrainConfig, TaskSpec]:
    """An export's config and task (with thresholds), without any weights.

    Raises:
        RunDirError: When the folder lacks them.
    """
    for required in (CONFIG_FILE, LABELS_FILE):
        if not (Path(folder) / required).is_file():
            raise RunDirError(
                f"{folder} is not an esmtune export: {required} is missing "
                "(create one with `esmtune export RUN --format hf|onnx --out DIR`)"
            )
    config = load_config(folder / CONFIG_FILE)
    task = task_from_state(json.loads((folder / LABELS_FILE).read_text()))
    return config, task


def load_export(export_dir: Path | str) -> LoadedRun:
    """Rebuild the classifier of an ``hf`` export, from the folder alone.

    The backbone comes from the export's own weights (``model.name`` = the folder,
    ``finetune.mode=frozen`` so no adapters are added); pooling and head from
    ``esmtune_head.safetensors``.

    Returns:
        The model (eval mode, CPU), its tokenizer, the task (with thresholds) and the config.

    Raises:
        RunDirError: When the folder is not an ``hf`` export.
        ModelLoadError: When the head does not fit the rebuilt model.
    """
    folder = Path(export_dir)
    if export_format(folder) == "onnx":
        raise RunDirError(f"{folder} is an ONNX export: load it with load_onnx_export")
    if not (folder / HEAD_FILE).is_file():
        raise RunDirError(
            f"{folder} is not an esmtune hf export: {HEAD_FILE} is missing "
            "(create one with `esmtune export RUN --format hf --out DIR`)"
        )
    config, task = read_export(folder)
    config.model.name = str(folder)
    config.model.revision = None
    config.model.pretrained = True
    config.model.gradient_checkpointing = False
    config.finetune.mode = FinetuneMode.FROZEN
    model, tokenizer = build_model(config, task.num_outputs)
    head = load_file(str(folder / HEAD_FILE))
    result = model.load_state_dict(head, strict=False)
    missing_head = [name for name in result.missing_keys if name.startswith(("pooler.", "head."))]
    if result.unexpected_keys or missing_head:
        raise ModelLoadError(
            f"{folder / HEAD_FILE} does not fit the model rebuilt from {folder / CONFIG_FILE} "
            f"(unexpected: {result.unexpected_keys[:3]}, missing: {missing_head[:3]}); "
            "was config.yaml edited after export?"
        )
    return LoadedRun(folder, config, task, model.eval(), tokenizer)


class OnnxClassifier:
    """An ONNX export run by onnxruntime, called like the torch classifier.

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
    ) -> None:
        """Open ``model.onnx`` (or ``model.int8.onnx`` with ``quantized``) and ``head.onnx``.

        ``threads``: onnxruntime's intra-op threads (default: torch's thread count, so both
        runtimes use the same cores). ``pooling``: the run's, for long sequences read in passes.
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
        self.runtime = "onnx-int8" if quantized else "onnx"
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
        """Logits ``(sequences, num_outputs)`` for a padded batch of windows."""
        feeds = {
            "input_ids": np.asarray(input_ids, dtype=np.int64),
            "attention_mask": np.asarray(attention_mask, dtype=np.int64),
        }
        if window_owner is None:
            return torch.from_numpy(self.session.run(["logits"], feeds)[0])
        hidden = torch.from_numpy(self.session.run(["hidden_states"], feeds)[0])
        states, residues = stitch_windows(
            hidden, torch.as_tensor(attention_mask), window_owner, window_start, residue_count
        )
        return self._pool_head(states, residues)

    def window_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Residue states of each input row ``(rows, tokens, hidden)``, nothing stitched."""
        feeds = {
            "input_ids": np.asarray(input_ids, dtype=np.int64),
            "attention_mask": np.asarray(attention_mask, dtype=np.int64),
        }
        return torch.from_numpy(self.session.run(["hidden_states"], feeds)[0])

    def long_sequence_sink(self) -> ResidueSink:
        """Pools one long sequence's stitched states as they arrive; ``close`` gives its logits.

        ``head.onnx`` pools whatever rows it is given, so mean, max and cls pooling reduce as
        the states arrive and hand it one summary residue (its pooling of one residue is that
        residue): memory stays flat. Attention pooling's scores live inside the graph, so its
        sink keeps the sequence's stitched states (4 bytes x hidden size per residue).
        """
        self._require_head()
        return _OnnxHeadSink(self)

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
) -> LoadedRun:
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
        folder, quantized, providers, threads=threads, pooling=config.model.pooling
    )
    tokenizer = AutoTokenizer.from_pretrained(folder)
    return LoadedRun(folder, config, task, model, tokenizer)  # type: ignore[arg-type]
