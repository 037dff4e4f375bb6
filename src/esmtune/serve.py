"""An HTTP service over a trained run or an export: ``esmtune serve PATH``, or ``create_app``.

Requests from many clients are queued and answered by one background worker that groups them
into a single model call (micro-batching): one forward pass over 30 short sequences costs little
more than over one, so grouping is what lets a single model keep up with many clients. The model
runs in a thread, so the event loop keeps accepting requests (and answering /health) meanwhile.

Every input is checked before it reaches the queue; bad input is answered with a 4xx naming the
record and character, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import HTMLResponse

from esmtune.config import LongSequences, Task, load_config
from esmtune.data.check import sequence_problem
from esmtune.data.fasta import SequenceRecord, parse_fasta
from esmtune.errors import DataError, EsmtuneError
from esmtune.model.exported import export_format
from esmtune.model.rundir import CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, read_json
from esmtune.predict import Predictor, as_records

__all__ = ["SETTINGS_ENV", "check_settings", "create_app"]

# `esmtune serve --workers N` hands each worker process its settings through this variable.
SETTINGS_ENV = "ESMTUNE_SERVE_SETTINGS"

_FASTA_TYPES = ("text/plain", "text/x-fasta", "application/x-fasta", "chemical/seq-aa-fasta")

# Shown in /docs: the two body forms POST /predict accepts.
_PREDICT_BODY = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "required": ["sequences"],
                "properties": {
                    "sequences": {
                        "type": "array",
                        "items": {
                            "oneOf": [
                                {"type": "string"},
                                {
                                    "type": "object",
                                    "required": ["sequence"],
                                    "properties": {
                                        "id": {"type": "string"},
                                        "sequence": {"type": "string"},
                                    },
                                },
                            ]
                        },
                    },
                    "top_k": {"type": "integer", "minimum": 1, "nullable": True},
                },
            },
            "example": {"sequences": [{"id": "P1", "sequence": "MKVLAAGIVG"}], "top_k": 3},
        },
        "text/plain": {
            "schema": {"type": "string"},
            "example": ">P1\nMKVLAAGIVG\n>P2\nMDEDEEDSTG\n",
        },
    },
}


@dataclass
class _Job:
    """One request's sequences, waiting for the worker; ``result`` resolves in request order."""

    records: list[SequenceRecord]
    top_k: int | None
    result: asyncio.Future[list[dict[str, Any]]]

    @property
    def tokens(self) -> int:
        return sum(len(r.sequence) + 2 for r in self.records)  # + BOS/EOS


@dataclass
class _Batcher:
    """Collects jobs for up to ``wait_seconds`` (or ``max_tokens``), then runs them together."""

    predictor: Predictor
    wait_seconds: float
    max_tokens: int
    queue: asyncio.Queue[_Job] = field(default_factory=asyncio.Queue)
    batches_run: int = 0
    sequences_served: int = 0
    requests_served: int = 0

    async def submit(self, records: list[SequenceRecord], top_k: int | None) -> list[dict]:
        job = _Job(records, top_k, asyncio.get_running_loop().create_future())
        await self.queue.put(job)
        return await job.result

    async def run_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            jobs = [await self.queue.get()]
            tokens = jobs[0].tokens
            deadline = loop.time() + self.wait_seconds
            while tokens < self.max_tokens and (left := deadline - loop.time()) > 0:
                try:
                    job = await asyncio.wait_for(self.queue.get(), left)
                except TimeoutError:
                    break
                jobs.append(job)
                tokens += job.tokens
            await self._run([job for job in jobs if not job.result.done()])

    async def _run(self, jobs: list[_Job]) -> None:
        if not jobs:
            return
        records = [record for job in jobs for record in job.records]
        # Rank every label once; each request then keeps its own top_k.
        ranked = len(self.predictor.labels)
        try:
            results = await asyncio.to_thread(self.predictor.predict, records, ranked)
        except Exception as error:  # a bug, not bad input: answer every waiting request
            for job in jobs:
                if not job.result.done():
                    job.result.set_exception(error)
            return
        self.batches_run += 1
        self.sequences_served += len(records)
        self.requests_served += len(jobs)
        start = 0
        for job in jobs:
            mine = results[start : start + len(job.records)]
            start += len(job.records)
            if not job.result.done():  # the client may have gone away
                job.result.set_result([_keep_top(row, job.top_k) for row in mine])


def _keep_top(result: dict[str, Any], top_k: int | None) -> dict[str, Any]:
    """Cut a fully ranked result to the request's top_k (names only for labels still shown)."""
    if "top_k" not in result:
        return result
    kept = result["top_k"][:top_k]
    result = {**result, "top_k": kept}
    if "names" in result:
        shown = set(result.get("labels", [])) | {label for label, _ in kept}
        result["names"] = {x: name for x, name in result["names"].items() if x in shown}
    return result


def _default_top_k(predictor: Predictor) -> int | None:
    """The task's own top_k when a request gives none (multiclass: all; multilabel: 5)."""
    if predictor.task.task not in (Task.MULTICLASS, Task.MULTILABEL):
        return None
    import numpy as np

    probe = np.zeros((1, len(predictor.labels)), dtype=np.float32)
    return len(predictor.task.predictions(probe, None)[0]["top_k"])


def _bad_request(status: int, message: str) -> HTTPException:
    return HTTPException(status_code=status, detail=message)


def _records_from_json(body: bytes) -> tuple[list[SequenceRecord], int | None, bool]:
    """Records, top_k and whether top_k was given, from a JSON body."""
    try:
        payload = json.loads(body)
    except UnicodeDecodeError:
        raise _bad_request(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise _bad_request(
            400, f"malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    if isinstance(payload, list):
        payload = {"sequences": payload}
    if not isinstance(payload, dict) or "sequences" not in payload:
        raise _bad_request(
            422, 'expected {"sequences": [...], "top_k": 5}; the body has no "sequences" list'
        )
    unknown = sorted(set(payload) - {"sequences", "top_k"})
    if unknown:
        raise _bad_request(422, f"unknown field(s) {unknown}; expected 'sequences' and 'top_k'")
    items = payload["sequences"]
    if not isinstance(items, list):
        raise _bad_request(422, '"sequences" must be a list of strings or {"id", "sequence"}')
    records = []
    for number, item in enumerate(items, start=1):
        default_id = f"seq{number}"
        if isinstance(item, str):
            records.append(SequenceRecord(default_id, item, source="<request>"))
            continue
        if not isinstance(item, dict) or not isinstance(item.get("sequence"), str):
            raise _bad_request(
                422,
                f"sequences[{number - 1}]: expected a string or "
                '{"id": "...", "sequence": "..."} with a string "sequence"',
            )
        identifier = item.get("id", default_id)
        if not isinstance(identifier, str | int) or not str(identifier).strip():
            raise _bad_request(422, f"sequences[{number - 1}]: 'id' must be a non-empty string")
        records.append(SequenceRecord(str(identifier), item["sequence"], source="<request>"))
    top_k = payload.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
        raise _bad_request(422, f"top_k must be a positive whole number, not {top_k!r}")
    return records, top_k, "top_k" in payload


def _records_from_text(body: bytes) -> list[SequenceRecord]:
    """FASTA; text without any '>' header is read as one raw sequence per line."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _bad_request(400, "the body is not UTF-8 text") from None
    lines = text.splitlines()
    if not any(line.lstrip().startswith(">") for line in lines):
        sequences = [line.strip() for line in lines if line.strip()]
        return [
            SequenceRecord(f"seq{i + 1}", s, source="<request>", line=i + 1)
            for i, s in enumerate(sequences)
        ]
    try:
        return list(parse_fasta(lines, "<request>"))
    except DataError as error:
        raise _bad_request(422, f"malformed FASTA: {error}") from None


def _run_info(run_dir: Path, predictor: Predictor) -> dict[str, Any]:
    """What /info says about the run: the model, its labels, how it scored, what made it."""
    metrics = read_json(run_dir / METRICS_FILE)
    manifest = read_json(run_dir / MANIFEST_FILE)
    saved = load_config(run_dir / CONFIG_FILE)
    task = predictor.task
    return {
        "run": run_dir.name,
        "source": export_format(run_dir) or "run",  # run, or an hf / onnx export
        "runtime": predictor.runtime,
        "task": task.task.value,
        "labels": predictor.labels,
        "label_names": task.label_names,
        # The saved config names the base model; load_run points random-init runs elsewhere.
        "base_model": saved.model.name,
        "finetune_mode": saved.finetune.mode.value,
        "max_length": predictor.max_length,
        "metrics": {
            key: metrics.get(key)
            for key in ("selection_metric", "best_epoch", "best_value", "epochs_run")
        },
        "versions": manifest.get("versions", {}),
        "created": manifest.get("created"),
    }


def check_settings(
    max_sequences: int,
    max_residues: int,
    long_sequences: str,
    batch_wait_ms: float,
    max_batch_tokens: int,
) -> None:
    """Reject settings no server can run with (see :func:`create_app`).

    Raises:
        EsmtuneError: Naming the setting and what it must be.
    """
    if long_sequences not in ("window", "refuse"):
        raise EsmtuneError(f"long_sequences must be 'window' or 'refuse', not {long_sequences!r}")
    if max_sequences < 1 or max_residues < 1 or batch_wait_ms < 0 or max_batch_tokens < 1:
        raise EsmtuneError(
            "max_sequences, max_residues and max_batch_tokens must be positive and "
            "batch_wait_ms not negative"
        )


def create_app(
    run_dir: Path | str,
    *,
    max_sequences: int = 256,
    max_residues: int = 200_000,
    long_sequences: str = "window",
    batch_wait_ms: float = 10.0,
    max_batch_tokens: int = 32_768,
    max_tokens: int | None = None,
    device: str | None = None,
    runtime: str = "auto",
) -> FastAPI:
    """A FastAPI app serving a run's predictions; the model loads here, before any request.

    Args:
        run_dir: A finished run directory, or an ``esmtune export`` folder (hf or onnx).
        max_sequences: Most sequences one request may send (more: 413).
        max_residues: Most residues one request may send, all sequences together (more: 413).
        long_sequences: Sequences over the run's max_length: ``window`` (read in overlapping
            windows, with a warning in the answer) or ``refuse`` (413 naming them).
        batch_wait_ms: How long the worker waits for more requests to join a batch; adds at
            most this much latency to a lone request.
        max_batch_tokens: Residues (+2 per sequence) after which a batch runs without waiting.
        max_tokens: Token budget of each forward pass inside a batch (Predictor's default).
        device: ``cpu``, ``cuda`` ... (default: cuda when available).
        runtime: ``auto`` (default; an ONNX export runs the graph its export check chose),
            ``torch``, ``onnx`` or ``onnx-int8`` (see :meth:`Predictor.from_export`).

    Returns:
        The app: ``POST /predict``, ``GET /info``, ``GET /health``, ``GET /`` and ``/docs``.

    Raises:
        EsmtuneError: On invalid settings, or a run directory that cannot be loaded.
    """
    check_settings(max_sequences, max_residues, long_sequences, batch_wait_ms, max_batch_tokens)
    run_dir = Path(run_dir)
    predictor = Predictor.load(
        run_dir, runtime, device=device, max_tokens=max_tokens, long_sequences=LongSequences.WINDOW
    )
    info = _run_info(run_dir, predictor)
    default_top_k = _default_top_k(predictor)
    batcher = _Batcher(predictor, batch_wait_ms / 1000, max_batch_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.queue = asyncio.Queue()  # bound to this event loop
        worker = asyncio.create_task(batcher.run_forever())
        try:
            yield
        finally:
            worker.cancel()
            with suppress(asyncio.CancelledError):
                await worker

    app = FastAPI(
        title=f"esmtune: {run_dir.name}",
        description=f"Predictions of the {info['task']} model in {run_dir.name} "
        f"(base model {info['base_model']}).",
        lifespan=lifespan,
    )

    def checked(records: list[SequenceRecord]) -> tuple[list[SequenceRecord], list[str]]:
        if not records:
            raise _bad_request(422, "no sequences in the request; send at least one")
        if len(records) > max_sequences:
            raise _bad_request(
                413, f"{len(records)} sequences in one request; this server takes at most "
                f"{max_sequences}: split the request",
            )  # fmt: skip
        records = as_records(records)
        residues = sum(len(r.sequence) for r in records)
        if residues > max_residues:
            raise _bad_request(
                413, f"{residues} residues in one request; this server takes at most "
                f"{max_residues}: split the request",
            )  # fmt: skip
        problems = [problem for record in records if (problem := sequence_problem(record))]
        if problems:
            raise _bad_request(422, f"{len(problems)} invalid sequence(s): " + "; ".join(problems))
        limit = predictor.max_length
        long = [r for r in records if len(r.sequence) > limit]
        if long and long_sequences == "refuse":
            named = ", ".join(f"'{r.id}' ({len(r.sequence)})" for r in long)
            raise _bad_request(
                413, f"sequence(s) longer than the model's {limit} residues: {named}; this "
                "server refuses them: send shorter pieces",
            )  # fmt: skip
        warnings = [
            f"record '{r.id}': {len(r.sequence)} residues, longer than the model's {limit}; "
            "read in overlapping windows pooled together"
            for r in long
        ]
        return records, warnings

    @app.post("/predict", openapi_extra={"requestBody": _PREDICT_BODY})
    async def predict(request: Request, top_k: int | None = None) -> dict[str, Any]:
        """Predict for each sequence (JSON or FASTA body), in request order."""
        body = await request.body()
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not kind:
            kind = "text/plain" if body.lstrip().startswith(b">") else "application/json"
        if kind == "application/json" or kind.endswith("+json"):
            records, body_top_k, given = _records_from_json(body)
            top_k = body_top_k if given else top_k
        elif kind in _FASTA_TYPES:
            records = _records_from_text(body)
        else:
            raise _bad_request(
                415, f"content type {kind!r}: send application/json or FASTA as text/plain"
            )
        if top_k is not None and top_k < 1:
            raise _bad_request(422, f"top_k must be a positive whole number, not {top_k}")
        records, warnings = checked(records)
        results = await batcher.submit(records, top_k or default_top_k)
        answer: dict[str, Any] = {"task": info["task"], "predictions": results}
        if warnings:
            answer["warnings"] = warnings
        return answer

    @app.get("/health")
    async def health() -> dict[str, str]:
        """Liveness: the model is loaded and the server answers."""
        return {"status": "ok"}

    @app.get("/info")
    async def run_info() -> dict[str, Any]:
        """The run (task, labels, base model, best validation score, versions) and usage."""
        return {
            **info,
            "limits": {
                "max_sequences": max_sequences,
                "max_residues": max_residues,
                "long_sequences": long_sequences,
                "batch_wait_ms": batch_wait_ms,
            },
            "batches_run": batcher.batches_run,
            "requests_served": batcher.requests_served,
            "sequences_served": batcher.sequences_served,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return _PAGE

    return app


def _app_from_environment() -> FastAPI:
    """App factory for ``uvicorn --workers N``: each worker process loads its own model."""
    settings = json.loads(os.environ[SETTINGS_ENV])
    return create_app(settings.pop("run_dir"), **settings)


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>esmtune</title>
<link rel="icon" href="data:,">
<style>
 body{font:15px/1.45 system-ui,sans-serif;max-width:52rem;margin:2rem auto;padding:0 1rem;
      color:#1d2330}
 h1{font-size:1.4rem;margin:0 0 .2rem} #info{color:#5b6477;font-size:.9rem}
 textarea{width:100%;height:9rem;font:13px ui-monospace,monospace;box-sizing:border-box;
      padding:.5rem;border:1px solid #c5cbd6;border-radius:6px}
 button{margin:.5rem 0;padding:.45rem 1.2rem;border:0;border-radius:6px;background:#2f5bd3;
      color:#fff;font-size:.95rem;cursor:pointer} button:disabled{opacity:.6}
 .card{border:1px solid #e1e5ec;border-radius:8px;padding:.6rem .9rem;margin:.6rem 0}
 .card h3{margin:0 0 .3rem;font-size:1rem} .meta{color:#5b6477;font-weight:normal}
 .row{display:grid;grid-template-columns:12rem 1fr 3.5rem;gap:.5rem;align-items:center;
      font-size:.88rem;margin:.15rem 0}
 .bar{background:#edf0f5;border-radius:3px;height:.8rem}
 .bar span{display:block;height:100%;border-radius:3px;background:#2f5bd3}
 .name{overflow:hidden;text-overflow:ellipsis;white-space:nowrap} .num{text-align:right}
 .error{color:#b3261e;white-space:pre-wrap} .warn{color:#8a5a00;font-size:.88rem}
 #labels{font-size:.85rem;margin-top:.2rem}
</style></head><body>
<h1>esmtune</h1><div id="info">loading model information…</div>
<div id="labels" class="meta"></div>
<p>Paste protein sequences, one per line, or FASTA:</p>
<form id="form">
<textarea id="input" name="sequences" spellcheck="false"
 placeholder=">P1&#10;MKVLAAGIVGLLLAAQ..."></textarea>
<button id="go" type="submit">Predict</button>
</form>
<div id="out"></div>
<script>
const $ = (id) => document.getElementById(id);
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&":"&amp;","<":"&lt;",">":"&gt;",
  '"':"&quot;"}[c]));
let names = {};
// An answer's body as JSON, or null when it is not JSON (a plain-text 500, a proxy's HTML page).
async function readAnswer(response) {
  const text = await response.text();
  try { return {json: JSON.parse(text), text}; } catch { return {json: null, text}; }
}
function failure(response, answer) {
  const d = answer.json && answer.json.detail;
  if (d) return typeof d === "string" ? d : JSON.stringify(d);
  return `${response.status} ${response.statusText}: ${answer.text.slice(0, 300)}`;
}
const infoReady = fetch("info").then(async (response) => {
  const answer = await readAnswer(response);
  if (!response.ok || !answer.json) throw new Error(failure(response, answer));
  const i = answer.json;
  names = i.label_names || {};
  const m = i.metrics || {};
  const score = m.best_value == null ? "" :
    ` · best ${m.selection_metric} ${Number(m.best_value).toFixed(3)} (epoch ${m.best_epoch})`;
  const runtime = i.runtime && i.runtime !== "torch" ? ` · ${i.runtime}` : "";
  $("info").textContent = `${i.task} model on ${i.base_model} · ${i.labels.length} ` +
    `${i.task === "regression" ? "target(s)" : "labels"}${score}${runtime}`;
  const shown = i.labels.slice(0, 30).map((x) => names[x] ? `${x} ${names[x]}` : x);
  const more = i.labels.length > 30 ? `, … ${i.labels.length - 30} more` : "";
  $("labels").textContent = `${i.task === "regression" ? "targets" : "labels"}: ` +
    shown.join(", ") + more;
}).catch((error) => {
  $("info").innerHTML = `<span class="error">model information unavailable: ` +
    `${esc(error.message || error)}</span>`;
});
function bars(pairs) {
  return pairs.map(([label, p]) => `<div class="row"><div class="name" title="${esc(label)}">` +
    `${esc(names[label] ? names[label] + " (" + label + ")" : label)}</div><div class="bar">` +
    `<span style="width:${(100 * p).toFixed(1)}%"></span></div>` +
    `<div class="num">${p.toFixed(3)}</div></div>`).join("");
}
function card(r) {
  let body;
  if ("values" in r) {
    body = Object.entries(r.values).map(([k, v]) => `<div>${esc(k)}: <b>${v.toPrecision(4)}` +
      `</b></div>`).join("");
  } else if (r.top_k) {
    const chosen = r.labels ? `<div>labels: <b>${esc(r.labels.join(", ") || "none")}</b></div>`
      : `<div>label: <b>${esc(r.label)}</b> (${r.probability.toFixed(3)})</div>`;
    body = chosen + bars(r.top_k);
  } else {
    body = `<div>label: <b>${esc(r.label)}</b> (threshold ${r.threshold.toFixed(3)})</div>` +
      bars(Object.entries(r.probabilities));
  }
  const w = r.windows > 1 ? `, ${r.windows} windows` : "";
  return `<div class="card"><h3>${esc(r.id)} <span class="meta">${r.length} residues${w}` +
    `</span></h3>${body}</div>`;
}
$("form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("go").disabled = true;
  try {
    await infoReady;  // label names (ontology terms) come with the model information
    const response = await fetch("predict", {method: "POST",
      headers: {"Content-Type": "text/plain"}, body: $("input").value});
    const reply = await readAnswer(response);
    if (!response.ok || !reply.json) {
      $("out").innerHTML = `<p class="error">${esc(failure(response, reply))}</p>`;
      return;
    }
    const answer = reply.json;
    $("out").innerHTML = (answer.warnings || []).map((w) => `<p class="warn">${esc(w)}</p>`)
      .join("") + answer.predictions.map(card).join("");
  } catch (error) {
    $("out").innerHTML = `<p class="error">${esc(error)}</p>`;
  } finally {
    $("go").disabled = false;
  }
});
</script></body></html>
"""
