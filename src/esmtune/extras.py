"""Which optional parts of esmtune are installed, and what to install when one is missing.

``pip install esmtune`` is the runtime: it predicts and serves ONNX exports with numpy and
onnxruntime. Training, evaluating and predicting from a run directory need the training stack,
the ``train`` extra (torch, transformers, peft, accelerate, scikit-learn, ...). A torch path
checks for it first, so that a runtime-only install says what to install instead of failing
deep inside an import.
"""

from __future__ import annotations

import importlib.util

from esmtune.errors import EsmtuneError

__all__ = [
    "MODEL_MODULES",
    "TRAINING_INSTALL",
    "TRAINING_MODULES",
    "require_training_stack",
    "training_stack_message",
]

# What the train extra installs that the runtime lacks, by import name: a command failing to
# import one of these was asked for something the runtime does not do (see esmtune.cli).
TRAINING_MODULES = (
    "torch",
    "transformers",
    "peft",
    "accelerate",
    "safetensors",
    "sklearn",
    "scipy",
    "matplotlib",
    "tensorboard",
    "pronto",
    "h5py",
    "pyarrow",
)
# What loading a torch model (a run, an hf export) needs before anything else.
MODEL_MODULES = ("torch", "transformers", "safetensors")
TRAINING_INSTALL = "pip install 'esmtune[train]'"


def training_stack_message(purpose: str, missing: list[str]) -> str:
    """What a runtime-only install says when asked for a torch path."""
    return (
        f"{purpose} needs the training stack ({', '.join(missing)} not installed): "
        f"{TRAINING_INSTALL}. Without it, esmtune predicts and serves ONNX exports "
        "(`esmtune export RUN --format onnx --out DIR` where the training stack is installed)"
    )


def require_training_stack(purpose: str, modules: tuple[str, ...] = MODEL_MODULES) -> None:
    """Fail with what to install when the training stack is missing.

    Raises:
        EsmtuneError: Naming the missing modules and the extra that installs them.
    """
    missing = [name for name in modules if importlib.util.find_spec(name) is None]
    if missing:
        raise EsmtuneError(training_stack_message(purpose, missing))
