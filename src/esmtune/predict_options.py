"""How a :class:`~esmtune.predict.Predictor` runs its model: one options object for every loader.

``Predictor(loaded)``, ``from_run``, ``from_export`` and ``load`` all take a
:class:`PredictOptions` and/or its fields as keywords (``device="cpu"``), checked in one place.
Importable without torch, so the command line and the server can describe and check the options
before any model library loads.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from esmtune.config import LongSequences
from esmtune.errors import EsmtuneError
from esmtune.export.names import AUTO, RUNTIMES

__all__ = ["InferenceOptions", "PredictOptions"]


class InferenceOptions(BaseModel):
    """What runs the model, where, and in what batches: the options predict and serve share.

    :class:`PredictOptions` and :class:`esmtune.serve.ServeSettings` both extend it, so each of
    these options (its type, default, checks and ``--help``) is written once.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    runtime: str = Field(
        AUTO,
        description="what runs the model [auto]: auto = torch for a run or an hf export, and for "
        "an onnx export the graph its export check found fastest among those that keep the "
        "run's labels (export.json); or torch (runs, hf exports), onnx (fp32 graph), onnx-int8. "
        "The onnx graphs run on the CPU unless the device is cuda (onnxruntime-gpu; inputs and "
        "outputs pass through host memory)",
    )
    device: str | None = Field(
        None, description="cpu, cuda, cuda:1 ... [a GPU when there is one, if torch runs the model]"
    )
    max_tokens: int | None = Field(
        None,
        gt=0,
        description="token budget of each forward pass, inputs x longest input [1,024 on a CPU, "
        "where small batches run fastest; 16,384 on a GPU]",
    )

    @field_validator("runtime")
    @classmethod
    def _known_runtime(cls, runtime: str) -> str:
        if runtime not in (AUTO, *RUNTIMES):
            raise ValueError(f"choose {AUTO}, {', '.join(RUNTIMES)}")
        return runtime

    @field_validator("device", mode="before")
    @classmethod
    def _device_name(cls, device: object) -> object:
        """A ``torch.device`` by its name (``cuda:1``), so the options need no torch."""
        return device if device is None or isinstance(device, str) else str(device)


class PredictOptions(InferenceOptions):
    """How predictions are made; each default suits most uses."""

    long_sequences: LongSequences = Field(
        LongSequences.WINDOW,
        description="sequences longer than one model input (max_length residues) [window]: "
        "window (overlapping windows: every residue is seen, with any runtime), truncate (keep "
        "the first residues) or centre (keep the central residues)",
    )
    embed_with: str | None = Field(
        None,
        description="a run trained on precomputed embeddings (data.embeddings): the ESM2 model "
        "(hub id, folder or run) that embeds new sequences for its head, mean-pooled; needed "
        "only when the embedding file did not record it (esmtune embed records it) [recorded]",
    )
    precision: Literal["fp32", "bf16", "auto"] = Field(
        "fp32",
        description="torch only [fp32]: bf16 autocasts (faster and leaner where the hardware runs "
        "bf16 natively: recent GPUs, CPUs with AVX512-BF16 or AMX; slower elsewhere); auto = "
        "bf16 exactly there; see the README's Performance section",
    )

    @classmethod
    def merged(cls, options: PredictOptions | None, overrides: Mapping[str, Any]) -> PredictOptions:
        """``options`` (None: the defaults) with some fields replaced, all of it checked.

        Raises:
            EsmtuneError: Naming every bad option; an unknown name with the closest known one.
        """
        given = options.model_dump(exclude_unset=True) if options is not None else {}
        try:
            return cls.model_validate({**given, **overrides})
        except ValidationError as error:
            raise EsmtuneError(_problems(error)) from None


def _problems(error: ValidationError) -> str:
    """One line per bad option, as the Python keyword a caller gave."""
    lines = []
    for problem in error.errors():
        name = str(problem["loc"][0])
        if problem["type"] == "extra_forbidden":
            close = difflib.get_close_matches(name, list(PredictOptions.model_fields), n=1)
            hint = close[0] if close else " or ".join(PredictOptions.model_fields)
            known = f"did you mean {hint}?"
            lines.append(f"{name}: not a predict option; {known}")
        else:
            message = problem["msg"].removeprefix("Value error, ")
            lines.append(f"{name}={problem['input']!r}: {message}")
    return "invalid predict options:\n  - " + "\n  - ".join(lines)
