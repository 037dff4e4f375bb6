"""The model card every export carries: README.md in the Hugging Face layout.

YAML front matter for the hub, then what a person needs before using the model: the base model,
task, labels and head, the training data, validation metrics, how the export compared with the
run, and how to load it with esmtune or without it (that part is the format's own).
"""

from __future__ import annotations

from typing import Any

import yaml

from esmtune.export.formats import ExportFormat
from esmtune.model.classifier import SequenceClassifier
from esmtune.model.run_model import LoadedRun
from esmtune.rundir import MANIFEST_FILE, METRICS_FILE, read_json

__all__ = ["model_card"]


def model_card(
    loaded: LoadedRun[SequenceClassifier],
    form: ExportFormat,
    quantize: str | None,
    name: str,
    info: dict[str, Any],
) -> str:
    """README.md for the export ``name`` of the run ``loaded``; ``info`` is ``export.json``."""
    config, task = loaded.config, loaded.task
    manifest = read_json(loaded.run_dir / MANIFEST_FILE)
    metrics = read_json(loaded.run_dir / METRICS_FILE)
    base = config.model.name if config.model.pretrained else f"{config.model.name} (random init)"
    front = {
        "library_name": form.library_name,
        "tags": ["esmtune", "esm2", "protein", task.task.value],
        **({"base_model": config.model.name} if config.model.pretrained else {}),
        **form.card_metadata(loaded),
    }
    thresholds = f"; decision thresholds: {task.thresholds}" if task.thresholds else ""
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).strip(),
        "---",
        "",
        f"# {name}",
        "",
        f"An ESM2 protein sequence model fine-tuned with esmtune ({config.finetune.mode.value}), "
        f"exported as `{form.name}`{f' with an {quantize} copy' if quantize else ''}.",
        "",
        f"- **Base model:** {base}",
        f"- **Task:** {task.task.value}",
        f"- **Labels ({len(task.labels)}):** {', '.join(task.labels)}{thresholds}",
        f"- **Pooling / head:** {_head_description(loaded)}",
        f"- **Max length:** {config.data.max_length} residues per input",
        f"- **Versions:** {manifest.get('versions', 'not recorded')}",
        "",
        "## Training data",
        "",
        *_data_summary(manifest),
        "",
        "## Validation metrics",
        "",
        *_metrics_summary(metrics),
        "",
        "## Checked against the run",
        "",
        *_check_summary(info),
        "",
        "## How to load it",
        "",
        *_esmtune_usage(),
        *form.usage(loaded, quantize),
        "",
    ]
    return "\n".join(lines)


def _head_description(loaded: LoadedRun[SequenceClassifier]) -> str:
    """The head the run trained: esmtune's MLP on the pooled states, or transformers' own."""
    model = loaded.config.model
    if model.head == "esm":
        width = loaded.model.backbone_config.hidden_size
        return (
            "transformers' EsmForSequenceClassification head on the `<cls>` state "
            f"(dense {width} + tanh + out_proj)"
        )
    return f"{model.pooling.value} pooling, MLP head {model.head_hidden or 'linear'}"


def _data_summary(manifest: dict[str, Any]) -> list[str]:
    """The task's data summary per split (flat label counts, or nested statistics) as a table."""
    data = manifest.get("data", {})
    counts: dict[str, dict[str, Any]] = data.get("counts", {})
    if not counts:
        return ["No data summary was recorded with the run."]
    splits = list(counts)
    flat = {split: _flattened(summary) for split, summary in counts.items()}
    rows = list(dict.fromkeys(name for split in splits for name in flat[split]))
    if all(all(isinstance(v, int) for v in flat[split].values()) for split in splits):
        rows = sorted(rows)  # label counts: one row per label, then their total
    lines = [
        f"Source: `{data.get('path', '?')}` ({data.get('layout', 'layout not recorded')}).",
        "",
    ]
    lines += ["| label | " + " | ".join(splits) + " |", "|---" * (len(splits) + 1) + "|"]
    for name in rows:
        cells = [_cell(flat[split].get(name, 0)) for split in splits]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    if all(all(isinstance(v, int) for v in flat[split].values()) for split in splits):
        totals = [str(sum(flat[split].values())) for split in splits]
        lines.append("| **total** | " + " | ".join(totals) + " |")
    return lines


def _flattened(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested summary entries (``classes.H``, ``value.mean``) as one level of names."""
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update(_flattened(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _metrics_summary(metrics: dict[str, Any]) -> list[str]:
    history = metrics.get("history", [])
    best = next((h for h in history if h.get("epoch") == metrics.get("best_epoch")), None)
    if best is None:
        return ["No validation metrics were recorded with the run."]
    lines = [
        f"Best epoch {best['epoch']} of {metrics.get('epochs_run', '?')}, selected on "
        f"`{metrics.get('selection_metric', '?')}`.",
        "",
        "| metric | value |",
        "|---|---|",
    ]
    for name, value in best.items():
        if name not in {"epoch", "step"} and isinstance(value, int | float):
            lines.append(f"| {name} | {value:.4f} |")
    return lines


def _check_summary(info: dict[str, Any]) -> list[str]:
    """The export check as a table: each runtime against the run."""
    check = info.get("check")
    if not check:
        return ["No check was run (`--check-sequences 0`)."]
    lines = [
        f"Each runtime predicted {check['sequences']} sequences ({check['residues']:,} residues; "
        f"{check['source']}) next to the run itself, on the exporting machine's CPU. "
        f"Default runtime: **{info['default_runtime']}** (the fastest that kept the labels).",
        "",
        "| runtime | residues/s | same label as the run | max abs difference | file size |",
        "|---|---|---|---|---|",
    ]
    for name, row in check["runtimes"].items():
        if name == "run":
            lines.append(f"| run (torch) | {row['residues_per_second']:,.0f} | - | - | - |")
            continue
        lines.append(
            f"| {name} | {row['residues_per_second']:,.0f} | {row['label_agreement']:.1%} | "
            f"{row['max_abs_difference']:.2g} | {row['file_bytes'] / 2**20:,.1f} MiB |"
        )
    return lines


def _esmtune_usage() -> list[str]:
    return [
        "With esmtune (backbone, pooling, head, thresholds; long sequences in windows):",
        "",
        "```bash",
        "esmtune predict path/to/this/folder sequences.fasta -o predictions.tsv",
        "esmtune serve path/to/this/folder --port 8000",
        "```",
        "",
        "```python",
        "from esmtune import Predictor",
        "",
        'predictor = Predictor.from_export("path/to/this/folder")',
        'print(predictor.predict(["MKTAYIAKQR"], top_k=3))',
        "```",
        "",
    ]
