"""Loading an export folder: which format it is, which runtime runs it, the model it holds.

Below :mod:`esmtune.predict` (which predicts from exports as from runs), above nothing that
writes exports: loading needs neither the check nor the model card.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from esmtune.errors import EsmtuneError, RunDirError
from esmtune.export.files import read_export, read_export_info
from esmtune.export.formats import (
    FORMATS,
    ExportFormat,
    export_format,
    fallback_runtime,
    marker_file,
    offered_runtimes,
)
from esmtune.export.names import AUTO, RUNTIMES

if TYPE_CHECKING:
    from esmtune.model.interface import RuntimeModel
    from esmtune.model.loaded import LoadedRun

__all__ = ["check_export_loadable", "choose_runtime", "open_export"]


def _format_of(folder: Path) -> ExportFormat:
    """The folder's format.

    Raises:
        RunDirError: When the folder is no esmtune export.
    """
    name = export_format(folder)
    if name is None:
        marks = " or ".join(marker_file(form) for form in FORMATS.values())
        raise RunDirError(
            f"{folder} is not an esmtune export (no {marks}); for a run directory use "
            "Predictor.from_run"
        )
    return FORMATS[name]


def choose_runtime(export_dir: Path | str, runtime: str = AUTO) -> str:
    """The runtime for an export: one of :data:`~esmtune.export.names.RUNTIMES` it offers.

    ``auto`` takes what the export's own check chose (``default_runtime`` in ``export.json``:
    for ONNX, the fastest graph that kept the labels), else the format's first runtime (torch
    for ``hf``, fp32 ``onnx``).

    Raises:
        RunDirError: When the folder is no esmtune export.
        EsmtuneError: When the runtime is unknown or the export cannot run in it.
    """
    folder = Path(export_dir)
    if runtime not in (AUTO, *RUNTIMES):
        raise EsmtuneError(f"runtime '{runtime}' is unknown: choose {AUTO}, {', '.join(RUNTIMES)}")
    form = _format_of(folder)
    if runtime == AUTO:
        checked = read_export_info(folder).get("default_runtime")
        offered = offered_runtimes(form, folder)
        return checked if checked in offered else fallback_runtime(form)
    if runtime not in form.entry_files:
        raise EsmtuneError(
            f"{folder} is an {form.name} export, which runs in {' or '.join(form.entry_files)}; "
            f"{form.other_runtimes}"
        )
    return runtime


def open_export(
    export_dir: Path | str, runtime: str = AUTO, device: str | None = None
) -> LoadedRun[RuntimeModel]:
    """The model of an export folder, in the runtime :func:`choose_runtime` picks.

    Args:
        export_dir: The ``--out`` folder of ``esmtune export``.
        runtime: ``auto`` or one of :data:`~esmtune.export.names.RUNTIMES`.
        device: Where the runtime runs (torch device name; ONNX: ``cpu`` or ``cuda``).

    Raises:
        RunDirError: When the folder is no export, or lacks the requested runtime's file.
        EsmtuneError: On a runtime the export cannot run.
    """
    folder = Path(export_dir)
    chosen = choose_runtime(folder, runtime)
    return _format_of(folder).load(folder, chosen, device)


def check_export_loadable(export_dir: Path | str, runtime: str = AUTO) -> None:
    """Fail where :func:`open_export` would on the folder's files, without loading weights.

    Raises:
        RunDirError: When the folder is no export, or lacks the requested runtime's file.
        EsmtuneError: On a runtime the export cannot run.
    """
    folder = Path(export_dir)
    read_export(folder)
    chosen = choose_runtime(folder, runtime)
    entry = folder / _format_of(folder).entry_files[chosen]
    if not entry.is_file():
        raise RunDirError(f"{entry} is missing: export the run again with that form")
