"""The protein encoder inside every esmtune model, reusable in models of your own.

:class:`ProteinEncoder` is ESM2 plus what esmtune adds around it: pooling (``cls``, ``mean``,
``max``, ``attention``, or per-residue states), long sequences read in overlapping windows and
stitched back residue by residue, a streaming path for sequences whose windows exceed the token
budget, an optional projection to ``output_dim``, and control of what trains (frozen, the last
k layers, the embeddings, LoRA). The classifier esmtune trains is this encoder plus a head
(:class:`~esmtune.model.classifier.SequenceClassifier`), so an encoder built from a run
directory reads proteins exactly as the run's model did, with the run's fine-tuned weights.

Put it in a drug-target affinity model or a multimodal one as any ``nn.Module``: call it on
token inputs (``encoder(**encoder.tokenize(sequences))``) or let it tokenise and batch for you
(``encoder.encode(sequences)``); gradients flow through both unless you turn them off.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import ValidationError
from torch import nn
from transformers import EsmConfig, EsmModel, PreTrainedTokenizerBase

from esmtune.config import (
    FinetuneConfig,
    FinetuneMode,
    LongSequences,
    LoraConfig,
    ModelConfig,
    Pooling,
)
from esmtune.data.batching import EncodedDataset, Window, encode, eval_loader, pad_collate
from esmtune.data.check import sequence_problem
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import ConfigError, DataError
from esmtune.model.backbone import load_backbone
from esmtune.model.heads import Pooler, StreamingPooler
from esmtune.model.tuning import (
    Backbone,
    apply_finetuning,
    backbone_blocks,
    merge_lora,
    unfreeze,
)
from esmtune.model.weights import load_weights
from esmtune.model.windows import ResidueSink, over_budget, stitch_windows, stream_windows
from esmtune.rundir import CONFIG_FILE, WEIGHTS_FILE, read_run

__all__ = ["ESM2_CONTEXT", "BlockParameters", "ProteinEncoder", "TrainableReport", "build_encoder"]

ESM2_CONTEXT = 1022  # residues per input: ESM2's 1,026 positions less <cls>, <eos> and margin
_DEFAULT_TOKENS = 4096  # training's default token budget (training.max_tokens)
_INPUTS = ("input_ids", "attention_mask", "window_owner", "window_start", "residue_count")


@dataclass(frozen=True)
class BlockParameters:
    """Parameters of one block of an encoder: how many train, of how many."""

    name: str
    trainable: int
    total: int


@dataclass(frozen=True)
class TrainableReport:
    """What trains in an encoder, block by block (:meth:`ProteinEncoder.trainable_report`).

    ``report["layer 5"].trainable``; ``str(report)`` is a table for logs.
    """

    blocks: tuple[BlockParameters, ...]

    def __getitem__(self, name: str) -> BlockParameters:
        for block in self.blocks:
            if block.name == name:
                return block
        raise KeyError(f"no block {name!r}; blocks: {', '.join(b.name for b in self.blocks)}")

    @property
    def trainable(self) -> int:
        """Parameters that train, over all blocks."""
        return sum(block.trainable for block in self.blocks)

    @property
    def total(self) -> int:
        """Parameters, over all blocks."""
        return sum(block.total for block in self.blocks)

    def __str__(self) -> str:
        rows = [(b.name, f"{b.trainable:,}", f"{b.total:,}") for b in self.blocks]
        rows.append(("total", f"{self.trainable:,}", f"{self.total:,}"))
        header = ("block", "trainable", "parameters")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(3)]
        lines = [
            f"{name:<{widths[0]}}  {trainable:>{widths[1]}}  {total:>{widths[2]}}"
            for name, trainable, total in [header, *rows]
        ]
        return "\n".join(lines)


class ProteinEncoder(nn.Module):
    """ESM2 with pooling and window stitching: token inputs in, one vector per protein out.

    Build one with :meth:`from_pretrained` (a hub id, a local folder or an esmtune run
    directory). Its state dict holds ``backbone.…``, ``pooler.…`` and ``projection.…``: the names
    a run saves for the same parts, so a run's weights load into it as they are.
    """

    special_token_ids: torch.Tensor  # a buffer: <cls>, <eos> and padding, never pooled

    def __init__(
        self,
        backbone: Backbone,
        tokenizer: PreTrainedTokenizerBase,
        pooling: Pooling | str = Pooling.MEAN,
        output_dim: int | None = None,
        max_length: int = ESM2_CONTEXT,
        long_sequences: LongSequences | str = LongSequences.WINDOW,
        window_stride: int | None = None,
    ) -> None:
        """Wrap a loaded backbone; :meth:`from_pretrained` loads one and sets what trains.

        Args:
            backbone: The ESM2 encoder (an ``EsmModel``, or peft's wrapper for LoRA).
            tokenizer: Its tokenizer, for :meth:`tokenize` and :meth:`encode`.
            pooling: ``cls``, ``mean``, ``max`` or ``attention`` (a learnt score per residue).
            output_dim: Size of a linear projection after pooling (None: the hidden size).
            max_length: Residues per model input (at most ESM2's 1,022) for :meth:`tokenize`.
            long_sequences: Longer sequences in :meth:`tokenize`: ``window`` (overlapping
                windows, stitched before pooling), ``truncate`` or ``centre``.
            window_stride: Residues between window starts (default: half a window).
        """
        super().__init__()
        hidden = backbone.config.hidden_size
        self.backbone = backbone
        self.pooler = Pooler(Pooling(pooling), hidden)
        self.projection = None if output_dim is None else nn.Linear(hidden, output_dim)
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.long_sequences = LongSequences(long_sequences)
        self.window_stride = window_stride
        special = (tokenizer.cls_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id)
        self.register_buffer(
            "special_token_ids",
            torch.tensor([t for t in special if t is not None], dtype=torch.long),
            persistent=False,
        )

    @classmethod
    def from_pretrained(
        cls,
        source: str | Path,
        *,
        pooling: Pooling | str | None = None,
        output_dim: int | None = None,
        finetune: FinetuneMode | str = FinetuneMode.FROZEN,
        unfreeze_last_layers: int = 0,
        unfreeze_embeddings: bool = False,
        lora: LoraConfig | Mapping[str, Any] | None = None,
        merge_lora: bool = True,
        gradient_checkpointing: bool = False,
        revision: str | None = None,
        pretrained: bool = True,
        attn_implementation: Literal["sdpa", "eager"] = "sdpa",
        max_length: int | None = None,
        long_sequences: LongSequences | str = LongSequences.WINDOW,
        window_stride: int | None = None,
    ) -> ProteinEncoder:
        """An encoder from a hub id, a local model folder or an esmtune run directory.

        A run directory gives the run's fine-tuned backbone and its pooling (with a trained
        attention scorer), read in windows of the run's ``data.max_length``; its head is left
        out. What trains afterwards is set here, as ``finetune.mode`` sets it for training.

        Args:
            source: ``facebook/esm2_t6_8M_UR50D``, a folder with ``config.json``, or a run.
            pooling: ``cls``, ``mean``, ``max`` or ``attention`` (default: the run's, else mean).
            output_dim: Add a linear projection from the hidden size to this size.
            finetune: ``frozen`` (nothing of ESM2 trains), ``partial`` (the last
                ``unfreeze_last_layers`` layers), ``full`` or ``lora`` (adapters; with a run's
                adapters kept, those train on).
            unfreeze_last_layers: Layers that train in ``partial`` mode.
            unfreeze_embeddings: The token embeddings train too (any mode).
            lora: Adapter settings (``r``, ``alpha``, ``dropout``, ``target_modules``) for
                ``lora`` on a backbone without adapters; default esmtune's.
            merge_lora: A LoRA run's adapters are merged into the weights (a plain ESM2);
                False keeps them as adapters.
            gradient_checkpointing: Recompute activations in backward (less memory, slower).
            revision: Hub revision of ``source`` (not for runs).
            pretrained: False builds the architecture with random weights (not for runs).
            attn_implementation: ``sdpa`` or ``eager``.
            max_length: Residues per input for :meth:`tokenize` (default: the run's, else 1,022).
            long_sequences: Longer sequences: ``window``, ``truncate`` or ``centre``.
            window_stride: Residues between window starts (default: half a window).

        Raises:
            ConfigError: On settings that do not fit together (``partial`` with no layers).
            ModelLoadError: When the model or run cannot be loaded, with the fix.
            RunDirError: When a run directory is unfinished.
        """
        tuning = _finetune_settings(finetune, unfreeze_last_layers, lora)
        chosen = None if pooling is None else _pooling(pooling)
        folder = Path(source).expanduser()
        if (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
            encoder = _from_run(folder, chosen, output_dim, attn_implementation, merge_lora)
            encoder.backbone = _prepare_backbone(encoder.backbone, tuning, gradient_checkpointing)
            if max_length is not None:
                encoder.max_length = max_length
        else:
            model = _model_settings(
                name=str(source),
                revision=revision,
                pretrained=pretrained,
                pooling=chosen or Pooling.MEAN,
                gradient_checkpointing=gradient_checkpointing,
                attn_implementation=attn_implementation,
            )
            encoder = build_encoder(model, tuning, output_dim, max_length or ESM2_CONTEXT)
        encoder.long_sequences = LongSequences(long_sequences)
        encoder.window_stride = window_stride
        if unfreeze_embeddings:
            encoder.unfreeze(last_layers=0, embeddings=True)
        return encoder

    # --- what the encoder is made of ------------------------------------------------------

    @property
    def backbone_config(self) -> EsmConfig:
        """The encoder's configuration (a LoRA wrapper hands on its base model's)."""
        config: EsmConfig = self.backbone.config
        return config

    @property
    def hidden_size(self) -> int:
        """Width of ESM2's residue states."""
        return int(self.backbone_config.hidden_size)

    @property
    def embedding_dim(self) -> int:
        """Width of what the encoder returns: ``output_dim``, else the hidden size."""
        return self.hidden_size if self.projection is None else self.projection.out_features

    # --- token inputs in, states and embeddings out ----------------------------------------

    def window_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Backbone states of each input row ``(windows, tokens, hidden)``, nothing stitched."""
        return self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    def residue_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        window_owner: torch.Tensor | None = None,
        window_start: torch.Tensor | None = None,
        residue_count: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone states, one row per sequence (windows stitched), and the residue mask.

        The mask is True on residues only (never ``<cls>``, ``<eos>`` or padding).

        Raises:
            ValueError: When ``window_owner`` comes without the other window inputs.
        """
        hidden = self.window_states(input_ids, attention_mask)
        if window_owner is None:
            # A comparison rather than torch.isin, which the ONNX exporter cannot translate.
            special = (input_ids.unsqueeze(-1) == self.special_token_ids).any(dim=-1)
            residues = attention_mask.bool() & ~special
            return hidden, residues
        if window_start is None or residue_count is None:
            raise ValueError("window_owner needs window_start and residue_count (see pad_collate)")
        return stitch_windows(hidden, attention_mask, window_owner, window_start, residue_count)

    def pool(self, states: torch.Tensor, residue_mask: torch.Tensor) -> torch.Tensor:
        """Pooling, then the projection if there is one: ``(sequences, embedding_dim)``."""
        return self._project(self.pooler(states, residue_mask))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        window_owner: torch.Tensor | None = None,
        window_start: torch.Tensor | None = None,
        residue_count: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """One embedding per sequence ``(sequences, embedding_dim)`` from a padded batch.

        Without the window inputs each row is one sequence; with them (:meth:`tokenize` adds
        them when a sequence is windowed) the windows of each sequence are stitched first.
        """
        inputs = (input_ids, attention_mask, window_owner, window_start, residue_count)
        return self.pool(*self.residue_states(*inputs))

    def residue_embeddings(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        window_owner: torch.Tensor | None = None,
        window_start: torch.Tensor | None = None,
        residue_count: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-residue output: states ``(sequences, tokens, embedding_dim)`` and residue mask.

        Rows are laid out ``<cls> residues <eos> padding``; the mask marks the residues.
        """
        inputs = (input_ids, attention_mask, window_owner, window_start, residue_count)
        states, mask = self.residue_states(*inputs)
        return self._project(states), mask

    def long_sequence_sink(self) -> ResidueSink:
        """Pools one long sequence's stitched states as they arrive (streaming pooling).

        ``close`` gives its embedding ``(embedding_dim,)``; see
        :func:`~esmtune.model.windows.stream_windows`.
        """
        return _PooledSink(StreamingPooler(self.pooler), self._project)

    def _project(self, states: torch.Tensor) -> torch.Tensor:
        if self.projection is None:
            return states
        return self.projection(states.to(self.projection.weight.dtype))

    # --- sequences in ----------------------------------------------------------------------

    def tokenize(self, sequences: Sequence[str]) -> dict[str, torch.Tensor]:
        """A padded batch of ``sequences`` that :meth:`forward` takes (``encoder(**batch)``).

        Longer sequences are windowed (or cut) as ``long_sequences`` says; then the batch also
        carries ``window_owner``, ``window_start`` and ``residue_count``.

        Raises:
            DataError: On empty sequences or letters ESM2 does not read, naming each.
            ValueError: When ``sequences`` is empty (a batch needs a row).
        """
        if not sequences:
            raise ValueError("tokenize needs at least one sequence")
        windows = self._windows(sequences)
        batch = pad_collate([(i, w, None) for i, w in enumerate(windows)], self._pad_id)
        del batch["index"]
        return batch

    def encode(self, sequences: Sequence[str], max_tokens: int | None = None) -> torch.Tensor:
        """One embedding per sequence ``(len(sequences), embedding_dim)``, in their order.

        Sequences are batched by length to a token budget, on the encoder's device, in its
        current mode (training or evaluation). Gradients flow when they are enabled; under
        ``torch.no_grad()`` or ``torch.inference_mode()`` a sequence whose windows exceed the
        budget is read a few windows per pass, so memory does not grow with its length.

        Args:
            sequences: Residue strings (case does not matter).
            max_tokens: Token budget per forward pass (inputs x longest input; default 4,096).

        Raises:
            DataError: On empty sequences or letters ESM2 does not read, naming each.
        """
        rows = self._each_sequence(sequences, max_tokens, self.pool, self.long_sequence_sink)
        if not rows:
            return torch.zeros(0, self.embedding_dim, device=self.special_token_ids.device)
        return torch.stack(rows)

    def encode_residues(
        self, sequences: Sequence[str], max_tokens: int | None = None
    ) -> list[torch.Tensor]:
        """Per-residue embeddings, one ``(residues, embedding_dim)`` tensor per sequence.

        Batched and windowed as :meth:`encode`; ``<cls>`` and ``<eos>`` are left out.

        Raises:
            DataError: On empty sequences or letters ESM2 does not read, naming each.
        """

        def residues_only(states: torch.Tensor, mask: torch.Tensor) -> list[torch.Tensor]:
            return [row[keep] for row, keep in zip(self._project(states), mask, strict=True)]

        return self._each_sequence(
            sequences, max_tokens, residues_only, lambda: _ResidueCollector(self._project)
        )

    def _windows(self, sequences: Sequence[str]) -> list[list[Window]]:
        records = [
            SequenceRecord(id=f"#{i + 1}", sequence=s.upper(), source="ProteinEncoder input")
            for i, s in enumerate(sequences)
        ]
        problems = [problem for record in records if (problem := sequence_problem(record))]
        if problems:
            raise DataError(f"{len(problems)} invalid sequence(s):\n  - " + "\n  - ".join(problems))
        return encode(
            self.tokenizer,
            [r.sequence for r in records],
            self.max_length,
            self.long_sequences,
            self.window_stride,
        )

    @property
    def _pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def _each_sequence(
        self,
        sequences: Sequence[str],
        max_tokens: int | None,
        reduce: Callable[[torch.Tensor, torch.Tensor], torch.Tensor | list[torch.Tensor]],
        make_sink: Callable[[], ResidueSink],
    ) -> list[torch.Tensor]:
        """One result per sequence, in input order: ``reduce`` per batch, or streamed.

        The same batching and streaming as predicting and ``esmtune embed``: token-budget
        batches of similar lengths (:func:`~esmtune.data.batching.eval_loader`), and windows
        over the budget read in passes (:func:`~esmtune.model.windows.stream_windows`).
        """
        budget = max_tokens or _DEFAULT_TOKENS
        dataset = EncodedDataset(self._windows(sequences))
        device = self.special_token_ids.device
        streams = not torch.is_grad_enabled()  # the streamed path keeps no graph
        rows: dict[int, torch.Tensor] = {}
        for batch in eval_loader(dataset, budget, self._pad_id):
            reduced: torch.Tensor | list[torch.Tensor]
            if streams and over_budget(batch, budget):
                reduced = stream_windows(self.window_states, batch, budget, make_sink, device)
            else:
                inputs = {key: batch[key].to(device) for key in _INPUTS if key in batch}
                reduced = reduce(*self.residue_states(**inputs))
            rows.update(zip(batch["index"].tolist(), reduced, strict=True))
        return [rows[i] for i in range(len(dataset))]

    # --- what trains -----------------------------------------------------------------------

    def freeze(self) -> ProteinEncoder:
        """Nothing of ESM2 trains (adapters included); pooling and projection still do."""
        self.backbone.requires_grad_(False)
        return self

    def unfreeze(
        self, last_layers: int | None = None, embeddings: bool | None = None
    ) -> ProteinEncoder:
        """Let more of ESM2 train, keeping what already trains.

        Args:
            last_layers: That many final layers (and the final layer norm) train; None: all.
            embeddings: The token embeddings train too (default: only when all layers do).
        """
        with_embeddings = last_layers is None if embeddings is None else embeddings
        unfreeze(self.backbone, last_layers, with_embeddings)
        return self

    def merge_lora(self) -> ProteinEncoder:
        """Merge LoRA adapters into the weights (a plain ESM2 from then on); else nothing."""
        self.backbone = merge_lora(self.backbone)
        return self

    def trainable_report(self) -> TrainableReport:
        """Trainable and total parameters per block: embeddings, each layer, pooling, projection.

        LoRA adapters count in the layer they adapt; the final layer norm and ESM's (unused)
        contact head have rows of their own, so the rows add up to every parameter.
        """
        blocks = [*backbone_blocks(self.backbone), ("pooling", self.pooler)]
        if self.projection is not None:
            blocks.append(("projection", self.projection))
        seen: set[int] = set()
        rows = []
        for name, module in blocks:
            parameters = [p for p in module.parameters() if id(p) not in seen]
            seen.update(id(p) for p in parameters)
            rows.append(_count(name, parameters))
        rest = [p for p in self.parameters() if id(p) not in seen]
        if rest:
            rows.append(_count("other", rest))
        return TrainableReport(tuple(rows))


def _count(name: str, parameters: list[nn.Parameter]) -> BlockParameters:
    trainable = sum(p.numel() for p in parameters if p.requires_grad)
    return BlockParameters(name, trainable, sum(p.numel() for p in parameters))


class _PooledSink:
    """Streaming pooling, then the projection: the embedding ``(embedding_dim,)`` of a sequence."""

    def __init__(
        self, pooler: StreamingPooler, project: Callable[[torch.Tensor], torch.Tensor]
    ) -> None:
        self.pooler = pooler
        self.project = project

    def add_residues(self, states: torch.Tensor) -> None:
        self.pooler.add_residues(states)

    def close(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.project(self.pooler.close(cls_state))


class _ResidueCollector:
    """Keeps a long sequence's stitched residue states: per-residue embeddings are the output."""

    def __init__(self, project: Callable[[torch.Tensor], torch.Tensor]) -> None:
        self.project = project
        self.pieces: list[torch.Tensor] = []

    def add_residues(self, states: torch.Tensor) -> None:
        self.pieces.append(states)

    def close(self, cls_state: torch.Tensor) -> torch.Tensor:
        return self.project(torch.cat(self.pieces))


# --- building encoders -----------------------------------------------------------------------


def _settings_error(error: ValidationError) -> ConfigError:
    """The keyword arguments' problems in one message, each with its argument and value."""
    problems = []
    for item in error.errors():
        where = ".".join(str(part) for part in item["loc"])
        message = item["msg"].removeprefix("Value error, ")
        given = "" if item["type"] == "value_error" else f" (got {item['input']!r})"
        problems.append(f"{where}: {message}{given}" if where else message)
    return ConfigError("ProteinEncoder: " + "; ".join(problems))


def _finetune_settings(
    mode: FinetuneMode | str, last_layers: int, lora: LoraConfig | Mapping[str, Any] | None
) -> FinetuneConfig:
    """The keyword arguments as training's finetune section, validated by the same rules."""
    try:
        return FinetuneConfig.model_validate(
            {
                "mode": mode,
                "unfreeze_last_layers": last_layers,
                "lora": lora if isinstance(lora, LoraConfig) else dict(lora or {}),
            }
        )
    except ValidationError as error:
        raise _settings_error(error) from None


def _pooling(value: Pooling | str) -> Pooling:
    try:
        return Pooling(value)
    except ValueError:
        choices = ", ".join(p.value for p in Pooling)
        raise ConfigError(f"ProteinEncoder: pooling: {value!r} is not one of {choices}") from None


def _model_settings(**settings: Any) -> ModelConfig:
    try:
        return ModelConfig.model_validate(settings)
    except ValidationError as error:
        raise _settings_error(error) from None


def _prepare_backbone(
    backbone: Backbone, finetune: FinetuneConfig, gradient_checkpointing: bool
) -> Backbone:
    """Gradient checkpointing, then what trains (LoRA adapters added here)."""
    if gradient_checkpointing:
        base = backbone if isinstance(backbone, EsmModel) else backbone.get_base_model()
        if not isinstance(base, EsmModel):
            raise TypeError(f"not an ESM2 backbone: {type(base).__name__}")
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if finetune.mode is FinetuneMode.LORA:
            base.enable_input_require_grads()  # frozen embeddings would cut the graph
    return apply_finetuning(backbone, finetune)


def build_encoder(
    model: ModelConfig,
    finetune: FinetuneConfig,
    output_dim: int | None = None,
    max_length: int = ESM2_CONTEXT,
) -> ProteinEncoder:
    """Load the backbone, set what trains, and add pooling (and a projection).

    What training builds its classifier's encoder with, and :meth:`ProteinEncoder.from_pretrained`
    a hub model's. The order (backbone, adapters, pooling, projection) fixes which random
    numbers initialise what, so a seeded run rebuilds the same model.

    Args:
        model: The model section of a config (name, pooling, checkpointing, attention).
        finetune: The finetune section of a config.
        output_dim: Size of a projection after pooling (None: none).
        max_length: Residues per input when the encoder tokenises.

    Raises:
        ModelLoadError: When the backbone cannot be loaded, with the fix.
    """
    backbone, tokenizer = load_backbone(model)
    prepared = _prepare_backbone(backbone, finetune, model.gradient_checkpointing)
    return ProteinEncoder(prepared, tokenizer, model.pooling, output_dim, max_length)


def _from_run(
    folder: Path,
    pooling: Pooling | None,
    output_dim: int | None,
    attn_implementation: Literal["sdpa", "eager"],
    merge: bool,
) -> ProteinEncoder:
    """A run's encoder with its fine-tuned weights; its adapters merged when ``merge``."""
    config, _ = read_run(folder)
    chosen = pooling or config.model.pooling
    model = config.model.model_copy(
        update={
            "pooling": chosen,
            "gradient_checkpointing": False,
            "attn_implementation": attn_implementation,
        }
    )
    encoder = build_encoder(model, config.finetune, output_dim, config.data.max_length)
    new_pooling = chosen is not config.model.pooling  # a new scorer: the run's does not apply
    load_weights(
        encoder,
        folder / WEIGHTS_FILE,
        complete=not config.model.pretrained,
        skip=("head.", "pooler.") if new_pooling else ("head.",),
        optional=("pooler.", "projection.") if new_pooling else ("projection.",),
    )
    return encoder.merge_lora() if merge else encoder
