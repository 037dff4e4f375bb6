"""What predicting asks of a model: :class:`RuntimeModel`, and the torch :class:`Classifier`.

Every model a :class:`~esmtune.model.loaded.LoadedRun` holds says what runs it
(:class:`RuntimeModel`). The torch :class:`~esmtune.model.classifier.SequenceClassifier` (runs
and ``hf`` exports) is a :class:`Classifier`, which torch's batching, windows and streaming
(:mod:`esmtune.inference`) are written against; an ONNX export's
:class:`~esmtune.export.onnx_runtime.OnnxClassifier` runs the same steps in numpy instead, so
that it needs no torch. torch is imported here for the annotations only.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    import torch

    from esmtune.model.windows import ResidueSink

__all__ = ["Classifier", "RuntimeModel"]


class RuntimeModel(Protocol):
    """Any trained model predict can hold: it names its runtime and gets ready to predict."""

    @property
    def runtime(self) -> str:
        """What runs the model (``torch``, ``onnx``, ``onnx-int8``): reported by serve's /info."""
        ...

    def prepare_inference(self, device: str | torch.device | None) -> torch.device | str:
        """Get ready to predict on ``device`` (None: the runtime's own choice).

        Returns:
            The device the inputs must be on.
        """
        ...


class Classifier(RuntimeModel, Protocol):
    """A torch sequence classifier: token inputs in, one row of logits per sequence out."""

    def __call__(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        window_owner: torch.Tensor | None = None,
        window_start: torch.Tensor | None = None,
        residue_count: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits ``(sequences, outputs)`` of a padded batch of windows.

        Without the window inputs each row is one sequence; with them (see
        :func:`esmtune.data.batching.pad_collate`) the windows of each sequence are stitched
        before pooling.
        """
        ...

    def window_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Backbone states of each input row ``(rows, tokens, hidden)``, nothing stitched.

        With :meth:`long_sequence_sink`, what reads a sequence too long for one pass a few
        windows at a time (:func:`esmtune.inference.stream_windows`).
        """
        ...

    def long_sequence_sink(self) -> ResidueSink:
        """Pools one long sequence's stitched states as they arrive; ``close`` gives its logits."""
        ...

    def prepare_inference(self, device: str | torch.device | None) -> torch.device:
        """Get ready to predict on ``device`` (None: the runtime's own choice).

        Returns:
            The torch device the inputs must be on.
        """
        ...
