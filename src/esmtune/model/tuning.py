"""Which parameters train: LoRA adapters, head only, everything, or the last k layers.

Progressive unfreezing adds layers as epochs pass. Under several processes, DistributedDataParallel
fixes the set of synchronised parameters when it wraps the model, so there every layer that will
ever train requires grad from the start and the not-yet-unfrozen ones have their gradients
dropped before the optimizer step (see :func:`parameters_to_mask`).
"""

from __future__ import annotations

from torch import nn

from esmtune.config import FinetuneConfig, FinetuneMode

__all__ = [
    "apply_finetuning",
    "backbone_layers",
    "count_parameters",
    "parameters_to_mask",
    "set_unfrozen_layers",
    "unfrozen_layers_at",
]


def backbone_layers(backbone: nn.Module) -> list[nn.Module]:
    """The transformer layers of an ESM2 encoder, first to last (works through a peft wrapper)."""
    for name, module in backbone.named_modules():
        if name.endswith("encoder") and hasattr(module, "layer"):
            return list(module.layer)
    raise ValueError("not an ESM2 encoder: it has no encoder.layer")


def _final_norm(backbone: nn.Module) -> nn.Module | None:
    """ESM2's layer norm after the last layer; it trains together with the last layer."""
    for name, module in backbone.named_modules():
        if name.endswith("emb_layer_norm_after"):
            return module
    return None


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


def set_unfrozen_layers(backbone: nn.Module, count: int) -> None:
    """Train exactly the last ``count`` layers of the backbone (and its final norm)."""
    backbone.requires_grad_(False)
    for module in _layer_modules(backbone, count):
        module.requires_grad_(True)


def parameters_to_mask(backbone: nn.Module, count: int) -> list[nn.Parameter]:
    """Parameters that require grad but must not be updated while only ``count`` layers train."""
    allowed = {id(p) for module in _layer_modules(backbone, count) for p in module.parameters()}
    return [p for p in backbone.parameters() if p.requires_grad and id(p) not in allowed]


def apply_finetuning(backbone: nn.Module, finetune: FinetuneConfig) -> nn.Module:
    """Set which backbone parameters train; returns the backbone (a peft model for LoRA).

    Args:
        backbone: The ESM2 encoder.
        finetune: The finetune section of the config; partial mode starts with
            ``unfreeze_last_layers`` layers (the training loop adds more when progressive).

    Returns:
        The backbone to use from now on.
    """
    mode = finetune.mode
    if mode is FinetuneMode.LORA:
        from peft import LoraConfig, get_peft_model

        lora = finetune.lora
        adapter = LoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.target_modules),
            bias="none",
        )
        return get_peft_model(backbone, adapter)
    if mode is FinetuneMode.FROZEN:
        backbone.requires_grad_(False)
    elif mode is FinetuneMode.FULL:
        backbone.requires_grad_(True)
    else:
        set_unfrozen_layers(backbone, finetune.unfreeze_last_layers)
    _freeze_unused(backbone)
    return backbone


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
