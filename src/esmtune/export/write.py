"""Exporting a trained run for use outside esmtune's run directory, checked against the run.

The export is written to a hidden sibling folder and renamed into place at the end, so a failure
never leaves half an export behind. The format (:data:`~esmtune.export.formats.FORMATS`) writes
its weights; every export then gets the run's config, label map, metrics and manifest, the check
of each runtime against the run (:mod:`esmtune.export.check`) and a model card
(:mod:`esmtune.export.card`).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from pathlib import Path

from esmtune.errors import EsmtuneError
from esmtune.export.card import model_card
from esmtune.export.check import CHECK_SEQUENCES, check_runtimes
from esmtune.export.files import CARD_FILE, EXPORT_INFO_FILE, require_modules
from esmtune.export.formats import FORMATS, ExportFormat, format_named, offered_runtimes
from esmtune.model.classifier import SequenceClassifier
from esmtune.model.interface import RuntimeModel
from esmtune.model.run_model import LoadedRun, load_run
from esmtune.model.tuning import merge_lora
from esmtune.rundir import (
    CONFIG_FILE,
    LABELS_FILE,
    MANIFEST_FILE,
    METRICS_FILE,
    atomic_write_text,
    read_run,
)
from esmtune.storage import apply_umask_tree, check_writable, storage_errors

__all__ = ["export_run"]


def export_run(
    run_dir: Path | str,
    out_dir: Path | str,
    fmt: str,
    quantize: str | None = None,
    check_sequences: int = CHECK_SEQUENCES,
) -> Path:
    """Export the best model of a run, and check it against the run.

    Before the export is renamed into place, each runtime it offers predicts a sample of
    sequences next to the run (:func:`esmtune.export.check.check_runtimes`): label agreement,
    largest difference and speed go to ``export.json`` and the model card, and the fastest
    runtime that kept the labels becomes the default of ``predict`` and ``serve``.

    Args:
        run_dir: A finished run directory.
        out_dir: A new (or empty) folder for the export.
        fmt: A format of :data:`~esmtune.export.formats.FORMATS`: ``hf`` (merged Hugging Face
            backbone + esmtune head) or ``onnx``.
        quantize: ``int8`` (onnx only): also write ``model.int8.onnx``, dynamically quantised
            by onnxruntime; ``model.onnx`` stays fp32.
        check_sequences: How many sequences the check compares (0: no check).

    Returns:
        The export folder.

    Raises:
        EsmtuneError: On an unknown format, a quantisation the format lacks, a missing optional
            dependency, or a non-empty ``out_dir``.
        RunDirError: When ``run_dir`` is not a finished run.
        StorageError: When the folder of ``out_dir`` cannot be written (checked before the
            run is loaded) or fills up; nothing is left behind.
    """
    out_dir = Path(out_dir)
    form = format_named(fmt)
    _check_quantize(form, quantize)
    require_modules(*form.required_modules)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise EsmtuneError(
            f"{out_dir} already exists and is not empty; export refuses to overwrite it: "
            "choose another --out folder, or delete this one first"
        )
    read_run(Path(run_dir))  # a finished run? (cheap: before the folder is created)
    # The export is written next to out_dir: find out now, not after tracing, if it cannot be.
    check_writable(out_dir.parent, "Choose another --out folder")
    loaded = load_run(run_dir)
    staging = out_dir.with_name(f".{out_dir.name}.partial-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        with storage_errors(out_dir, lambda _: "Free space or choose another --out folder"):
            _write_export(loaded, staging, form, quantize, check_sequences, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out_dir


def _check_quantize(form: ExportFormat, quantize: str | None) -> None:
    """Refuse a quantisation the format does not offer, naming the formats that do."""
    if quantize is None or quantize in form.quantizations:
        return
    offering = [other.name for other in FORMATS.values() if quantize in other.quantizations]
    if offering:
        raise EsmtuneError(f"--quantize {quantize} applies to --format {', '.join(offering)} only")
    known = sorted({name for other in FORMATS.values() for name in other.quantizations})
    raise EsmtuneError(f"quantize '{quantize}' is unknown: choose one of {', '.join(known)}")


def _write_export(
    loaded: LoadedRun[SequenceClassifier],
    staging: Path,
    form: ExportFormat,
    quantize: str | None,
    check_sequences: int,
    out_dir: Path,
) -> None:
    """Everything of the export into ``staging``, checked, then renamed to ``out_dir``."""
    staging.mkdir(parents=True)
    model = _merged_classifier(loaded.model)
    form.write(loaded, model, staging, quantize)
    del model
    _write_run_files(loaded, staging)
    info = {
        "format": form.name,
        "quantize": quantize,
        **check_runtimes(loaded, _candidates(staging, form), check_sequences),
    }
    atomic_write_text(staging / EXPORT_INFO_FILE, json.dumps(info, indent=2) + "\n")
    card = model_card(loaded, form, quantize, out_dir.name, info)
    atomic_write_text(staging / CARD_FILE, card)
    # Writers such as safetensors (under save_pretrained) leave files 0600: the export is
    # meant to be handed on (other users, the API container), so the umask decides.
    apply_umask_tree(staging)
    if out_dir.exists():
        out_dir.rmdir()  # empty, checked above
    os.replace(staging, out_dir)


def _candidates(
    folder: Path, form: ExportFormat
) -> dict[str, tuple[LoadedRun[RuntimeModel], list[Path]]]:
    """The runtimes the written export offers, loaded from it, with the files each reads."""
    return {
        runtime: (form.load(folder, runtime, None), form.files_read(folder, runtime))
        for runtime in offered_runtimes(form, folder)
    }


def _merged_classifier(model: SequenceClassifier) -> SequenceClassifier:
    """A copy of the classifier whose backbone is a plain EsmModel (LoRA merged in).

    ``merge_and_unload`` changes the module it is called on, so it runs on a copy and the run's
    model stays usable.
    """
    merged = copy.deepcopy(model).cpu().eval()
    merged.backbone = merge_lora(merged.backbone)
    return merged


def _write_run_files(loaded: LoadedRun[SequenceClassifier], folder: Path) -> None:
    """The run's config, label map (with the exported weights' thresholds), metrics, manifest.

    The metrics and manifest are what ``serve``'s /info reports about the model.
    """
    shutil.copyfile(loaded.run_dir / CONFIG_FILE, folder / CONFIG_FILE)
    for name in (METRICS_FILE, MANIFEST_FILE):
        if (loaded.run_dir / name).is_file():
            shutil.copyfile(loaded.run_dir / name, folder / name)
    atomic_write_text(folder / LABELS_FILE, json.dumps(loaded.task.state(), indent=2) + "\n")
