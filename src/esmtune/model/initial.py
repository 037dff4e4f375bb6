"""Starting a run from an earlier run's fine-tuned weights (``model.init_from``).

Continued training keeps everything the earlier run learned; a new task on the same proteins
keeps the backbone's adaptation but starts a new head (``model.init_skip: [head]``). Only what
the earlier run saved is taken (adapters or trained layers, pooling and head; everything for a
randomly initialised backbone), and every tensor must fit: a mismatch names the tensor and both
shapes instead of loading half a model.
"""

from __future__ import annotations

from pathlib import Path

from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from esmtune.config import ModelConfig
from esmtune.errors import ModelLoadError
from esmtune.rundir import WEIGHTS_FILE, read_run

__all__ = ["check_initial_run", "inherited_names", "initialise_from"]


def check_initial_run(run_dir: Path, model: ModelConfig) -> str | None:
    """Fail before any data is read when ``model.init_from`` is not a finished run.

    Args:
        run_dir: The earlier run.
        model: The new run's model section.

    Returns:
        A warning when both runs build on pretrained weights of differently named models:
        tensors of the same shapes load onto either, so only the names can tell.

    Raises:
        RunDirError: Naming what is missing (see :func:`esmtune.rundir.read_run`).
    """
    earlier, _ = read_run(run_dir)
    base = earlier.model
    if not (base.pretrained and model.pretrained) or base.name == model.name:
        return None
    return (
        f"model.init_from: {run_dir} was trained on {base.name}, this run builds on "
        f"{model.name}; its weights are added to a model they were not trained with unless "
        "both name the same weights (set model.name to the earlier run's)"
    )


def inherited_names(run_dir: Path, skip: list[str]) -> set[str]:
    """The tensors a run started from ``run_dir`` takes from it (all saved, less ``skip``).

    They differ from the base model even where they no longer train (a frozen backbone taken
    from a full run), so the new run must save them too.
    """
    with safe_open(str(run_dir / WEIGHTS_FILE), framework="pt") as saved:
        return {name for name in saved.keys() if not _skipped(name, skip)}  # noqa: SIM118


def _skipped(name: str, skip: list[str]) -> bool:
    return any(name == prefix or name.startswith(f"{prefix}.") for prefix in skip)


def initialise_from(model: nn.Module, run_dir: Path, skip: list[str]) -> str:
    """Load an earlier run's saved weights into a freshly built model; say what was taken.

    Args:
        model: The new run's model, built from its own config.
        run_dir: The earlier run (``model.init_from``).
        skip: Name prefixes not to take (``model.init_skip``), e.g. ``["head"]``.

    Returns:
        A line for the log: how many tensors came from where, and what was skipped.

    Raises:
        ModelLoadError: When a tensor's shape differs, the earlier run has tensors this model
            lacks (other finetune settings), or a skip prefix matches nothing.
    """
    saved = load_file(str(run_dir / WEIGHTS_FILE))
    own = model.state_dict()
    unused = [prefix for prefix in skip if not any(_skipped(n, [prefix]) for n in saved)]
    if unused:
        tops = sorted({name.split(".")[0] for name in saved})
        raise ModelLoadError(
            f"model.init_skip: {unused} match no weight of {run_dir} (its weights start with "
            f"{', '.join(tops)})"
        )
    taken = {n: t for n, t in saved.items() if not _skipped(n, skip)}
    foreign = sorted(n for n in taken if n not in own)
    if foreign:
        raise ModelLoadError(
            f"{run_dir} has {len(foreign)} weight(s) this model does not, e.g. {foreign[:3]}: "
            "use the finetune settings of that run (mode, LoRA rank and target modules, head), "
            "or skip them with model.init_skip"
        )
    mismatched = [
        f"{n}: {tuple(t.shape)} in {run_dir}, {tuple(own[n].shape)} here"
        for n, t in taken.items()
        if t.shape != own[n].shape
    ]
    if mismatched:
        heads = any(line.startswith("head.") for line in mismatched)
        hint = " (a new task's labels: add model.init_skip=[head])" if heads else ""
        raise ModelLoadError(
            f"weights of {run_dir} do not fit this model{hint}:\n  - " + "\n  - ".join(mismatched)
        )
    model.load_state_dict(taken, strict=False)
    skipped = len(saved) - len(taken)
    kept = f"; {skipped} skipped ({', '.join(skip)})" if skipped else ""
    return f"initialised {len(taken)} tensor(s) from {run_dir}{kept}"
