"""Will a training configuration fit? Per-device memory from the architecture alone.

``esmtune plan`` answers before a run starts, for any ESM2 size, without weights: the shape comes
from the published table (:mod:`esmtune.architectures`) or a local folder's config.json. What is
counted, per device, in bytes:

- weights: every parameter in fp32. accelerate's mixed precision is autocast, which keeps fp32
  parameters (there is no separate fp32 master copy, and no bf16 copy at rest).
- gradients and optimizer state: fp32 gradients and AdamW's two fp32 moments, for the trainable
  parameters only (LoRA adapters, the last k layers, or everything; the head always).
- autocast copies: under bf16/fp16, the half-precision casts of trainable linear weights that
  autocast caches for the whole forward and backward.
- DDP buckets: with several GPUs, DistributedDataParallel's communication buckets hold a second
  copy of the gradients. FSDP (full sharding) instead divides weights, gradients and optimizer
  state by the number of GPUs and gathers two layers' parameters at a time (one computing, one
  prefetched), in half precision under bf16/fp16, which leaves autocast nothing to cache.
- activations: what autograd saves for backward, per ESM2 layer (transformers' modeling_esm),
  for a batch filled to the token budget ``training.max_tokens`` with sequences of the longest
  length ``L = min(data.max_length + 2, max_tokens)`` (the worst batch): per token, the fp32
  residual stream into each of the two layer norms, the normalised inputs of trainable linear
  layers, query, key (after the rotary embedding) and value, the attention output, and four
  feed-forward-width tensors of ESM's erf GELU (erf's input, x/2, 1+erf, the product). Eager
  attention also saves the softmax of heads x L x L scores per sequence (in fp32, and a half
  copy under autocast); sdpa's fused kernels save no L x L tensor. A frozen linear layer saves
  no input, but a LoRA adapter saves its (dropped-out) input and dropout mask.
- gradient checkpointing: each layer keeps only its input, and backward recomputes one layer
  at a time, so one layer's activations come back.
- workspace: the temporaries of one layer's backward (gradients of its activations), about one
  layer's activations again; with a frozen backbone, which keeps nothing for backward, the
  temporaries of one layer's forward.

Validated against peak memory of real CPU training steps on small ESM2 shapes
(``tests/test_plan.py``); a GPU adds its CUDA context and allocator slack (``GPU_RESERVE``).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import ConfigDict, Field

from esmtune.architectures import ESM2_VOCAB_SIZE, known_architecture
from esmtune.config import FinetuneMode, Pooling, TrainConfig
from esmtune.errors import EsmtuneError
from esmtune.options import CheckedOptions

__all__ = [
    "GIB",
    "GPU_RESERVE",
    "MemoryPlan",
    "ModelShape",
    "PlanOptions",
    "Setting",
    "estimate",
    "format_plan",
    "model_shape",
    "plan",
    "setting_from_config",
]

GIB = 2**30
# The CUDA context (~0.5 GiB with cuBLAS and cuDNN loaded) and the caching allocator's
# fragmentation, which the CPU measurement cannot see: an allowance, not a derivation.
GPU_RESERVE = int(1.0 * GIB)
# The linear layers of an ESM2 layer (their dotted names, as peft matches target_modules), and
# which activation each reads: "normed" the attention layer norm's output (shared by query, key
# and value), "context" the attention output, "normed_ffn" the second layer norm's output,
# "gelu" the feed-forward activation.
_LINEARS = {
    "attention.self.query": "normed",
    "attention.self.key": "normed",
    "attention.self.value": "normed",
    "attention.output.dense": "context",
    "intermediate.dense": "normed_ffn",
    "output.dense": "gelu",
}
Strategy = Literal["ddp", "fsdp"]
Precision = Literal["no", "bf16", "fp16"]
Attention = Literal["sdpa", "eager"]


class PlanOptions(CheckedOptions):
    """The hardware a configuration is planned for; the config file describes the run."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    command: ClassVar[str] = "plan"

    gpus: int = Field(1, ge=1, description="GPUs the run trains on (one process each)")
    gpu_memory: float = Field(
        80.0,
        gt=0,
        description="memory of each GPU in GiB, as nvidia-smi reports it (an A100 sold as "
        "80 GB holds 80 GiB)",
    )
    strategy: Strategy = Field(
        "ddp",
        description="ddp: every GPU holds the whole model (accelerate's default); fsdp: weights, "
        "gradients and optimizer state sharded over --gpus (full sharding, per-layer wrapping)",
    )
    json_output: bool = Field(
        False, description="print the estimate, alternatives and verdict as JSON (for scripts)"
    )


@dataclass(frozen=True)
class ModelShape:
    """What memory depends on in an ESM2 encoder."""

    name: str
    layers: int
    hidden: int
    heads: int
    intermediate: int
    vocab: int = ESM2_VOCAB_SIZE

    @property
    def layer_parameters(self) -> int:
        """Parameters of one layer: four attention projections, two norms, the feed-forward."""
        hidden, wide = self.hidden, self.intermediate
        return 4 * (hidden * hidden + hidden) + 4 * hidden + 2 * hidden * wide + wide + hidden

    @property
    def parameters(self) -> int:
        """Every encoder parameter: token embeddings, layers, final norm and contact head."""
        contact_head = self.layers * self.heads + 1
        return (
            self.vocab * self.hidden
            + self.layers * self.layer_parameters
            + 2 * self.hidden
            + contact_head
        )


def model_shape(name: str) -> ModelShape:
    """The shape of a published ESM2 model (hub id) or of a local folder's config.json.

    Raises:
        EsmtuneError: The name is neither, saying what is accepted.
    """
    known = known_architecture(name)
    if known is not None:
        return ModelShape(name, known.layers, known.hidden, known.heads, known.intermediate)
    config_file = Path(name) / "config.json"
    if not config_file.is_file():
        raise EsmtuneError(
            f"model.name '{name}' is neither a published ESM2 model (facebook/esm2_t6_8M_UR50D "
            "... facebook/esm2_t48_15B_UR50D) nor a folder with a config.json: esmtune plan "
            "needs the architecture and downloads nothing"
        )
    values = json.loads(config_file.read_text())
    try:
        return ModelShape(
            name,
            int(values["num_hidden_layers"]),
            int(values["hidden_size"]),
            int(values["num_attention_heads"]),
            int(values["intermediate_size"]),
            int(values.get("vocab_size", ESM2_VOCAB_SIZE)),
        )
    except KeyError as missing:
        raise EsmtuneError(f"{config_file} lacks {missing}: not an ESM2 config") from None


@dataclass(frozen=True)
class Setting:
    """What a training run does that decides its memory: the config's choices and the GPUs."""

    mode: FinetuneMode
    trained_layers: int  # partial mode: the last k layers (the others run without grad)
    lora_rank: int
    lora_dropout: float
    lora_targets: tuple[str, ...]
    cached_embeddings: bool  # frozen mode: the backbone never runs while training
    checkpointing: bool
    precision: Precision
    attention: Attention
    max_tokens: int
    max_length: int
    head_hidden: tuple[int, ...]
    gpus: int
    strategy: Strategy

    @property
    def longest(self) -> int:
        """Tokens of the longest sequence in a batch: residues + <cls> + <eos>, within budget."""
        return min(self.max_length + 2, self.max_tokens)


def setting_from_config(config: TrainConfig, options: PlanOptions) -> Setting:
    """The memory-deciding choices of a validated config, on ``options``' hardware."""
    finetune, model = config.finetune, config.model
    frozen = finetune.mode is FinetuneMode.FROZEN
    trained_layers = finetune.unfreeze_last_layers
    if finetune.unfreeze_every_epochs:
        # Progressive unfreezing: plan for the most layers the run reaches (every layer when
        # max_steps leaves the number of epochs open); under DDP they all train from the start.
        if config.training.max_steps is None:
            steps = (config.training.epochs - 1) // finetune.unfreeze_every_epochs
            trained_layers += finetune.unfreeze_step * steps
        else:
            trained_layers = 10**6
    return Setting(
        mode=finetune.mode,
        trained_layers=trained_layers,
        lora_rank=finetune.lora.r,
        lora_dropout=finetune.lora.dropout,
        lora_targets=tuple(finetune.lora.target_modules),
        cached_embeddings=frozen
        and finetune.cache_embeddings
        and model.pooling is not Pooling.ATTENTION,
        checkpointing=model.gradient_checkpointing,
        precision=config.training.mixed_precision or "no",
        attention=model.attn_implementation,
        max_tokens=config.training.max_tokens,
        max_length=config.data.max_length,
        head_hidden=tuple(model.head_hidden),
        gpus=options.gpus,
        strategy=options.strategy,
    )


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device, by component, for one shape and setting."""

    shape: ModelShape
    setting: Setting
    components: dict[str, int]
    parameters: int
    trainable_parameters: int

    @property
    def measured_part(self) -> int:
        """Everything but the GPU reserve: what a CPU measurement of the same steps sees."""
        return sum(size for name, size in self.components.items() if name != "GPU reserve")

    @property
    def total(self) -> int:
        """Bytes per device."""
        return sum(self.components.values())


def _targeted(setting: Setting) -> list[str]:
    """The layer's linear modules that carry LoRA adapters (peft: a name or a dotted suffix)."""
    return [
        module
        for module in _LINEARS
        if any(module == key or module.endswith(f".{key}") for key in setting.lora_targets)
    ]


def _in_features(shape: ModelShape, module: str) -> int:
    return shape.intermediate if module == "output.dense" else shape.hidden


def _out_features(shape: ModelShape, module: str) -> int:
    return shape.intermediate if module == "intermediate.dense" else shape.hidden


def _adapter_parameters(shape: ModelShape, setting: Setting) -> int:
    rank = setting.lora_rank
    per_layer = sum(
        rank * (_in_features(shape, m) + _out_features(shape, m)) for m in _targeted(setting)
    )
    return shape.layers * per_layer


def _head_parameters(shape: ModelShape, setting: Setting) -> int:
    """The head's parameters, for two outputs (its size hardly depends on the task)."""
    sizes = [shape.hidden, *setting.head_hidden, 2]
    return sum(size_in * size_out + size_out for size_in, size_out in itertools.pairwise(sizes))


def _layer_activations(shape: ModelShape, setting: Setting, *, lora: bool) -> int:
    """Bytes autograd saves for backward in one trained layer, for a full token budget."""
    tokens, hidden, wide = setting.max_tokens, shape.hidden, shape.intermediate
    half = setting.precision != "no"
    size = 2 if half else 4
    per_token = 2 * hidden * 4  # the fp32 residual stream into both layer norms
    per_token += 4 * hidden * size  # query, key (rotated), value, attention output
    per_token += 3 * wide * size  # erf's input, x / 2, 1 + erf
    if lora:
        mask = 1 if setting.lora_dropout > 0 else 0
        inputs = [_LINEARS[module] for module in _targeted(setting)]
        # With dropout each adapter saves its own dropped-out copy and mask; without, adapters
        # reading the same tensor share it.
        read = inputs if mask else list(dict.fromkeys(inputs))
        widths = {"normed": hidden, "context": hidden, "normed_ffn": hidden, "gelu": wide}
        for name in read:
            # Under autocast a layer norm's output stays fp32: its dropout saves an fp32 copy
            # and the adapter the half-precision cast of that copy.
            normed = half and mask and name != "context" and name != "gelu"
            per_token += widths[name] * ((4 if normed else 0) + size + mask)
        per_token += len(inputs) * setting.lora_rank * size  # the adapters' rank-r outputs
    else:
        # Trainable linear layers save their inputs: both normalised inputs, the GELU output.
        per_token += 2 * hidden * size + wide * size
    total = tokens * per_token
    if setting.attention == "eager":
        # softmax(heads x L x L) per sequence; L x (tokens / L) sequences = L x tokens.
        probabilities = shape.heads * setting.longest * tokens
        total += probabilities * (4 + (2 if half else 0))
    return total


def _forward_workspace(shape: ModelShape, setting: Setting) -> int:
    """Peak temporaries of one layer's forward without grad, when nothing is kept for backward.

    Erf's GELU holds about four feed-forward-width tensors at once beside the residual stream;
    eager attention holds two heads x L x L score tensors (one op's input and output).
    """
    size = 2 if setting.precision != "no" else 4
    per_token = 2 * shape.hidden * 4 + 4 * shape.intermediate * size
    total = setting.max_tokens * per_token
    if setting.attention == "eager":
        total += 2 * shape.heads * setting.longest * setting.max_tokens * 4
    return total


def estimate(shape: ModelShape, setting: Setting) -> MemoryPlan:
    """Per-device memory of training ``shape`` with ``setting``, by component.

    Args:
        shape: The encoder's architecture.
        setting: The run's choices and hardware.

    Returns:
        The components (weights, gradients, optimizer state, autocast copies, DDP buckets or
        FSDP gathers, activations, workspace, GPU reserve) and the trainable parameter count.
    """
    mode = setting.mode
    head = _head_parameters(shape, setting)
    parameters = shape.parameters + head
    trained_layers = 0
    if mode is FinetuneMode.FULL:
        trainable = parameters - (shape.layers * shape.heads + 1)  # the contact head never runs
        trained_layers = shape.layers
    elif mode is FinetuneMode.PARTIAL:
        trained_layers = min(setting.trained_layers, shape.layers)
        trainable = trained_layers * shape.layer_parameters + 2 * shape.hidden + head
    elif mode is FinetuneMode.LORA:
        adapters = _adapter_parameters(shape, setting)
        parameters += adapters
        trainable = adapters + head
    else:
        trainable = head
    linear_weights = {
        FinetuneMode.FULL: shape.layers * (shape.layer_parameters - 6 * shape.hidden),
        FinetuneMode.PARTIAL: trained_layers * (shape.layer_parameters - 6 * shape.hidden),
    }.get(mode, 0)

    shards = setting.gpus if setting.strategy == "fsdp" else 1
    half = setting.precision != "no"
    components = {
        "weights": 4 * parameters // shards,
        "gradients": 4 * trainable // shards,
        "optimizer state": 8 * trainable // shards,
        # FSDP gathers layers already in half precision, so autocast has nothing to cache.
        "autocast copies": 2 * linear_weights if half and shards == 1 else 0,
    }
    if setting.strategy == "ddp" and setting.gpus > 1:
        components["DDP gradient buckets"] = 4 * trainable
    if setting.strategy == "fsdp" and setting.gpus > 1:
        components["FSDP gathered layers"] = 2 * shape.layer_parameters * (2 if half else 4)

    lora = mode is FinetuneMode.LORA
    one_layer = _layer_activations(shape, setting, lora=lora)
    if mode is FinetuneMode.FROZEN:
        # The backbone runs without grad (once, to cache embeddings, or every step): nothing is
        # saved, one layer's temporaries at a time.
        saved, workspace = 0, _forward_workspace(shape, setting)
    else:
        graded_layers = shape.layers if lora else trained_layers
        stream = setting.max_tokens * shape.hidden * 4  # one fp32 layer input per token
        if setting.checkpointing:
            saved = graded_layers * stream + one_layer
        else:
            saved = graded_layers * one_layer + 2 * stream  # + embeddings and the final norm
        workspace = one_layer
    components["activations"] = saved
    components["workspace"] = workspace
    components["GPU reserve"] = GPU_RESERVE
    return MemoryPlan(shape, setting, components, parameters, trainable)


def _describe(shape: ModelShape, setting: Setting) -> str:
    """``t36_3B, LoRA, bf16, 8,192 tokens`` for a verdict."""
    short = shape.name.rstrip("/").split("/")[-1].removeprefix("esm2_").removesuffix("_UR50D")
    mode = {
        FinetuneMode.LORA: f"LoRA r={setting.lora_rank}",
        FinetuneMode.FULL: "full",
        FinetuneMode.FROZEN: "frozen",
        FinetuneMode.PARTIAL: f"last {setting.trained_layers} layers",
    }[setting.mode]
    precision = "fp32" if setting.precision == "no" else setting.precision
    return f"{short}, {mode}, {precision}, {setting.max_tokens:,} tokens"


def _gib(size: int) -> str:
    return f"{size / GIB:.2f} GiB"


def _simple_changes(setting: Setting) -> list[tuple[str, dict[str, Any]]]:
    """Changes with one value each, cheapest first, that the setting does not make already."""
    changes: list[tuple[str, dict[str, Any]]] = []
    if not setting.checkpointing:
        changes.append(("model.gradient_checkpointing=true", {"checkpointing": True}))
    if setting.precision == "no":
        changes.append(("training.mixed_precision=bf16", {"precision": "bf16"}))
    if setting.mode in (FinetuneMode.FULL, FinetuneMode.PARTIAL):
        changes.append(("finetune.mode=lora", {"mode": FinetuneMode.LORA}))
    return changes


def _fits_with(
    shape: ModelShape, setting: Setting, capacity: float
) -> list[tuple[str, dict[str, Any]]]:
    """Single changes that make ``setting`` fit.

    The simple ones, the largest token budget (in halvings) and the fewest GPUs under FSDP (in
    doublings) that fit.
    """
    found = [
        (label, change)
        for label, change in _simple_changes(setting)
        if estimate(shape, replace(setting, **change)).total <= capacity
    ]
    budget = setting.max_tokens // 2
    while budget >= 64:
        if estimate(shape, replace(setting, max_tokens=budget)).total <= capacity:
            found.append((f"training.max_tokens={budget}", {"max_tokens": budget}))
            break
        budget //= 2
    gpus = 2
    while gpus <= 64:
        sharded: dict[str, Any] = {"strategy": "fsdp", "gpus": max(gpus, setting.gpus)}
        if estimate(shape, replace(setting, **sharded)).total <= capacity:
            found.append((f"FSDP over {sharded['gpus']} GPUs", sharded))
            break
        gpus *= 2
    return found


def _alternatives(shape: ModelShape, setting: Setting, capacity: float) -> list[dict[str, Any]]:
    """The cheapest changes that make the run fit: single ones if any do, else pairs.

    Cheapest means changing least about what is learned: gradient checkpointing only costs time
    (~30%), bf16 changes numerics slightly, LoRA changes what trains, a smaller token budget
    makes steps smaller, and FSDP needs more GPUs.
    """
    pairs: list[tuple[str, dict[str, Any], list[tuple[str, dict[str, Any]]]]]
    pairs = [("", {}, _fits_with(shape, setting, capacity))]
    if not pairs[0][2]:
        pairs = [
            (label, change, _fits_with(shape, replace(setting, **change), capacity))
            for label, change in _simple_changes(setting)
        ]
    found, seen = [], set()
    for first_label, first, seconds in pairs:
        for label, second in seconds:
            labels = frozenset({first_label, label} - {""})
            if labels in seen:  # checkpointing and LoRA = LoRA and checkpointing
                continue
            seen.add(labels)
            total = estimate(shape, replace(setting, **first, **second)).total
            found.append(
                {"change": " and ".join(filter(None, [first_label, label])), "total_bytes": total}
            )
    return found[:4]


def plan(shape: ModelShape, setting: Setting, gpu_memory: float) -> dict[str, Any]:
    """The estimate, what fits, and the cheapest changes that make it fit, as plain data.

    Args:
        shape: The encoder's architecture.
        setting: The run's choices and hardware.
        gpu_memory: GiB of each GPU.

    Returns:
        A JSON-ready dict: components and total in bytes, the verdict line, alternatives.
    """
    capacity = gpu_memory * GIB
    result = estimate(shape, setting)
    where = f"one {gpu_memory:g} GiB GPU"
    if setting.gpus > 1:
        where = f"{setting.gpus} GPUs of {gpu_memory:g} GiB with {setting.strategy.upper()}"
    head = f"{_describe(shape, setting)}: {_gib(result.total)} per GPU"
    alternatives = [] if result.total <= capacity else _alternatives(shape, setting, capacity)
    if result.total <= capacity:
        verdict = f"{head}; fits {where} ({_gib(int(capacity - result.total))} to spare)"
    elif alternatives:
        options = "; or ".join(
            f"{item['change']} ({_gib(item['total_bytes'])})" for item in alternatives
        )
        verdict = f"{head}; does not fit {where}; fits only with {options}"
    else:
        verdict = f"{head}; does not fit {where}, nor with any single or paired change tried"
    return {
        "model": shape.name,
        "architecture": {
            "layers": shape.layers,
            "hidden_size": shape.hidden,
            "attention_heads": shape.heads,
            "intermediate_size": shape.intermediate,
            "vocab_size": shape.vocab,
        },
        "parameters": result.parameters,
        "trainable_parameters": result.trainable_parameters,
        "setting": {
            "finetune_mode": setting.mode.value,
            "gradient_checkpointing": setting.checkpointing,
            "mixed_precision": setting.precision,
            "attention": setting.attention,
            "max_tokens": setting.max_tokens,
            "longest_sequence": setting.longest,
            "gpus": setting.gpus,
            "strategy": setting.strategy,
        },
        "components_bytes": result.components,
        "total_bytes": result.total,
        "gpu_memory_gib": gpu_memory,
        "fits": result.total <= capacity,
        "alternatives": alternatives,
        "verdict": verdict,
    }


def format_plan(report: dict[str, Any]) -> str:
    """The plan as a terminal table: a row per component, the total, then the verdict."""
    components: dict[str, int] = report["components_bytes"]
    width = max(len(name) for name in components)
    rows = [f"{name.ljust(width)}  {_gib(size):>10}" for name, size in components.items()]
    rule = "-" * (width + 12)
    trainable = report["trainable_parameters"]
    lines = [
        f"{report['model']}: {report['parameters']:,} parameters, {trainable:,} trained",
        rule,
        *rows,
        rule,
        f"{'total'.ljust(width)}  {_gib(report['total_bytes']):>10}",
        "",
        report["verdict"],
    ]
    return "\n".join(lines)
