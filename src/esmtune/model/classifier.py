"""The sequence-level model: ESM2 encoder → pooling → MLP head."""

from __future__ import annotations

import torch
from torch import nn
from transformers import EsmConfig, PreTrainedTokenizerBase

from esmtune.config import FinetuneMode, TrainConfig
from esmtune.model.backbone import load_backbone
from esmtune.model.heads import MLPHead, Pooler, StreamingPooler
from esmtune.model.tuning import Backbone, apply_finetuning
from esmtune.model.windows import ResidueSink, stitch_windows

__all__ = ["SequenceClassifier", "build_model"]


class SequenceClassifier(nn.Module):
    """ESM2 with a pooled MLP head; returns one row of logits per sequence.

    A :class:`~esmtune.model.interface.Classifier`, as the ONNX export's model is.
    """

    runtime = "torch"
    special_token_ids: torch.Tensor  # a buffer: <cls>, <eos> and padding, never pooled

    def __init__(
        self,
        backbone: Backbone,
        num_outputs: int,
        config: TrainConfig,
        special_token_ids: tuple[int, ...],
    ) -> None:
        super().__init__()
        hidden = backbone.config.hidden_size
        self.backbone = backbone
        self.pooler = Pooler(config.model.pooling, hidden)
        if config.model.head == "esm":  # EsmClassificationHead's layers, for hf exports
            self.head = MLPHead(hidden, [hidden], num_outputs, config.model.head_dropout, nn.Tanh)
        else:
            self.head = MLPHead(
                hidden, config.model.head_hidden, num_outputs, config.model.head_dropout
            )
        self.register_buffer(
            "special_token_ids", torch.tensor(special_token_ids, dtype=torch.long), persistent=False
        )

    @property
    def backbone_config(self) -> EsmConfig:
        """The encoder's configuration (a LoRA wrapper hands on its base model's)."""
        config: EsmConfig = self.backbone.config
        return config

    def prepare_inference(self, device: str | torch.device | None) -> torch.device:
        """Eval mode on ``device`` (None: a GPU when there is one); the device inputs go to."""
        chosen = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.to(chosen).eval()
        return chosen

    def window_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Backbone states of each input row ``(windows, tokens, hidden)``, nothing stitched."""
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def long_sequence_sink(self) -> ResidueSink:
        """Pools one long sequence's stitched states as they arrive; ``close`` gives its logits."""
        return _LogitsSink(StreamingPooler(self.pooler), self.head)

    def residue_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        window_owner: torch.Tensor | None = None,
        window_start: torch.Tensor | None = None,
        residue_count: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone states, one row per sequence (windows stitched), and the residue mask."""
        hidden = self.window_states(input_ids, attention_mask)
        if window_owner is None:
            # A comparison rather than torch.isin, which the ONNX exporter cannot translate.
            special = (input_ids.unsqueeze(-1) == self.special_token_ids).any(dim=-1)
            residues = attention_mask.bool() & ~special
            return hidden, residues
        if window_start is None or residue_count is None:
            raise ValueError("window_owner needs window_start and residue_count (see pad_collate)")
        return stitch_windows(hidden, attention_mask, window_owner, window_start, residue_count)

    def pooled(self, **inputs: torch.Tensor) -> torch.Tensor:
        """One embedding per sequence: backbone, then pooling."""
        return self.pooler(*self.residue_states(**inputs))

    def forward(
        self, embeddings: torch.Tensor | None = None, **inputs: torch.Tensor
    ) -> torch.Tensor:
        """Logits ``(batch, num_outputs)`` from token inputs, or from cached pooled embeddings."""
        if embeddings is None:
            embeddings = self.pooled(**inputs)
        return self.head(embeddings)

    def head_parameters(self) -> list[nn.Parameter]:
        """Parameters of pooling and head (they always train)."""
        return [*self.pooler.parameters(), *self.head.parameters()]


class _LogitsSink:
    """Streaming pooling, then the head: the logits ``(1, outputs)`` of one long sequence."""

    def __init__(self, pooler: StreamingPooler, head: nn.Module) -> None:
        self.pooler = pooler
        self.head = head

    def add_residues(self, states: torch.Tensor) -> None:
        self.pooler.add_residues(states)

    def close(self, cls_state: torch.Tensor) -> torch.Tensor:
        pooled = self.pooler.close(cls_state).unsqueeze(0)
        weight = next(self.head.parameters())
        return self.head(pooled.to(weight.dtype))


def build_model(
    config: TrainConfig, num_outputs: int
) -> tuple[SequenceClassifier, PreTrainedTokenizerBase]:
    """Load the backbone, set what trains, and add pooling and head.

    Args:
        config: The full configuration.
        num_outputs: Size of the head's output (number of classes).

    Returns:
        The model and its tokenizer.
    """
    encoder, tokenizer = load_backbone(config.model)
    if config.model.gradient_checkpointing:
        encoder.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}
        )
        if config.finetune.mode is FinetuneMode.LORA:
            encoder.enable_input_require_grads()
    backbone = apply_finetuning(encoder, config.finetune)
    special = tuple(
        token_id
        for token_id in (tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        if token_id is not None
    )
    model = SequenceClassifier(backbone, num_outputs, config, special)
    return model, tokenizer
