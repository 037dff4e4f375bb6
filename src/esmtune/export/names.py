"""The names exports are made and run by: formats and runtimes, importable without torch.

The command line offers them as choices before any model library loads. The formats themselves
(:data:`esmtune.export.formats.FORMATS`) are keyed by these names, as the tasks of
:mod:`esmtune.tasks` are by :class:`esmtune.config.Task`; a test holds the two together.
"""

from __future__ import annotations

from enum import StrEnum

__all__ = ["AUTO", "RUNTIMES", "FormatName", "Runtime"]


class FormatName(StrEnum):
    """What ``esmtune export --format`` writes."""

    HF = "hf"  # a Hugging Face model folder (LoRA merged) + esmtune's pooling and head
    ONNX = "onnx"  # ONNX graphs for onnxruntime, fp32 and optionally dynamic int8


class Runtime(StrEnum):
    """What runs a model: torch (runs, hf exports) or onnxruntime (an onnx export's graphs)."""

    TORCH = "torch"
    ONNX = "onnx"
    ONNX_INT8 = "onnx-int8"


RUNTIMES = tuple(Runtime)
# Not a runtime: "let the folder decide" (torch for a run, an export's own checked default).
AUTO = "auto"
