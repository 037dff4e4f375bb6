"""Tracing a run's classifier to the ``onnx`` export's graphs (torch's dynamo exporter).

What :class:`~esmtune.export.onnx.OnnxFormat` writes (see there); kept apart from the format so
that loading an ONNX export never imports torch.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from esmtune.export.files import INT8_FILE, ONNX_FILE, POOL_HEAD_FILE
from esmtune.export.onnx import ONNX_OPSET
from esmtune.model.classifier import ResidueClassifier, SequenceClassifier
from esmtune.model.loaded import LoadedRun
from esmtune.model.run_model import hf_tokenizer

__all__ = ["write_onnx"]

# Beyond 2 GB a protobuf cannot hold the weights; ONNX then keeps them in a side file.
_PROTOBUF_LIMIT = 2**31 - 2**26


def write_onnx(
    loaded: LoadedRun[SequenceClassifier],
    model: SequenceClassifier,
    folder: Path,
    quantize: str | None,
) -> None:
    """``model.onnx`` (+ ``model.int8.onnx``) for the token path, ``head.onnx`` for windows."""
    path = folder / ONNX_FILE
    # Three sequences, the last one shorter and padded: the trace sees padding and specials.
    tokenizer = hf_tokenizer(loaded)
    sample = tokenizer(["MKTAYIAKQR", "MDEDEKRLIV", "MKTAY"], padding=True, return_tensors="pt")
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
    tokenizer.save_pretrained(folder)
    if quantize == "int8":
        _quantize_int8(path, folder / INT8_FILE, large)


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
