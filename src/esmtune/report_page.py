"""One self-contained HTML page per evaluation: ``RUN/eval/<split>/report.html``.

Everything a reader needs to judge a score on one page that opens anywhere, offline and without
esmtune: the run's settings, the data check (with leakage), the metrics with their intervals
beside the baseline, the calibration, metrics per identity bin, and every figure. Images are
inlined as base64 and the styles sit in the page, so it can be mailed or attached to a lab notebook;
no script runs. The evaluation's metrics.json is embedded as JSON for tools that read the page.
Rendering uses Jinja2 with autoescaping: sequence ids and labels come from user files.
"""

from __future__ import annotations

import base64
import json
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment

__all__ = ["REPORT_FILE", "write_report"]

REPORT_FILE = "report.html"

# Figures of the run (not the evaluation) shown after the evaluation's own.
_RUN_FIGURES = ("training_curves.png",)
# Per-row tables of metrics.json: key, then what a row is.
_TABLES = (("per_class", "class"), ("per_label", "label"), ("per_target", "target"))
# Config settings worth a line in the summary (dotted paths into config.yaml).
_SETTINGS = (
    "task", "model.name", "model.pretrained", "finetune.mode", "model.pooling", "model.head",
    "data.max_length", "data.long_sequences", "training.epochs", "training.learning_rate",
    "training.seed", "objective.calibrate",
)  # fmt: skip


def _number(value: Any, signed: bool = False) -> str:
    """Three decimals (or a count), n/a for None and non-finite values."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "n/a"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:+,}" if signed else f"{value:,}"
    if isinstance(value, float):
        return (
            f"{value:+.3f}" if signed else (f"{value:.3f}" if abs(value) < 1e4 else f"{value:.4g}")
        )
    return str(value)


def _interval(spread: dict[str, Any] | None) -> str:
    if not spread or spread.get("low") is None or spread.get("high") is None:
        return ""
    return f"[{_number(spread['low'])}, {_number(spread['high'])}]"


def _dotted(mapping: dict[str, Any], path: str) -> Any:
    value: Any = mapping
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def _scalars(metrics: dict[str, Any]) -> list[tuple[str, Any]]:
    """Top-level numbers of metrics.json (the tables and nested reports are shown apart)."""
    return [
        (name, value)
        for name, value in metrics.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    ]


def _rows_table(metrics: dict[str, Any]) -> tuple[str, list[str], list[list[Any]]] | None:
    """The per-class (label, target) table: what a row is, its columns and rows."""
    for key, noun in _TABLES:
        table = metrics.get(key)
        if isinstance(table, dict) and table:
            columns = [c for c in next(iter(table.values())) if not isinstance(c, dict)]
            rows = [[name, *(row.get(c) for c in columns)] for name, row in table.items()]
            return noun, columns, rows
    return None


def _image(path: Path) -> dict[str, str]:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return {"name": path.name, "src": f"data:image/png;base64,{data}"}


def _figures(out: Path, run_dir: Path) -> list[dict[str, str]]:
    figures = [_image(p) for p in sorted(out.glob("*.png"))]
    figures += [_image(run_dir / n) for n in _RUN_FIGURES if (run_dir / n).is_file()]
    return figures


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return found if isinstance(found, dict) else {}


def _config(run_dir: Path) -> dict[str, Any]:
    try:
        found = yaml.safe_load((run_dir / "config.yaml").read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return found if isinstance(found, dict) else {}


def write_report(
    out: Path, run_dir: Path, metrics: dict[str, Any], headline: tuple[str, ...]
) -> Path:
    """Write ``out/report.html`` for an evaluation whose files are in ``out``.

    Args:
        out: The evaluation's folder (its metrics.json and figures are already written).
        run_dir: The run evaluated (config.yaml, metrics.json, data_check.txt, curves).
        metrics: The evaluation's metrics (what metrics.json holds).
        headline: The task's headline metric names, shown first with intervals and baseline.

    Returns:
        The page's path.
    """
    config = _config(run_dir)
    training = _read_json(run_dir / "metrics.json")
    manifest = _read_json(run_dir / "manifest.json")
    baseline = metrics.get("baseline") or {}
    intervals = (metrics.get("intervals") or {}).get("metrics", {})
    cards = []
    for name in headline:
        change = (baseline.get("difference") or {}).get(name, {})
        cards.append({
            "name": name,
            "value": _number(metrics.get(name)),
            "interval": _interval(intervals.get(name)),
            "baseline": _number((baseline.get("metrics") or {}).get(name))
            if "metrics" in baseline else None,
            "baseline_interval": _interval((baseline.get("intervals") or {}).get(name)),
            "difference": _number(change.get("value"), signed=True) if change else None,
            "difference_interval": _interval(change),
            "verdict": change.get("verdict") or "",
        })  # fmt: skip
    settings = [(path, _dotted(config, path)) for path in _SETTINGS]
    settings += [
        ("selection", f"{training.get('selection_metric')} {_number(training.get('best_value'))} "
                      f"at epoch {training.get('best_epoch')} of {training.get('epochs_run')}"),
        ("esmtune", (manifest.get("versions") or {}).get("esmtune")),
    ] if training else []  # fmt: skip
    page = _ENVIRONMENT.from_string(_TEMPLATE).render(
        title=f"{run_dir.name}: {metrics.get('split')}",
        metrics=metrics,
        created=datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        cards=cards,
        bootstrap=metrics.get("intervals"),
        baseline=baseline,
        settings=[(k, _number(v)) for k, v in settings if v is not None],
        scalars=[(k, _number(v)) for k, v in _scalars(metrics)],
        table=_rows_table(metrics),
        calibration=metrics.get("calibration"),
        identity=metrics.get("by_identity"),
        data_check=_read_text(run_dir / "data_check.txt"),
        figures=_figures(out, run_dir),
        embedded=json.dumps(metrics).replace("</", "<\\/"),
    )
    path = out / REPORT_FILE
    path.write_text(page)
    return path


_ENVIRONMENT = Environment(autoescape=True, trim_blocks=True, lstrip_blocks=True)
_ENVIRONMENT.filters["number"] = _number
_ENVIRONMENT.filters["interval"] = _interval

_TEMPLATE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>esmtune evaluation: {{ title }}</title>
<style>
body { font: 15px/1.45 system-ui, sans-serif; margin: 0 auto; max-width: 1100px; padding: 1.5em;
       color: #1d2330; }
h1 { font-size: 1.5em; margin-bottom: 0.1em; } h2 { margin-top: 1.8em; font-size: 1.2em; }
.meta { color: #5b6475; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #d5d9e2; border-radius: 8px; padding: 0.7em 1em; min-width: 200px; }
.card .name { color: #5b6475; font-size: 0.85em; text-transform: uppercase; }
.card .value { font-size: 1.6em; font-weight: 600; }
.card .line { font-size: 0.9em; }
.better { color: #17803d; } .worse { color: #b42318; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { padding: 0.25em 0.8em; border-bottom: 1px solid #e4e7ee; text-align: left; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
pre { background: #f5f6f9; padding: 0.8em; overflow-x: auto; font-size: 0.85em; }
figure { display: inline-block; margin: 0.5em; vertical-align: top; }
figure img { max-width: 520px; width: 100%; border: 1px solid #e4e7ee; }
figcaption { color: #5b6475; font-size: 0.85em; }
</style>
</head>
<body>
<h1>{{ title }}</h1>
<div class="meta">task {{ metrics.task }} · split {{ metrics.split }} · {{ metrics.n | number }}
{{ "residues" if metrics.proteins is defined else "sequences" }}
{% if metrics.proteins is defined %} of {{ metrics.proteins | number }} chains{% endif %}
· data {{ metrics.data }} · written {{ created }}</div>

<h2>Headline</h2>
{% if bootstrap %}
<p class="meta">{{ "%d" | format(bootstrap.level * 100) }}% intervals from
{{ bootstrap.resamples | number }} bootstrap resamples of the {{ bootstrap.proteins | number }}
proteins (seed {{ bootstrap.seed }}).</p>
{% endif %}
<div class="cards" id="headline">
{% for card in cards %}
<div class="card" data-metric="{{ card.name }}">
<div class="name">{{ card.name }}</div>
<div class="value">{{ card.value }}</div>
<div class="line">{{ card.interval }}</div>
{% if card.baseline is not none %}
<div class="line">{{ baseline.name or "baseline" }}: {{ card.baseline }}
{{ card.baseline_interval }}</div>
<div class="line {{ card.verdict }}">model − baseline {{ card.difference }}
{{ card.difference_interval }} {{ card.verdict }}</div>
{% endif %}
</div>
{% endfor %}
</div>
{% if baseline.skipped %}<p class="meta">Baseline not scored: {{ baseline.skipped }}</p>{% endif %}

<h2>All metrics</h2>
<table id="metrics">
<tr><th>metric</th><th>value</th></tr>
{% for name, value in scalars %}<tr><td>{{ name }}</td><td class="num">{{ value }}</td></tr>
{% endfor %}
</table>
{% if table %}
<table id="rows">
<tr><th>{{ table[0] }}</th>{% for column in table[1] %}<th>{{ column }}</th>{% endfor %}</tr>
{% for row in table[2] %}<tr><td>{{ row[0] }}</td>
{% for value in row[1:] %}<td class="num">{{ value | number }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% endif %}

{% if calibration %}
<h2>Calibration</h2>
<p id="calibration">Expected calibration error {{ calibration.before.ece | number }} before
{% if calibration.method != "none" %}and {{ calibration.after.ece | number }} after the
{{ calibration.method }} fitted on validation{% else %}(no calibration fitted){% endif %},
over {{ calibration.after.n | number }} predictions in 15 bins; see reliability.png below.</p>
{% endif %}

{% if identity %}
<h2>Metrics by identity to the training set</h2>
<table id="identity">
<tr>{% for column in identity.columns %}<th>{{ column }}</th>{% endfor %}</tr>
{% for row in identity.rows %}<tr>
{% for value in row %}<td class="num">{{ value | number }}</td>{% endfor %}</tr>
{% endfor %}
</table>
{% endif %}

<h2>Figures</h2>
{% for figure in figures %}
<figure><img alt="{{ figure.name }}" src="{{ figure.src }}">
<figcaption>{{ figure.name }}</figcaption></figure>
{% endfor %}

<h2>Run</h2>
<table id="settings">
{% for name, value in settings %}<tr><td>{{ name }}</td><td>{{ value }}</td></tr>
{% endfor %}
</table>

{% if data_check %}
<h2>Data check (training data)</h2>
<pre id="data-check">{{ data_check }}</pre>
{% endif %}

<script type="application/json" id="metrics-json">{{ embedded | safe }}</script>
</body>
</html>
"""
