"""A run's model: the weights a run keeps, and the model rebuilt from them.

The files themselves (names, config, task, thresholds) are :mod:`esmtune.rundir`'s; this module
adds what needs the model: which tensors to save and loading them back into a
:class:`~esmtune.model.loaded.LoadedRun` (the model with its tokenizer, task and config).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from esmtune.config import TrainConfig
from esmtune.errors import RunDirError
from esmtune.model.classifier import SequenceClassifier, build_model
from esmtune.model.embedding_head import SOURCE_FILE
from esmtune.model.initial import inherited_names
from esmtune.model.loaded import LoadedRun
from esmtune.model.weights import load_weights
from esmtune.rundir import WEIGHTS_FILE, read_run

__all__ = [
    "LoadedRun",
    "hf_tokenizer",
    "kept_tensors",
    "load_run",
    "load_weights",
    "weights_to_save",
]


def hf_tokenizer(loaded: LoadedRun[Any]) -> PreTrainedTokenizerBase:
    """The transformers tokenizer of a torch model's run, for writing it into an export.

    An ONNX export's :class:`~esmtune.model.loaded.LoadedRun` holds a vocabulary lookup only.
    """
    if not isinstance(loaded.tokenizer, PreTrainedTokenizerBase):
        raise TypeError(f"{loaded.run_dir} holds no transformers tokenizer (an ONNX export?)")
    return loaded.tokenizer


def weights_to_save(model: SequenceClassifier, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The tensors a run must keep (:func:`kept_tensors`), detached, on the CPU."""
    kept = kept_tensors(model, config)
    return {name: tensor.detach().cpu().contiguous() for name, tensor in kept.items()}


def kept_tensors(model: SequenceClassifier, config: TrainConfig) -> dict[str, torch.Tensor]:
    """The tensors a run must keep: trainable ones, or everything when nothing is downloadable.

    With ``pretrained: true`` the frozen backbone comes back from the hub or local folder, so only
    trained parameters (LoRA adapters, unfrozen layers, pooling and head) are stored, with what
    ``model.init_from`` gave the model even where it is frozen now. Names are
    the state dict's (``backbone.…``, ``pooler.…``, ``head.…``): parameters are picked by
    themselves, not by their module path, which has an ``encoder.`` level the saved names lack.
    The tensors are the model's own (slices of them under FSDP, which training gathers).
    """
    state = model.state_dict(keep_vars=True)
    if config.model.pretrained:
        # Frozen tensors taken from model.init_from are not the base model's either.
        init = config.model.init_from
        inherited = set() if init is None else inherited_names(init, config.model.init_skip)
        state = {n: t for n, t in state.items() if t.requires_grad or n in inherited}
    return state


def load_run(run_dir: Path | str) -> LoadedRun[SequenceClassifier]:
    """Rebuild the best model of a run, from the folder alone (plus the hub cache if pretrained).

    Raises:
        RunDirError: When the folder is not a finished run.
        ModelLoadError: When the backbone or the weights cannot be loaded.
    """
    run_dir = Path(run_dir)
    config, task = read_run(run_dir)
    if (run_dir / SOURCE_FILE).is_file():
        raise RunDirError(
            f"{run_dir} is a head trained on precomputed embeddings (data.embeddings), with no "
            "backbone of its own: predict with esmtune.Predictor / `esmtune predict` (from "
            "--embeddings FILE, or sequences when the embedding model is known); export needs a "
            "run whose backbone ran"
        )
    model, tokenizer = build_model(config, task.num_outputs)
    load_weights(model, run_dir / WEIGHTS_FILE, complete=not config.model.pretrained)
    model.eval()
    return LoadedRun(run_dir, config, task, model, tokenizer)
