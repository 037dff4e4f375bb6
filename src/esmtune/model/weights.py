"""Loading a run's saved tensors into a rebuilt model, refusing anything that does not fit.

A run saves its classifier's tensors under ``backbone.``, ``pooler.`` and ``head.``; the
classifier loads all of them, an encoder built from the run (:mod:`esmtune.model.encoder`) all
but the head's. Both go through :func:`load_weights`, which lives apart from either so that
neither imports the other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from safetensors.torch import load_file
from torch import nn

from esmtune.errors import ModelLoadError

__all__ = ["load_weights"]


def _under(name: str, prefixes: Sequence[str]) -> bool:
    return any(name.startswith(prefix) for prefix in prefixes)


def load_weights(
    model: nn.Module,
    path: Path,
    complete: bool,
    skip: Sequence[str] = (),
    optional: Sequence[str] = (),
) -> None:
    """Load saved tensors into ``model``, refusing anything that does not fit.

    Args:
        model: The rebuilt model.
        path: A safetensors file from :func:`esmtune.rundir.save_weights`.
        complete: True when the file must cover every tensor (random-init backbones).
        skip: Name prefixes of saved tensors the model does not take (a classifier's head, when
            only its encoder is rebuilt).
        optional: Name prefixes of the model's own tensors the file need not hold (a pooling or
            projection that is new), even when ``complete``.

    Raises:
        ModelLoadError: On unknown or (when ``complete``) missing tensors.
    """
    tensors = {name: t for name, t in load_file(str(path)).items() if not _under(name, skip)}
    result = model.load_state_dict(tensors, strict=False)
    missing = [name for name in result.missing_keys if not _under(name, optional)]
    if result.unexpected_keys or (complete and missing):
        raise ModelLoadError(
            f"{path} does not match the model rebuilt from the run's config "
            f"(unexpected: {result.unexpected_keys[:3]}, missing: {missing[:3]}); "
            "was config.yaml edited after training?"
        )
