"""An HTTP service over a trained run or an export: ``esmtune serve PATH``, or ``create_app``.

One background worker runs the model for every client. Small requests that arrive together share
one model call (micro-batching). Work is ordered smallest first, with aging: a request's place is
the work done before it arrived plus its own size, so a short request overtakes a long one, and a
long one waits at most for its own size in other requests' work. A long request runs in slices
of at most ``max_batch_tokens`` tokens, and waiting short requests go between its slices. On a
CPU-bound model grouping adds no throughput; the order is what keeps short requests fast under a
mixed load. The model runs in a thread, so the event loop keeps accepting requests meanwhile.

Every input is checked before it reaches the queue: a body over ``max_body_bytes`` is refused
before it is read; bad input gets a 4xx ``{"detail": "..."}`` naming the record, the character or
the limit, never a 500. The OpenAPI document states the exact grammar of the sequences each body
form accepts, so that a generated client (or schemathesis) and the server agree.
"""

# No `from __future__ import annotations`: FastAPI reads the endpoints' annotations, and the
# endpoints are defined in create_app, whose imports (FastAPI, torch via the Predictor) stay out of
# module import, so the CLI can build `esmtune serve --help` from ServeSettings in milliseconds.

import asyncio
import difflib
import functools
import json
import os
import re
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from esmtune.config import LongSequences, load_config
from esmtune.data.fasta import SequenceRecord, parse_fasta
from esmtune.errors import DataError, EsmtuneError
from esmtune.predict_options import InferenceOptions

if TYPE_CHECKING:
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse

    from esmtune.predict import Predictor

__all__ = ["SETTINGS_ENV", "ErrorAnswer", "ServeSettings", "create_app"]

# `esmtune serve --workers N` hands each worker process its settings through this variable.
SETTINGS_ENV = "ESMTUNE_SERVE_SETTINGS"

_FASTA_TYPES = ("text/plain", "text/x-fasta", "application/x-fasta", "chemical/seq-aa-fasta")

# top_k beyond the label count ranks every label; the bound exists so that a number of any size
# is a clear 422, and is far above any label vocabulary.
_MAX_TOP_K = 1_000_000
# Numeric record ids: the integers every JSON parser reads exactly.
_SAFE_INTEGER = 2**53 - 1
# No number this API takes has more digits; longer literals are refused before int() reads them.
_MAX_DIGITS = 20


class ServeSettings(InferenceOptions):
    """How ``esmtune serve`` and :func:`create_app` run: the request limits and the model's use.

    One object for the CLI (each field is an option; its description is the ``--help``), for
    :func:`create_app`, and for the worker processes of ``--workers N`` (passed as JSON). What
    runs the model (``runtime``, ``device``, ``max_tokens``) are predict's own options, from
    :class:`~esmtune.predict_options.InferenceOptions`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_sequence_residues: int = Field(
        50_000,
        gt=0,
        description="most residues in one sequence (more: 413); protects the time and memory "
        "one sequence holds the model, as it is read in windows of the run's max_length; "
        "50000 is longer than titin (~35000), the longest known protein",
    )
    max_request_residues: int = Field(
        200_000,
        gt=0,
        description="most residues in one request, all sequences together (more: 413); bounds "
        "how long one request occupies the model and the size of its answer",
    )
    max_sequences: int = Field(
        256,
        gt=0,
        description="most sequences in one request (more: 413); bounds the per-record work "
        "(ids, parsing, answer size) that residue counts do not see",
    )
    max_body_bytes: int = Field(
        1 << 20,
        gt=0,
        description="most bytes in one request body (more: 413, refused before the body is "
        "read, so an oversized upload costs no memory); the 1 MiB default holds "
        "max_request_residues with FASTA or JSON overhead (ids, headers, line breaks) to spare",
    )
    long_sequences: Literal["window", "refuse"] = Field(
        "window",
        description="sequences longer than the run's max_length: read in overlapping windows "
        "(the answer warns) or refused with 413",
    )
    batch_wait_ms: float = Field(
        10.0,
        ge=0,
        description="how long a small request waits for others to share its model call; adds "
        "at most this much latency",
    )
    max_batch_tokens: int = Field(
        8192,
        gt=0,
        description="tokens (residues + 2 per sequence) per model call: small requests are "
        "grouped up to this, a larger one runs in slices of this size with short requests "
        "served in between, so this bounds how long a short request waits behind a long one "
        "(raise it on a GPU)",
    )

    @model_validator(mode="after")
    def _body_holds_the_residues(self) -> "ServeSettings":
        if self.max_body_bytes < self.max_request_residues:
            raise ValueError(
                f"max_body_bytes {self.max_body_bytes} is below max_request_residues "
                f"{self.max_request_residues}: a request at the residue limit could not be sent; "
                "raise max_body_bytes (a residue is one byte, plus ids and line breaks)"
            )
        return self

    @classmethod
    def checked(cls, options: Mapping[str, Any]) -> "ServeSettings":
        """Settings from keyword options, every problem reported at once.

        Raises:
            EsmtuneError: Naming each bad setting (and its CLI option), or an unknown name with
                the closest known one.
        """
        try:
            return cls.model_validate(dict(options))
        except ValidationError as error:
            raise EsmtuneError(_settings_problems(error)) from None

    def limits(self) -> dict[str, Any]:
        """What ``GET /info`` reports: every limit on a request and how requests share the model."""
        return self.model_dump(exclude=set(InferenceOptions.model_fields))


def _settings_problems(error: ValidationError) -> str:
    problems = []
    for problem in error.errors():
        name = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        if not name:
            problems.append(message)
        elif problem["type"] == "extra_forbidden":
            close = difflib.get_close_matches(name, list(ServeSettings.model_fields), n=1)
            hint = f"did you mean {close[0]}?" if close else "see esmtune serve --help"
            problems.append(f"{name}: not a serve setting; {hint}")
        else:
            option = "--" + name.replace("_", "-")
            problems.append(f"{name} ({option}) = {problem['input']!r}: {message}")
    return "invalid serve settings:\n  - " + "\n  - ".join(problems)


class ErrorAnswer(BaseModel):
    """The body of every 4xx answer, ours and FastAPI's own."""

    detail: str = Field(
        description="what is wrong (the record, character, limit or field) and how to fix it"
    )


class _Refusal(Exception):
    """A request this server will not run: the status and the message for the client."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status = status
        self.detail = detail


_SPLIT = "split the request"


def _over_limit(setting: str, limit: int, found: str, fix: str) -> _Refusal:
    """A 413 naming what was found, the limit (setting and CLI option) and the fix."""
    option = "--" + setting.replace("_", "-")
    return _Refusal(413, f"{found}; this server's limit {setting} ({option}) is {limit}: {fix}")


# --- What the bodies may hold. Stated twice, as checks here and as the patterns of the OpenAPI
# schema (_request_body); tests/test_serve_schema.py holds the two to each other.

# Control characters change how Python splits lines and strips whitespace (vertical tab, form
# feed, the separators, NEL); FASTA text has none, and refusing them keeps the grammar exact.
_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029]")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
# JSON sequences: printable ASCII and the whitespace that can wrap a sequence.
_NOT_SEQUENCE_TEXT = re.compile(r"[^\t\n\r\x20-\x7e]")

_NL = r"(?:\r\n|\r|\n)"
_BLANK = r"[ \t]*"
# The whitespace Python strips around a header or comment line, once controls are refused.
_SPACE = r"[\t \xa0\u1680\u2000-\u200a\u202f\u205f\u3000]"
_LINE_CHAR = r"[^\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]"
_VISIBLE = r"[^\x00-\x20\x7f-\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
# A record id has a character that str.strip() keeps.
_ID_PATTERN = r"[^\t-\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"


@functools.cache
def _grammar() -> dict[str, str]:
    """The JSON Schema patterns of a JSON sequence and of a FASTA / plain-text body."""
    from esmtune.data.check import RESIDUES

    letters = "".join(sorted(RESIDUES))
    residue = f"[{letters}{letters.lower()}]"
    json_sequence = rf"^[ \t\r\n]*(?:{residue}[ \t\r\n]*)+(?:\*[ \t\r\n]*)?$"
    # Plain text: one sequence per line (spaces inside, one final '*'), blank lines between.
    line = rf"{_BLANK}(?:{residue}[ \t]*)+"
    plain = rf"(?:{_BLANK}{_NL})*{line}(?:\*[ \t]*)?(?:{_NL}(?:{line}(?:\*[ \t]*)?|{_BLANK}))*"
    # FASTA: blank and ';' comment lines anywhere; each '>id' header followed by residue lines,
    # which may end in up to two '*' (the reader drops one, the request normaliser another).
    ignored = rf"(?:{_SPACE}*;{_LINE_CHAR}*|{_BLANK})"
    skip = rf"(?:{_NL}{ignored})*"
    header = rf"{_SPACE}*>{_SPACE}*{_VISIBLE}{_LINE_CHAR}*"
    star = r"\*[ \t]*"
    star_line = rf"{_NL}[ \t]*{star}"
    tail = (
        rf"(?:{star}{star}{skip}|{star}{skip}(?:{star_line}{skip})?"
        rf"|{skip}(?:{star_line}{star}{skip}|{star_line}{skip}(?:{star_line}{skip})?)?)"
    )
    record = rf"{header}{skip}{_NL}{line}(?:{skip}{_NL}{line})*{tail}"
    fasta = rf"(?:{ignored}{_NL})*{record}(?:{_NL}{record})*"
    return {"json_sequence": json_sequence, "text": rf"^\ufeff?(?:{plain}|{fasta})$"}


async def _read_body(request: "Request", limit: int) -> bytes:
    """The body, refused with 413 as soon as it is known to pass ``limit`` bytes.

    A declared Content-Length is refused before a byte is read (a client that sent
    ``Expect: 100-continue`` never sends the body); a chunked body is read in pieces and dropped
    at the first piece past the limit. Either way the server holds at most ``limit`` bytes.
    """
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise _Refusal(400, f"Content-Length {declared!r} is not a whole number of bytes")
        if int(declared) > limit:
            raise _over_limit("max_body_bytes", limit, f"a body of {int(declared)} bytes", _SPLIT)
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise _over_limit("max_body_bytes", limit, f"a body of over {limit} bytes", _SPLIT)
    return bytes(body)


class _NotJson(ValueError):
    """NaN or Infinity: Python's json reads them, JSON has no such numbers."""


@dataclass(frozen=True)
class _LongNumber:
    """An integer literal longer than any number this API takes, left unread.

    ``int()`` of thousands of digits is slow and refused by Python; where such a number stands
    in a field the server reads (top_k, id) it is a 422, elsewhere (fields it ignores) harmless.
    """

    digits: int

    def __repr__(self) -> str:
        return f"a number of {self.digits} digits"


def _json_integer(text: str) -> int | _LongNumber:
    digits = len(text.lstrip("-"))
    return _LongNumber(digits) if digits > _MAX_DIGITS else int(text)


def _json_constant(text: str) -> Any:
    raise _NotJson(text)


def _load_json(body: bytes) -> Any:
    """The parsed body; anything unreadable is a 400 that says why (never a 500)."""
    try:
        return json.loads(body, parse_int=_json_integer, parse_constant=_json_constant)
    except UnicodeDecodeError:
        raise _Refusal(400, "the body is not UTF-8 text") from None
    except json.JSONDecodeError as error:
        raise _Refusal(
            400, f"malformed JSON at line {error.lineno}, column {error.colno}: {error.msg}"
        ) from None
    except RecursionError:
        raise _Refusal(
            400, 'JSON nested too deeply to read; a request needs three levels: {"sequences": '
            '[{"id": "P1", "sequence": "MKV..."}]}',
        ) from None  # fmt: skip
    except _NotJson as error:
        raise _Refusal(400, f"malformed JSON: {error} is not a JSON number") from None


def _records_from_json(body: bytes) -> tuple[list[SequenceRecord], int | None, bool]:
    """Records, top_k and whether top_k was given, from a JSON body."""
    payload = _load_json(body)
    if isinstance(payload, list):
        payload = {"sequences": payload}
    if not isinstance(payload, dict) or "sequences" not in payload:
        raise _Refusal(
            422, 'expected {"sequences": [...], "top_k": 5}; the body has no "sequences" list'
        )
    unknown = sorted(set(payload) - {"sequences", "top_k"})
    if unknown:
        raise _Refusal(422, f"unknown field(s) {unknown}; expected 'sequences' and 'top_k'")
    items = payload["sequences"]
    if not isinstance(items, list):
        raise _Refusal(422, '"sequences" must be a list of strings or {"id", "sequence"}')
    records = [_json_record(item, index) for index, item in enumerate(items)]
    top_k = payload.get("top_k")
    if top_k is not None and (top_k := _whole(top_k, 1, _MAX_TOP_K)) is None:
        raise _Refusal(
            422, f"top_k must be a whole number from 1 to {_MAX_TOP_K}, not {payload['top_k']!r}"
        )
    return records, top_k, "top_k" in payload


def _whole(value: Any, low: int, high: int) -> int | None:
    """``value`` as an int when it is a JSON integer (2.0 counts, as in JSON Schema) in range."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, int) and not isinstance(value, bool) and low <= value <= high:
        return value
    return None


def _json_record(item: Any, index: int) -> SequenceRecord:
    """One entry of "sequences": a string, or {"id": ..., "sequence": ...}."""
    identifier: Any = f"seq{index + 1}"
    if isinstance(item, dict) and isinstance(item.get("sequence"), str):
        identifier = item.get("id", identifier)
        item = item["sequence"]
    if not isinstance(item, str):
        raise _Refusal(
            422, f'sequences[{index}]: expected a string or {{"id": "...", "sequence": "..."}} '
            'with a string "sequence"',
        )  # fmt: skip
    if not isinstance(identifier, str):
        number = _whole(identifier, -_SAFE_INTEGER, _SAFE_INTEGER)
        if number is None:
            raise _Refusal(
                422, f"sequences[{index}]: 'id' must be a string or a whole number within "
                f"±{_SAFE_INTEGER}, not {identifier!r}",
            )  # fmt: skip
        identifier = str(number)
    if not identifier.strip():
        raise _Refusal(422, f"sequences[{index}]: 'id' must not be empty")
    if bad := _NOT_SEQUENCE_TEXT.search(item):
        raise _Refusal(
            422, f"record '{identifier}': invalid character {bad.group()!r} at position "
            f"{bad.start() + 1}; a sequence holds residue letters, spaces or line breaks and "
            "may end in '*'",
        )  # fmt: skip
    return SequenceRecord(identifier, item, source="<request>")


def _text_problem(text: str) -> str | None:
    """Where a text body holds what FASTA never does, or None.

    Control characters are refused anywhere; sequence lines (all but '>' headers and ';'
    comments) must be ASCII, as residue letters are, so no Unicode case folding or spacing can
    turn other characters into residues.
    """
    for number, line in enumerate(_LINE_BREAK.split(text), start=1):
        if control := _CONTROL.search(line):
            return (
                f"line {number}, column {control.start() + 1}: control character "
                f"U+{ord(control.group()):04X}; FASTA text has none: remove it"
            )
        if not line.isascii() and not line.strip().startswith((">", ";")):
            column, char = next((i, c) for i, c in enumerate(line) if not c.isascii())
            return (
                f"line {number}, column {column + 1}: {char!r} on a sequence line; sequences "
                "are written in ASCII residue letters"
            )
    return None


def _records_from_text(body: bytes) -> list[SequenceRecord]:
    """FASTA; text without any '>' header is read as one raw sequence per line."""
    try:
        text = body.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise _Refusal(400, "the body is not UTF-8 text") from None
    if problem := _text_problem(text):
        raise _Refusal(422, f"malformed FASTA: {problem}")
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
        raise _Refusal(422, f"malformed FASTA: {error}") from None


def _parse_body(
    kind: str, body: bytes, query_top_k: int | None
) -> tuple[list[SequenceRecord], int | None]:
    """Records and top_k from a body of media type ``kind`` (sniffed when the client sent none)."""
    if not kind:
        kind = "text/plain" if body.lstrip().startswith(b">") else "application/json"
    if kind == "application/json" or kind.endswith("+json"):
        records, body_top_k, given = _records_from_json(body)
        return records, body_top_k if given else query_top_k
    if kind in _FASTA_TYPES:
        return _records_from_text(body), query_top_k
    raise _Refusal(415, f"content type {kind!r}: send application/json or FASTA as text/plain")


def _checked(
    records: list[SequenceRecord],
    settings: ServeSettings,
    max_length: int,
    per_residue: bool = False,
) -> tuple[list[SequenceRecord], list[str]]:
    """Normalised records within every limit, and the warnings of the answer.

    ``per_residue``: the windows of a long sequence are stitched residue by residue, not pooled.

    Raises:
        _Refusal: 413 over a limit (which one, its value, the fix); 422 on invalid residues.
    """
    from esmtune.data.check import sequence_problem
    from esmtune.predict import as_records

    if not records:
        raise _Refusal(422, "no sequences in the request; send at least one")
    if len(records) > settings.max_sequences:
        found = f"{len(records)} sequences in one request"
        raise _over_limit("max_sequences", settings.max_sequences, found, _SPLIT)
    records = as_records(records)
    limit = settings.max_sequence_residues
    if too_long := [r for r in records if len(r.sequence) > limit]:
        named = ", ".join(f"'{r.id}' ({len(r.sequence)} residues)" for r in too_long[:5])
        more = f" and {len(too_long) - 5} more" if len(too_long) > 5 else ""
        found = f"sequence(s) over {limit} residues: {named}{more}"
        fix = f"send pieces of at most {limit} residues"
        raise _over_limit("max_sequence_residues", limit, found, fix)
    residues = sum(len(r.sequence) for r in records)
    if residues > settings.max_request_residues:
        found = f"{residues} residues in one request (all sequences)"
        raise _over_limit("max_request_residues", settings.max_request_residues, found, _SPLIT)
    if problems := [problem for record in records if (problem := sequence_problem(record))]:
        raise _Refusal(422, f"{len(problems)} invalid sequence(s): " + "; ".join(problems))
    long = [r for r in records if len(r.sequence) > max_length]
    if long and settings.long_sequences == "refuse":
        named = ", ".join(f"'{r.id}' ({len(r.sequence)})" for r in long)
        raise _Refusal(
            413, f"sequence(s) longer than the model's {max_length} residues: {named}; this "
            "server refuses them (long_sequences=refuse): send shorter pieces",
        )  # fmt: skip
    joined = "stitched residue by residue" if per_residue else "pooled together"
    warnings = [
        f"record '{r.id}': {len(r.sequence)} residues, longer than the model's {max_length}; "
        f"read in overlapping windows {joined}"
        for r in long
    ]
    return records, warnings


# --- The worker: one model, many clients.


def _tokens(records: list[SequenceRecord]) -> int:
    return sum(len(r.sequence) + 2 for r in records)  # + BOS/EOS


@dataclass(eq=False)
class _Job:
    """One request's sequences; ``results`` fill slice by slice, in request order."""

    records: list[SequenceRecord]
    top_k: int | None
    result: asyncio.Future[list[dict[str, Any]]]
    # Smallest first with aging: the work done before this job arrived plus its size (then its
    # arrival number). Work clocks only move forward, so every later arrival ranks behind this
    # job once the others' work since its arrival reaches its size: nothing waits forever.
    rank: tuple[int, int]
    results: list[dict[str, Any]] = field(default_factory=list)

    @property
    def remaining(self) -> list[SequenceRecord]:
        return self.records[len(self.results) :]


@dataclass
class _Batcher:
    """Runs pending jobs in rank order, grouped or sliced to about ``max_tokens`` per call."""

    predictor: "Predictor"
    wait_seconds: float
    max_tokens: int
    pending: list[_Job] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    work_done: int = 0  # tokens run so far: the clock of the aging
    arrivals: int = 0
    batches_run: int = 0
    sequences_served: int = 0
    requests_served: int = 0

    def reset(self) -> None:
        """Fresh queue state for a new event loop (the app's lifespan)."""
        self.pending = []
        self.arrived = asyncio.Event()

    async def submit(self, records: list[SequenceRecord], top_k: int | None) -> list[dict]:
        """The predictions of ``records`` once the worker has run them all."""
        rank = (self.work_done + _tokens(records), self.arrivals)
        job = _Job(records, top_k, asyncio.get_running_loop().create_future(), rank)
        self.arrivals += 1
        self.pending.append(job)
        self.arrived.set()
        return await job.result

    async def run_forever(self) -> None:
        while True:
            while not self.pending:
                self.arrived.clear()
                await self.arrived.wait()
            await self._let_others_join()
            if batch := self._next_batch():
                await self._run(batch)

    async def _let_others_join(self) -> None:
        """Wait up to ``wait_seconds`` for more requests while the pending work is small."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_seconds
        while (
            sum(_tokens(job.remaining) for job in self.pending) < self.max_tokens
            and (left := deadline - loop.time()) > 0
        ):
            self.arrived.clear()
            with suppress(TimeoutError):
                await asyncio.wait_for(self.arrived.wait(), left)

    def _next_batch(self) -> list[tuple[_Job, list[SequenceRecord]]]:
        """The first-ranked job (a slice of it, if large), then whole jobs that still fit."""
        self.pending = [job for job in self.pending if not job.result.done()]  # clients gone
        if not self.pending:
            return []
        first, *others = sorted(self.pending, key=lambda job: job.rank)
        piece = _slice(first.remaining, self.max_tokens)
        batch, room = [(first, piece)], self.max_tokens - _tokens(piece)
        for job in others:
            if (size := _tokens(job.remaining)) <= room:
                batch.append((job, job.remaining))
                room -= size
        return batch

    async def _run(self, batch: list[tuple[_Job, list[SequenceRecord]]]) -> None:
        records = [record for _, piece in batch for record in piece]
        ranked = len(self.predictor.labels)  # rank every label; each request keeps its top_k
        try:
            results = await asyncio.to_thread(self.predictor.predict, records, ranked)
        except Exception as error:  # a bug, not bad input: answer every request in the call
            for job, _ in batch:
                self._finish(job, error)
            return
        self.batches_run += 1
        self.sequences_served += len(records)
        self.work_done += _tokens(records)
        start = 0
        for job, piece in batch:
            job.results += results[start : start + len(piece)]
            start += len(piece)
            if not job.remaining:
                self.requests_served += 1
                self._finish(job, None)

    def _finish(self, job: _Job, error: Exception | None) -> None:
        if job in self.pending:
            self.pending.remove(job)
        if job.result.done():  # the client went away
            return
        if error is not None:
            job.result.set_exception(error)
        else:
            job.result.set_result([_keep_top(row, job.top_k) for row in job.results])


def _slice(records: list[SequenceRecord], max_tokens: int) -> list[SequenceRecord]:
    """The leading records within ``max_tokens`` (at least one, however long)."""
    taken: list[SequenceRecord] = []
    tokens = 0
    for record in records:
        tokens += len(record.sequence) + 2
        if taken and tokens > max_tokens:
            break
        taken.append(record)
    return taken


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


def _run_info(run_dir: Path, predictor: "Predictor") -> dict[str, Any]:
    """What /info says about the run: the model, its labels, how it scored, what made it."""
    from esmtune.export.formats import export_format
    from esmtune.rundir import CONFIG_FILE, MANIFEST_FILE, METRICS_FILE, read_json

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
        "display": task.display(),  # how the page draws a prediction of this task
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


# --- The OpenAPI document: what the server really accepts and answers.


def _request_body(settings: ServeSettings, max_length: int) -> dict[str, Any]:
    """POST /predict's body forms, with the grammar and the static limits of this server."""
    grammar = _grammar()
    sequence = {
        "type": "string",
        "pattern": grammar["json_sequence"],
        "description": "residue letters (either case) with optional spaces or line breaks and "
        f"a final '*'; at most {settings.max_sequence_residues} residues",
    }
    record = {
        "type": "object",
        "required": ["sequence"],
        "properties": {
            "id": {
                "anyOf": [
                    {"type": "string", "pattern": _ID_PATTERN},
                    {"type": "integer", "minimum": -_SAFE_INTEGER, "maximum": _SAFE_INTEGER},
                ],
                "description": "the record's name in the answer [seq1, seq2 ... by position]",
            },
            "sequence": sequence,
        },
    }
    sequences = {
        "type": "array",
        "items": {"anyOf": [sequence, record]},
        "minItems": 1,
        "maxItems": settings.max_sequences,
    }
    top_k = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": _MAX_TOP_K}, {"type": "null"}]}
    request = {
        "type": "object",
        "required": ["sequences"],
        "additionalProperties": False,
        "properties": {"sequences": sequences, "top_k": top_k},
    }
    fasta = {
        "schema": {"type": "string", "pattern": grammar["text"]},
        "example": ">P1\nMKVLAAGIVG\n>P2\nMDEDEEDSTG\n",
    }
    return {
        "required": True,
        "description": (
            "JSON, or FASTA / one sequence per line as text/plain (text/x-fasta, "
            "application/x-fasta and chemical/seq-aa-fasta are read the same). Limits: at most "
            f"{settings.max_body_bytes} bytes, {settings.max_sequences} sequences and "
            f"{settings.max_request_residues} residues per request, "
            f"{settings.max_sequence_residues} residues per sequence (over any: 413). "
            f"Sequences longer than the model's {max_length} residues are "
            + ("read in windows." if settings.long_sequences == "window" else "refused (413).")
        ),
        "content": {
            "application/json": {
                "schema": {"oneOf": [request, sequences]},
                "example": {"sequences": [{"id": "P1", "sequence": "MKVLAAGIVG"}], "top_k": 3},
            },
            "text/plain": fasta,
        },
    }


_ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorAnswer, "description": "The body cannot be read: not UTF-8, or not JSON."},
    413: {
        "model": ErrorAnswer,
        "description": "Over a limit of this server (body bytes, sequences, residues per "
        "sequence or per request; a sequence longer than the model where long sequences are "
        "refused): the message names the limit, its value and the fix.",
    },
    415: {"model": ErrorAnswer, "description": "Neither JSON nor FASTA text."},
    422: {
        "model": ErrorAnswer,
        "description": "Readable but invalid: a record, residue, field or parameter the "
        "message names.",
    },
}


async def _refusal_answer(request: "Request", error: Exception) -> "JSONResponse":
    from fastapi.responses import JSONResponse

    refusal = error if isinstance(error, _Refusal) else _Refusal(400, str(error))
    return JSONResponse({"detail": refusal.detail}, status_code=refusal.status)


async def _validation_answer(request: "Request", error: Exception) -> "JSONResponse":
    """FastAPI's own 422 in the one error model: a sentence, not a list of objects."""
    from fastapi.responses import JSONResponse

    problems: list[dict[str, Any]] = getattr(error, "errors", list)()
    parts = []
    for problem in problems:
        where, *path = problem.get("loc", ()) or ("request",)
        name = ".".join(str(part) for part in path)
        parts.append(f"{where} parameter {name}: {problem['msg']} (got {problem.get('input')!r})")
    return JSONResponse({"detail": "; ".join(parts)}, status_code=422)


def _answer_schema(task_schema: dict[str, Any]) -> dict[str, Any]:
    """POST /predict's 200 answer: the task, one prediction per sequence, and warnings.

    Args:
        task_schema: What the task puts in one prediction (:meth:`TaskSpec.prediction_schema`).
    """
    described = {
        "type": "object",
        "required": ["id", "length", "truncated", "windows"],
        "properties": {
            "id": {"type": "string"},
            "length": {"type": "integer", "minimum": 1, "description": "residues in the sequence"},
            "truncated": {"type": "boolean"},
            "windows": {"type": "integer", "minimum": 1},
        },
    }
    answer = {
        "type": "object",
        "required": ["task", "predictions"],
        "properties": {
            "task": {"type": "string"},
            "predictions": {
                "type": "array",
                "items": {"allOf": [described, task_schema]},
                "description": "one per sequence, in request order: what "
                "esmtune.Predictor.predict returns for it",
            },
            "warnings": {"type": "array", "items": {"type": "string"}},
        },
    }
    return {"description": "The predictions.", "content": {"application/json": {"schema": answer}}}


def create_app(
    run_dir: Path | str, settings: ServeSettings | None = None, **options: Any
) -> "FastAPI":
    """A FastAPI app serving a run's predictions; the model loads here, before any request.

    Args:
        run_dir: A finished run directory, or an ``esmtune export`` folder (hf or onnx).
        settings: Limits and model use (:class:`ServeSettings`; its defaults when None).
        **options: :class:`ServeSettings` fields overriding ``settings``, e.g.
            ``create_app(run, max_sequences=16, device="cpu")``.

    Returns:
        The app: ``POST /predict``, ``GET /info``, ``GET /health``, ``GET /`` and ``/docs``.

    Raises:
        EsmtuneError: On invalid settings, or a run directory that cannot be loaded.
    """
    base = settings.model_dump() if settings is not None else {}
    settings = ServeSettings.checked({**base, **options})
    from fastapi import FastAPI, Query, Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse

    from esmtune.predict import Predictor

    run_dir = Path(run_dir)
    predictor = Predictor.load(
        run_dir, settings.runtime, device=settings.device, max_tokens=settings.max_tokens,
        long_sequences=LongSequences.WINDOW,
    )  # fmt: skip
    if not predictor.reads_sequences:
        raise EsmtuneError(
            f"{run_dir} was trained on precomputed embeddings whose model is unknown, so it cannot "
            "read sequences: embed the training data with `esmtune embed` (which records the "
            "model) and train again, or predict from embeddings with `esmtune predict --embeddings`"
        )
    info = _run_info(run_dir, predictor)
    default_top_k = predictor.task.default_top_k
    batcher = _Batcher(predictor, settings.batch_wait_ms / 1000, settings.max_batch_tokens)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.reset()  # bound to this event loop
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
        f'(base model {info["base_model"]}). Every 4xx answer is {{"detail": "..."}}.',
        lifespan=lifespan,
    )
    app.add_exception_handler(_Refusal, _refusal_answer)
    app.add_exception_handler(RequestValidationError, _validation_answer)
    query_top_k = Query(
        ge=1, le=_MAX_TOP_K, description="labels ranked per sequence (a JSON body's top_k wins)"
    )

    @app.post(
        "/predict",
        openapi_extra={
            "requestBody": _request_body(settings, predictor.max_length),
            "responses": {"200": _answer_schema(predictor.task.prediction_schema())},
        },
        responses=_ERROR_RESPONSES,
    )
    async def predict(
        request: Request, top_k: Annotated[int | None, query_top_k] = None
    ) -> dict[str, Any]:
        """Predict for each sequence (JSON or FASTA body), in request order."""
        body = await _read_body(request, settings.max_body_bytes)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        records, top_k = _parse_body(kind, body, top_k)
        records, warnings = _checked(
            records, settings, predictor.max_length, predictor.task.per_residue
        )
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
        """The run (task, labels, base model, best validation score, versions), limits, usage."""
        return {
            **info,
            "limits": settings.limits(),
            "batches_run": batcher.batches_run,
            "requests_served": batcher.requests_served,
            "sequences_served": batcher.sequences_served,
        }

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return _PAGE

    return app


def _app_from_environment() -> "FastAPI":
    """App factory for ``uvicorn --workers N``: each worker process loads its own model."""
    handed = json.loads(os.environ[SETTINGS_ENV])
    return create_app(handed["run_dir"], ServeSettings.model_validate(handed["settings"]))


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
 .seq{font:13px/1.9 ui-monospace,monospace;word-break:break-all;margin:.3rem 0}
 .res{padding:1px 0;cursor:default} .res.gap{margin-left:.4em} .res.unread{color:#9aa1ad}
 .legend{font-size:.85rem;display:flex;flex-wrap:wrap;gap:.2rem .9rem;align-items:center}
 .swatch{display:inline-block;width:.9rem;height:.9rem;border-radius:2px;
      vertical-align:middle;margin-right:.25rem}
 .scale{display:inline-block;width:8rem;height:.8rem;border-radius:2px;vertical-align:middle;
      background:linear-gradient(to right,rgb(47,91,211),rgb(255,255,255),rgb(179,38,30))}
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
let display = {};
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
  display = i.display || {};
  const m = i.metrics || {};
  const score = m.best_value == null ? "" :
    ` · best ${m.selection_metric} ${Number(m.best_value).toFixed(3)} (epoch ${m.best_epoch})`;
  const runtime = i.runtime && i.runtime !== "torch" ? ` · ${i.runtime}` : "";
  $("info").textContent = `${i.task} model on ${i.base_model} · ${i.labels.length} ` +
    `${display.noun}${score}${runtime}`;
  const shown = i.labels.slice(0, 30).map((x) => names[x] ? `${x} ${names[x]}` : x);
  const more = i.labels.length > 30 ? `, … ${i.labels.length - 30} more` : "";
  $("labels").textContent = `${display.list_title}: ` +
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
// Per-residue answers: one colour per class (a legend), or a scale from blue (the sequence's
// lowest value) through white to red (its highest); residues not read stay uncoloured.
const PALETTE = ["#8fb3f0", "#f4b77a", "#9fd69a", "#ef9a9a", "#c9a9dd", "#8fd3cf", "#efd77a",
  "#f7b6c8", "#c4a48a", "#c7c7c7"];
function scaleColour(v, low, high) {
  const t = high > low ? (v - low) / (high - low) : 0.5;
  const mix = (a, b, s) => Math.round(a + (b - a) * s);
  const [from, to, s] = t < 0.5 ? [[47, 91, 211], [255, 255, 255], 2 * t]
    : [[255, 255, 255], [179, 38, 30], 2 * t - 1];
  return `rgb(${from.map((a, i) => mix(a, to[i], s)).join(",")})`;
}
function residueSpans(letters, colour, title) {
  return [...letters].map((letter, i) => {
    const c = colour(i);
    const cls = "res" + (i > 0 && i % 10 === 0 ? " gap" : "") + (c ? "" : " unread");
    return `<span class="${cls}" data-position="${i + 1}"` +
      `${c ? ` style="background:${c}"` : ""} title="${esc(title(i, letter))}">` +
      `${esc(letter)}</span>`;
  }).join("");
}
function residues(r, d) {
  const letters = r[d.letters];
  let legend, spans;
  if (d.values) {
    const values = r[d.values];
    const read = values.filter((v) => v !== null);
    const low = read.reduce((a, b) => Math.min(a, b), Infinity);
    const high = read.reduce((a, b) => Math.max(a, b), -Infinity);
    legend = read.length ? `<span>${low.toPrecision(3)}</span><span class="scale"></span>` +
      `<span>${high.toPrecision(3)}</span>` : "";
    spans = residueSpans(letters,
      (i) => values[i] === null ? "" : scaleColour(values[i], low, high),
      (i, letter) => `${i + 1} ${letter}: ` +
        (values[i] === null ? "not read" : values[i].toPrecision(4)));
  } else {
    const classes = r[d.classes], chosen = r[d.chosen], probabilities = r[d.probabilities];
    const named = (x) => names[x] ? `${x} ${names[x]}` : x;
    const colour = {};
    classes.forEach((x, i) => { colour[x] = PALETTE[i % PALETTE.length]; });
    legend = classes.map((x) => `<span><span class="swatch" style="background:${colour[x]}">` +
      `</span>${esc(named(x))}</span>`).join("");
    spans = residueSpans(letters,
      (i) => probabilities[i] === null ? "" : colour[chosen[i]],
      (i, letter) => `${i + 1} ${letter}: ` + (probabilities[i] === null ? "not read" :
        `${named(chosen[i])}\\n` + classes.map((x, k) =>
          `${named(x)} ${probabilities[i][k].toFixed(3)}`).join("\\n")));
  }
  const unread = r.unread ? `<div class="warn">${r.unread} residue(s) not read</div>` : "";
  return `<div class="legend">${legend}</div><div class="seq">${spans}</div>${unread}`;
}
// Drawn from the task's description in /info: the decision, bars, named values, or residues.
function card(r) {
  let body = "";
  const c = display.chosen;
  if (c) {
    const v = r[c.field];
    const shown = Array.isArray(v) ? (v.join(", ") || c.empty) : v;
    const detail = c.detail ? ` (${c.prefix || ""}${r[c.detail].toFixed(3)})` : "";
    body += `<div>${esc(c.title)}: <b>${esc(shown)}</b>${detail}</div>`;
  }
  if (display.bars) {
    const b = r[display.bars];
    body += bars(Array.isArray(b) ? b : Object.entries(b));
  }
  if (display.values) {
    body += Object.entries(r[display.values]).map(([k, v]) => `<div>${esc(k)}: ` +
      `<b>${v.toPrecision(4)}</b></div>`).join("");
  }
  if (display.residues) body += residues(r, display.residues);
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
