"""Exporting a trained run for use outside esmtune's run directory: Hugging Face or ONNX.

``hf`` merges LoRA adapters into the backbone and saves it as a standard ``EsmModel`` folder that
plain transformers loads, plus esmtune's pooling + head weights, config and label map, so
:func:`load_export` rebuilds exactly the run's classifier. ``onnx`` traces the token path
(``input_ids, attention_mask -> logits, hidden_states``) with dynamic batch and sequence axes,
plus ``head.onnx`` (stitched window states -> logits) for long sequences, optionally with a
dynamically quantised int8 copy. Each export is checked against the run before it is handed
over (``export_check``) and carries a model card.
"""

from __future__ import annotations

import copy
import json
import logging
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from torch import nn

from esmtune.config import Task
from esmtune.errors import EsmtuneError
from esmtune.export_check import check_runtimes
from esmtune.model.classifier import SequenceClassifier
from esmtune.model.exported import (
    EXPORT_INFO_FILE,
    HEAD_FILE,
    INT8_FILE,
    ONNX_FILE,
    POOL_HEAD_FILE,
    OnnxClassifier,
    load_export,
    load_onnx_export,
    require_modules,
)
from esmtune.model.run_model import LoadedRun, load_run
from esmtune.model.transformers_head import to_sequence_classification
from esmtune.rundir import (
    CONFIG_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    atomic_write_text,
    read_json,
    read_run,
    save_weights,
)
from esmtune.storage import apply_umask_tree, check_writable, storage_errors

__all__ = [
    "CHECK_SEQUENCES",
    "FORMATS",
    "HEAD_FILE",
    "INT8_FILE",
    "ONNX_FILE",
    "OnnxClassifier",
    "export_run",
    "load_export",
    "load_onnx_export",
]

FORMATS = ("hf", "onnx")
CARD_FILE = "README.md"
# Sequences the export compares its runtimes on (parity with the run, speed).
CHECK_SEQUENCES = 32

# Opset 23 has a fused Attention operator (onnxruntime >= 1.23 runs it on the CPU): ESM2's
# attention then runs as one kernel instead of a dozen matmul/softmax/mask nodes, which made
# model.onnx 1.8x faster on t6_8M (benchmarks/export_bench.py).
ONNX_OPSET = 23
# Beyond 2 GB a protobuf cannot hold the weights; ONNX then keeps them in a side file.
_PROTOBUF_LIMIT = 2**31 - 2**26


def export_run(
    run_dir: Path | str,
    out_dir: Path | str,
    fmt: Literal["hf", "onnx"],
    quantize: Literal["int8"] | None = None,
    check_sequences: int = CHECK_SEQUENCES,
) -> Path:
    """Export the best model of a run, and check it against the run.

    The export is written to a hidden sibling folder and renamed into place at the end, so a
    failure never leaves half an export behind. Before that, each runtime of the export
    predicts a sample of sequences next to the run (:func:`esmtune.export_check.check_runtimes`):
    label agreement, largest difference and speed go to ``export.json`` and the model card, and
    the fastest runtime that kept the labels becomes the default of ``predict`` and ``serve``.

    Args:
        run_dir: A finished run directory.
        out_dir: A new (or empty) folder for the export.
        fmt: ``hf`` (merged Hugging Face backbone + esmtune head) or ``onnx``.
        quantize: ``int8`` (onnx only): also write ``model.int8.onnx``, dynamically quantised
            by onnxruntime; ``model.onnx`` stays fp32.
        check_sequences: How many sequences the check compares (0: no check).

    Returns:
        The export folder.

    Raises:
        EsmtuneError: On an unknown format, int8 with ``hf``, or a non-empty ``out_dir``.
        RunDirError: When ``run_dir`` is not a finished run.
        StorageError: When the folder of ``out_dir`` cannot be written (checked before the
            run is loaded) or fills up; nothing is left behind.
    """
    out_dir = Path(out_dir)
    if fmt not in FORMATS:
        raise EsmtuneError(f"export format '{fmt}' is unknown: choose one of {', '.join(FORMATS)}")
    if quantize not in (None, "int8"):
        raise EsmtuneError(f"quantize '{quantize}' is unknown: the only option is int8")
    if quantize and fmt != "onnx":
        raise EsmtuneError("--quantize int8 applies to --format onnx only")
    if fmt == "onnx":
        require_modules("onnx", "onnxscript", "onnxruntime")
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise EsmtuneError(
            f"{out_dir} already exists and is not empty; export refuses to overwrite it: "
            "choose another --out folder, or delete this one first"
        )
    read_run(Path(run_dir))  # a finished run? (cheap: before the folder below is created)
    # The export is written next to out_dir: find out now, not after tracing, if it cannot be.
    check_writable(out_dir.parent, "Choose another --out folder")
    loaded = load_run(run_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with storage_errors(out_dir, lambda _: "Free space or choose another --out folder"):
            _write_export(loaded, staging, fmt, quantize, check_sequences, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _write_export(
    loaded: LoadedRun,
    staging: Path,
    fmt: Literal["hf", "onnx"],
    quantize: Literal["int8"] | None,
    check_sequences: int,
    out_dir: Path,
) -> None:
    """Everything of the export into ``staging``, checked, then renamed to ``out_dir``."""
    staging.mkdir(parents=True)
    model = _merged_classifier(loaded.model)
    if fmt == "hf":
        _write_hf(loaded, model, staging)
    else:
        _write_onnx(loaded, model, staging, quantize)
    del model
    _write_run_files(loaded, staging)
    info = {
        "format": fmt,
        "quantize": quantize,
        **check_runtimes(loaded, _candidates(staging, fmt, quantize), check_sequences),
    }
    atomic_write_text(staging / EXPORT_INFO_FILE, json.dumps(info, indent=2) + "\n")
    card = _model_card(loaded, fmt, quantize, out_dir.name, info)
    atomic_write_text(staging / CARD_FILE, card)
    # Writers such as safetensors (under save_pretrained) leave files 0600: the export is
    # meant to be handed on (other users, the API container), so the umask decides.
    apply_umask_tree(staging)
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
    os.replace(staging, out_dir)


def _candidates(
    folder: Path, fmt: str, quantize: str | None
) -> dict[str, tuple[LoadedRun, list[Path]]]:
    """The runtimes an export offers, loaded from the written folder, with the files each reads."""
    if fmt == "hf":
        files = [*folder.glob("*.safetensors")]
        return {"torch": (load_export(folder), files)}
    graphs = {"onnx": ONNX_FILE, **({"onnx-int8": INT8_FILE} if quantize else {})}
    return {
        name: (
            load_onnx_export(folder, quantized=name == "onnx-int8"),
            [*folder.glob(f"{graph}*"), folder / POOL_HEAD_FILE],
        )
        for name, graph in graphs.items()
    }


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
    """The run's config, label map (with the exported weights' thresholds), metrics, manifest.

    The metrics and manifest are what ``serve``'s /info reports about the model.
    """
    shutil.copyfile(loaded.run_dir / CONFIG_FILE, folder / CONFIG_FILE)
    for name in (METRICS_FILE, MANIFEST_FILE):
        if (loaded.run_dir / name).is_file():
            shutil.copyfile(loaded.run_dir / name, folder / name)
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
    """The export folder is itself a Hugging Face model folder, plus esmtune's head.

    With the ``esm`` head it is an ``EsmForSequenceClassification`` (loads with
    ``AutoModelForSequenceClassification``); otherwise an ``EsmModel``, the head being
    esmtune's own. Either way ``EsmModel.from_pretrained`` loads the backbone.
    """
    if loaded.config.model.head == "esm":
        to_sequence_classification(model, loaded.task).save_pretrained(folder)
    else:
        backbone = model.backbone
        labels = loaded.task.labels
        backbone.config.id2label = dict(enumerate(labels))
        backbone.config.label2id = {label: i for i, label in enumerate(labels)}
        backbone.save_pretrained(folder, safe_serialization=True)
    loaded.tokenizer.save_pretrained(folder)
    save_weights(_head_tensors(model), folder / HEAD_FILE, loaded.task.thresholds)


class _TokenPath(nn.Module):
    """``input_ids, attention_mask -> logits, hidden_states`` for the ONNX exporter.

    The residue states are a second output so that windows of a long sequence can be stitched
    outside the graph and pooled by ``head.onnx``.
    """

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The classifier's own token path, one window per input."""
        hidden, residues = self.model.residue_states(input_ids, attention_mask)
        return self.model.head(self.model.pooler(hidden, residues)), hidden


class _PoolHead(nn.Module):
    """``hidden_states, residue_mask -> logits``: pooling and head on stitched windows."""

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.pooler, self.head = model.pooler, model.head

    def forward(self, hidden_states: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        """Pool the residues of each row, then the head."""
        return self.head(self.pooler(hidden_states, residue_mask))


@contextmanager
def _quiet_logs(logger: logging.Logger) -> Iterator[None]:
    """Errors only from ``logger`` for a while: exporter notes that ask nothing of the user."""
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _onnx_program(
    module: nn.Module, inputs: tuple[torch.Tensor, ...], names: list[str], outputs: list[str]
) -> Any:
    """Trace with the torch.export-based (dynamo) exporter; inputs' axes 0, 1 are dynamic."""
    batch, sequence = torch.export.Dim("batch"), torch.export.Dim("sequence")
    registry = logging.getLogger("torch.onnx._internal.exporter._registration")
    with warnings.catch_warnings(), _quiet_logs(registry):  # "torchvision is not installed"
        # Both inputs share their axes, which the exporter reports once per axis; harmless.
        warnings.filterwarnings("ignore", message="# The axis name", category=UserWarning)
        warnings.filterwarnings("ignore", message=".*LeafSpec", category=FutureWarning)
        program = torch.onnx.export(
            module.eval(),
            inputs,
            input_names=names,
            output_names=outputs,
            dynamic_shapes={name: {0: batch, 1: sequence} for name in names},
            dynamo=True,
            opset_version=ONNX_OPSET,
            # onnxscript's fusions turn the rotary embeddings into a RotaryEmbedding node whose
            # caches only fit a batch of one (onnxruntime 1.31 fails on wider batches), so the
            # graph is exported plain and only constant-folded below.
            optimize=False,
            verbose=False,
        )
    # Folding puts every weight into its matmul pre-transposed, which int8 quantisation needs
    # (it quantises matmuls whose weight is a stored tensor). No size limit: large models'
    # weight matrices are larger than onnxscript's default folding limit.
    from onnxscript import optimizer

    optimizer.optimize(program.model, input_size_limit=2**62, output_size_limit=2**62)
    return program


def _write_onnx(
    loaded: LoadedRun, model: SequenceClassifier, folder: Path, quantize: str | None
) -> None:
    """``model.onnx`` (+ ``model.int8.onnx``) for the token path, ``head.onnx`` for windows."""
    path = folder / ONNX_FILE
    # Three sequences, the last one shorter and padded: the trace sees padding and specials.
    sample = loaded.tokenizer(
        ["MKTAYIAKQR", "MDEDEKRLIV", "MKTAY"], padding=True, return_tensors="pt"
    )
    input_ids, attention_mask = sample["input_ids"], sample["attention_mask"]
    program = _onnx_program(
        _TokenPath(model),
        (input_ids, attention_mask),
        ["input_ids", "attention_mask"],
        ["logits", "hidden_states"],
    )
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(str(path), external_data=weight_bytes > _PROTOBUF_LIMIT)
    with torch.no_grad():
        hidden, residues = model.residue_states(input_ids, attention_mask)
    head = _onnx_program(
        _PoolHead(model), (hidden, residues), ["hidden_states", "residue_mask"], ["logits"]
    )
    head.save(str(folder / POOL_HEAD_FILE))
    loaded.tokenizer.save_pretrained(folder)
    if quantize == "int8":
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic

        graph = onnx.load(str(path))
        # The exporter's recorded intermediate shapes trip onnx's strict re-inference inside
        # quantize_dynamic ("inferred shape and existing shape differ"); it re-infers them all.
        del graph.graph.value_info[:]
        with _quiet_logs(logging.getLogger()):  # "consider pre-processing": static int8 advice
            quantize_dynamic(
                graph,
                folder / INT8_FILE,
                weight_type=QuantType.QInt8,
                # Only the weight matmuls: the quantiser would turn the Attention node into
                # onnxruntime's QAttention, which is a different operator and fails to load.
                op_types_to_quantize=["MatMul", "Gemm"],
                use_external_data_format=weight_bytes > _PROTOBUF_LIMIT,
            )


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


def _check_summary(info: dict[str, Any]) -> list[str]:
    """The export check as a table: each runtime against the run."""
    check = info.get("check")
    if not check:
        return ["No check was run (`--check-sequences 0`)."]
    lines = [
        f"Each runtime predicted {check['sequences']} sequences ({check['residues']:,} residues; "
        f"{check['source']}) next to the run itself, on the exporting machine's CPU. "
        f"Default runtime: **{info['default_runtime']}** (the fastest that kept the labels).",
        "",
        "| runtime | residues/s | same label as the run | max abs difference | file size |",
        "|---|---|---|---|---|",
    ]
    for name, row in check["runtimes"].items():
        if name == "run":
            lines.append(f"| run (torch) | {row['residues_per_second']:,.0f} | - | - | - |")
            continue
        lines.append(
            f"| {name} | {row['residues_per_second']:,.0f} | {row['label_agreement']:.1%} | "
            f"{row['max_abs_difference']:.2g} | {row['file_bytes'] / 2**20:,.1f} MiB |"
        )
    return lines


def _model_card(
    loaded: LoadedRun, fmt: str, quantize: str | None, name: str, info: dict[str, Any]
) -> str:
    """README.md in the Hugging Face model-card layout (YAML front matter, then markdown)."""
    config, task = loaded.config, loaded.task
    manifest = read_json(loaded.run_dir / MANIFEST_FILE)
    metrics = read_json(loaded.run_dir / METRICS_FILE)
    base = config.model.name if config.model.pretrained else f"{config.model.name} (random init)"
    front = {
        "library_name": "transformers" if fmt == "hf" else "onnx",
        "tags": ["esmtune", "esm2", "protein", task.task.value],
        **({"base_model": config.model.name} if config.model.pretrained else {}),
        **({"pipeline_tag": "text-classification"} if _standard_head(loaded, fmt) else {}),
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
        "## Checked against the run",
        "",
        *_check_summary(info),
        "",
        "## How to load it",
        "",
        *(_hf_usage(loaded) if fmt == "hf" else _onnx_usage(quantize)),
        "",
    ]
    return "\n".join(lines)


def _esmtune_usage() -> list[str]:
    return [
        "With esmtune (backbone, pooling, head, thresholds; long sequences in windows):",
        "",
        "```bash",
        "esmtune predict path/to/this/folder sequences.fasta -o predictions.tsv",
        "esmtune serve path/to/this/folder --port 8000",
        "```",
        "",
        "```python",
        "from esmtune import Predictor",
        "",
        'predictor = Predictor.from_export("path/to/this/folder")',
        'print(predictor.predict(["MKTAYIAKQR"], top_k=3))',
        "```",
        "",
    ]


def _standard_head(loaded: LoadedRun, fmt: str) -> bool:
    """Whether the export is an EsmForSequenceClassification folder."""
    return fmt == "hf" and loaded.config.model.head == "esm"


_AFTER_LOGITS = {
    Task.MULTICLASS: "probabilities = logits.softmax(-1)",
    Task.BINARY: "probabilities = logits.softmax(-1)  # [:, 1] is P(positive)",
    Task.MULTILABEL: "probabilities = logits.sigmoid()",
    Task.REGRESSION: "values = logits  # in the targets' own units",
}


def _hf_usage(loaded: LoadedRun) -> list[str]:
    if _standard_head(loaded, "hf"):
        thresholds = loaded.task.thresholds
        note = f" (esmtune's decision thresholds: {thresholds})" if thresholds else ""
        return [
            *_esmtune_usage(),
            "With plain transformers, the whole classifier (esmtune's `esm` head is "
            f"EsmForSequenceClassification's){note}:",
            "",
            "```python",
            "import torch",
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            'model = AutoModelForSequenceClassification.from_pretrained("path/to/this/folder")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            'batch = tokenizer(["MKTAYIAKQR"], return_tensors="pt", padding=True)',
            "with torch.no_grad():",
            "    logits = model(**batch).logits",
            _AFTER_LOGITS[loaded.task.task],
            "print(model.config.id2label)",
            "```",
        ]
    return [
        *_esmtune_usage(),
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
        *_esmtune_usage(),
        f"With onnxruntime >= 1.23 alone (ONNX opset {ONNX_OPSET}): {files}; inputs "
        "`input_ids`, `attention_mask` (int64, batch x tokens, with `<cls>`/`<eos>`), "
        "outputs `logits` (batch x outputs, before the task's sigmoid/softmax) and "
        f"`hidden_states`; `{POOL_HEAD_FILE}` pools stitched windows.",
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
