"""The table of export formats: what each writes, which runtimes run it, how it loads.

Writing, checking, loading and the model card ask the format, never ``if fmt == ...``: a new
format is one class (a module like :mod:`esmtune.export.hf`), one entry in :data:`FORMATS` and
one name in :class:`~esmtune.export.names.FormatName`. The table imports no torch: each format
imports its writer (and a torch loader) when asked to write or load, so an ONNX export loads
with onnxruntime alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from esmtune.errors import EsmtuneError
from esmtune.export.hf import HfFormat
from esmtune.export.names import FormatName
from esmtune.export.onnx import OnnxFormat

if TYPE_CHECKING:
    from esmtune.model.classifier import SequenceClassifier
    from esmtune.model.interface import RuntimeModel
    from esmtune.model.loaded import LoadedRun

__all__ = [
    "FORMATS",
    "ExportFormat",
    "export_format",
    "fallback_runtime",
    "format_named",
    "marker_file",
    "offered_runtimes",
]


class ExportFormat(Protocol):
    """One form of export: the files it writes, the runtimes that run them, how it loads."""

    @property
    def name(self) -> FormatName:
        """``--format`` value."""
        ...

    @property
    def entry_files(self) -> Mapping[str, str]:
        """Runtime -> the file it opens; an export offers the runtimes whose file it holds.

        The first runtime's file marks a folder as this format, and that runtime is the
        default when the export's own check named none.
        """
        ...

    @property
    def quantizations(self) -> Mapping[str, str]:
        """``--quantize`` value -> the runtime its extra file adds (none: not quantisable)."""
        ...

    @property
    def required_modules(self) -> tuple[str, ...]:
        """Optional libraries writing it needs (the ``export`` extra), checked before any work."""
        ...

    @property
    def library_name(self) -> str:
        """The model card's ``library_name``: what the hub shows the folder is for."""
        ...

    @property
    def other_runtimes(self) -> str:
        """What to do instead when asked for a runtime this format does not offer."""
        ...

    def write(
        self,
        loaded: LoadedRun[SequenceClassifier],
        model: SequenceClassifier,
        folder: Path,
        quantize: str | None,
    ) -> None:
        """Write ``model``, the run's classifier with LoRA merged in (CPU), into ``folder``."""
        ...

    def load(self, folder: Path, runtime: str, device: str | None) -> LoadedRun[RuntimeModel]:
        """The export in ``folder``, run by ``runtime`` (one it offers) on ``device``."""
        ...

    def files_read(self, folder: Path, runtime: str) -> list[Path]:
        """The files ``runtime`` reads, for the size the export check reports."""
        ...

    def card_metadata(self, loaded: LoadedRun[SequenceClassifier]) -> dict[str, Any]:
        """Front-matter entries of the model card beyond the common ones."""
        ...

    def usage(self, loaded: LoadedRun[SequenceClassifier], quantize: str | None) -> list[str]:
        """Model-card lines (markdown) on loading the folder without esmtune."""
        ...


FORMATS: dict[str, ExportFormat] = {form.name: form for form in (HfFormat(), OnnxFormat())}


def format_named(name: str) -> ExportFormat:
    """The format called ``name``.

    Raises:
        EsmtuneError: On an unknown name, listing the known ones.
    """
    if name not in FORMATS:
        raise EsmtuneError(f"export format '{name}' is unknown: choose one of {', '.join(FORMATS)}")
    return FORMATS[name]


def fallback_runtime(form: ExportFormat) -> str:
    """The format's first runtime: the default when the export's check named none."""
    return next(iter(form.entry_files))


def marker_file(form: ExportFormat) -> str:
    """The file every export of ``form`` holds: its first runtime's."""
    return form.entry_files[fallback_runtime(form)]


def export_format(folder: Path | str) -> str | None:
    """The format of an esmtune export folder, None for anything else (e.g. a run)."""
    for form in FORMATS.values():
        if (Path(folder) / marker_file(form)).is_file():
            return form.name
    return None


def offered_runtimes(form: ExportFormat, folder: Path) -> list[str]:
    """The runtimes of ``form`` whose files ``folder`` holds, in the format's order."""
    return [runtime for runtime, name in form.entry_files.items() if (folder / name).is_file()]
