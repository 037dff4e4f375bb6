"""The ``onnx`` export: the classifier traced to two ONNX graphs for onnxruntime.

``model.onnx`` is the token path (``input_ids, attention_mask -> logits, hidden_states``) with
dynamic batch and sequence axes; ``head.onnx`` pools stitched window states (``hidden_states,
residue_mask -> logits``) for sequences longer than the context. For a per-residue run both
graphs give logits per position (``batch x tokens x outputs``, residue ``i`` at position ``i + 1``)
and ``head.onnx`` runs the head on stitched states instead of pooling them. ``--quantize int8`` adds
``model.int8.onnx``, dynamically quantised by onnxruntime. Running them is
:mod:`esmtune.export.onnx_runtime`'s.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from esmtune.export.files import INT8_FILE, ONNX_FILE, POOL_HEAD_FILE
from esmtune.export.names import FormatName, Runtime
from esmtune.export.onnx_runtime import OnnxClassifier, load_onnx_export

if TYPE_CHECKING:
    from esmtune.model.classifier import SequenceClassifier
    from esmtune.model.loaded import LoadedRun

__all__ = ["ONNX_OPSET", "OnnxFormat"]

# Opset 23 has a fused Attention operator (onnxruntime >= 1.23 runs it on the CPU): ESM2's
# attention then runs as one kernel instead of a dozen matmul/softmax/mask nodes, which made
# model.onnx 1.8x faster on t6_8M (benchmarks/export_bench.py).
ONNX_OPSET = 23


class OnnxFormat:
    """``--format onnx``: runs in onnxruntime, fp32 or (with ``--quantize int8``) int8."""

    name = FormatName.ONNX
    entry_files: ClassVar[Mapping[str, str]] = {
        Runtime.ONNX: ONNX_FILE,
        Runtime.ONNX_INT8: INT8_FILE,
    }
    quantizations: ClassVar[Mapping[str, str]] = {"int8": Runtime.ONNX_INT8}
    required_modules = ("onnx", "onnxscript", "onnxruntime")
    library_name = "onnx"
    other_runtimes = (
        "it holds no torch weights: predict from the run, or from an hf export, to use torch"
    )

    def write(
        self,
        loaded: LoadedRun[SequenceClassifier],
        model: SequenceClassifier,
        folder: Path,
        quantize: str | None,
    ) -> None:
        """``model.onnx`` (+ ``model.int8.onnx``) for the token path, ``head.onnx`` for windows."""
        from esmtune.export.onnx_trace import write_onnx  # torch's exporter: only to write

        write_onnx(loaded, model, folder, quantize)

    def load(self, folder: Path, runtime: str, device: str | None) -> LoadedRun[OnnxClassifier]:
        """The fp32 or int8 graph in onnxruntime, on the CPU or (``cuda``) onnxruntime-gpu."""
        return load_onnx_export(folder, quantized=runtime == Runtime.ONNX_INT8, device=device)

    def files_read(self, folder: Path, runtime: str) -> list[Path]:
        """The runtime's graph (with any side file of its weights) and the window head."""
        graph = self.entry_files[runtime]
        return [*sorted(folder.glob(f"{graph}*")), folder / POOL_HEAD_FILE]

    def card_metadata(self, loaded: LoadedRun[SequenceClassifier]) -> dict[str, Any]:
        """Nothing beyond ``library_name``: the hub has no widget for raw ONNX graphs."""
        return {}

    def usage(self, loaded: LoadedRun[SequenceClassifier], quantize: str | None) -> list[str]:
        """How onnxruntime alone runs ``model.onnx``: its inputs and outputs."""
        files = f"`{ONNX_FILE}` (fp32)" + (f" and `{INT8_FILE}` (dynamic int8)" if quantize else "")
        if loaded.task.per_residue:
            shape = "batch x tokens x outputs: residue i at token i + 1, after `<cls>`"
            windows = "runs the head on the residue states of windows stitched together"
        else:
            shape, windows = "batch x outputs", "pools stitched windows"
        return [
            f"With onnxruntime >= 1.23 alone (ONNX opset {ONNX_OPSET}): {files}; inputs "
            "`input_ids`, `attention_mask` (int64, batch x tokens, with `<cls>`/`<eos>`), "
            f"outputs `logits` ({shape}, before the task's sigmoid/softmax) and "
            f"`hidden_states`; `{POOL_HEAD_FILE}` {windows}.",
            "",
            "```python",
            "import onnxruntime",
            "from transformers import AutoTokenizer",
            "",
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            f'session = onnxruntime.InferenceSession("path/to/this/folder/{ONNX_FILE}")',
            'batch = tokenizer(["MKTAYIAKQR"], return_tensors="np", padding=True)',
            'logits = session.run(["logits"], {"input_ids": batch["input_ids"],',
            '                                  "attention_mask": batch["attention_mask"]})[0]',
            "```",
        ]
