"""The ``hf`` export: a Hugging Face model folder, plus esmtune's pooling and head.

LoRA adapters are merged into the backbone, which is saved as a standard ``EsmModel`` folder that
plain transformers loads; with ``model.head=esm`` the folder is a whole
``EsmForSequenceClassification``. esmtune's pooling and head go to ``esmtune_head.safetensors``
(with the decision thresholds), so :func:`load_export` rebuilds exactly the run's classifier.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from esmtune.config import FinetuneMode
from esmtune.errors import EsmtuneError, ModelLoadError, RunDirError
from esmtune.export.files import HEAD_FILE, ONNX_FILE, read_export
from esmtune.export.names import FormatName, Runtime
from esmtune.extras import require_training_stack
from esmtune.rundir import CONFIG_FILE, save_weights

if TYPE_CHECKING:  # torch and transformers load when an hf export is written or loaded
    import torch

    from esmtune.model.classifier import SequenceClassifier
    from esmtune.model.loaded import LoadedRun

__all__ = ["HfFormat", "load_export"]


# What the usual transformers recipe does after the logits, per task (shown in the model card).
class HfFormat:
    """``--format hf``: runs in torch; see the module docstring for what it writes."""

    name = FormatName.HF
    entry_files: ClassVar[Mapping[str, str]] = {Runtime.TORCH: HEAD_FILE}
    quantizations: ClassVar[Mapping[str, str]] = {}
    required_modules: tuple[str, ...] = ()
    library_name = "transformers"
    other_runtimes = (
        "for onnxruntime export the run with `--format onnx` (add `--quantize int8` for the "
        "int8 graph)"
    )

    def write(
        self,
        loaded: LoadedRun[SequenceClassifier],
        model: SequenceClassifier,
        folder: Path,
        quantize: str | None,
    ) -> None:
        """The folder is itself a Hugging Face model folder, plus esmtune's head.

        With the ``esm`` head it is an ``EsmForSequenceClassification`` (loads with
        ``AutoModelForSequenceClassification``); otherwise an ``EsmModel``, the head being
        esmtune's own. Either way ``EsmModel.from_pretrained`` loads the backbone.
        """
        from transformers import EsmModel

        from esmtune.model.run_model import hf_tokenizer
        from esmtune.model.transformers_head import (
            to_sequence_classification,
            to_token_classification,
            token_classifier_layer,
        )

        if loaded.config.model.head == "esm":
            to_sequence_classification(model, loaded.task).save_pretrained(folder)
        elif token_classifier_layer(model) is not None:
            to_token_classification(model, loaded.task).save_pretrained(folder)
        else:
            backbone = model.backbone
            if not isinstance(backbone, EsmModel):  # export hands over the merged classifier
                raise EsmtuneError("merge the LoRA adapters before saving the backbone")
            labels = loaded.task.labels
            backbone.config.id2label = dict(enumerate(labels))
            backbone.config.label2id = {label: i for i, label in enumerate(labels)}
            backbone.save_pretrained(folder, safe_serialization=True)
        hf_tokenizer(loaded).save_pretrained(folder)
        task = loaded.task
        save_weights(_head_tensors(model), folder / HEAD_FILE, task.thresholds, task.calibration)

    def load(self, folder: Path, runtime: str, device: str | None) -> LoadedRun[SequenceClassifier]:
        """The export's classifier, on the CPU (the Predictor moves it to its device)."""
        require_training_stack("an hf export (torch)")
        return load_export(folder)

    def files_read(self, folder: Path, runtime: str) -> list[Path]:
        """The backbone's (or whole classifier's) weights and esmtune's head."""
        return sorted(folder.glob("*.safetensors"))

    def card_metadata(self, loaded: LoadedRun[SequenceClassifier]) -> dict[str, Any]:
        """With the ``esm`` head the folder is a text classifier the hub's widget can run."""
        if _token_head(loaded):
            return {"pipeline_tag": "token-classification"}
        return {"pipeline_tag": "text-classification"} if _standard_head(loaded) else {}

    def usage(self, loaded: LoadedRun[SequenceClassifier], quantize: str | None) -> list[str]:
        """How plain transformers loads the folder: the whole classifier, or the backbone."""
        if _token_head(loaded):
            return [
                "With plain transformers, the whole per-residue classifier (esmtune's linear "
                "`mlp` head is EsmForTokenClassification's); residue i is token i + 1, after "
                "`<cls>`:",
                "",
                "```python",
                "import torch",
                "from transformers import AutoModelForTokenClassification, AutoTokenizer",
                "",
                'model = AutoModelForTokenClassification.from_pretrained("path/to/this/folder")',
                'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
                'batch = tokenizer(["MKTAYIAKQR"], return_tensors="pt", padding=True)',
                "with torch.no_grad():",
                "    logits = model(**batch).logits[:, 1:-1]",
                loaded.task.hf_usage,
                "print(model.config.id2label)",
                "```",
            ]
        if _standard_head(loaded):
            thresholds = loaded.task.thresholds
            note = f" (esmtune's decision thresholds: {thresholds})" if thresholds else ""
            return [
                "With plain transformers, the whole classifier (esmtune's `esm` head is "
                f"EsmForSequenceClassification's){note}:",
                "",
                "```python",
                "import torch",
                "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
                "",
                'model = AutoModelForSequenceClassification.from_pretrained("path/to/this/folder")',
                'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
                'batch = tokenizer(["MKTAYIAKQR"], return_tensors="pt", padding=True)',
                "with torch.no_grad():",
                "    logits = model(**batch).logits",
                loaded.task.hf_usage,
                "print(model.config.id2label)",
                "```",
            ]
        return [
            *_per_residue_note(loaded),
            "With plain transformers (the fine-tuned backbone only; the head is esmtune's, in "
            f"`{HEAD_FILE}`):",
            "",
            "```python",
            "from transformers import AutoTokenizer, EsmModel",
            "",
            'backbone = EsmModel.from_pretrained("path/to/this/folder", add_pooling_layer=False)',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
            "print(backbone.config.id2label)",
            "```",
        ]


def _token_head(loaded: LoadedRun[SequenceClassifier]) -> bool:
    """Whether the export is an EsmForTokenClassification folder."""
    from esmtune.model.transformers_head import token_classifier_layer

    return token_classifier_layer(loaded.model) is not None


def _per_residue_note(loaded: LoadedRun[SequenceClassifier]) -> list[str]:
    """Why a per-residue head is esmtune's own, not transformers' token classifier."""
    if not loaded.task.per_residue:
        return []
    head = loaded.config.model.head
    shape = (
        f"a convolution over neighbouring residues (kernel {loaded.config.model.head_kernel_size})"
        if head == "cnn"
        else f"an MLP (hidden layers {loaded.config.model.head_hidden})"
    )
    return [
        f"This model predicts per residue ({loaded.task.task.value}): its `{head}` head is "
        f"{shape} on every residue state. transformers' `EsmForTokenClassification` holds a "
        "single linear layer (`model.head_hidden=[]`), so it cannot hold this head: load the "
        "folder with esmtune "
        "(`esmtune.Predictor.from_export`) for per-residue predictions, or run the head of "
        f"`{HEAD_FILE}` on the backbone's states yourself (residue i is token i + 1).",
        "",
    ]


def _standard_head(loaded: LoadedRun[SequenceClassifier]) -> bool:
    """Whether the export is an EsmForSequenceClassification folder."""
    return loaded.config.model.head == "esm"


def _head_tensors(model: SequenceClassifier) -> dict[str, torch.Tensor]:
    """Pooling and head weights, named as in the classifier's state dict."""
    state = model.state_dict()
    return {
        name: tensor.detach().cpu().contiguous()
        for name, tensor in state.items()
        if name.startswith(("pooler.", "head."))
    }


def load_export(export_dir: Path | str) -> LoadedRun[SequenceClassifier]:
    """Rebuild the classifier of an ``hf`` export, from the folder alone.

    The backbone comes from the export's own weights (``model.name`` = the folder,
    ``finetune.mode=frozen`` so no adapters are added); pooling and head from
    ``esmtune_head.safetensors``.

    Returns:
        The model (eval mode, CPU), its tokenizer, the task (with thresholds) and the config.

    Raises:
        RunDirError: When the folder is not an ``hf`` export.
        ModelLoadError: When the head does not fit the rebuilt model.
    """
    from safetensors.torch import load_file

    from esmtune.model.classifier import build_model
    from esmtune.model.loaded import LoadedRun

    folder = Path(export_dir)
    if (folder / ONNX_FILE).is_file():
        raise RunDirError(f"{folder} is an ONNX export: load it with load_onnx_export")
    if not (folder / HEAD_FILE).is_file():
        raise RunDirError(
            f"{folder} is not an esmtune hf export: {HEAD_FILE} is missing "
            "(create one with `esmtune export RUN --format hf --out DIR`)"
        )
    config, task = read_export(folder)
    config.model.name = str(folder)
    config.model.revision = None
    config.model.pretrained = True
    config.model.gradient_checkpointing = False
    config.finetune.mode = FinetuneMode.FROZEN
    model, tokenizer = build_model(config, task.num_outputs)
    head = load_file(str(folder / HEAD_FILE))
    result = model.load_state_dict(head, strict=False)
    missing_head = [name for name in result.missing_keys if name.startswith(("pooler.", "head."))]
    if result.unexpected_keys or missing_head:
        raise ModelLoadError(
            f"{folder / HEAD_FILE} does not fit the model rebuilt from {folder / CONFIG_FILE} "
            f"(unexpected: {result.unexpected_keys[:3]}, missing: {missing_head[:3]}); "
            "was config.yaml edited after export?"
        )
    return LoadedRun(folder, config, task, model.eval(), tokenizer)
