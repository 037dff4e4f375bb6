"""Which parameters train: LoRA adapters, head only, everything, or the last k layers.

Progressive unfreezing adds layers as epochs pass (:class:`ProgressiveUnfreezing`). Under several
processes, DistributedDataParallel fixes the set of synchronised parameters when it wraps the
model, so there every layer that will ever train requires grad from the start and the
not-yet-unfrozen ones have their gradients dropped before the optimizer step.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeAlias

from torch import nn
from transformers import EsmModel

from esmtune.config import FinetuneConfig, FinetuneMode

if TYPE_CHECKING:  # peft is imported only when a run uses LoRA
    from peft import PeftModel

__all__ = [
    "Backbone",
    "ProgressiveUnfreezing",
    "apply_finetuning",
    "backbone_blocks",
    "backbone_layers",
    "count_parameters",
    "merge_lora",
    "unfreeze",
    "unfrozen_layers_at",
]

# The encoder as a model holds it: a plain EsmModel, or (LoRA) peft's wrapper around one.
Backbone: TypeAlias = "EsmModel | PeftModel"


def backbone_layers(backbone: nn.Module) -> list[nn.Module]:
    """The transformer layers of an ESM2 encoder, first to last (works through a peft wrapper)."""
    for name, module in backbone.named_modules():
        if name.endswith("encoder") and hasattr(module, "layer"):
            return list(module.layer)
    raise ValueError("not an ESM2 encoder: it has no encoder.layer")


def _named_part(backbone: nn.Module, suffix: str) -> nn.Module | None:
    """The module whose dotted name ends in ``suffix`` (through a peft wrapper), if any."""
    for name, module in backbone.named_modules():
        if name == suffix or name.endswith(f".{suffix}"):
            return module
    return None


def _final_norm(backbone: nn.Module) -> nn.Module | None:
    """ESM2's layer norm after the last layer; it trains together with the last layer."""
    return _named_part(backbone, "emb_layer_norm_after")


def backbone_blocks(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The encoder's parts in reading order: embeddings, each layer, final norm, contact head.

    What :meth:`~esmtune.model.encoder.ProteinEncoder.trainable_report` counts; LoRA adapters
    sit inside the layers they adapt. ESM's contact head never runs here and never trains.
    """
    parts = [("embeddings", _named_part(backbone, "embeddings"))]
    parts += [(f"layer {index}", layer) for index, layer in enumerate(backbone_layers(backbone))]
    parts += [
        ("final norm", _final_norm(backbone)),
        ("contact head", _named_part(backbone, "contact_head")),
    ]
    return [(name, module) for name, module in parts if module is not None]


def unfreeze(backbone: nn.Module, last_layers: int | None, embeddings: bool) -> None:
    """Let more of the backbone train, leaving what already trains as it is.

    Args:
        backbone: The ESM2 encoder (or its peft wrapper).
        last_layers: That many final layers (with the final norm) train; None: every layer.
        embeddings: The token embeddings train too.
    """
    layers = backbone_layers(backbone)
    count = len(layers) if last_layers is None else min(last_layers, len(layers))
    for module in _layer_modules(backbone, count):
        module.requires_grad_(True)
    embedding = _named_part(backbone, "embeddings")
    if embeddings and embedding is not None:
        embedding.requires_grad_(True)


def unfrozen_layers_at(finetune: FinetuneConfig, epoch: int, num_layers: int) -> int:
    """How many final layers train in ``epoch`` (0-based) in partial mode."""
    count = finetune.unfreeze_last_layers
    if finetune.unfreeze_every_epochs:
        count += finetune.unfreeze_step * (epoch // finetune.unfreeze_every_epochs)
    return min(count, num_layers)


def _layer_modules(backbone: nn.Module, count: int) -> list[nn.Module]:
    layers = backbone_layers(backbone)
    chosen = layers[len(layers) - count :] if count else []
    norm = _final_norm(backbone)
    return [*chosen, norm] if count and norm is not None else chosen


def _set_unfrozen_layers(backbone: nn.Module, count: int) -> None:
    """Train exactly the last ``count`` layers of the backbone (and its final norm)."""
    backbone.requires_grad_(False)
    for module in _layer_modules(backbone, count):
        module.requires_grad_(True)


def _parameters_to_mask(backbone: nn.Module, count: int) -> list[nn.Parameter]:
    """Parameters that require grad but must not be updated while only ``count`` layers train."""
    allowed = {id(p) for module in _layer_modules(backbone, count) for p in module.parameters()}
    return [p for p in backbone.parameters() if p.requires_grad and id(p) not in allowed]


class ProgressiveUnfreezing:
    """Which backbone layers train in each epoch of partial mode, applied to the model.

    One process changes ``requires_grad`` every epoch. Several processes cannot: DDP fixed its
    parameters when it wrapped the model, so there every layer that will ever train keeps
    requiring grad and :meth:`mask_gradients` drops the gradients of those not unfrozen yet.
    In the other modes the trainable parameters never change and both methods do nothing, so the
    loop calls them whatever the mode.

    Constructing it makes every layer that will ever train require grad, so build it before the
    optimizer: the optimizer then holds all of them from the start, and its state dict (which a
    resume loads) keeps one shape for the whole run.
    """

    def __init__(
        self, backbone: nn.Module, finetune: FinetuneConfig, epochs: int, processes: int
    ) -> None:
        """Unfreeze what the last epoch will train (partial mode), ready for the optimizer.

        Args:
            backbone: The ESM2 encoder inside the model (not the DDP wrapper).
            finetune: The finetune section of the config.
            epochs: How many epochs the run has.
            processes: How many processes train (more than one: gradients are masked).
        """
        self._backbone = backbone
        self._finetune = finetune
        self._masks = processes > 1
        self._masked: list[nn.Parameter] = []
        self._active = finetune.mode is FinetuneMode.PARTIAL
        self.num_layers = len(backbone_layers(backbone))
        if self._active:
            _set_unfrozen_layers(backbone, self.layers_at(epochs - 1))

    def layers_at(self, epoch: int) -> int:
        """How many final layers train in ``epoch`` (0-based)."""
        return unfrozen_layers_at(self._finetune, epoch, self.num_layers)

    def for_epoch(self, epoch: int) -> str | None:
        """Let exactly this epoch's layers train.

        Returns:
            A line for the log when layers are added over time, else None.
        """
        if not self._active:
            return None
        count = self.layers_at(epoch)
        if self._masks:
            self._masked = _parameters_to_mask(self._backbone, count)
        else:
            _set_unfrozen_layers(self._backbone, count)
        if not self._finetune.unfreeze_every_epochs:
            return None
        return f"epoch {epoch + 1}: the last {count} of {self.num_layers} layers train"

    def mask_gradients(self) -> None:
        """Drop the gradients of layers not unfrozen yet (several processes), before the step."""
        for parameter in self._masked:
            parameter.grad = None


def apply_finetuning(backbone: Backbone, finetune: FinetuneConfig) -> Backbone:
    """Set which backbone parameters train; returns the backbone (a peft model for LoRA).

    Args:
        backbone: The ESM2 encoder, or one that already carries LoRA adapters (a run's, kept
            by :meth:`~esmtune.model.encoder.ProteinEncoder.from_pretrained`): in lora mode
            those adapters train on, and no second set is added.
        finetune: The finetune section of the config; partial mode starts with
            ``unfreeze_last_layers`` layers (the training loop adds more when progressive).

    Returns:
        The backbone to use from now on.
    """
    mode = finetune.mode
    if mode is FinetuneMode.LORA and not isinstance(backbone, EsmModel):
        for name, parameter in backbone.named_parameters():
            parameter.requires_grad_("lora_" in name)  # peft's prefix for adapter weights
        return backbone
    if mode is FinetuneMode.LORA:
        from peft import LoraConfig, PeftModel, get_peft_model

        lora = finetune.lora
        adapter = LoraConfig(
            r=lora.r,
            # peft annotates lora_alpha as int, but only divides it (scale = alpha / r): a float
            # such as 8.5 works, and the config has always accepted one.
            lora_alpha=lora.alpha,  # type: ignore[arg-type]
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
        )
        wrapped = get_peft_model(backbone, adapter)
        if not isinstance(wrapped, PeftModel):  # only mixed=True gives a PeftMixedModel
            raise TypeError(f"get_peft_model returned a {type(wrapped).__name__}, not a PeftModel")
        return wrapped
    if mode is FinetuneMode.FROZEN:
        backbone.requires_grad_(False)
    elif mode is FinetuneMode.FULL:
        backbone.requires_grad_(True)
    else:
        _set_unfrozen_layers(backbone, finetune.unfreeze_last_layers)
    _freeze_unused(backbone)
    return backbone


def merge_lora(backbone: Backbone) -> EsmModel:
    """The plain encoder: LoRA adapters merged into its weights, or the backbone as it is.

    Merging changes the wrapped module in place; copy the model first to keep the adapters.
    """
    if isinstance(backbone, EsmModel):
        return backbone
    merged: EsmModel = backbone.merge_and_unload()
    return merged


def _freeze_unused(backbone: nn.Module) -> None:
    """ESM's contact head never runs in sequence prediction; trainable, it would break DDP."""
    for name, module in backbone.named_modules():
        if name.endswith("contact_head"):
            module.requires_grad_(False)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total
