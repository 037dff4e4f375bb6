"""Exporting a run (Hugging Face folder or ONNX graphs), checking it, and loading it back.

``names`` (format and runtime names, torch-free) · ``files`` (what every export folder holds) ·
``formats`` (the table of formats: ``hf``, ``onnx``, each writing, loading and describing itself)
· ``onnx_runtime`` (the ONNX graphs as a classifier) · ``load`` (an export folder in the runtime
it should run in) · ``check`` (each runtime against the run) · ``card`` (the model card) ·
``write`` (:func:`export_run`: all of it, renamed into place when done).

Loading sits below :mod:`esmtune.predict`, writing and checking above it (checking predicts), so
this package imports its modules on first use: ``from esmtune.export import export_run`` works
from anywhere, and ``predict`` importing ``esmtune.export.load`` never pulls in the writer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AUTO",
    "CARD_FILE",
    "CHECK_SEQUENCES",
    "EXPORT_INFO_FILE",
    "FORMATS",
    "HEAD_FILE",
    "INT8_FILE",
    "ONNX_FILE",
    "POOL_HEAD_FILE",
    "RUNTIMES",
    "ExportFormat",
    "FormatName",
    "OnnxClassifier",
    "Runtime",
    "check_export_loadable",
    "check_runtimes",
    "choose_runtime",
    "export_format",
    "export_run",
    "load_export",
    "load_onnx_export",
    "open_export",
    "read_export",
    "read_export_info",
]

_HOMES = {
    "AUTO": "names",
    "FormatName": "names",
    "RUNTIMES": "names",
    "Runtime": "names",
    "CARD_FILE": "files",
    "EXPORT_INFO_FILE": "files",
    "HEAD_FILE": "files",
    "INT8_FILE": "files",
    "ONNX_FILE": "files",
    "POOL_HEAD_FILE": "files",
    "read_export": "files",
    "read_export_info": "files",
    "FORMATS": "formats",
    "ExportFormat": "formats",
    "export_format": "formats",
    "load_export": "hf",
    "OnnxClassifier": "onnx_runtime",
    "load_onnx_export": "onnx_runtime",
    "check_export_loadable": "load",
    "choose_runtime": "load",
    "open_export": "load",
    "CHECK_SEQUENCES": "check",
    "check_runtimes": "check",
    "export_run": "write",
}

if TYPE_CHECKING:
    from esmtune.export.check import CHECK_SEQUENCES, check_runtimes
    from esmtune.export.files import (
        CARD_FILE,
        EXPORT_INFO_FILE,
        HEAD_FILE,
        INT8_FILE,
        ONNX_FILE,
        POOL_HEAD_FILE,
        read_export,
        read_export_info,
    )
    from esmtune.export.formats import FORMATS, ExportFormat, export_format
    from esmtune.export.hf import load_export
    from esmtune.export.load import check_export_loadable, choose_runtime, open_export
    from esmtune.export.names import AUTO, RUNTIMES, FormatName, Runtime
    from esmtune.export.onnx_runtime import OnnxClassifier, load_onnx_export
    from esmtune.export.write import export_run


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(f"{__name__}.{_HOMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
