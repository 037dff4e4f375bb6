"""What FSDP makes of esmtune's model, run under ``accelerate launch`` with the FSDP config.

Builds the LoRA model as training does (with ``model.gradient_checkpointing: true``, which FSDP's
own activation checkpointing must replace), prepares it, takes one step, and prints as JSON
(main process) how each ``EsmLayer`` was wrapped and sharded and which parameters got gradients.
Usage: ``accelerate launch --config_file configs/accelerate_fsdp.yaml tests/fsdp_probe.py MODEL``.
"""

from __future__ import annotations

import json
import sys

import torch
from accelerate import Accelerator
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import CheckpointWrapper
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Shard
from transformers.models.esm.modeling_esm import EsmLayer

from esmtune.config import load_config
from esmtune.model.classifier import build_model
from esmtune.model.tuning import backbone_layers
from esmtune.training.sharding import check_sharding, shard_on_cpus, single_checkpointing


def main(model_dir: str) -> None:
    settings = ["finetune.mode=lora", "model.gradient_checkpointing=true", "model.head_hidden=[8]"]
    config = load_config(None, [f"model.name={model_dir}", *settings])
    accelerator = Accelerator(cpu=True)
    shard_on_cpus(accelerator)
    check_sharding(accelerator)
    torch.manual_seed(0)
    model, tokenizer = build_model(config, num_outputs=3)
    note = single_checkpointing(accelerator, model)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model, optimizer = accelerator.prepare(model, optimizer)
    inputs = tokenizer(["MKVLA", "MDEDEEDK"], padding=True, return_tensors="pt")
    accelerator.backward(model(**inputs).sum())
    layers = backbone_layers(model.backbone)
    inner = [layer._checkpoint_wrapped_module for layer in layers]
    named = list(model.named_parameters())
    report = {
        "distributed_type": str(accelerator.distributed_type),
        "note": note,
        "hf_checkpointing": model.backbone.get_base_model().is_activation_checkpointing,
        "layers": len(layers),
        "checkpoint_wrapped": all(isinstance(layer, CheckpointWrapper) for layer in layers),
        "esm_layers_sharded": all(isinstance(m, EsmLayer | FSDPModule) for m in inner)
        and all(isinstance(m, FSDPModule) for m in inner),
        "sharded_on_dim_0": all(
            isinstance(p, DTensor) and p.placements == (Shard(0),) for _, p in named
        ),
        "local_share": sum(p.to_local().numel() for _, p in named)
        / sum(p.numel() for _, p in named),
        "trained_with_grad": all(p.grad is not None for _, p in named if p.requires_grad),
        "frozen_without_grad": all(p.grad is None for _, p in named if not p.requires_grad),
        "frozen": sum(not p.requires_grad for _, p in named),
        "lora": sum("lora_" in n for n, _ in named),
    }
    if accelerator.is_main_process:
        print("PROBE " + json.dumps(report))


if __name__ == "__main__":
    main(sys.argv[1])
