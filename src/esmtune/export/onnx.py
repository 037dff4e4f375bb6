"""The ``onnx`` export: the classifier traced to two ONNX graphs for onnxruntime.

``model.onnx`` is the token path (``input_ids, attention_mask -> logits, hidden_states``) with
dynamic batch and sequence axes; ``head.onnx`` pools stitched window states (``hidden_states,
residue_mask -> logits``) for sequences longer than the context. For a per-residue run both
graphs give logits per position (``batch x tokens x outputs``, residue ``i`` at position ``i + 1``)
and ``head.onnx`` runs the head on stitched states instead of pooling them. ``--quantize int8`` adds
``model.int8.onnx``, dynamically quantised by onnxruntime. Running them is
:mod:`esmtune.export.onnx_runtime`'s.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from esmtune.export.files import INT8_FILE, ONNX_FILE, POOL_HEAD_FILE
from esmtune.export.names import FormatName, Runtime
from esmtune.export.onnx_runtime import OnnxClassifier, load_onnx_export
from esmtune.model.classifier import ResidueClassifier, SequenceClassifier
from esmtune.model.run_model import LoadedRun

__all__ = ["ONNX_OPSET", "OnnxFormat"]

# Opset 23 has a fused Attention operator (onnxruntime >= 1.23 runs it on the CPU): ESM2's
# attention then runs as one kernel instead of a dozen matmul/softmax/mask nodes, which made
# model.onnx 1.8x faster on t6_8M (benchmarks/export_bench.py).
ONNX_OPSET = 23
# Beyond 2 GB a protobuf cannot hold the weights; ONNX then keeps them in a side file.
_PROTOBUF_LIMIT = 2**31 - 2**26


class OnnxFormat:
    """``--format onnx``: runs in onnxruntime, fp32 or (with ``--quantize int8``) int8."""

    name = FormatName.ONNX
    entry_files: ClassVar[Mapping[str, str]] = {
        Runtime.ONNX: ONNX_FILE,
        Runtime.ONNX_INT8: INT8_FILE,
    }
    quantizations: ClassVar[Mapping[str, str]] = {"int8": Runtime.ONNX_INT8}
    required_modules = ("onnx", "onnxscript", "onnxruntime")
    library_name = "onnx"
    other_runtimes = (
        "it holds no torch weights: predict from the run, or from an hf export, to use torch"
    )

    def write(
        self,
        loaded: LoadedRun[SequenceClassifier],
        model: SequenceClassifier,
        folder: Path,
        quantize: str | None,
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
        large = sum(p.numel() * p.element_size() for p in model.parameters()) > _PROTOBUF_LIMIT
        program.save(str(path), external_data=large)
        with torch.no_grad():
            hidden, residues = model.residue_states(input_ids, attention_mask)
        head = _onnx_program(
            _PoolHead(model), (hidden, residues), ["hidden_states", "residue_mask"], ["logits"]
        )
        head.save(str(folder / POOL_HEAD_FILE))
        loaded.tokenizer.save_pretrained(folder)
        if quantize == "int8":
            _quantize_int8(path, folder / INT8_FILE, large)

    def load(self, folder: Path, runtime: str, device: str | None) -> LoadedRun[OnnxClassifier]:
        """The fp32 or int8 graph in onnxruntime, on the CPU or (``cuda``) onnxruntime-gpu."""
        return load_onnx_export(folder, quantized=runtime == Runtime.ONNX_INT8, device=device)

    def files_read(self, folder: Path, runtime: str) -> list[Path]:
        """The runtime's graph (with any side file of its weights) and the window head."""
        graph = self.entry_files[runtime]
        return [*sorted(folder.glob(f"{graph}*")), folder / POOL_HEAD_FILE]

    def card_metadata(self, loaded: LoadedRun[SequenceClassifier]) -> dict[str, Any]:
        """Nothing beyond ``library_name``: the hub has no widget for raw ONNX graphs."""
        return {}

    def usage(self, loaded: LoadedRun[SequenceClassifier], quantize: str | None) -> list[str]:
        """How onnxruntime alone runs ``model.onnx``: its inputs and outputs."""
        files = f"`{ONNX_FILE}` (fp32)" + (f" and `{INT8_FILE}` (dynamic int8)" if quantize else "")
        if loaded.task.per_residue:
            shape = "batch x tokens x outputs: residue i at token i + 1, after `<cls>`"
            windows = "runs the head on the residue states of windows stitched together"
        else:
            shape, windows = "batch x outputs", "pools stitched windows"
        return [
            f"With onnxruntime >= 1.23 alone (ONNX opset {ONNX_OPSET}): {files}; inputs "
            "`input_ids`, `attention_mask` (int64, batch x tokens, with `<cls>`/`<eos>`), "
            f"outputs `logits` ({shape}, before the task's sigmoid/softmax) and "
            f"`hidden_states`; `{POOL_HEAD_FILE}` {windows}.",
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
        return _logits(self.model, hidden, residues), hidden


class _PoolHead(nn.Module):
    """``hidden_states, residue_mask -> logits``: pooling and head on stitched windows.

    Per residue: the head on every stitched state, no pooling.
    """

    def __init__(self, model: SequenceClassifier) -> None:
        super().__init__()
        self.model = model

    def forward(self, hidden_states: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        """Pool the residues of each row, then the head (or the head on every residue)."""
        return _logits(self.model, hidden_states, residue_mask)


def _logits(
    model: SequenceClassifier, states: torch.Tensor, residues: torch.Tensor
) -> torch.Tensor:
    """The classifier's logits from residue states: per residue, or pooled per sequence."""
    if isinstance(model, ResidueClassifier):
        return model.residue_logits(states, residues)
    return model.head(model.pooler(states, residues))


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
) -> torch.onnx.ONNXProgram:
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
    if program is None:  # the legacy exporter's result; dynamo=True always returns a program
        raise RuntimeError("torch.onnx.export(dynamo=True) returned no ONNXProgram")
    # Folding puts every weight into its matmul pre-transposed, which int8 quantisation needs
    # (it quantises matmuls whose weight is a stored tensor). No size limit: large models'
    # weight matrices are larger than onnxscript's default folding limit.
    from onnxscript import optimizer

    optimizer.optimize(program.model, input_size_limit=2**62, output_size_limit=2**62)
    return program


def _quantize_int8(source: Path, target: Path, large: bool) -> None:
    """A dynamically quantised int8 copy of the token graph (the window head stays fp32)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(source))
    # The exporter's recorded intermediate shapes trip onnx's strict re-inference inside
    # quantize_dynamic ("inferred shape and existing shape differ"); it re-infers them all.
    del graph.graph.value_info[:]
    with _quiet_logs(logging.getLogger()):  # "consider pre-processing": static int8 advice
        quantize_dynamic(
            graph,
            target,
            weight_type=QuantType.QInt8,
            # Only the weight matmuls: the quantiser would turn the Attention node into
            # onnxruntime's QAttention, which is a different operator and fails to load.
            op_types_to_quantize=["MatMul", "Gemm"],
            use_external_data_format=large,
        )
