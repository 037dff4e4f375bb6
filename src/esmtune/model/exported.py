"""The old address of export loading, kept while ``cli.py`` and its tests still import from here.

Everything moved to the :mod:`esmtune.export` package (its names, files, formats, loading and the
ONNX runtime). Import from there; this module goes once nothing imports it.
"""

from esmtune.export.files import (
    EXPORT_INFO_FILE,
    HEAD_FILE,
    INT8_FILE,
    ONNX_FILE,
    POOL_HEAD_FILE,
    read_export,
    read_export_info,
    require_modules,
)
from esmtune.export.formats import export_format
from esmtune.export.hf import load_export
from esmtune.export.load import choose_runtime
from esmtune.export.names import RUNTIMES
from esmtune.export.onnx_runtime import OnnxClassifier, load_onnx_export, onnx_providers

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
