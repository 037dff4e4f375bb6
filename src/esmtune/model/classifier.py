"""The sequence-level model: a :class:`~esmtune.model.encoder.ProteinEncoder`, then an MLP head.

Everything that reads a protein (backbone, window stitching, pooling, the streaming path for
long sequences) is the encoder's; the classifier adds the head and delegates the rest, so a
model of your own built on ``ProteinEncoder`` reads proteins exactly as esmtune's runs do.

Saved names are the ones runs have always had: ``backbone.…``, ``pooler.…`` and ``head.…``.
The encoder is a submodule (``encoder.backbone.…`` inside), so three state-dict hooks map the
names on save and load; runs saved before the encoder existed load as they are, and what runs
save now loads into older code.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from typing import Any

import torch
from torch import nn
from transformers import EsmConfig, PreTrainedTokenizerBase

from esmtune.config import TASK_OPTIONS, ModelConfig, TrainConfig
from esmtune.model.encoder import ProteinEncoder, build_encoder
from esmtune.model.heads import ConvHead, MLPHead, Pooler
from esmtune.model.tuning import Backbone
from esmtune.model.windows import ResidueSink

__all__ = ["ResidueClassifier", "SequenceClassifier", "build_model"]

_ENCODER = "encoder"
_DELEGATED = ("backbone", "pooler")  # set on the classifier, they are the encoder's


class SequenceClassifier(nn.Module):
    """A protein encoder with an MLP head; returns one row of logits per sequence.

    A :class:`~esmtune.model.interface.Classifier`, as the ONNX export's model is.
    """

    runtime = "torch"
    # One row of logits per sequence; ResidueClassifier gives one per residue.
    per_residue = False

    def __init__(self, encoder: ProteinEncoder, head: nn.Module) -> None:
        """Compose an encoder (pooling included, no projection) and a head on its embedding."""
        super().__init__()
        self.encoder = encoder
        self.head = head
        self.register_state_dict_post_hook(_saved_names)
        self.register_load_state_dict_pre_hook(_module_names)
        self.register_load_state_dict_post_hook(_reported_names)

    # The encoder's parts under the names the rest of esmtune (and older code) uses.

    @property
    def backbone(self) -> Backbone:
        """The encoder's ESM2 (peft's wrapper under LoRA)."""
        return self.encoder.backbone

    @backbone.setter
    def backbone(self, value: Backbone) -> None:
        self.encoder.backbone = value

    @property
    def pooler(self) -> Pooler:
        """The encoder's pooling."""
        return self.encoder.pooler

    @pooler.setter
    def pooler(self, value: Pooler) -> None:
        self.encoder.pooler = value

    def __setattr__(self, name: str, value: Any) -> None:
        # nn.Module would register a module set as ``model.backbone = ...`` beside the
        # encoder's; the property hands it to the encoder instead.
        if name in _DELEGATED:
            object.__setattr__(self, name, value)
        else:
            super().__setattr__(name, value)

    @property
    def backbone_config(self) -> EsmConfig:
        """The encoder's configuration (a LoRA wrapper hands on its base model's)."""
        return self.encoder.backbone_config

    def prepare_inference(self, device: str | torch.device | None) -> torch.device:
        """Eval mode on ``device`` (None: a GPU when there is one); the device inputs go to."""
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.to(chosen).eval()
        return chosen

    def window_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Backbone states of each input row ``(windows, tokens, hidden)``, nothing stitched."""
        return self.encoder.window_states(input_ids, attention_mask)

    def long_sequence_sink(self) -> ResidueSink:
        """Pools one long sequence's stitched states as they arrive; ``close`` gives its logits."""
        return _LogitsSink(self.encoder.long_sequence_sink(), self.head)

    def residue_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        window_owner: torch.Tensor | None = None,
        window_start: torch.Tensor | None = None,
        residue_count: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone states, one row per sequence (windows stitched), and the residue mask."""
        inputs = (input_ids, attention_mask, window_owner, window_start, residue_count)
        return self.encoder.residue_states(*inputs)

    def pooled(self, **inputs: torch.Tensor) -> torch.Tensor:
        """One embedding per sequence: the encoder's states, then its pooling."""
        return self.encoder.pool(*self.residue_states(**inputs))

    def forward(
        self, embeddings: torch.Tensor | None = None, **inputs: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(batch, num_outputs)`` from token inputs, or from cached pooled embeddings."""
        if embeddings is None:
            embeddings = self.pooled(**inputs)
        return self.head(embeddings)

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of pooling and head (they always train)."""
        return [*self.encoder.pooler.parameters(), *self.head.parameters()]


class ResidueClassifier(SequenceClassifier):
    """A protein encoder with a head on every residue state: logits per residue, no pooling.

    ``forward`` returns ``(sequences, positions, outputs)`` laid out as the encoder's stitched
    states, ``<cls> residues <eos> padding``: residue ``i`` of a sequence is position ``i + 1``.
    The head runs on every position (cheap), but ``<cls>``, ``<eos>`` and padding never reach a
    loss or a metric: the task's targets carry an ignored value there (see
    :func:`~esmtune.data.batching.pad_collate`), and the CNN head zeroes them before it convolves.
    Saved names are the sequence classifier's (``backbone.…``, ``head.…``).
    """

    per_residue = True

    def forward(
        self,
        embeddings: torch.Tensor | None = None,
        embedding_mask: torch.Tensor | None = None,
        **inputs: torch.Tensor,
    ) -> torch.Tensor:
        """Logits ``(sequences, positions, num_outputs)`` from token inputs or cached states.

        Cached residue states come laid out as the stitched states (``embeddings``), with
        ``embedding_mask`` marking the residues (see :mod:`esmtune.training.residue_cache`).

        Raises:
            ValueError: When given embeddings without their residue mask (pooled vectors).
        """
        if embeddings is not None:
            if embedding_mask is None or embeddings.dim() != 3:
                raise ValueError("a per-residue model reads residue states, not pooled vectors")
            return self.residue_logits(embeddings, embedding_mask)
        return self.residue_logits(*self.residue_states(**inputs))

    def residue_logits(self, states: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        """The head on states ``(sequences, positions, hidden)``; the mask marks residues."""
        weight = next(self.head.parameters())
        states = states.to(weight.dtype)
        if isinstance(self.head, ConvHead):
            return self.head(states, residue_mask)
        return self.head(states)

    @property
    def residue_reach(self) -> int | None:
        """Residues either side whose states a residue's logits read through the head.

        0 for the MLP head (each residue alone), the convolutions' half kernels for the CNN;
        None for a head of another kind, which may read the whole chain. Windows that cover
        none of these residues cannot move that residue's output (explain skips them).
        """
        if isinstance(self.head, ConvHead):
            return self.head.reach
        if isinstance(self.head, MLPHead):
            return 0
        return None

    def long_sequence_sink(self) -> ResidueSink:
        """Keeps one long sequence's stitched states; ``close`` gives ``(residues, outputs)``."""
        return _ResidueLogitsSink(self.residue_logits)

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of the head (pooling is not used per residue)."""
        return list(self.head.parameters())


class _ResidueLogitsSink:
    """A long sequence's residue states, kept whole (the output is per residue), then the head."""

    def __init__(self, logits: Any) -> None:
        self.logits = logits
        self.pieces: list[torch.Tensor] = []

    def add_residues(self, states: torch.Tensor) -> None:
        self.pieces.append(states)

    def close(self, cls_state: torch.Tensor) -> torch.Tensor:
        states = torch.cat(self.pieces).unsqueeze(0)
        mask = torch.ones(states.shape[:2], dtype=torch.bool, device=states.device)
        return self.logits(states, mask)[0]


class _LogitsSink:
    """The encoder's streaming pooling, then the head: logits ``(1, outputs)`` of one sequence."""

    def __init__(self, pooled: ResidueSink, head: nn.Module) -> None:
        self.pooled = pooled
        self.head = head

    def add_residues(self, states: torch.Tensor) -> None:
        self.pooled.add_residues(states)

    def close(self, cls_state: torch.Tensor) -> torch.Tensor:
        pooled = self.pooled.close(cls_state).unsqueeze(0)
        weight = next(self.head.parameters())
        return self.head(pooled.to(weight.dtype))


# --- saved names: ``backbone.…`` outside, ``encoder.backbone.…`` inside ----------------------


def _saved_names(
    module: nn.Module, state_dict: dict[str, Any], prefix: str, local_metadata: dict
) -> None:
    """state_dict post-hook: drop the ``encoder.`` level from names, keeping their order."""
    nested = f"{prefix}{_ENCODER}."
    for key in [key for key in state_dict if key.startswith(prefix)]:
        value = state_dict.pop(key)
        flat = prefix + key.removeprefix(nested) if key.startswith(nested) else key
        state_dict[flat] = value
    metadata: OrderedDict[str, Any] | None = getattr(state_dict, "_metadata", None)
    if metadata is not None:  # versions per module, keyed by module name
        metadata.pop(f"{prefix}{_ENCODER}", None)
        for key in [key for key in metadata if key.startswith(nested)]:
            metadata[prefix + key.removeprefix(nested)] = metadata.pop(key)


def _module_names(module: nn.Module, state_dict: dict[str, Any], prefix: str, *unused: Any) -> None:
    """load_state_dict pre-hook: saved ``backbone.…`` / ``pooler.…`` go to the encoder."""
    encoder = module.get_submodule(_ENCODER)
    parts = tuple(f"{prefix}{name}." for name, _ in encoder.named_children())
    for key in [key for key in state_dict if key.startswith(parts)]:
        state_dict[f"{prefix}{_ENCODER}.{key.removeprefix(prefix)}"] = state_dict.pop(key)
    metadata: dict[str, Any] | None = getattr(state_dict, "_metadata", None)
    if metadata is not None:
        names = tuple(part.rstrip(".") for part in parts)
        for key in [key for key in metadata if key.startswith(names)]:
            metadata.setdefault(f"{prefix}{_ENCODER}.{key.removeprefix(prefix)}", metadata[key])


# ``encoder.`` before one of the encoder's parts, wherever the classifier sits (``module.``
# under DistributedDataParallel); a post-hook is not told its prefix.
_NESTED_NAME = re.compile(rf"(^|\.){_ENCODER}\.(?=(backbone|pooler|projection)\.)")


def _reported_names(module: nn.Module, incompatible: Any) -> None:
    """load_state_dict post-hook: missing or unexpected names as they are saved.

    ``incompatible`` is torch's ``_IncompatibleKeys``, whose lists may be changed in place.
    """
    for names in (incompatible.missing_keys, incompatible.unexpected_keys):
        names[:] = [_NESTED_NAME.sub(r"\1", name, count=1) for name in names]


def _head(model: ModelConfig, hidden: int, num_outputs: int) -> nn.Module:
    if model.head == "esm":  # EsmClassificationHead's layers, for hf exports
        return MLPHead(hidden, [hidden], num_outputs, model.head_dropout, nn.Tanh)
    if model.head == "cnn":  # per residue only (the config's rule)
        return ConvHead(
            hidden, model.head_channels, num_outputs, model.head_kernel_size, model.head_dropout
        )
    return MLPHead(hidden, model.head_hidden, num_outputs, model.head_dropout)


def build_model(
    config: TrainConfig, num_outputs: int
) -> tuple[SequenceClassifier, PreTrainedTokenizerBase]:
    """Build the encoder (backbone, what trains, pooling), then the head on it.

    Args:
        config: The full configuration.
        num_outputs: Size of the head's output (number of classes).

    Returns:
        The model and its tokenizer: a :class:`ResidueClassifier` for per-residue tasks.
    """
    encoder = build_encoder(config.model, config.finetune, max_length=config.data.max_length)
    head = _head(config.model, encoder.hidden_size, num_outputs)
    kind = ResidueClassifier if TASK_OPTIONS[config.task].per_residue else SequenceClassifier
    return kind(encoder, head), encoder.tokenizer
