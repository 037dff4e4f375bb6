"""The OpenAPI document of `esmtune serve` tells the truth: read directly, held against the
server's own parsing, and probed by schemathesis with every check it has for a response."""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi")
schemathesis = pytest.importorskip("schemathesis")

from fastapi.testclient import TestClient  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from esmtune.serve import (  # noqa: E402
    ServeSettings,
    _checked,
    _grammar,
    _parse_body,
    _Refusal,
    create_app,
)

# Small limits, so that the generated requests reach them (a 413 is then part of the test).
LIMITS = {"max_sequences": 6, "max_sequence_residues": 120, "max_request_residues": 400}
ERRORS = ("400", "413", "415", "422")


@pytest.fixture(scope="module")
def app(lora_run: Path):
    return create_app(lora_run, device="cpu", batch_wait_ms=0, **LIMITS)


@pytest.fixture(scope="module")
def openapi(app) -> dict:
    with TestClient(app) as client:
        return client.get("/openapi.json").json()


def _body_schema(openapi: dict, media_type: str) -> dict:
    return openapi["paths"]["/predict"]["post"]["requestBody"]["content"][media_type]["schema"]


def test_every_4xx_has_the_one_error_model(openapi: dict) -> None:
    responses = openapi["paths"]["/predict"]["post"]["responses"]
    assert set(responses) == {"200", *ERRORS}
    for status in ERRORS:
        schema = responses[status]["content"]["application/json"]["schema"]
        assert schema == {"$ref": "#/components/schemas/ErrorAnswer"}, status
    error_model = openapi["components"]["schemas"]["ErrorAnswer"]
    assert error_model["required"] == ["detail"]
    assert error_model["properties"]["detail"]["type"] == "string"
    assert "HTTPValidationError" not in openapi["components"]["schemas"]  # FastAPI's list form


def test_the_static_limits_are_in_the_schema(openapi: dict) -> None:
    request, bare_list = _body_schema(openapi, "application/json")["oneOf"]
    sequences = request["properties"]["sequences"]
    assert sequences == bare_list
    assert (sequences["minItems"], sequences["maxItems"]) == (1, LIMITS["max_sequences"])
    assert request["additionalProperties"] is False
    top_k = request["properties"]["top_k"]["anyOf"][0]
    assert (top_k["minimum"], top_k["maximum"]) == (1, 1_000_000)
    body = openapi["paths"]["/predict"]["post"]["requestBody"]["description"]
    for value in (*LIMITS.values(), ServeSettings().max_body_bytes):
        assert str(value) in body


# --- The patterns of the schema against the server's parsing, on awkward text.

_GENEROUS = ServeSettings(max_sequences=10_000, max_sequence_residues=10_000)
_CHARS = [*"MKVAmkv*>; \t-J1P", "\u00a0", "\u3000", "ı", "ß", "\x0b", "\ufeff", "é"]
# Pieces of lines, valid or nearly: headers, comments, residues, stars, odd spaces and letters.
_PIECES = [
    ">P1", ">P2 a description, é", "\u3000> P3", ">", "> \u3000", ";note", " ;é", "",
    " \t", "MKV", "mk v*", "MKV**", "*", "* *", "MKı", "MK\u00a0V", "MKV;x", "J", "\ufeff",
]  # fmt: skip
_TEXTS = st.lists(
    st.sampled_from(_PIECES) | st.text(st.sampled_from(_CHARS), max_size=4), max_size=7
).flatmap(
    lambda parts: st.lists(
        st.sampled_from(["\n", "\r\n", "\r"]), min_size=len(parts), max_size=len(parts)
    ).map(lambda breaks: "".join(p + b for p, b in zip(parts, breaks, strict=True)))
)


def _accepted(kind: str, body: bytes) -> bool:
    """Whether the server takes the body (as far as parsing and residue checks go)."""
    try:
        records, _ = _parse_body(kind, body, None)
        _checked(records, _GENEROUS, max_length=10_000)
    except _Refusal as refusal:
        assert refusal.status in (400, 422), refusal.detail
        return False
    return True


@settings(max_examples=600, deadline=None, derandomize=True)
@given(_TEXTS | st.text(st.sampled_from([*_CHARS, "\n", "\r"]), max_size=16))
def test_text_is_accepted_exactly_when_the_pattern_matches(text: str) -> None:
    matches = re.search(_grammar()["text"], text) is not None
    assert _accepted("text/plain", text.encode()) == matches, repr(text)


@settings(max_examples=40, deadline=None, derandomize=True)
@given(st.from_regex(_grammar()["text"]))
def test_text_generated_from_the_pattern_is_accepted(text: str) -> None:
    assert _accepted("text/plain", text.encode()), repr(text)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(
    st.text(st.sampled_from([*_CHARS, "\n", "\r"]), max_size=12)
    | st.from_regex(_grammar()["json_sequence"])
)
def test_json_sequence_is_accepted_exactly_when_the_pattern_matches(sequence: str) -> None:
    matches = re.search(_grammar()["json_sequence"], sequence) is not None
    body = json.dumps({"sequences": [sequence]}).encode()
    assert _accepted("application/json", body) == matches, repr(sequence)


# --- schemathesis: the requests it generates, valid and invalid, and all of its checks.

# Every check schemathesis runs on a response, by name; each must run and never fail.
CHECKS = {
    "not_a_server_error", "status_code_conformance", "content_type_conformance",
    "response_schema_conformance", "response_headers_conformance", "positive_data_acceptance",
    "negative_data_rejection", "missing_required_header", "unsupported_method",
    "allow_header_conformance", "use_after_free", "ensure_resource_availability",
    "ignored_auth", "object_level_authorization",
}  # fmt: skip


@dataclass
class _Run:
    """What a schemathesis run did: checks by outcome, answers by kind, and what went wrong."""

    checks: Counter[tuple[str, str]] = field(default_factory=Counter)
    answers: Counter[tuple[str, str, int]] = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)

    def record(self, event: Any) -> None:
        from schemathesis.engine import events

        if isinstance(event, events.ScenarioFinished):
            self._scenario(event.recorder)
        elif isinstance(event, events.NonFatalError | events.FatalError):
            self.problems.append(f"error: {getattr(event, 'value', None) or event.exception}")

    def _scenario(self, recorder: Any) -> None:
        for nodes in recorder.checks.values():
            for node in nodes:
                self.checks[(node.name, node.status.value)] += 1
                if node.failure_info is not None:
                    failure = node.failure_info.failure
                    self.problems.append(
                        f"{node.name}: {failure.title}\n{failure.message}\n"
                        f"{node.failure_info.code_sample}"
                    )
        for case_id, interaction in recorder.interactions.items():
            case = recorder.cases[case_id].value
            mode = case.meta.generation.mode.value if case.meta else "explicit"
            status = interaction.response.status_code if interaction.response else 0
            self.answers[(recorder.label, mode, status)] += 1

    def summary(self) -> str:
        names = sorted({name for name, _ in self.checks})
        rows = [f"  {name:30} {self.checks[(name, 'success')]:4} passed  "
                f"{self.checks[(name, 'failure')]:3} failed" for name in names]  # fmt: skip
        answers = [f"  {key}: {count}" for key, count in sorted(self.answers.items())]
        return "\n".join(["schemathesis checks:", *rows, "answers (operation, mode, status):",
                          *answers])  # fmt: skip


@pytest.fixture(scope="module")
def schemathesis_run(app) -> _Run:
    from schemathesis.engine import from_schema

    config = schemathesis.Config.from_dict(
        {
            "seed": 20_240_610,
            "generation": {"max-examples": 40, "deterministic": True},
            "checks": {
                # The residue limits count residues across lines and sequences, after spaces
                # are dropped: no JSON Schema keyword states them, so valid data may meet a 413
                # (the request body's description names every limit).
                "positive_data_acceptance": {"expected-statuses": ["2xx", "413"]},
                # Over a limit the schema does state (maxItems) the answer is 413: a rejection.
                "negative_data_rejection": {
                    "expected-statuses": ["400", "405", "406", "413", "415", "422"]
                },
            },
        }
    )
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=config)
    run = _Run()
    for event in from_schema(schema).execute():  # the phases of `schemathesis run`
        run.record(event)
    print("\n" + run.summary())
    return run


def test_schemathesis_finds_the_server_true_to_its_schema(schemathesis_run: _Run) -> None:
    assert not schemathesis_run.problems, "\n\n".join(schemathesis_run.problems)
    ran = {name for name, _ in schemathesis_run.checks}
    assert ran >= CHECKS, f"checks that never ran: {sorted(CHECKS - ran)}"


def test_schemathesis_sent_valid_and_invalid_requests(schemathesis_run: _Run) -> None:
    """The run was not vacuous: both kinds of data, and answers of every kind the body has."""
    predict = [
        (mode, status) for (label, mode, status) in schemathesis_run.answers if "predict" in label
    ]
    assert {"positive", "negative"} <= {mode for mode, _ in predict}
    assert {200, 400, 413, 415, 422} <= {status for _, status in predict}
