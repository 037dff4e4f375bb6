"""Why did the model predict that: a score per residue, and the raw attention maps.

Two views of one prediction, each one number per residue:

- ``ig``, integrated gradients (Sundararajan et al. 2017, through Captum) on the input
  embeddings: how much each residue moved the explained output (a label's probability, or a
  regression target's value) away from a baseline where every residue is replaced by the
  padding token's embedding, a zero vector for ESM2, which is also what ESM2 reads for a masked
  residue (its token dropout zeroes the ``<mask>`` embedding): the baseline is the sequence with
  every residue masked, ``<cls>`` and ``<eos>`` kept. Summed over the hidden dimension, the
  scores add up to ``output - baseline_output`` (completeness), within the error of ``steps``
  quadrature points (a confident model's output may flip over a short stretch of the path, which
  needs more: see ``Explanation.completeness_gap``); positive scores are evidence for the label,
  negative ones against it. It depends on the label explained.
- ``rollout``, attention rollout (Abnar & Zuidema 2020): each layer's attention averaged over
  heads, mixed half and half with the identity for the residual connection, multiplied through
  the layers, then read from the positions the pooling draws on (``<cls>`` for cls pooling, every
  residue for mean, the learned weights for attention pooling, each hidden unit's maximum for
  max). It says where the pooled representation comes from, so it is the same for every label;
  it needs no gradients and is faster, but only ``ig`` follows what the head does.

Per-residue runs (``residue_classification``, ``residue_regression``) make a prediction per
residue, so an explanation is of one residue's, at a ``position`` the caller names (there is no
default: each position costs a whole explanation). ``ig`` explains that residue's probability of
a class (the one predicted there, or the label asked) or its value, and scores every residue of
the chain, since a residue's class may rest on its neighbours; ``rollout`` reads that residue's
own row of the flow instead of the pooling's.

Long sequences are explained as they are predicted (the Predictor's ``long_sequences``):
``window`` reads overlapping windows and stitches them, so ``ig`` explains exactly the
prediction ``predict`` makes and every residue gets a score (a residue read in two windows sums
its two attributions; rollout averages its states as the stitching does); ``truncate`` and
``centre`` explain the residues read and give NaN for the others. Integrated gradients runs
every window of a sequence in each forward and backward pass, so, unlike predicting, its memory
grows with the sequence's length. At a residue, only the windows that can move its output run:
those covering it, or, under the CNN head, covering a residue within the kernels' reach of it
(``ResidueClassifier.residue_reach``); the rest of the chain scores 0, and the cost is that of
one or a few windows however long the chain.

Explaining needs the model in torch: a run directory or an ``hf`` export, never ONNX. It runs
in float32 whatever the Predictor's precision: gradients in bfloat16 would break completeness.
"""

from __future__ import annotations

import csv
import difflib
import math
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from esmtune.config import LongSequences, Pooling
from esmtune.data.batching import Window, encode, pad_collate
from esmtune.data.fasta import SequenceRecord
from esmtune.errors import EsmtuneError
from esmtune.explain_options import ExplainOptions, Method, one_figure
from esmtune.model.classifier import ResidueClassifier, SequenceClassifier
from esmtune.model.interface import RuntimeModel
from esmtune.model.run_model import LoadedRun
from esmtune.plots import plot_residue_scores
from esmtune.tasks import TaskSpec

if TYPE_CHECKING:
    from transformers import EsmConfig

__all__ = [
    "COMPLETENESS_TOLERANCE",
    "EXPLANATION_COLUMNS",
    "RESIDUE_EXPLANATION_COLUMNS",
    "Explainer",
    "Explanation",
    "loose_note",
    "plot_explanations",
    "torch_run",
    "write_explanations",
]

# The columns of `esmtune explain`'s TSV, one row per residue: the first four say what each
# residue scored; the last two what was explained, so that tables of several runs concatenate.
EXPLANATION_COLUMNS = ("id", "position", "residue", "score", "method", "label")
# A per-residue run's table adds the residue whose prediction was explained (its class or value
# is the label column's).
RESIDUE_EXPLANATION_COLUMNS = (*EXPLANATION_COLUMNS, "explained_position", "explained_residue")

# An ig explanation whose scores miss output - baseline by more than this share of its output's
# scale (at least 1: a probability's) approximates the integral loosely; the command says so.
COMPLETENESS_TOLERANCE = 0.01

# Problems (sequences) and positions named in one error; the rest are counted.
_NAMED_PROBLEMS = 5
_NAMED_POSITIONS = 5


@dataclass(frozen=True)
class Explanation:
    """One sequence's residue scores for one label (per-residue runs: at one position).

    Attributes:
        id: The record's id.
        sequence: Its residues.
        label: The label (or regression target) explained; per-residue runs: the class (or
            ``value``) at ``position``.
        method: ``ig`` or ``rollout``.
        scores: One score per residue ``(len(sequence),)``, float32; NaN for residues the model
            did not read (``long_sequences`` truncate or centre).
        output: What the model gives ``label``: its probability, or the target's value (for
            multilabel with an ontology, before parents are raised to their best child).
        baseline_output: ``ig``: the same with every residue at the baseline; the scores sum to
            ``output - baseline_output``. None for ``rollout``.
        position: Per-residue runs: the residue (from 1) whose prediction was explained;
            ``output`` is that residue's. None for sequence-level runs. Residues that cannot
            move it (in windows not reaching it) score 0.
    """

    id: str
    sequence: str
    label: str
    method: str
    scores: np.ndarray
    output: float
    baseline_output: float | None = None
    position: int | None = None

    @property
    def completeness_gap(self) -> float | None:
        """``ig``: by how much the scores' sum misses ``output - baseline_output``; None else.

        The scores approximate an integral with ``steps`` points along the path, so a model
        whose output flips over a short stretch of it (a confident one) needs more of them.
        """
        if self.baseline_output is None:
            return None
        return self.output - self.baseline_output - float(np.nansum(self.scores))

    @property
    def residue(self) -> str | None:
        """The letter of the residue explained (per-residue runs), else None."""
        return None if self.position is None else self.sequence[self.position - 1]

    @property
    def unread(self) -> int:
        """Residues the model did not read (a sequence cut to max_length): their scores are NaN."""
        return int(np.isnan(self.scores).sum())

    def top_positions(self, count: int) -> list[int]:
        """The 1-based positions of the ``count`` highest scores (NaN last), highest first."""
        ranked = np.argsort(-np.nan_to_num(self.scores, nan=-np.inf), kind="stable")
        return [int(index) + 1 for index in ranked[:count]]


def torch_run(loaded: LoadedRun[RuntimeModel]) -> LoadedRun[SequenceClassifier]:
    """The run if its model runs in torch; explaining needs gradients and attention weights.

    Raises:
        EsmtuneError: For a model in another runtime (an ONNX export), saying what to use.
    """
    if not isinstance(loaded.model, SequenceClassifier):
        raise EsmtuneError(
            f"explaining needs the model in torch (gradients, attention weights); "
            f"{loaded.run_dir} runs in {loaded.model.runtime}, an ONNX export. Explain the run "
            "directory itself, or an hf export of it (`esmtune export RUN --format hf --out DIR`)"
        )
    return LoadedRun(loaded.run_dir, loaded.config, loaded.task, loaded.model, loaded.tokenizer)


def _checked_label(task: TaskSpec, label: str) -> int:
    """The output column of ``label``.

    Raises:
        EsmtuneError: On a label the model does not have, with the closest ones.
    """
    if label in task.labels:
        return task.labels.index(label)
    close = difflib.get_close_matches(label, task.labels, n=3)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    shown = ", ".join(task.labels[:20]) + (" ..." if len(task.labels) > 20 else "")
    raise EsmtuneError(f"label '{label}' is not one of this model's: {hint}choose from {shown}")


@contextmanager
def _replaced_output(module: nn.Module, output: torch.Tensor) -> Iterator[None]:
    """``module`` returns ``output`` instead of its own result while inside."""
    handle = module.register_forward_hook(lambda _module, _inputs, _output: output)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _eager_attention(config: EsmConfig) -> Iterator[None]:
    """Eager attention while inside: sdpa (the default) computes no attention weights."""
    before = config._attn_implementation
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = before


def _attention_layers(model: SequenceClassifier) -> list[nn.Module]:
    """The self-attention modules of the backbone, first layer first."""
    from transformers.models.esm.modeling_esm import EsmSelfAttention

    return [module for module in model.backbone.modules() if isinstance(module, EsmSelfAttention)]


def _input_embeddings(model: SequenceClassifier) -> nn.Module:
    """The token embedding table (a LoRA wrapper hands on its base model's)."""
    embeddings: nn.Module = model.backbone.get_input_embeddings()
    return embeddings


def _pooling_weights(
    model: SequenceClassifier, hidden: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """How much each position of ``hidden`` ``(positions, size)`` counts in the pooled vector.

    ``mask`` marks residues. Attention pooling's weights are its softmax; max pooling's, the share
    of hidden units whose maximum a position holds.
    """
    pooling = model.pooler.pooling
    weights = torch.zeros(len(hidden), device=hidden.device)
    if pooling is Pooling.CLS:
        weights[0] = 1.0
    elif pooling is Pooling.MEAN:
        weights[mask] = 1.0 / max(int(mask.sum()), 1)
    elif pooling is Pooling.MAX:
        lowest = torch.finfo(hidden.dtype).min
        winners = hidden.masked_fill(~mask.unsqueeze(-1), lowest).argmax(dim=0)
        weights.index_add_(0, winners, torch.full_like(winners, 1.0, dtype=weights.dtype))
        weights /= hidden.shape[1]
    elif pooling is Pooling.ATTENTION:
        scores = model.pooler.attention_scorer()(hidden).squeeze(-1).float()
        weights = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=0)
    return weights


class Explainer:
    """Residue scores and attention maps of a torch model, read as its Predictor reads.

    Args:
        loaded: The run (or hf export), torch (see :func:`torch_run`).
        device: Where the model is.
        max_length: Residues per model input.
        long_sequences: How longer sequences are read (windows, or cut).
        window_stride: Residues between window starts (None: half a window).
        max_tokens: Token budget of each forward pass (inputs x steps x tokens).
    """

    def __init__(
        self,
        loaded: LoadedRun[SequenceClassifier],
        device: torch.device,
        max_length: int,
        long_sequences: LongSequences,
        window_stride: int | None,
        max_tokens: int,
    ) -> None:
        self.model = loaded.model
        self.task = loaded.task
        self.tokenizer = loaded.tokenizer
        self.device = device
        self.max_length = max_length
        self.long_sequences = long_sequences
        self.window_stride = window_stride
        self.max_tokens = max_tokens

    def explain(
        self, records: list[SequenceRecord], options: ExplainOptions, progress: bool = False
    ) -> list[Explanation]:
        """Score every residue of each record for ``options.label`` (None: the label it got).

        A per-residue run explains the prediction at each of ``options.position`` in every
        record: one explanation per record and position, in that order. There is no default
        position: each costs a whole explanation (``steps`` passes for ``ig``), so every residue
        of a chain would cost its length in explanations, and each residue has a prediction of
        its own, unlike a sequence's one label.

        Raises:
            EsmtuneError: On a label the model does not have, a missing Captum (``ig``), a
                per-residue run without positions, a sequence-level run with them, or positions
                beyond a sequence or not read (every problem at once).
        """
        chosen = None if options.label is None else _checked_label(self.task, options.label)
        positions = self._checked_positions(records, options.position)
        explanations = []
        for record in tqdm(records, desc="explain", unit="seq", disable=not progress):
            windows = self._windows(record.sequence)
            if positions is None:
                explanations.append(self._explain_sequence(record, windows, chosen, options))
                continue
            for position in positions:
                explanations.append(
                    self._explain_residue(record, windows, position, chosen, options)
                )
        return explanations

    def attention(self, record: SequenceRecord, special_tokens: bool = False) -> np.ndarray:
        """Every attention map of the model on one sequence: ``(layers, heads, L, L)``.

        Row i is what position i attends to. ``L`` counts residues only (rows no longer sum to
        1), or, with ``special_tokens``, ``<cls>`` residues ``<eos>`` (L + 2).

        Raises:
            EsmtuneError: On a sequence longer than one model input (max_length residues).
        """
        if len(record.sequence) > self.max_length:
            raise EsmtuneError(
                f"{record.id}: {len(record.sequence)} residues; attention maps cover one model "
                f"input of at most {self.max_length}: pass a slice of the sequence"
            )
        batch = self._batch(self._windows(record.sequence), 1)
        with torch.no_grad(), _eager_attention(self.model.backbone_config):
            out = self.model.backbone(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                output_attentions=True,
            )
        maps = torch.stack(out.attentions)[:, 0].float()  # (layers, heads, L + 2, L + 2)
        if not special_tokens:
            maps = maps[:, :, 1:-1, 1:-1]
        return maps.cpu().numpy()

    # --- what is explained: a sequence's label, or one residue's ------------------------------

    def _explain_sequence(
        self,
        record: SequenceRecord,
        windows: list[Window],
        chosen: int | None,
        options: ExplainOptions,
    ) -> Explanation:
        """The pooled prediction's label (``chosen``, or the one predict gave), every window."""
        with torch.no_grad():
            logits = self.model(**self._batch(windows, 1))
        index = self.task.decided_label(self.task.outputs(logits)[0]) if chosen is None else chosen

        def readout(logits: torch.Tensor) -> torch.Tensor:
            return self.task.label_scores(logits)[:, index]

        output = float(readout(logits)[0])
        token_scores, baseline = self._scores(windows, readout, None, options)
        return Explanation(
            record.id, record.sequence, self.task.labels[index], options.method.value,
            _per_residue(token_scores, windows, len(record.sequence)), output, baseline,
        )  # fmt: skip

    def _explain_residue(
        self,
        record: SequenceRecord,
        windows: list[Window],
        position: int,
        chosen: int | None,
        options: ExplainOptions,
    ) -> Explanation:
        """Residue ``position``'s (from 1) class or value, from the windows that can move it.

        Only windows covering a residue the head reads for ``position`` change its output: the
        others run no pass and score 0 (not NaN: they were read, and moved nothing).
        """
        near, offset = _windows_around(windows, position - 1, _head_reach(self.model))
        slot = position - offset  # in the stitched layout <cls> residues <eos>
        with torch.no_grad():
            logits = self.model(**self._batch(near, 1))
        decided = self.task.decided_label(self.task.outputs(logits)[0][slot])
        index = decided if chosen is None else chosen

        def readout(logits: torch.Tensor) -> torch.Tensor:
            return self.task.label_scores(logits[:, slot])[:, index]

        output = float(readout(logits)[0])
        token_scores, baseline = self._scores(near, readout, slot, options)
        span = _stitched_width(near) - 2
        scores = np.where(_read_residues(windows, len(record.sequence)), 0.0, np.nan)
        scores[offset : offset + span] = _per_residue(token_scores, near, span)
        return Explanation(
            record.id, record.sequence, self.task.labels[index], options.method.value,
            scores.astype(np.float32), output, baseline, position,
        )  # fmt: skip

    def _checked_positions(
        self, records: list[SequenceRecord], positions: list[int] | None
    ) -> list[int] | None:
        """The positions to explain in each record (None: the sequence's one prediction).

        Raises:
            EsmtuneError: On positions a sequence-level run cannot take, none for a per-residue
                run, or positions beyond a record or left unread by a cut (all listed).
        """
        noun = self.task.task.value
        if not self.task.per_residue:
            if positions is not None:
                raise EsmtuneError(
                    f"--position (Python: position=) chooses a residue of a per-residue run; "
                    f"this {noun} run makes one prediction per sequence, explained as a whole: "
                    "leave the position out"
                )
            return None
        if positions is None:
            raise EsmtuneError(
                f"this {noun} run predicts each residue: choose the residue(s) whose prediction "
                "to explain with --position N (Python: position=N), numbered from 1 as predict "
                "--format text numbers them; several: --position 10 --position 42, a list 10,42 "
                "or a range 10-20"
            )
        problems = [
            problem
            for record in records
            if (problem := self._unexplainable(record, positions)) is not None
        ]
        if problems:
            shown = problems[:_NAMED_PROBLEMS]
            more = len(problems) - len(shown)
            raise EsmtuneError(
                f"{len(problems)} sequence(s) cannot be explained at the positions asked:\n  - "
                + "\n  - ".join(shown)
                + (f"\n  ... and {more} more" if more else "")
            )
        return positions

    def _unexplainable(self, record: SequenceRecord, positions: list[int]) -> str | None:
        """What is wrong with ``positions`` in ``record``: beyond its end, or not read; or None."""
        length = len(record.sequence)
        beyond = [p for p in positions if p > length]
        if beyond:
            return (
                f"{record.id} has {length} residues: position(s) {_listed(beyond)} are beyond "
                f"it; choose positions from 1 to {length}"
            )
        read = _read_residues(self._windows(record.sequence), length)
        unread = [p for p in positions if not read[p - 1]]
        if not unread:
            return None
        first, last = np.flatnonzero(read)[[0, -1]] + 1
        return (
            f"{record.id}: position(s) {_listed(unread)} were not read (--long-sequences "
            f"{self.long_sequences.value} reads residues {first}-{last} of {length}); choose "
            "positions read, or --long-sequences window, which reads every residue"
        )

    def _scores(
        self,
        windows: list[Window],
        readout: Callable[[torch.Tensor], torch.Tensor],
        slot: int | None,
        options: ExplainOptions,
    ) -> tuple[torch.Tensor, float | None]:
        """Scores per window row and token ``(rows, tokens)``, and ig's baseline output.

        ``readout`` takes the model's logits to the explained number per batch row (ig);
        ``slot`` is the explained residue's place in the stitched layout, None for the pooled
        representation (rollout).
        """
        if options.method is Method.IG:
            return self._integrated_gradients(windows, readout, options.steps)
        return self._rollout(windows, slot), None

    # --- reading sequences as the Predictor does ----------------------------------------------

    def _windows(self, sequence: str) -> list[Window]:
        return encode(
            self.tokenizer, [sequence], self.max_length, self.long_sequences, self.window_stride
        )[0]

    def _batch(self, windows: list[Window], copies: int) -> dict[str, torch.Tensor]:
        """``copies`` copies of one sequence's windows, as a collated batch on the device."""
        pad = self.tokenizer.pad_token_id
        batch = pad_collate([(copy, windows, None) for copy in range(copies)], pad)
        batch.pop("index")
        return {key: tensor.to(self.device) for key, tensor in batch.items()}

    # --- the two methods: scores per window row and token, and the baseline output ------------

    def _integrated_gradients(
        self,
        windows: list[Window],
        readout: Callable[[torch.Tensor], torch.Tensor],
        steps: int,
    ) -> tuple[torch.Tensor, float | None]:
        """Attributions summed over the hidden size ``(window rows, tokens)``; baseline output.

        Each of Captum's batches holds several steps, each step a copy of every window of the
        sequence (so the model stitches them as it predicts), as many as the token budget holds.
        """
        try:
            from captum.attr import IntegratedGradients
        except ImportError:
            raise EsmtuneError(
                "integrated gradients need Captum: pip install 'esmtune[explain]' "
                "(or --method rollout, which does not)"
            ) from None
        embedding = _input_embeddings(self.model)
        batch = self._batch(windows, 1)
        rows = len(windows)

        def explained(embedded: torch.Tensor) -> torch.Tensor:
            """The explained number for a batch of steps, each a copy of the sequence's windows."""
            copies = self._batch(windows, len(embedded) // rows)
            with _replaced_output(embedding, embedded):
                return readout(self.model(**copies))

        with torch.no_grad():
            inputs = embedding(batch["input_ids"]).float()
        residues = _residue_tokens(windows, batch["input_ids"])
        pad = embedding(torch.tensor([self.tokenizer.pad_token_id], device=self.device))
        baselines = torch.where(residues.unsqueeze(-1), pad.detach().float(), inputs)
        per_pass = max(1, self.max_tokens // batch["input_ids"].numel())
        attributions = IntegratedGradients(explained).attribute(
            inputs, baselines=baselines, n_steps=steps, internal_batch_size=per_pass * rows
        )
        with torch.no_grad():
            baseline = float(explained(baselines)[0])
        return attributions.sum(dim=-1).detach(), baseline

    def _rollout(self, windows: list[Window], slot: int | None) -> torch.Tensor:
        """Rollout read at ``slot``'s token, or through the pooling (the same for every label)."""
        batch = self._batch(windows, 1)
        with torch.no_grad():
            if slot is None:
                hidden, mask = self.model.residue_states(**batch)
                weights = _pooling_weights(self.model, hidden[0].float(), mask[0])
            else:
                weights = torch.zeros(_stitched_width(windows), device=self.device)
                weights[slot] = 1.0
            rows = _window_row_weights(weights, windows, batch["attention_mask"])
            flow = self._attention_flow(batch)
        return torch.einsum("wi,wij->wj", rows, flow)

    def _attention_flow(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Attention rollout of each window ``(windows, tokens, tokens)``.

        Row i is where token i's final state comes from, as shares of the input tokens.

        Each layer's map is folded in as it is computed (a forward hook), so that memory holds
        two maps per window, not every layer's and head's.
        """
        ids, attention_mask = batch["input_ids"], batch["attention_mask"]
        tokens = ids.shape[1]
        identity = torch.eye(tokens, device=ids.device)
        flow = identity.expand(len(ids), tokens, tokens).clone()

        def fold(_module: nn.Module, _inputs: Any, output: tuple[torch.Tensor, Any]) -> None:
            nonlocal flow
            mixed = 0.5 * output[1].float().mean(dim=1) + 0.5 * identity  # residual path
            mixed = mixed / mixed.sum(dim=-1, keepdim=True)
            flow = mixed @ flow

        handles = [layer.register_forward_hook(fold) for layer in _attention_layers(self.model)]
        try:
            with _eager_attention(self.model.backbone_config):
                self.model.backbone(input_ids=ids, attention_mask=attention_mask)
        finally:
            for handle in handles:
                handle.remove()
        return flow


def _residue_tokens(windows: list[Window], input_ids: torch.Tensor) -> torch.Tensor:
    """True on the residue tokens of each window row (not ``<cls>``, ``<eos>``, padding)."""
    residues = torch.zeros(input_ids.shape, dtype=torch.bool, device=input_ids.device)
    for row, window in enumerate(windows):
        residues[row, 1 : len(window.ids) - 1] = True
    return residues


def _head_reach(model: SequenceClassifier) -> int | None:
    """Residues either side a residue's output reads through the head (None: maybe all)."""
    return model.residue_reach if isinstance(model, ResidueClassifier) else None


def _windows_around(
    windows: list[Window], index: int, reach: int | None
) -> tuple[list[Window], int]:
    """The windows that can move residue ``index``'s (from 0) output, and where they start.

    Those covering any residue within ``reach`` of it (None: every window), which are
    consecutive; moved to start at residue 0, so that they stitch as a sequence of their own.
    """
    if reach is None:
        near = windows
    else:
        near = [
            window
            for window in windows
            if window.start <= index + reach and window.start + len(window.ids) - 2 > index - reach
        ]
    offset = near[0].start
    return [Window(window.start - offset, window.ids) for window in near], offset


def _stitched_width(windows: list[Window]) -> int:
    """Positions of the windows' stitched states: ``<cls>``, the residues, ``<eos>``."""
    return max(window.start + len(window.ids) for window in windows)


def _read_residues(windows: list[Window], length: int) -> np.ndarray:
    """True on each residue of a ``length``-residue sequence that some window reads."""
    read = np.zeros(length, dtype=bool)
    for window in windows:
        read[window.start : window.start + len(window.ids) - 2] = True
    return read


def _listed(positions: list[int]) -> str:
    """Positions for a message: the first few, and how many more."""
    shown = ", ".join(str(p) for p in positions[:_NAMED_POSITIONS])
    more = len(positions) - _NAMED_POSITIONS
    return f"{shown} and {more} more" if more > 0 else shown


def _window_row_weights(
    weights: torch.Tensor, windows: list[Window], attention_mask: torch.Tensor
) -> torch.Tensor:
    """Pooling weights of the stitched positions, handed back to the window rows they came from.

    A stitched state is the mean of its copies in the windows covering it (``<cls>`` and
    ``<eos>``: in every window), so each copy carries its weight divided by the copies.
    """
    rows = torch.zeros(attention_mask.shape, device=weights.device)
    coverage = torch.zeros(len(weights), device=weights.device)
    for window in windows:
        coverage[1 + window.start : window.start + len(window.ids) - 1] += 1
    for row, window in enumerate(windows):
        residues = len(window.ids) - 2
        span = slice(1 + window.start, 1 + window.start + residues)
        rows[row, 0] = weights[0] / len(windows)
        rows[row, 1 : 1 + residues] = weights[span] / coverage[span]
        rows[row, 1 + residues] = weights[-1] / len(windows)
    return rows


def _per_residue(token_scores: torch.Tensor, windows: list[Window], length: int) -> np.ndarray:
    """Scores ``(window rows, tokens)`` summed into one per residue; NaN where none was read."""
    scores = np.zeros(length, dtype=np.float64)
    read = np.zeros(length, dtype=bool)
    values = token_scores.detach().double().cpu().numpy()
    for row, window in enumerate(windows):
        residues = len(window.ids) - 2
        scores[window.start : window.start + residues] += values[row, 1 : 1 + residues]
        read[window.start : window.start + residues] = True
    scores[~read] = np.nan
    return scores.astype(np.float32)


def loose_note(explanations: list[Explanation], steps: int) -> str | None:
    """A note when some ``ig`` scores miss the change in output (see ``completeness_gap``).

    Returns:
        What to tell the user (how many, the worst, more steps), or None when every sum holds
        within :data:`COMPLETENESS_TOLERANCE`.
    """
    loose = [
        (abs(gap), item)
        for item in explanations
        if (gap := item.completeness_gap) is not None
        and abs(gap) > COMPLETENESS_TOLERANCE * max(1.0, abs(item.output))
    ]
    if not loose:
        return None
    gap, worst = max(loose, key=lambda pair: pair[0])
    at = "" if worst.position is None else f" at {worst.residue}{worst.position}"
    return (
        f"note: the scores of {len(loose)} explanation(s) miss output - baseline by more than "
        f"{COMPLETENESS_TOLERANCE:.0%} (worst: {worst.id}{at}, by {gap:.3g}): the model's "
        f"output changes sharply along the path, which {steps} --steps follow loosely; raise "
        f"--steps (e.g. {steps * 4})"
    )


def write_explanations(explanations: list[Explanation], handle: TextIO) -> None:
    """One TSV row per residue: :data:`EXPLANATION_COLUMNS`, positions 1-based; NaN unread.

    Explanations at a position (per-residue runs) add :data:`RESIDUE_EXPLANATION_COLUMNS`'
    last two: the residue explained and its letter, on every row.
    """
    at_residue = any(explanation.position is not None for explanation in explanations)
    writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
    writer.writerow(RESIDUE_EXPLANATION_COLUMNS if at_residue else EXPLANATION_COLUMNS)
    for explanation in explanations:
        explained = [explanation.position or "", explanation.residue or ""] if at_residue else []
        for position, (residue, score) in enumerate(
            zip(explanation.sequence, explanation.scores.tolist(), strict=True), start=1
        ):
            shown = "NaN" if math.isnan(score) else f"{score:.6g}"
            writer.writerow(
                [
                    explanation.id, position, residue, shown, explanation.method,
                    explanation.label, *explained,
                ]
            )  # fmt: skip


_METHOD_TITLES = {
    Method.IG: "integrated gradients: for the label (up) or against it (down)",
    Method.ROLLOUT: "attention rollout: where the pooled representation comes from",
}
# Per-residue runs: the label is the explained residue's class (or value), rollout its token's.
_RESIDUE_METHOD_TITLES = {  # short enough for the narrowest figure (a chain of 20 residues)
    Method.IG: "integrated gradients at the marked residue: for (up) or against (down)",
    Method.ROLLOUT: "attention rollout: where the marked residue's state comes from",
}


def _track_name(item: Explanation) -> str:
    """A track's title: the id, the residue explained if any, the label and its output."""
    at = "" if item.position is None else f"{item.residue}{item.position} "
    return f"{item.id}    {at}{item.label}: {item.output:.3g}"


def _plot_name(item: Explanation) -> str:
    """The file stem of an explanation's PNG: its id made safe, and the position explained."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", item.id).strip("._") or "sequence"
    return stem if item.position is None else f"{stem}-{item.position}"


def plot_explanations(explanations: list[Explanation], path: Path) -> list[Path]:
    """Track plots of the scores, residue position along x, each track titled by id and label.

    A per-residue run's tracks are titled by the residue explained too (``K42``), which is
    marked along x.

    Args:
        explanations: What :meth:`Explainer.explain` returned (one method).
        path: A .png, .svg or .pdf file, one figure with a track per explanation; or a folder,
            one ``<id>.png`` per explanation (``<id>-<position>.png`` at a position;
            characters unsafe in file names become ``_``).

    Returns:
        The files written.

    Raises:
        EsmtuneError: On a file of another format, or too many explanations for one figure.
    """
    if not explanations:
        return []
    method = Method(explanations[0].method)
    at_residue = any(item.position is not None for item in explanations)
    title = (_RESIDUE_METHOD_TITLES if at_residue else _METHOD_TITLES)[method]
    tracks = [(_track_name(item), item.sequence, item.scores) for item in explanations]
    marks = [item.position for item in explanations]
    if one_figure(path, len(tracks)):
        plot_residue_scores(tracks, path, title, marks)
        return [path]
    written: list[Path] = []
    for item, track in zip(explanations, tracks, strict=True):
        stem = _plot_name(item)
        target, copy = path / f"{stem}.png", 1
        while target in written:  # two ids that read alike once made safe
            copy += 1
            target = path / f"{stem}-{copy}.png"
        plot_residue_scores([track], target, title, [item.position])
        written.append(target)
    return written
