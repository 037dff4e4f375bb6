"""Training the big models: FSDP (and what esmtune cannot do under DeepSpeed) set up for the loop.

``configs/accelerate_fsdp.yaml`` asks accelerate for FSDP2: every ``EsmLayer`` its own shard unit,
its activations recomputed in backward. The loop itself does not change; three things around it
do, and they are here:

- accelerate only shards on accelerators: on CPU processes (gloo) it quietly falls back to
  data-parallel copies of the whole model. :func:`shard_on_cpus` turns the FSDP plugin the
  launcher asked for back on, which is how the two-process tests run FSDP for real.
- FSDP2 only: FSDP1 flattens parameters, so neither the per-parameter checkpoints
  (:mod:`esmtune.checkpoint.sharded`) nor LoRA's and partial mode's mixed ``requires_grad`` fit;
  PyTorch deprecates it. DeepSpeed is refused: its optimizer state can only be saved by its own
  checkpoints, which are pickles, and esmtune neither writes nor reads pickles.
- FSDP's activation checkpointing already recomputes each layer, so the model's own gradient
  checkpointing (``model.gradient_checkpointing``) is switched off rather than run inside it.
"""

from __future__ import annotations

import os

from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch import nn
from transformers import EsmModel

from esmtune.errors import ConfigError

__all__ = ["check_sharding", "shard_on_cpus", "single_checkpointing"]


def shard_on_cpus(accelerator: Accelerator) -> None:
    """Shard with FSDP on CPU processes when the launcher asked for it (accelerate would not).

    ``accelerate launch`` with an FSDP config sets ``ACCELERATE_USE_FSDP`` and the plugin's
    ``FSDP_*`` variables; on GPUs accelerate builds the plugin from them, on CPUs it ignores them
    and the processes would train data-parallel. Same plugin, same variables, built here.
    """
    asked = os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    if not asked or accelerator.distributed_type is not DistributedType.MULTI_CPU:
        return
    plugin = FullyShardedDataParallelPlugin()
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    state = accelerator.state
    state.fsdp_plugin = plugin
    state.distributed_type = DistributedType.FSDP
    # As accelerate does after choosing FSDP: every later AcceleratorState() copies this back.
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def check_sharding(accelerator: Accelerator) -> None:
    """Refuse the distributed modes the loop cannot checkpoint, before any data is read.

    Raises:
        ConfigError: Under FSDP1 or DeepSpeed, with the config to use instead.
    """
    fix = (
        "Launch with configs/accelerate_fsdp.yaml (FSDP2: `make train "
        "ACCELERATE_CONFIG=configs/accelerate_fsdp.yaml`), which shards weights, gradients and "
        "optimizer state as ZeRO-3 does"
    )
    if accelerator.distributed_type is DistributedType.DEEPSPEED:
        raise ConfigError(
            "esmtune does not train under DeepSpeed: its optimizer state can only be saved in "
            "DeepSpeed's own checkpoints, which are pickles, and esmtune never writes or reads "
            f"pickles (unpickling a file can run any code it names). {fix}."
        )
    if accelerator.distributed_type is DistributedType.FSDP and not accelerator.is_fsdp2:
        raise ConfigError(
            "esmtune shards with FSDP2 only (fsdp_version: 2 in the accelerate config): FSDP1 "
            "flattens parameters, which breaks LoRA's and partial mode's frozen weights and "
            f"esmtune's per-parameter checkpoints. {fix}."
        )


def single_checkpointing(accelerator: Accelerator, model: nn.Module) -> str | None:
    """Leave activation checkpointing to FSDP when both it and the model would recompute.

    Nested, each layer would run three times per step instead of two, for no memory saved.

    Returns:
        A line for the log when the model's own checkpointing was switched off, else None.
    """
    if accelerator.distributed_type is not DistributedType.FSDP:
        return None
    if not accelerator.state.fsdp_plugin.activation_checkpointing:
        return None
    esm_models = [m for m in model.modules() if isinstance(m, EsmModel)]
    models = [m for m in esm_models if m.is_activation_checkpointing]
    for esm in models:
        esm.activation_checkpointing_disable()
    if not models:
        return None
    return (
        "model.gradient_checkpointing is left to FSDP: its activation checkpointing "
        "(fsdp_activation_checkpointing) recomputes each layer already"
    )
