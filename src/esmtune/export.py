"""Exporting a trained run for use outside esmtune's run directory: Hugging Face or ONNX.

``hf`` merges LoRA adapters into the backbone and saves it as a standard ``EsmModel`` folder that
plain transformers loads, plus esmtune's pooling + head weights, config and label map, so
:func:`load_export` rebuilds exactly the run's classifier. ``onnx`` traces the token path
(``input_ids, attention_mask -> logits``) with dynamic batch and sequence axes for
onnxruntime, optionally with a dynamically quantised int8 copy. Every export carries a model card.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import yaml
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from esmtune.config import FinetuneMode, LongSequences, TrainConfig, load_config
from esmtune.data.batching import encode
from esmtune.errors import EsmtuneError, ModelLoadError, RunDirError
from esmtune.model.classifier import SequenceClassifier, build_model
from esmtune.model.rundir import (
    CONFIG_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    LoadedRun,
    atomic_write_text,
    load_run,
    save_weights,
)
from esmtune.tasks import TaskSpec, task_from_state

__all__ = [
    "FORMATS",
    "HEAD_FILE",
    "INT8_FILE",
    "ONNX_FILE",
    "OnnxClassifier",
    "export_run",
    "load_export",
]

FORMATS = ("hf", "onnx")
HEAD_FILE = "esmtune_head.safetensors"
ONNX_FILE = "model.onnx"
INT8_FILE = "model.int8.onnx"
CARD_FILE = "README.md"

# Beyond 2 GB a protobuf cannot hold the weights; ONNX then keeps them in a side file.
_PROTOBUF_LIMIT = 2**31 - 2**26


def export_run(
    run_dir: Path | str,
    out_dir: Path | str,
    fmt: Literal["hf", "onnx"],
    quantize: Literal["int8"] | None = None,
) -> Path:
    """Export the best model of a run.

    The export is written to a hidden sibling folder and renamed into place at the end, so a
    failure never leaves half an export behind.

    Args:
        run_dir: A finished run directory.
        out_dir: A new (or empty) folder for the export.
        fmt: ``hf`` (merged Hugging Face backbone + esmtune head) or ``onnx``.
        quantize: ``int8`` (onnx only): also write ``model.int8.onnx``, dynamically quantised
            by onnxruntime; ``model.onnx`` stays fp32.

    Returns:
        The export folder.

    Raises:
        EsmtuneError: On an unknown format, int8 with ``hf``, or a non-empty ``out_dir``.
        RunDirError: When ``run_dir`` is not a finished run.
    """
    out_dir = Path(out_dir)
    if fmt not in FORMATS:
        raise EsmtuneError(f"export format '{fmt}' is unknown: choose one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise EsmtuneError(f"quantize '{quantize}' is unknown: the only option is int8")
    if quantize and fmt != "onnx":
        raise EsmtuneError("--quantize int8 applies to --format onnx only")
    if fmt == "onnx":
        _require("onnx", "onnxscript", *(["onnxruntime"] if quantize else []))
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise EsmtuneError(
            f"{out_dir} already exists and is not empty; export refuses to overwrite it: "
            "choose another --out folder, or delete this one first"
        )
    loaded = load_run(run_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        model = _merged_classifier(loaded.model)
        if fmt == "hf":
            _write_hf(loaded, model, staging)
        else:
            _write_onnx(loaded, model, staging, quantize)
        _write_run_files(loaded, staging)
        atomic_write_text(staging / CARD_FILE, _model_card(loaded, fmt, quantize, out_dir.name))
        if out_dir.exists():
            out_dir.rmdir()  # empty, checked above
        os.replace(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _require(*modules: str) -> None:
    """Fail before any work when an optional dependency of the export extra is missing."""
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise EsmtuneError(
            f"ONNX export needs {', '.join(missing)}, which is not installed: "
            "pip install 'esmtune[export]'"
        )


def _merged_classifier(model: SequenceClassifier) -> SequenceClassifier:
    """A copy of the classifier whose backbone is a plain EsmModel (LoRA merged in).

    ``merge_and_unload`` changes the module it is called on, so it runs on a copy and the run's
    model stays usable.
    """
    merged = copy.deepcopy(model).cpu().eval()
    if hasattr(merged.backbone, "merge_and_unload"):
        merged.backbone = merged.backbone.merge_and_unload()
    return merged


def _write_run_files(loaded: LoadedRun, folder: Path) -> None:
    """The run's config and label map (with the decision thresholds of the exported weights)."""
    shutil.copyfile(loaded.run_dir / CONFIG_FILE, folder / CONFIG_FILE)
    atomic_write_text(folder / LABELS_FILE, json.dumps(loaded.task.state(), indent=2) + "\n")


def _head_tensors(model: SequenceClassifier) -> dict[str, torch.Tensor]:
    """Pooling and head weights, named as in the classifier's state dict."""
    state = model.state_dict()
    return {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in state.items()
        if name.startswith(("pooler.", "head."))
    }


def _write_hf(loaded: LoadedRun, model: SequenceClassifier, folder: Path) -> None:
    """The export folder is itself a Hugging Face EsmModel folder, plus esmtune's head."""
    backbone = model.backbone
    labels = loaded.task.labels
    backbone.config.id2label = dict(enumerate(labels))
    backbone.config.label2id = {label: i for i, label in enumerate(labels)}
    backbone.save_pretrained(folder, safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder)
    save_weights(_head_tensors(model), folder / HEAD_FILE, loaded.task.thresholds)


def _read_task(folder: Path) -> tuple[TrainConfig, TaskSpec]:
    for required in (CONFIG_FILE, LABELS_FILE):
        if not (folder / required).is_file():
            raise RunDirError(
                f"{folder} is not an esmtune export: {required} is missing "
                "(create one with `esmtune export RUN --format hf|onnx --out DIR`)"
            )
    config = load_config(folder / CONFIG_FILE)
    task = task_from_state(json.loads((folder / LABELS_FILE).read_text()))
    return config, task


def load_export(
    export_dir: Path | str,
) -> tuple[SequenceClassifier, PreTrainedTokenizerBase, TaskSpec, TrainConfig]:
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
    if (folder / ONNX_FILE).is_file():
        raise RunDirError(f"{folder} is an ONNX export: load it with esmtune.export.OnnxClassifier")
    if not (folder / HEAD_FILE).is_file():
        raise RunDirError(
            f"{folder} is not an esmtune hf export: {HEAD_FILE} is missing "
            "(create one with `esmtune export RUN --format hf --out DIR`)"
        )
    config, task = _read_task(folder)
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
    return model.eval(), tokenizer, task, config


class _TokenPath(nn.Module):
    """``input_ids, attention_mask -> logits`` as positional inputs, for the ONNX exporter."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """The classifier's own token path (no windows: ONNX inputs are single windows)."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask)


def _write_onnx(
    loaded: LoadedRun, model: SequenceClassifier, folder: Path, quantize: str | None
) -> None:
    """Trace with the torch.export-based (dynamo) exporter; dynamic batch and sequence axes."""
    path = folder / ONNX_FILE
    # Three sequences, the last one shorter and padded: the trace sees padding and specials.
    sample = loaded.tokenizer(
        ["MKTAYIAKQR", "MDEDEKRLIV", "MKTAY"], padding=True, return_tensors="pt"
    )
    input_ids, attention_mask = sample["input_ids"], sample["attention_mask"]
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    program = torch.onnx.export(
        _TokenPath(model).eval(),
        (input_ids, attention_mask),
        input_names=["input_ids", "attention_mask"],
        output_names=["logits"],
        dynamic_shapes={
            "input_ids": {0: batch, 1: sequence},
            "attention_mask": {0: batch, 1: sequence},
        },
        dynamo=True,
        optimize=True,
        verbose=False,
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(str(path), external_data=weight_bytes > _PROTOBUF_LIMIT)
    loaded.tokenizer.save_pretrained(folder)
    if quantize == "int8":
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(str(path))
        # The exporter's recorded intermediate shapes trip onnx's strict re-inference inside
        # quantize_dynamic ("inferred shape and existing shape differ"); it re-infers them all.
        del graph.graph.value_info[:]
        quantize_dynamic(
            graph,
            folder / INT8_FILE,
            weight_type=QuantType.QInt8,
            use_external_data_format=weight_bytes > _PROTOBUF_LIMIT,
        )


class OnnxClassifier:
    """An ONNX export run by onnxruntime; returns logits as torch tensors for ``TaskSpec``.

    Windows over long sequences are not part of the exported graph: :meth:`outputs` keeps the
    first ``data.max_length`` residues (or the central ones with ``long_sequences="centre"``).

    Example:
        >>> onnx = OnnxClassifier("export/")
        >>> probabilities = onnx.outputs(["MKTAYIAKQR", "MDEDEEDSTG"])
        >>> onnx.task.predictions(probabilities, top_k=None)
    """

    def __init__(
        self,
        export_dir: Path | str,
        quantized: bool = False,
        providers: Sequence[str] = ("CPUExecutionProvider",),
    ) -> None:
        """Open ``model.onnx`` (or ``model.int8.onnx`` with ``quantized``) of an export."""
        _require("onnxruntime")
        import onnxruntime

        folder = Path(export_dir)
        path = folder / (INT8_FILE if quantized else ONNX_FILE)
        if not path.is_file():
            hint = "--quantize int8 " if quantized else ""
            raise RunDirError(
                f"{path} is missing: create it with "
                f"`esmtune export RUN --format onnx {hint}--out {folder}`"
            )
        self.config, self.task = _read_task(folder)
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.session = onnxruntime.InferenceSession(str(path), providers=list(providers))

    def __call__(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Logits ``(batch, num_outputs)`` for a padded batch, as the run's model returns them."""
        feeds = {
            "input_ids": np.asarray(input_ids, dtype=np.int64),
            "attention_mask": np.asarray(attention_mask, dtype=np.int64),
        }
        return torch.from_numpy(self.session.run(["logits"], feeds)[0])

    def outputs(
        self,
        sequences: Sequence[str],
        batch_size: int = 16,
        long_sequences: LongSequences | str = LongSequences.TRUNCATE,
    ) -> np.ndarray:
        """``TaskSpec.outputs`` (probabilities or values) for upper-case residue strings."""
        if LongSequences(long_sequences) is LongSequences.WINDOW:
            raise EsmtuneError(
                "the ONNX graph reads one window per sequence: use long_sequences=truncate or "
                "centre, or the hf export (esmtune's Predictor) for windows"
            )
        windows = encode(self.tokenizer, list(sequences), self.config.data.max_length,
                         long_sequences)  # fmt: skip
        rows = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(windows), batch_size):
            ids = [parts[0].ids for parts in windows[start : start + batch_size]]
            width = max(len(x) for x in ids)
            input_ids = np.full((len(ids), width), pad, dtype=np.int64)
            attention_mask = np.zeros((len(ids), width), dtype=np.int64)
            for row, tokens in enumerate(ids):
                input_ids[row, : len(tokens)] = tokens
                attention_mask[row, : len(tokens)] = 1
            rows.append(self.task.outputs(self(input_ids, attention_mask)))
        return np.concatenate(rows) if rows else np.empty((0,))


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _data_summary(manifest: dict[str, Any]) -> list[str]:
    data = manifest.get("data", {})
    counts: dict[str, dict[str, int]] = data.get("counts", {})
    if not counts:
        return ["No data summary was recorded with the run."]
    splits = list(counts)
    labels = sorted({label for split in counts.values() for label in split})
    lines = [
        f"Source: `{data.get('path', '?')}` ({data.get('layout', 'layout not recorded')}).",
        "",
    ]
    lines += ["| label | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for label in labels:
        cells = [str(counts[split].get(label, 0)) for split in splits]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    totals = [str(sum(counts[split].values())) for split in splits]
    lines.append("| **total** | " + " | ".join(totals) + " |")
    return lines


def _metrics_summary(metrics: dict[str, Any]) -> list[str]:
    history = metrics.get("history", [])
    best = next((h for h in history if h.get("epoch") == metrics.get("best_epoch")), None)
    if best is None:
        return ["No validation metrics were recorded with the run."]
    lines = [
        f"Best epoch {best['epoch']} of {metrics.get('epochs_run', '?')}, selected on "
        f"`{metrics.get('selection_metric', '?')}`.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name, value in best.items():
        if name not in {"epoch", "step"} and isinstance(value, int | float):
            lines.append(f"| {name} | {value:.4f} |")
    return lines


def _model_card(loaded: LoadedRun, fmt: str, quantize: str | None, name: str) -> str:
    """README.md in the Hugging Face model-card layout (YAML front matter, then markdown)."""
    config, task = loaded.config, loaded.task
    manifest = _read_json(loaded.run_dir / MANIFEST_FILE)
    metrics = _read_json(loaded.run_dir / METRICS_FILE)
    base = config.model.name if config.model.pretrained else f"{config.model.name} (random init)"
    front = {
        "library_name": "transformers" if fmt == "hf" else "onnx",
        "tags": ["esmtune", "esm2", "protein", task.task.value],
        **({"base_model": config.model.name} if config.model.pretrained else {}),
    }
    thresholds = f"; decision thresholds: {task.thresholds}" if task.thresholds else ""
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {name}",
        "",
        f"An ESM2 protein sequence model fine-tuned with esmtune ({config.finetune.mode.value}), "
        f"exported as `{fmt}`{' with an int8 copy' if quantize else ''}.",
        "",
        f"- **Base model:** {base}",
        f"- **Task:** {task.task.value}",
        f"- **Labels ({len(task.labels)}):** {', '.join(task.labels)}{thresholds}",
        f"- **Pooling / head:** {config.model.pooling.value} pooling, MLP head "
        f"{config.model.head_hidden or 'linear'}",
        f"- **Max length:** {config.data.max_length} residues per input",
        f"- **Versions:** {manifest.get('versions', 'not recorded')}",
        "",
        "## Training data",
        "",
        *_data_summary(manifest),
        "",
        "## Validation metrics",
        "",
        *_metrics_summary(metrics),
        "",
        "## How to load it",
        "",
        *(_hf_usage() if fmt == "hf" else _onnx_usage(quantize)),
        "",
    ]
    return "\n".join(lines)


def _hf_usage() -> list[str]:
    return [
        "With esmtune (the full classifier: backbone, pooling, head, thresholds):",
        "",
        "```python",
        "import torch",
        "from esmtune.export import load_export",
        "",
        'model, tokenizer, task, config = load_export("path/to/this/folder")',
        'batch = tokenizer(["MKTAYIAKQR"], return_tensors="pt", padding=True)',
        "with torch.no_grad():",
        "    logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)",
        "print(task.predictions(task.outputs(logits), top_k=None))",
        "```",
        "",
        "With plain transformers (the fine-tuned backbone only; the head is esmtune's, in "
        f"`{HEAD_FILE}`):",
        "",
        "```python",
        "from transformers import AutoTokenizer, EsmModel",
        "",
        'backbone = EsmModel.from_pretrained("path/to/this/folder", add_pooling_layer=False)',
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        "print(backbone.config.id2label)",
        "```",
    ]


def _onnx_usage(quantize: str | None) -> list[str]:
    files = f"`{ONNX_FILE}` (fp32)" + (f" and `{INT8_FILE}` (dynamic int8)" if quantize else "")
    return [
        f"Files: {files}; inputs `input_ids`, `attention_mask` (int64, batch x tokens, with "
        "`<cls>`/`<eos>`), output `logits` (batch x outputs).",
        "",
        "```python",
        "from esmtune.export import OnnxClassifier",
        "",
        f'onnx = OnnxClassifier("path/to/this/folder"{", quantized=True" if quantize else ""})',
        'probabilities = onnx.outputs(["MKTAYIAKQR"])',
        "print(onnx.task.predictions(probabilities, top_k=None))",
        "```",
        "",
        "Or with onnxruntime alone:",
        "",
        "```python",
        "import onnxruntime",
        "from transformers import AutoTokenizer",
        "",
        'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
        f'session = onnxruntime.InferenceSession("path/to/this/folder/{ONNX_FILE}")',
        'batch = tokenizer(["MKTAYIAKQR"], return_tensors="np", padding=True)',
        'logits = session.run(["logits"], {"input_ids": batch["input_ids"],',
        '                                  "attention_mask": batch["attention_mask"]})[0]',
        "```",
    ]
